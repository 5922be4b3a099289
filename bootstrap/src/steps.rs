//! The actions. Each looks at the real state first (`Skipped` when it holds) and
//! fails with what is wrong, on which host or between which hosts, and what to do.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use flynn_client::{ApiFailure, Client};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{CallError, MissingHost, PreflightFailure, StepError};
use crate::layer1::{Params, Service};
use crate::manifest::{Action, Step};
use crate::{Outcome, Runner};

/// The overlay's UDP port (VXLAN) and the most clock skew a cluster tolerates.
const VXLAN_PORT: u16 = 4789;
const MAX_SKEW_MS: i64 = 2000;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const SCHEDULER_JOB: &str = "flynn-scheduler";
const SCHEDULER_PORT: u16 = 1114;
/// How long a probe listener waits for its datagram.
const PROBE_LISTEN_MS: u64 = 3000;

struct Peer {
    addr: Ipv4Addr,
    id: String,
    /// Verified against this CA's pin: the host's own at first contact, the
    /// cluster's once the tls step has run.
    client: Client,
}

/// `GET /cluster/tls/ca` as the bootstrap reads it.
#[derive(Deserialize)]
struct TlsCa {
    pin: String,
    #[serde(default)]
    cluster: bool,
}

/// `GET /cluster` as the bootstrap reads it.
#[derive(Deserialize, Default, Clone)]
struct Membership {
    cluster_id: Option<String>,
    #[serde(default)]
    joined: bool,
}

#[derive(Deserialize)]
struct PreflightCheck {
    name: String,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

#[derive(Deserialize)]
struct Preflight {
    checks: Vec<PreflightCheck>,
    time_ms: i64,
}

/// `GET /host/status`: only who the host is.
#[derive(Deserialize)]
struct HostStatus {
    id: String,
}

/// `POST /host/probe/send`.
#[derive(Deserialize)]
struct ProbeSent {
    tcp_ok: bool,
    #[serde(default)]
    tcp_error: Option<String>,
}

/// `GET /host/probe/listen/{nonce}`.
#[derive(Deserialize)]
struct ProbeHeard {
    received: bool,
    #[serde(default)]
    listening: bool,
}

/// `GET /cluster/hosts`: the members' ids.
#[derive(Deserialize)]
struct HostRecord {
    id: String,
}

/// `GET /discovery/services/flynn-scheduler/leader`.
#[derive(Deserialize)]
struct Leader {
    addr: String,
}

/// `PUT /cluster/etcd`, `PUT /cluster/join`.
#[derive(Deserialize)]
struct Changed {
    changed: bool,
}

pub struct Run {
    peers: Vec<Ipv4Addr>,
    port: u16,
    token: String,
    min_hosts: Option<usize>,
    timeout: Duration,
    hosts: Vec<Peer>,
    cluster_id: Option<String>,
    etcd_urls: Vec<String>,
    etcd: Option<discovery::Etcd>,
    /// What the controller step found (its URL, key and `flynn cluster add` line).
    controller: Option<Value>,
    /// The pin of the cluster's CA (the tls step's, or read from the first host).
    cluster_pin: Option<String>,
    /// This run's client certificate for etcd's mutual TLS.
    etcd_tls: Option<discovery::EtcdTls>,
    /// The cluster's CA (with its key), once read.
    cluster_ca: Option<flynn_tls::Ca>,
}

async fn call<T: DeserializeOwned>(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<T, CallError> {
    match tokio::time::timeout(CALL_TIMEOUT, c.call::<T>(method, path, body)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(call_error(&e, path)),
        Err(_) => Err(CallError::Timeout(CALL_TIMEOUT.as_secs())),
    }
}

/// A request whose answer has no body (204).
async fn call_empty(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(), CallError> {
    match tokio::time::timeout(CALL_TIMEOUT, c.send_json(method, path, body)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(call_error(&e, path)),
        Err(_) => Err(CallError::Timeout(CALL_TIMEOUT.as_secs())),
    }
}

fn call_error(e: &anyhow::Error, path: &str) -> CallError {
    match e.downcast_ref::<ApiFailure>() {
        Some(f) if f.status == StatusCode::UNAUTHORIZED => CallError::Token,
        Some(f)
            if f.status == StatusCode::NOT_FOUND
                && (path == "/cluster"
                    || path.starts_with("/cluster/")
                    || path.starts_with("/host/p")) =>
        {
            CallError::Old(f.message.clone())
        }
        Some(f) => CallError::Status {
            status: f.status.as_u16(),
            message: f.message.clone(),
        },
        None => CallError::Transport(format!("{e:#}")),
    }
}

/// A failed call on a host, as a step error.
fn on(host: Ipv4Addr, doing: &'static str) -> impl FnOnce(CallError) -> StepError {
    move |source| match source {
        CallError::Token => StepError::Token { host, source },
        source => StepError::Call {
            host,
            doing,
            source,
        },
    }
}

fn random_id() -> Result<String, StepError> {
    flynn_random::hex(8, flynn_random::Use::Unique).map_err(|e| StepError::Random(e.to_string()))
}

/// The etcd members for `hosts` hosts: 1, 3 or 5 (one when there are two hosts: a
/// second member adds a failure, not safety); never more than there are hosts, and
/// never an even count.
pub(crate) fn member_count(hosts: usize, wanted: Option<usize>) -> usize {
    let n = wanted.unwrap_or(match hosts {
        0..=2 => 1,
        3 | 4 => 3,
        _ => 5,
    });
    [5, 3, 1]
        .into_iter()
        .find(|&m| m <= n && m <= hosts)
        .unwrap_or(1)
}

fn addrs(list: &[Ipv4Addr]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Runner for Run {
    async fn step(&mut self, step: &Step) -> Result<Outcome, StepError> {
        // A manifest may start past online-hosts (or a step may be run alone): the
        // hosts are found first either way.
        if step.action != Action::OnlineHosts && self.hosts.is_empty() {
            self.online().await?;
        }
        match step.action {
            Action::OnlineHosts => self.online().await,
            Action::Tls => self.tls().await,
            Action::Preflight => self.preflight().await,
            Action::Etcd => {
                let members = step.param_u64("members").map(|n| n as usize);
                self.etcd_step(members).await
            }
            Action::Join => self.join().await,
            Action::Controller | Action::Router | Action::LogAggregator | Action::GitReceive => {
                let svc = match step.action {
                    Action::Controller => Service::Controller,
                    Action::Router => Service::Router,
                    Action::GitReceive => Service::GitReceive,
                    _ => Service::LogAggregator,
                };
                let params = Params {
                    instances: step.param_u64("instances").map(|n| n as usize),
                    image: step.param_str("image").map(str::to_string),
                    domain: step.param_str("domain").map(str::to_string),
                };
                self.platform(svc, params).await
            }
            Action::Inception => self.inception().await,
            Action::Scheduler => {
                let n = step.param_u64("instances").unwrap_or(2) as usize;
                let image = step
                    .param_str("image")
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("flynn/host:{}", env!("CARGO_PKG_VERSION")));
                self.scheduler(n, &image).await
            }
        }
    }

    /// Notes a finished step in etcd (once etcd runs); best effort: the record is
    /// what an operator reads (`/flynn/bootstrap`), the steps check the real state
    /// themselves.
    async fn record(&mut self, step: &Step) {
        let Some(etcd) = &self.etcd else { return };
        let mut rec = discovery::cluster::bootstrap_record(etcd)
            .await
            .unwrap_or_default();
        if !rec.done.contains(&step.id) {
            rec.done.push(step.id.clone());
        }
        rec.hosts = self.hosts.iter().map(|h| h.addr.to_string()).collect();
        rec.updated_at = Some(chrono::Utc::now());
        if let Err(e) = discovery::cluster::put_bootstrap_record(etcd, &rec).await {
            tracing::warn!(error = %e, "recording the bootstrap's progress");
        }
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "cluster {} of {} hosts ({}), etcd at {}",
            self.cluster_id.as_deref().unwrap_or("?"),
            self.hosts.len(),
            addrs(&self.hosts.iter().map(|h| h.addr).collect::<Vec<_>>()),
            self.etcd_urls.join(",")
        );
        if let Some(pin) = &self.cluster_pin {
            s.push_str(&format!(
                "\nthe hosts' APIs are HTTPS under the cluster's CA: flynn-host --tls-pin {pin} --host https://{}:{}",
                self.hosts.first().map_or_else(|| "HOST".to_string(), |h| h.addr.to_string()),
                self.port
            ));
        }
        // Last: the line a user copies.
        if let Some(line) = self
            .controller
            .as_ref()
            .and_then(|c| c["cluster_add"].as_str())
        {
            s.push_str(&format!("\nadd it to the flynn CLI with:\n  {line}"));
        }
        s
    }
}

/// The hosts to blame when two clocks are more than `max_ms` apart (each reading
/// taken at one instant): those more than half of it from the median of all. A host
/// set far off is the one named (measured against each other host, every host would
/// have been), and with two hosts, where no majority says which is right, both are.
/// The spread decides whether anything is wrong, so hosts within the bound of each
/// other pass as before; when it is over the bound, its extremes cannot both be
/// within half of it from the median, so someone is always named.
fn skewed(clocks: &[(Ipv4Addr, i64)], max_ms: i64) -> Vec<PreflightFailure> {
    let mut sorted: Vec<i64> = clocks.iter().map(|(_, t)| *t).collect();
    sorted.sort_unstable();
    let (Some(first), Some(last)) = (sorted.first(), sorted.last()) else {
        return Vec::new();
    };
    if last - first <= max_ms {
        return Vec::new();
    }
    let n = sorted.len();
    // Of an even count, the middle of the two middle readings.
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        sorted[n / 2 - 1] + (sorted[n / 2] - sorted[n / 2 - 1]) / 2
    };
    clocks
        .iter()
        .filter_map(|(host, t)| {
            let off = (t - median).abs();
            (2 * off > max_ms).then_some(PreflightFailure::Skew {
                host: *host,
                off_ms: off,
                max_ms,
            })
        })
        .collect()
}

impl Run {
    pub fn new(
        peers: Vec<Ipv4Addr>,
        port: u16,
        token: String,
        min_hosts: Option<usize>,
        timeout: Duration,
    ) -> Run {
        Run {
            peers,
            port,
            token,
            min_hosts,
            timeout,
            hosts: Vec::new(),
            cluster_id: None,
            etcd_urls: Vec::new(),
            etcd: None,
            controller: None,
            cluster_pin: None,
            etcd_tls: None,
            cluster_ca: None,
        }
    }

    /// The cluster's CA with its key, read once from the first host (`GET
    /// /cluster/tls`, over HTTPS verified against the cluster's CA).
    pub(crate) async fn cluster_ca(&mut self) -> Result<flynn_tls::Ca, StepError> {
        if let Some(ca) = &self.cluster_ca {
            return Ok(ca.clone());
        }
        #[derive(Deserialize)]
        struct CaPair {
            ca_cert: String,
            ca_key: String,
        }
        let h = &self.hosts[0];
        let pair: CaPair = call(&h.client, Method::GET, "/cluster/tls", None)
            .await
            .map_err(on(h.addr, "reading the cluster's CA"))?;
        let ca = flynn_tls::Ca::from_pem(&pair.ca_cert, &pair.ca_key)
            .map_err(|e| StepError::Tls(format!("the CA host {} gave: {e}", h.addr)))?;
        self.cluster_ca = Some(ca.clone());
        Ok(ca)
    }

    /// A client certificate for etcd (which requires one of the cluster's CA),
    /// issued by this run for itself, for a day.
    async fn etcd_tls(&mut self) -> Result<discovery::EtcdTls, StepError> {
        if let Some(t) = &self.etcd_tls {
            return Ok(t.clone());
        }
        let ca = self.cluster_ca().await?;
        let cert = ca
            .issue(
                "flynn bootstrap",
                &["localhost".to_string()],
                Duration::from_secs(24 * 3600),
            )
            .map_err(|e| StepError::Tls(format!("issuing etcd's client certificate: {e}")))?;
        let tls = discovery::EtcdTls {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert.chain_pem,
            key_pem: cert.key_pem,
        };
        self.etcd_tls = Some(tls.clone());
        Ok(tls)
    }

    /// A client of a host's API over HTTPS, verifying its certificate against `pin`.
    fn client_for(&self, addr: Ipv4Addr, pin: &str) -> Result<Client, StepError> {
        let url = format!("https://{addr}:{}", self.port);
        Client::from_options_tls(
            Some(&url),
            Some(&self.token),
            &flynn_client::TlsOptions::pinned(pin),
        )
        .map_err(|e| StepError::Address(url, format!("{e:#}")))
    }

    /// The first contact with a host: its pin, verified by the token's proof
    /// (`flynn_client::first_contact`), before the token is ever sent to it.
    /// `Ok(Err(reason))`: not reached yet, worth waiting for.
    async fn first_contact(&self, addr: Ipv4Addr) -> Result<Result<String, String>, StepError> {
        use flynn_client::FirstContactFailure as F;
        let authority = format!("{addr}:{}", self.port);
        let nonce = random_id()?;
        let asked = tokio::time::timeout(
            CALL_TIMEOUT,
            flynn_client::first_contact(&authority, &self.token, &nonce),
        )
        .await;
        match asked {
            Ok(Ok(pin)) => Ok(Ok(pin)),
            Ok(Err(F::Unreachable(e))) => Ok(Err(e)),
            Ok(Err(F::Token(_))) => Err(StepError::Token {
                host: addr,
                source: CallError::Token,
            }),
            Ok(Err(F::Untrusted(reason))) => Err(StepError::Untrusted { host: addr, reason }),
            Err(_) => Ok(Err(CallError::Timeout(CALL_TIMEOUT.as_secs()).to_string())),
        }
    }

    /// The pin of the cluster's CA: the tls step's, or the first host's (a
    /// manifest without that step, on hosts given the cluster's CA before).
    pub(crate) async fn cluster_pin(&mut self) -> Result<String, StepError> {
        if let Some(pin) = &self.cluster_pin {
            return Ok(pin.clone());
        }
        let h = &self.hosts[0];
        let info: TlsCa = call(&h.client, Method::GET, "/cluster/tls/ca", None)
            .await
            .map_err(on(h.addr, "reading its TLS CA"))?;
        self.cluster_pin = Some(info.pin.clone());
        Ok(info.pin)
    }

    /// One CA for the cluster: the CA of the first host (in address order) that
    /// holds the cluster's already (a re-run, a host added), else the first
    /// host's own, which becomes the cluster's. Every host that lacks it gets it
    /// (`PUT /cluster/tls`: the host re-issues its certificate under it), and
    /// from then on every call verifies the hosts against it.
    async fn tls(&mut self) -> Result<Outcome, StepError> {
        let mut infos = Vec::new();
        for h in &self.hosts {
            let info: TlsCa = call(&h.client, Method::GET, "/cluster/tls/ca", None)
                .await
                .map_err(on(h.addr, "reading its TLS CA"))?;
            infos.push(info);
        }
        let cluster_cas: Vec<(Ipv4Addr, &str)> = self
            .hosts
            .iter()
            .zip(&infos)
            .filter(|(_, i)| i.cluster)
            .map(|(h, i)| (h.addr, i.pin.as_str()))
            .collect();
        if cluster_cas.iter().any(|(_, p)| *p != cluster_cas[0].1) {
            return Err(StepError::TwoCas(
                cluster_cas
                    .iter()
                    .map(|(a, p)| (*a, p.to_string()))
                    .collect(),
            ));
        }
        let source = infos.iter().position(|i| i.cluster).unwrap_or(0);
        let pin = infos[source].pin.clone();
        let mut installed = Vec::new();
        if !infos.iter().all(|i| i.cluster && i.pin == pin) {
            let s = &self.hosts[source];
            let ca: Value = call(&s.client, Method::GET, "/cluster/tls", None)
                .await
                .map_err(on(s.addr, "reading its CA"))?;
            for (h, i) in self.hosts.iter().zip(&infos) {
                if i.cluster && i.pin == pin {
                    continue;
                }
                let _: Value = call(&h.client, Method::PUT, "/cluster/tls", Some(&ca))
                    .await
                    .map_err(on(h.addr, "installing the cluster's CA"))?;
                installed.push(h.addr);
            }
        }
        for i in 0..self.hosts.len() {
            self.hosts[i].client = self.client_for(self.hosts[i].addr, &pin)?;
        }
        self.cluster_pin = Some(pin.clone());
        let data = json!({
            "pin": pin,
            "installed": installed,
            "summary": if installed.is_empty() {
                format!("every host has the cluster's CA, pin {pin}")
            } else {
                format!("the cluster's CA (pin {pin}) given to {}", addrs(&installed))
            },
        });
        Ok(if installed.is_empty() {
            Outcome::Skipped(data)
        } else {
            Outcome::Done(data)
        })
    }

    async fn online(&mut self) -> Result<Outcome, StepError> {
        let want = self.min_hosts.unwrap_or(self.peers.len());
        let deadline = Instant::now() + self.timeout;
        let mut found: BTreeMap<Ipv4Addr, Peer> = BTreeMap::new();
        let mut last_error: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        loop {
            for addr in &self.peers {
                if found.contains_key(addr) {
                    continue;
                }
                let pin = match self.first_contact(*addr).await? {
                    Ok(pin) => pin,
                    Err(e) => {
                        last_error.insert(*addr, e);
                        continue;
                    }
                };
                let client = self.client_for(*addr, &pin)?;
                match call::<HostStatus>(&client, Method::GET, "/host/status", None).await {
                    Ok(status) => {
                        found.insert(
                            *addr,
                            Peer {
                                addr: *addr,
                                id: status.id,
                                client,
                            },
                        );
                    }
                    // A wrong token will not heal by waiting: say so at once.
                    Err(source @ CallError::Token) => {
                        return Err(StepError::Token {
                            host: *addr,
                            source,
                        });
                    }
                    Err(e) => {
                        last_error.insert(*addr, e.to_string());
                    }
                }
            }
            if found.len() >= want {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StepError::Missing {
                    answered: found.len(),
                    total: self.peers.len(),
                    secs: self.timeout.as_secs(),
                    missing: self
                        .peers
                        .iter()
                        .filter(|a| !found.contains_key(a))
                        .map(|a| MissingHost {
                            host: *a,
                            last_error: last_error.get(a).cloned(),
                        })
                        .collect(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.hosts = found.into_values().collect();
        let hosts: Vec<Value> = self
            .hosts
            .iter()
            .map(|h| json!({"address": h.addr, "id": h.id}))
            .collect();
        // Nothing to bring up when every host is in one cluster already.
        let ms = self.memberships().await?;
        if let Some(id) = self.known_cluster(&ms)?
            && ms.iter().all(|m| m.joined)
        {
            self.cluster_id = Some(id.clone());
            return Ok(Outcome::Skipped(json!({
                "hosts": hosts,
                "summary": format!("{} hosts answer, all in cluster {id}", self.hosts.len()),
            })));
        }
        Ok(Outcome::Done(json!({
            "hosts": hosts,
            "summary": format!("{} hosts answer", self.hosts.len()),
        })))
    }

    async fn memberships(&self) -> Result<Vec<Membership>, StepError> {
        let mut out = Vec::new();
        for h in &self.hosts {
            out.push(
                call(&h.client, Method::GET, "/cluster", None)
                    .await
                    .map_err(on(h.addr, "reading its membership"))?,
            );
        }
        Ok(out)
    }

    /// The cluster the hosts already belong to, if any; an error if they disagree.
    fn known_cluster(&self, ms: &[Membership]) -> Result<Option<String>, StepError> {
        let ids: Vec<(Ipv4Addr, String)> = self
            .hosts
            .iter()
            .zip(ms)
            .filter_map(|(h, m)| m.cluster_id.clone().map(|id| (h.addr, id)))
            .collect();
        match ids.first() {
            None => Ok(None),
            Some((_, first)) if ids.iter().all(|(_, id)| id == first) => Ok(Some(first.clone())),
            Some(_) => Err(StepError::Clusters(ids)),
        }
    }

    /// Whether the hosts can make a cluster. A re-run re-checks what may have
    /// changed since (a host added, a firewall rule, a clock): the checks of every
    /// host, the clocks, and the probes of every pair whose receiving end is not yet
    /// in the cluster; a host already in it holds UDP 4789 with its overlay (it proved
    /// the port when it joined) and is probed over TCP only. Skipped only when every
    /// host is in the cluster.
    async fn preflight(&mut self) -> Result<Outcome, StepError> {
        let ms = self.memberships().await?;
        let known = self.known_cluster(&ms)?;
        if let Some(id) = &known
            && ms.iter().all(|m| m.joined)
        {
            return Ok(Outcome::Skipped(json!({
                "summary": format!("every host is already in cluster {id}"),
            })));
        }
        let mut failures = Vec::new();
        let mut times = Vec::new();
        for h in &self.hosts {
            let sent = Instant::now();
            let p: Preflight = call(&h.client, Method::GET, "/host/preflight", None)
                .await
                .map_err(on(h.addr, "running its checks"))?;
            // The host read its clock about half a round trip before we got it.
            let rtt = sent.elapsed().as_millis() as i64;
            times.push((h.addr, p.time_ms + rtt / 2, Instant::now()));
            for c in p.checks.into_iter().filter(|c| !c.ok) {
                failures.push(PreflightFailure::Check {
                    host: h.addr,
                    name: c.name,
                    detail: c.detail,
                    fix: c.fix,
                });
            }
        }
        // Each host's clock brought to one instant (the hosts were read one after
        // the other), then compared with every other's.
        let end = Instant::now();
        let at_end: Vec<(Ipv4Addr, i64)> = times
            .iter()
            .map(|(a, t, read)| (*a, t + end.duration_since(*read).as_millis() as i64))
            .collect();
        failures.extend(skewed(&at_end, MAX_SKEW_MS));
        let mut pairs = 0;
        for b in 0..self.hosts.len() {
            for a in 0..self.hosts.len() {
                if a == b || (ms[a].joined && ms[b].joined) {
                    continue;
                }
                pairs += 1;
                failures.extend(self.probe(a, b, !ms[b].joined).await?);
            }
        }
        if !failures.is_empty() {
            return Err(StepError::Preflight(failures));
        }
        Ok(Outcome::Done(json!({
            "summary": format!("{} hosts ready, {pairs} host pairs reach each other on TCP {} and UDP {VXLAN_PORT}", self.hosts.len(), self.port),
            "pairs": pairs,
        })))
    }

    /// Host `a` reaches host `b`: TCP to its API port, and (with `udp`) datagrams to
    /// its overlay port, which `b` listens for with a nonce and reports.
    async fn probe(
        &self,
        a: usize,
        b: usize,
        udp: bool,
    ) -> Result<Vec<PreflightFailure>, StepError> {
        let (ha, hb) = (&self.hosts[a], &self.hosts[b]);
        let nonce = format!("bootstrap-{}", random_id()?);
        let mut failures = Vec::new();
        let listening = if udp {
            match self.listen(hb, &nonce).await? {
                Ok(()) => true,
                Err(f) => {
                    failures.push(f);
                    false
                }
            }
        } else {
            false
        };
        let send = json!({"address": hb.addr, "tcp_port": self.port, "udp_port": VXLAN_PORT, "nonce": nonce});
        let sent: ProbeSent = call(&ha.client, Method::POST, "/host/probe/send", Some(&send))
            .await
            .map_err(on(ha.addr, "probing another host"))?;
        if !sent.tcp_ok {
            failures.push(PreflightFailure::Tcp {
                from: ha.addr,
                to: hb.addr,
                port: self.port,
                error: sent.tcp_error.unwrap_or_else(|| "?".into()),
            });
        }
        if !listening {
            return Ok(failures);
        }
        let path = format!("/host/probe/listen/{nonce}");
        let deadline = Instant::now() + Duration::from_millis(PROBE_LISTEN_MS);
        loop {
            let h: ProbeHeard = call(&hb.client, Method::GET, &path, None)
                .await
                .map_err(on(hb.addr, "reading its probe"))?;
            if h.received {
                return Ok(failures);
            }
            if !h.listening || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        failures.push(PreflightFailure::Udp {
            from: ha.addr,
            to: hb.addr,
            port: VXLAN_PORT,
        });
        // The listener holds the port until its time-out: wait it out, so the next
        // probe of this host can listen.
        for _ in 0..40 {
            let h: Option<ProbeHeard> = call(&hb.client, Method::GET, &path, None).await.ok();
            if !h.is_some_and(|h| h.listening) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(failures)
    }

    /// `b` listens on the overlay's UDP port for `nonce`. The port may be held for a
    /// moment by the listener of a run that was killed mid-probe (it ends at its
    /// time-out): that is waited out; anything holding it longer is a failure.
    async fn listen(
        &self,
        hb: &Peer,
        nonce: &str,
    ) -> Result<Result<(), PreflightFailure>, StepError> {
        let listen = json!({"port": VXLAN_PORT, "nonce": nonce, "timeout_ms": PROBE_LISTEN_MS});
        let deadline = Instant::now() + Duration::from_millis(PROBE_LISTEN_MS + 2000);
        loop {
            match call_empty(
                &hb.client,
                Method::POST,
                "/host/probe/listen",
                Some(&listen),
            )
            .await
            {
                Ok(()) => return Ok(Ok(())),
                Err(CallError::Status {
                    status: 409,
                    message,
                }) => {
                    if Instant::now() >= deadline {
                        return Ok(Err(PreflightFailure::Probe {
                            host: hb.addr,
                            reason: format!(
                                "{message}: free UDP port {VXLAN_PORT} on it (`ss -ulpn sport = :{VXLAN_PORT}` shows who holds it)"
                            ),
                        }));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(on(hb.addr, "listening for a UDP probe")(e)),
            }
        }
    }

    /// The etcd members: the hosts with the lowest addresses (`hosts` is in address
    /// order), so every run picks the same ones.
    fn members(&self, wanted: Option<usize>) -> Vec<Ipv4Addr> {
        self.hosts
            .iter()
            .take(member_count(self.hosts.len(), wanted))
            .map(|h| h.addr)
            .collect()
    }

    fn host(&self, addr: Ipv4Addr) -> Option<(usize, &Peer)> {
        self.hosts.iter().enumerate().find(|(_, h)| h.addr == addr)
    }

    async fn etcd_step(&mut self, wanted: Option<usize>) -> Result<Outcome, StepError> {
        let ms = self.memberships().await?;
        // Made once, by the first run; a re-run finds it on the hosts it reached.
        let cluster_id = match self.known_cluster(&ms)? {
            Some(id) => id,
            None => random_id()?,
        };
        self.cluster_id = Some(cluster_id.clone());
        let members = self.members(wanted);
        let list: Vec<Value> = members
            .iter()
            .map(|addr| {
                json!({
                    "name": format!("m-{}", addr.to_string().replace('.', "-")),
                    "peer_url": format!("https://{addr}:2380"),
                    "client_url": format!("https://{addr}:2379"),
                })
            })
            .collect();
        self.etcd_urls = members
            .iter()
            .map(|a| format!("https://{a}:2379"))
            .collect();
        let mut changed = false;
        for (addr, entry) in members.iter().zip(&list) {
            let Some((_, m)) = self.host(*addr) else {
                continue;
            };
            let req = json!({"cluster_id": cluster_id, "name": entry["name"], "members": list});
            // Asked even when the host records this membership: the agent makes sure
            // its job exists and runs (a run killed mid-step may have left it without).
            let r: Changed = call(&m.client, Method::PUT, "/cluster/etcd", Some(&req))
                .await
                .map_err(on(*addr, "running its etcd member"))?;
            changed |= r.changed;
        }
        let etcd = self.wait_etcd().await?;
        let record = discovery::cluster::ensure(
            &etcd,
            &discovery::cluster::ClusterRecord {
                id: cluster_id.clone(),
                created_at: chrono::Utc::now(),
                hosts: self.hosts.iter().map(|h| h.addr.to_string()).collect(),
            },
        )
        .await?;
        if record.id != cluster_id {
            return Err(StepError::OtherCluster {
                urls: self.etcd_urls.join(","),
                found: record.id,
                ours: cluster_id,
            });
        }
        self.etcd = Some(etcd);
        let data = json!({
            "cluster_id": cluster_id,
            "members": list,
            "summary": format!("{} member(s) on {}, cluster {cluster_id}", members.len(), addrs(&members)),
        });
        Ok(if changed {
            Outcome::Done(data)
        } else {
            Outcome::Skipped(data)
        })
    }

    /// Waits until every member answers (a client of all of them then never lands on
    /// one still starting), then connects to all.
    async fn wait_etcd(&mut self) -> Result<discovery::Etcd, StepError> {
        let tls = self.etcd_tls().await?;
        let tls = Some(&tls);
        let deadline = Instant::now() + self.timeout;
        loop {
            let mut silent = Vec::new();
            for u in &self.etcd_urls {
                let ok = match discovery::Etcd::connect_tls(
                    std::slice::from_ref(u),
                    Duration::from_secs(2),
                    tls,
                )
                .await
                {
                    Ok(e) => e.ping().await.is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    silent.push(u.clone());
                }
            }
            // The client the steps use: its time-out is each request's. Every member
            // answered just now, so a long one only waits out a slow etcd, never a
            // dead one: under QEMU TCG on busy cores, reads took 2-3.5 s, and the 2 s
            // this had made six bootstrap runs in a row fail on a healthy cluster
            // (term unchanged) and wait 30 s each.
            if silent.is_empty()
                && let Ok(e) =
                    discovery::Etcd::connect_tls(&self.etcd_urls, CALL_TIMEOUT, tls).await
                && e.ping().await.is_ok()
            {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                return Err(StepError::EtcdUnhealthy {
                    secs: self.timeout.as_secs(),
                    silent,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The etcd client URLs when the etcd step was not run in this process (a
    /// manifest that starts later): the same members it would choose.
    pub(crate) fn host_addrs(&self) -> Vec<Ipv4Addr> {
        self.hosts.iter().map(|h| h.addr).collect()
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The hosts (addresses) whose image store has no image named `image`
    /// (`NAME:TAG` as the agents list it, with or without a registry in front); a
    /// host that does not answer counts as lacking it.
    pub(crate) async fn hosts_lacking(&self, image: &str) -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct Listed {
            names: Vec<String>,
        }
        let mut lacking = Vec::new();
        for h in &self.hosts {
            let held = match call::<Vec<Listed>>(&h.client, Method::GET, "/images", None).await {
                Ok(images) => images.iter().any(|i| {
                    i.names
                        .iter()
                        .any(|n| n == image || n.ends_with(&format!("/{image}")))
                }),
                Err(_) => false,
            };
            if !held {
                lacking.push(h.addr.to_string());
            }
        }
        lacking
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn etcd_urls(&self) -> &[String] {
        &self.etcd_urls
    }

    pub(crate) fn set_controller(&mut self, data: Value) {
        self.controller = Some(data);
    }

    /// A client of the cluster's etcd, connected once (a manifest may start after the
    /// etcd step: then to the members that step would have chosen).
    pub(crate) async fn cluster_etcd(&mut self) -> Result<discovery::Etcd, StepError> {
        if let Some(e) = &self.etcd {
            return Ok(e.clone());
        }
        self.ensure_etcd_urls();
        let e = self.wait_etcd().await?;
        self.etcd = Some(e.clone());
        Ok(e)
    }

    fn ensure_etcd_urls(&mut self) {
        if self.etcd_urls.is_empty() {
            self.etcd_urls = self
                .members(None)
                .iter()
                .map(|a| format!("https://{a}:2379"))
                .collect();
        }
    }

    /// The scheduler: `n` jobs `flynn-scheduler` on the hosts with the lowest addresses
    /// (one per host), on the host network; then waits for a leader.
    async fn scheduler(&mut self, n: usize, image: &str) -> Result<Outcome, StepError> {
        self.ensure_etcd_urls();
        let pin = self.cluster_pin().await?;
        let mut started = 0;
        let on_hosts: Vec<Ipv4Addr> = self.hosts.iter().take(n.max(1)).map(|h| h.addr).collect();
        for h in self.hosts.iter().take(n.max(1)) {
            match call::<Value>(
                &h.client,
                Method::GET,
                &format!("/jobs/{SCHEDULER_JOB}"),
                None,
            )
            .await
            {
                Ok(_) => continue,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(on(h.addr, "looking for its scheduler")(e)),
            }
            let req = json!({
                "image": image,
                "name": SCHEDULER_JOB,
                "cmd": ["scheduler", "--listen", format!("{}:{SCHEDULER_PORT}", h.addr)],
                "env": [
                format!("FLYNN_ETCD={}", self.etcd_urls.join(",")),
                format!("FLYNN_TOKEN={}", self.token),
                // The agents it calls are verified against the cluster's CA.
                format!("FLYNN_TLS_PIN={pin}"),
            ],
                "network": "host",
                "restart": {"policy": "always"},
                "labels": {"flynn.platform": "scheduler"},
            });
            call::<Value>(&h.client, Method::POST, "/jobs", Some(&req))
                .await
                .map_err(on(h.addr, "starting the scheduler"))?;
            started += 1;
        }
        let deadline = Instant::now() + self.timeout;
        let leader = loop {
            match call::<Leader>(
                &self.hosts[0].client,
                Method::GET,
                "/discovery/services/flynn-scheduler/leader",
                None,
            )
            .await
            {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => {
                    return Err(StepError::NoLeader {
                        secs: self.timeout.as_secs(),
                        reason: e.to_string(),
                        hosts: on_hosts,
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        let data = json!({"leader": leader.addr, "summary": format!("leader at {}", leader.addr)});
        Ok(if started > 0 {
            Outcome::Done(data)
        } else {
            Outcome::Skipped(data)
        })
    }

    async fn join(&mut self) -> Result<Outcome, StepError> {
        let ms = self.memberships().await?;
        let Some(cluster_id) = self.cluster_id.clone().or(self.known_cluster(&ms)?) else {
            return Err(StepError::NoCluster);
        };
        self.ensure_etcd_urls();
        let mut joined_now = 0;
        for (h, m) in self.hosts.iter().zip(&ms) {
            if m.joined && m.cluster_id.as_deref() == Some(cluster_id.as_str()) {
                continue;
            }
            let req = json!({"cluster_id": cluster_id, "etcd": self.etcd_urls});
            call::<Changed>(&h.client, Method::PUT, "/cluster/join", Some(&req))
                .await
                .map_err(on(h.addr, "joining"))?;
            joined_now += 1;
        }
        // Every host is in the membership (its lease and record are up).
        let deadline = Instant::now() + self.timeout;
        loop {
            let listed: Result<Vec<HostRecord>, CallError> =
                call(&self.hosts[0].client, Method::GET, "/cluster/hosts", None).await;
            let missing: Vec<String> = self
                .hosts
                .iter()
                .filter(|h| {
                    listed
                        .as_ref()
                        .map_or(true, |l| !l.iter().any(|r| r.id == h.id))
                })
                .map(|h| format!("{} ({})", h.addr, h.id))
                .collect();
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StepError::NotJoined {
                    secs: self.timeout.as_secs(),
                    missing,
                    reason: listed.err().map_or_else(
                        || "see their daemon logs and `flynn-host status` there".into(),
                        |e| e.to_string(),
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if self.etcd.is_none() {
            let tls = self.etcd_tls().await?;
            self.etcd = discovery::Etcd::connect_tls(&self.etcd_urls, CALL_TIMEOUT, Some(&tls))
                .await
                .ok();
        }
        let data = json!({"summary": format!("{} hosts in cluster {cluster_id}", self.hosts.len()), "joined": joined_now});
        Ok(if joined_now > 0 {
            Outcome::Done(data)
        } else {
            Outcome::Skipped(data)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(clocks: &[(u8, i64)]) -> Vec<(u8, i64)> {
        let clocks: Vec<(Ipv4Addr, i64)> = clocks
            .iter()
            .map(|(h, t)| (Ipv4Addr::new(10, 0, 0, *h), *t))
            .collect();
        skewed(&clocks, MAX_SKEW_MS)
            .into_iter()
            .map(|f| match f {
                PreflightFailure::Skew { host, off_ms, .. } => (host.octets()[3], off_ms),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_host_whose_clock_is_far_off_is_the_one_named() {
        let t = 1_796_000_000_000;
        // One host an hour ahead of two that agree: it alone is named.
        assert_eq!(
            named(&[(1, t), (2, t + 300), (3, t + 3_600_000)]),
            vec![(3, 3_599_700)]
        );
        // An hour behind, among five.
        assert_eq!(
            named(&[(1, t), (2, t - 3_600_000), (3, t + 10), (4, t - 10), (5, t)]),
            vec![(2, 3_600_000)]
        );
        // Within the bound of each other: nothing, even 1.5 s from the median.
        assert!(named(&[(1, t), (2, t), (3, t + 1500)]).is_empty());
        // Two hosts 10 s apart: no majority says which is right; both are named.
        assert_eq!(
            named(&[(1, t), (2, t + 10_000)]),
            vec![(1, 5000), (2, 5000)]
        );
        assert!(named(&[(1, t)]).is_empty());
    }

    #[test]
    fn etcd_has_one_three_or_five_members_never_more_than_hosts() {
        let counts: Vec<usize> = (1..=8).map(|h| member_count(h, None)).collect();
        assert_eq!(counts, [1, 1, 3, 3, 5, 5, 5, 5]);
        assert_eq!(member_count(4, Some(5)), 3, "five asked, four hosts");
        assert_eq!(member_count(2, Some(3)), 1);
        assert_eq!(member_count(9, Some(1)), 1);
        assert_eq!(member_count(9, Some(3)), 3);
    }
}
