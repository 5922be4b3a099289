//! Layer 1: the platform's services as formations the scheduler runs, like any app's
//! (the platform runs on itself), then their app records (inception) and the line
//! that gives the user the controller.
//!
//! Each service runs from the `flynn/host` image on the host network (they are the
//! platform's own jobs, and the router must own ports 80 and 81 on every host):
//!
//! | app           | type | where         | ports                          | service              |
//! |---------------|------|---------------|--------------------------------|----------------------|
//! | controller    | web  | 2 hosts       | 1115 (API)                     | flynn-controller     |
//! | router        | app  | every host    | 80 (HTTP), 81 (TCP → controller) | flynn-router       |
//! | logaggregator | app  | 2 hosts       | 5140 (syslog), 5141 (HTTP)     | flynn-logaggregator  |
//! | gitreceive    | app  | 2 hosts       | 1117 (HTTP; route git.<domain>) | flynn-gitreceive    |
//!
//! The git receiver runs from the `flynn/slugbuilder` image (git, the buildpacks),
//! not `flynn/host`; its step is skipped, saying so, while a host lacks that image
//! (an appliance that does not bake it still bootstraps the rest).
//!
//! Keys made here (the controller key, the routers' sticky-cookie key) live in the
//! formations' environment: a re-run reads them back instead of making new ones, so
//! it changes nothing and starts nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use discovery::Etcd;
use discovery::apps::{App, Process, Release};
use discovery::formations::{FormationRecord, Restart};
use discovery::routes::{Route, RouteKind};
use serde_json::json;

use crate::Outcome;
use crate::error::StepError;
use crate::steps::Run;

pub(crate) const CONTROLLER_PORT: u16 = 1115;
/// The routers' TCP route to the controllers: every host answers the CLI there.
pub(crate) const CONTROLLER_ROUTE_PORT: u16 = 81;
const ROUTER_HTTP_PORT: u16 = 80;
const LOG_SYSLOG_PORT: u16 = 5140;
const LOG_HTTP_PORT: u16 = 5141;
const CONTROLLER_KEY_ENV: &str = "FLYNN_CONTROLLER_KEY";
const ROUTER_KEY_ENV: &str = "FLYNN_ROUTER_KEY";
/// The routers' default certificate (for `*.<domain>`, of the cluster's CA) and
/// its key, as PEM in their environment (`router::service`'s).
const ROUTER_CERT_ENV: &str = "FLYNN_ROUTER_TLS_CERT";
const ROUTER_CERT_KEY_ENV: &str = "FLYNN_ROUTER_TLS_KEY";
const ROUTER_HTTPS_PORT: u16 = 443;
/// The routers' default certificate and the controller's live a year: each
/// service renews its own through its host's agent two thirds into it.
const SERVICE_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The controller's certificate (for `controller.<domain>`, the name clients
/// that dial an address verify, and loopback) and its key, as PEM in its
/// environment (`controller::ControllerArgs`).
const CONTROLLER_CERT_ENV: &str = "FLYNN_CONTROLLER_TLS_CERT";
const CONTROLLER_CERT_KEY_ENV: &str = "FLYNN_CONTROLLER_TLS_KEY";
const DEFAULT_DOMAIN: &str = "cluster.local";
const CONTROLLER_ROUTE_ID: &str = "flynn-controller-api";
const GITRECEIVE_PORT: u16 = 1117;
const GITRECEIVE_SERVICE: &str = "flynn-gitreceive";
const GIT_ROUTE_ID: &str = "flynn-gitreceive-git";

/// The platform services this module starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Controller,
    Router,
    LogAggregator,
    GitReceive,
}

impl Service {
    const ALL: [Service; 4] = [
        Service::Controller,
        Service::Router,
        Service::LogAggregator,
        Service::GitReceive,
    ];

    fn app(self) -> &'static str {
        match self {
            Service::Controller => "controller",
            Service::Router => "router",
            Service::LogAggregator => "logaggregator",
            Service::GitReceive => "gitreceive",
        }
    }

    fn process_type(self) -> &'static str {
        match self {
            Service::Controller => "web",
            Service::Router | Service::LogAggregator | Service::GitReceive => "app",
        }
    }

    pub(crate) fn discovery_name(self) -> &'static str {
        match self {
            Service::Controller => "flynn-controller",
            Service::Router => "flynn-router",
            Service::LogAggregator => "flynn-logaggregator",
            Service::GitReceive => GITRECEIVE_SERVICE,
        }
    }

    fn port(self) -> u16 {
        match self {
            Service::Controller => CONTROLLER_PORT,
            Service::Router => ROUTER_HTTP_PORT,
            Service::LogAggregator => LOG_SYSLOG_PORT,
            Service::GitReceive => GITRECEIVE_PORT,
        }
    }

    fn default_image(self) -> String {
        match self {
            Service::GitReceive => format!("flynn/slugbuilder:{}", env!("CARGO_PKG_VERSION")),
            _ => default_image(),
        }
    }

    fn cmd(self) -> Vec<String> {
        let v: Vec<&str> = match self {
            Service::Controller => vec!["controller", "--listen", "0.0.0.0:1115"],
            // HTTPS with a route's certificate, else the cluster's (`*.<domain>`,
            // of the cluster's CA, in the formation's environment).
            Service::Router => vec!["router", "--http", "0.0.0.0:80", "--https", "0.0.0.0:443"],
            Service::LogAggregator => vec![
                "logaggregator",
                "--syslog",
                "0.0.0.0:5140",
                "--http",
                "0.0.0.0:5141",
            ],
            // The slugbuilder image's command is the builder: name the binary.
            Service::GitReceive => vec![
                "/usr/bin/flynn-host",
                "gitreceive",
                "--listen",
                "0.0.0.0:1117",
            ],
        };
        v.into_iter().map(String::from).collect()
    }

    fn meta(self) -> BTreeMap<String, String> {
        match self {
            // Readers find the HTTP API beside the shippers' port (logagg::META_HTTP).
            // Both ports are TLS (the host's certificate, FLYNN_TLS_DIR): shippers
            // and readers verify it against the cluster's CA (logagg::META_TLS).
            Service::LogAggregator => BTreeMap::from([
                ("http".to_string(), LOG_HTTP_PORT.to_string()),
                ("tls".to_string(), "1".to_string()),
            ]),
            _ => BTreeMap::new(),
        }
    }
}

/// A step's parameters, as the manifest gives them.
pub(crate) struct Params {
    /// Jobs wanted (never more than the hosts); ignored by the router (every host).
    pub instances: Option<usize>,
    pub image: Option<String>,
    /// The controller's: the cluster's domain (apps at `<app>.<domain>`).
    pub domain: Option<String>,
}

fn default_image() -> String {
    format!("flynn/host:{}", env!("CARGO_PKG_VERSION"))
}

fn secret(bytes: usize) -> Result<String, StepError> {
    flynn_random::hex(bytes, flynn_random::Use::Secret)
        .map_err(|e| StepError::Random(e.to_string()))
}

fn env_of(f: &FormationRecord, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    f.env
        .iter()
        .find_map(|e| e.strip_prefix(&prefix).map(str::to_string))
}

impl Run {
    /// The formation of one platform service, started (or found as it is) and waited
    /// for until every wanted instance is in discovery.
    pub(crate) async fn platform(&mut self, svc: Service, p: Params) -> Result<Outcome, StepError> {
        let etcd = self.cluster_etcd().await?;
        let hosts = self.host_addrs();
        let existing = discovery::formations::list(&etcd)
            .await?
            .into_iter()
            .find(|f| f.app == svc.app() && f.process_type == svc.process_type());
        let keep = |name: &str| existing.as_ref().and_then(|f| env_of(f, name));
        let pin = self.cluster_pin().await?;
        let mut env = vec![
            format!("FLYNN_ETCD={}", self.etcd_urls().join(",")),
            format!("FLYNN_TOKEN={}", self.token()),
            "FLYNN_HOST=http://127.0.0.1:1113".to_string(),
            // Other hosts' agents (the controller's relay, its image pins) are
            // verified against the cluster's CA.
            format!("FLYNN_TLS_PIN={pin}"),
        ];
        let mut data = json!({});
        let mut git_domain = None;
        match svc {
            Service::Controller => {
                let key = match keep(CONTROLLER_KEY_ENV) {
                    Some(k) => k,
                    None => secret(16)?,
                };
                let domain = p
                    .domain
                    .clone()
                    .or_else(|| keep("FLYNN_DOMAIN"))
                    .unwrap_or_else(|| DEFAULT_DOMAIN.to_string());
                env.push(format!("{CONTROLLER_KEY_ENV}={key}"));
                env.push(format!("FLYNN_DOMAIN={domain}"));
                // The aggregators ask readers for the cluster token.
                env.push(format!("FLYNN_LOGAGG_TOKEN={}", self.token()));
                // HTTPS end to end through the routers' port 81: the CLI verifies
                // the controller's own certificate against the cluster's pin.
                let names = vec![
                    format!("controller.{domain}"),
                    flynn_tls::CONTROLLER_NAME.to_string(),
                    "localhost".to_string(),
                    "127.0.0.1".to_string(),
                    "::1".to_string(),
                ];
                let (cert, cert_key) = self
                    .kept_or_issued(
                        keep(CONTROLLER_CERT_ENV).zip(keep(CONTROLLER_CERT_KEY_ENV)),
                        "flynn controller",
                        &names,
                    )
                    .await?;
                env.push(format!("{CONTROLLER_CERT_ENV}={cert}"));
                env.push(format!("{CONTROLLER_CERT_KEY_ENV}={cert_key}"));
                let url = format!("https://{}:{CONTROLLER_ROUTE_PORT}", hosts[0]);
                data = json!({
                    "url": url,
                    "key": key,
                    "domain": domain,
                    "tls_pin": pin,
                    "cluster_add": format!("flynn cluster add -p {pin} default {url} {key}"),
                });
            }
            Service::Router => {
                let key = match keep(ROUTER_KEY_ENV) {
                    Some(k) => k,
                    None => secret(32)?,
                };
                env.push(format!("{ROUTER_KEY_ENV}={key}"));
                let domain = cluster_domain(&etcd).await?;
                let (cert, cert_key) = self
                    .kept_or_issued(
                        keep(ROUTER_CERT_ENV).zip(keep(ROUTER_CERT_KEY_ENV)),
                        &format!("flynn router *.{domain}"),
                        &[format!("*.{domain}"), domain.clone()],
                    )
                    .await?;
                env.push(format!("{ROUTER_CERT_ENV}={cert}"));
                env.push(format!("{ROUTER_CERT_KEY_ENV}={cert_key}"));
                data = json!({"https_port": ROUTER_HTTPS_PORT});
            }
            Service::LogAggregator => {}
            Service::GitReceive => {
                let image = p.image.clone().unwrap_or_else(|| svc.default_image());
                let lacking = self.hosts_lacking(&image).await;
                if !lacking.is_empty() {
                    return Ok(Outcome::Skipped(json!({
                        "summary": format!(
                            "skipped: {image} is not on {} (import it on every host and run the bootstrap again for `git push`)",
                            lacking.join(", ")
                        ),
                    })));
                }
                let controller = discovery::formations::list(&etcd)
                    .await?
                    .into_iter()
                    .find(|f| f.app == "controller")
                    .ok_or(StepError::NoController)?;
                let key = env_of(&controller, CONTROLLER_KEY_ENV).ok_or(StepError::NoController)?;
                let domain =
                    env_of(&controller, "FLYNN_DOMAIN").unwrap_or_else(|| "cluster.local".into());
                env.push(format!("{CONTROLLER_KEY_ENV}={key}"));
                // The local router's port 81, over TLS to the controller
                // (verified by the cluster's pin, FLYNN_TLS_PIN above; the
                // controller's certificate names loopback).
                env.push(format!(
                    "FLYNN_CONTROLLER_URL=https://127.0.0.1:{CONTROLLER_ROUTE_PORT}"
                ));
                git_domain = Some(format!("git.{domain}"));
            }
        }
        let omni = svc == Service::Router;
        let count = if omni {
            1
        } else {
            // One per host at most: they listen on fixed host ports.
            p.instances.unwrap_or(2).clamp(1, hosts.len().max(1)) as u32
        };
        let wanted = FormationRecord {
            app: svc.app().to_string(),
            process_type: svc.process_type().to_string(),
            image: p.image.clone().unwrap_or_else(|| svc.default_image()),
            cmd: svc.cmd(),
            env,
            services: vec![json!({
                "name": svc.discovery_name(),
                "port": svc.port(),
                "check": {"kind": "tcp", "interval_ms": 1000},
                "meta": svc.meta(),
            })],
            memory: None,
            cpus: None,
            count,
            omni,
            tags: BTreeMap::new(),
            network: Some("host".to_string()),
            // The platform's own formations follow no app release: the bootstrap
            // (and a later upgrade) writes them whole.
            release: None,
            // The platform's services run for good.
            restart: Restart::Always,
        };
        let changed = existing.as_ref() != Some(&wanted);
        if changed {
            discovery::formations::put(&etcd, &wanted).await?;
        }
        let mut route_changed = false;
        if svc == Service::Router {
            route_changed = ensure_controller_route(&etcd).await?;
        }
        if let Some(domain) = &git_domain {
            route_changed = ensure_git_route(&etcd, domain).await?;
            data["url"] = json!(format!("http://{domain}/"));
        }
        let instances = if omni { hosts.len() } else { count as usize };
        let found = self.wait_service(&etcd, svc, instances).await?;
        data["instances"] = json!(found);
        data["summary"] = json!(format!(
            "{} instance(s) of {} at {}",
            found.len(),
            svc.discovery_name(),
            found.join(", ")
        ));
        if svc == Service::Controller {
            self.set_controller(data.clone());
        }
        Ok(if changed || route_changed {
            Outcome::Done(data)
        } else {
            Outcome::Skipped(data)
        })
    }

    /// A platform service's certificate: the one its formation holds while it
    /// is the cluster CA's, names `names` and is not two thirds into its life,
    /// else a new one from that CA (so a re-run changes nothing, and a re-run
    /// late in the year, after the domain changed or under another CA renews it;
    /// the services also renew their own through their agent).
    async fn kept_or_issued(
        &mut self,
        kept: Option<(String, String)>,
        common_name: &str,
        names: &[String],
    ) -> Result<(String, String), StepError> {
        let ca = self.cluster_ca().await?;
        if let Some((cert, key)) = kept
            && cert.trim_end().ends_with(ca.cert_pem.trim_end())
            && let Some(parsed) = flynn_tls::parse_cert(&cert, &key)
            && names.iter().all(|n| parsed.names.contains(n))
            && !flynn_tls::renewal_due(&parsed)
        {
            return Ok((cert, key));
        }
        let issued = ca
            .issue(common_name, names, SERVICE_CERT_LIFETIME)
            .map_err(|e| StepError::Tls(format!("the certificate of {common_name}: {e}")))?;
        Ok((issued.chain_pem, issued.key_pem))
    }

    /// Waits until `n` instances of the service are in discovery (they register only
    /// once their health check passes).
    async fn wait_service(
        &self,
        etcd: &Etcd,
        svc: Service,
        n: usize,
    ) -> Result<Vec<String>, StepError> {
        let deadline = Instant::now() + self.timeout();
        loop {
            let state = discovery::services::list(etcd, svc.discovery_name()).await?;
            let addrs: Vec<String> = state.instances.iter().map(|i| i.addr.to_string()).collect();
            if addrs.len() >= n {
                return Ok(addrs);
            }
            if Instant::now() >= deadline {
                return Err(StepError::PlatformNotUp {
                    service: svc.discovery_name(),
                    app: svc.app(),
                    wanted: n,
                    found: addrs,
                    secs: self.timeout().as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Inception: the platform's services are apps too (`flynn apps` lists them),
    /// each with a release made from its formation.
    pub(crate) async fn inception(&mut self) -> Result<Outcome, StepError> {
        let etcd = self.cluster_etcd().await?;
        let formations = discovery::formations::list(&etcd).await?;
        let mut made = Vec::new();
        for svc in Service::ALL {
            let Some(f) = formations
                .iter()
                .find(|f| f.app == svc.app() && f.process_type == svc.process_type())
            else {
                continue;
            };
            if discovery::apps::get(&etcd, svc.app()).await?.is_some() {
                continue;
            }
            let now = chrono::Utc::now();
            let app = App {
                name: svc.app().to_string(),
                created_at: now,
                release: None,
                previous_release: None,
                meta: BTreeMap::from([("flynn-system-app".to_string(), "true".to_string())]),
            };
            discovery::apps::create(&etcd, &app).await?;
            let release = Release {
                id: format!("{}-{}", now.format("%Y%m%d%H%M%S"), svc.app()),
                app: svc.app().to_string(),
                image: f.image.clone(),
                // The secrets stay in the formation: releases are listed to users.
                env: BTreeMap::new(),
                processes: BTreeMap::from([(
                    svc.process_type().to_string(),
                    Process {
                        cmd: f.cmd.clone(),
                        port: Some(svc.port()),
                        memory: f.memory,
                        cpus: f.cpus,
                    },
                )]),
                created_at: now,
                meta: BTreeMap::new(),
            };
            discovery::apps::deploy(&etcd, &app, &release).await?;
            made.push(svc.app());
        }
        let data = json!({
            "apps": Service::ALL.iter().map(|s| s.app()).collect::<Vec<_>>(),
            "summary": if made.is_empty() {
                "the platform's apps are recorded".to_string()
            } else {
                format!("recorded {}", made.join(", "))
            },
        });
        Ok(if made.is_empty() {
            Outcome::Skipped(data)
        } else {
            Outcome::Done(data)
        })
    }
}

/// The cluster's domain: the controller formation's (`FLYNN_DOMAIN`), else the
/// default the controller step uses.
async fn cluster_domain(etcd: &Etcd) -> Result<String, StepError> {
    Ok(discovery::formations::list(etcd)
        .await?
        .into_iter()
        .find(|f| f.app == Service::Controller.app())
        .and_then(|f| env_of(&f, "FLYNN_DOMAIN"))
        .unwrap_or_else(|| DEFAULT_DOMAIN.to_string()))
}

/// `https://ANY-HOST:81` reaches a controller: a TCP route every router serves
/// (bytes passed through: the TLS is the controller's own).
async fn ensure_controller_route(etcd: &Etcd) -> Result<bool, StepError> {
    let wanted = Route {
        id: CONTROLLER_ROUTE_ID.to_string(),
        kind: RouteKind::Tcp,
        service: Service::Controller.discovery_name().to_string(),
        domain: None,
        path: None,
        sticky: false,
        port: Some(CONTROLLER_ROUTE_PORT),
        app: Some(Service::Controller.app().to_string()),
        certificate: None,
    };
    let have = discovery::routes::list(etcd)
        .await?
        .into_iter()
        .find(|r| r.id == CONTROLLER_ROUTE_ID);
    if have.as_ref() == Some(&wanted) {
        return Ok(false);
    }
    discovery::routes::put(etcd, &wanted).await?;
    Ok(true)
}

/// `git.<domain>` reaches a git receiver through every router.
async fn ensure_git_route(etcd: &Etcd, domain: &str) -> Result<bool, StepError> {
    let wanted = Route {
        id: GIT_ROUTE_ID.to_string(),
        kind: RouteKind::Http,
        service: GITRECEIVE_SERVICE.to_string(),
        domain: Some(domain.to_string()),
        path: None,
        sticky: false,
        port: None,
        app: Some(Service::GitReceive.app().to_string()),
        certificate: None,
    };
    let have = discovery::routes::list(etcd)
        .await?
        .into_iter()
        .find(|r| r.id == GIT_ROUTE_ID);
    if have.as_ref() == Some(&wanted) {
        return Ok(false);
    }
    discovery::routes::put(etcd, &wanted).await?;
    Ok(true)
}
