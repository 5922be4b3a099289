//! The controller's routes. Errors are JSON `{"error": "..."}` that say what is wrong
//! and what to send instead.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use discovery::apps::{App, Process, Release};
use discovery::deploys::{Deploy, DeployState};
use discovery::routes::{Route, RouteCertificate, RouteKind, TcpPortRange};
use discovery::{DiscoveryError, Etcd};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::deploy::{Deployer, JobsError};
use crate::routes::{self, Lookup, Op};

const MAX_BODY: usize = 1 << 20;
/// How long a deploy's new jobs have to get healthy, unless the app (meta
/// `deploy_timeout`) or the request (`?timeout=SECS`) says otherwise.
pub const DEFAULT_DEPLOY_TIMEOUT: u64 = 60;

pub struct Controller {
    etcd: Etcd,
    key: String,
    domain: String,
    /// The token the log aggregators want (`crate::logs`).
    pub(crate) logagg_token: Option<String>,
    deployer: Deployer,
    deploy_timeout: u64,
    /// HTTPS off loopback (`crate::tls`); plain everywhere without it.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The CA certificate (PEM) that issued the controller's, for `GET /ca-cert`.
    ca_pem: Option<String>,
    /// What the aggregators' TLS is verified against (`crate::logs`).
    pub(crate) logs_trust: flynn_client::TlsOptions,
    /// The ports TCP routes may take.
    tcp_ports: TcpPortRange,
}

#[derive(Debug)]
pub(crate) enum Error {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
    /// The path is served, with other methods: `allow` lists them.
    MethodNotAllowed {
        allow: String,
        msg: String,
    },
    Conflict(String),
    Unavailable(String),
}

impl From<crate::logs::LogError> for Error {
    fn from(e: crate::logs::LogError) -> Error {
        match e {
            crate::logs::LogError::BadQuery(m) => Error::BadRequest(m),
            crate::logs::LogError::Unavailable(_) => Error::Unavailable(e.to_string()),
        }
    }
}

impl From<JobsError> for Error {
    fn from(e: JobsError) -> Error {
        match e {
            JobsError::Discovery(d) => d.into(),
            other => Error::Unavailable(other.to_string()),
        }
    }
}

impl From<DiscoveryError> for Error {
    fn from(e: DiscoveryError) -> Error {
        match e {
            DiscoveryError::InvalidName { .. } => Error::BadRequest(e.to_string()),
            _ => Error::Unavailable(e.to_string()),
        }
    }
}

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;
pub(crate) type Resp = Response<Body>;

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

impl Error {
    fn response(self) -> Resp {
        let mut allow = None;
        let (status, msg) = match self {
            Error::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Error::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "give the controller key: Authorization: Bearer KEY (flynn cluster add prints how)"
                    .into(),
            ),
            Error::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Error::MethodNotAllowed { allow: a, msg } => {
                allow = Some(a);
                (StatusCode::METHOD_NOT_ALLOWED, msg)
            }
            Error::Conflict(m) => (StatusCode::CONFLICT, m),
            Error::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        };
        let mut r = json(status, &serde_json::json!({ "error": msg }));
        if let Some(v) = allow.and_then(|a| hyper::header::HeaderValue::from_str(&a).ok()) {
            r.headers_mut().insert(hyper::header::ALLOW, v);
        }
        r
    }
}

async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Error> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| Error::BadRequest(format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::BadRequest(format!("the body is not valid JSON for this request: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApp {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRelease {
    image: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    processes: BTreeMap<String, Process>,
    /// Where it came from (a git push: commit, buildpack, slug).
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvChange {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    unset: Vec<String>,
}

/// `PUT /apps/{app}/formation`: jobs wanted per process type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scale {
    processes: BTreeMap<String, u32>,
}

/// `POST /apps/{app}/jobs`: a one-off job of the current release.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OneOff {
    /// The command (the image's when empty).
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    stdin: bool,
    /// Kept after it exits (not removed), for a detached job.
    #[serde(default)]
    keep: bool,
    /// Another image than the release's (a build job: the git receiver's), run
    /// with `env` only; the app needs no release for it.
    #[serde(default)]
    image: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRoute {
    kind: RouteKind,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    sticky: bool,
    #[serde(default)]
    port: Option<u16>,
    /// The process type served (default `web`).
    #[serde(default, rename = "type")]
    process_type: Option<String>,
    /// HTTP: the route's own certificate and key (PEM), served by the routers on
    /// 443 for its domain instead of the cluster's.
    #[serde(default)]
    certificate: Option<RouteCertificate>,
}

fn new_id() -> String {
    let now = chrono::Utc::now();
    format!(
        "{}{:08x}",
        now.format("%Y%m%d%H%M%S%3f"),
        std::process::id() ^ now.timestamp_subsec_nanos()
    )
}

impl Controller {
    pub fn new(etcd: Etcd, key: String, domain: String) -> Controller {
        Controller {
            deployer: Deployer {
                etcd: etcd.clone(),
                token: None,
            },
            etcd,
            key,
            domain,
            logagg_token: None,
            deploy_timeout: DEFAULT_DEPLOY_TIMEOUT,
            tls: None,
            ca_pem: None,
            logs_trust: flynn_client::TlsOptions::default(),
            tcp_ports: TcpPortRange::DEFAULT,
        }
    }

    /// The ports TCP routes may take (default [`TcpPortRange::DEFAULT`]).
    pub fn with_tcp_ports(mut self, range: TcpPortRange) -> Controller {
        self.tcp_ports = range;
        self
    }

    /// With the cluster's API token: deploys are followed through the scheduler,
    /// jobs are listed and run. Without it, only the records are kept.
    pub fn with_cluster(mut self, token: Option<String>, deploy_timeout: u64) -> Controller {
        self.deployer.token = token;
        self.deploy_timeout = deploy_timeout;
        self
    }

    /// Serves HTTPS with `acceptor` to connections off loopback.
    pub fn with_tls(mut self, acceptor: Option<tokio_rustls::TlsAcceptor>) -> Controller {
        self.tls = acceptor;
        self
    }

    /// Serves `ca_pem` (the CA of the controller's certificate) on `GET /ca-cert`.
    pub fn with_ca_pem(mut self, ca_pem: Option<String>) -> Controller {
        self.ca_pem = ca_pem;
        self
    }

    /// Verifies the log aggregators' TLS against `trust` (a pin or a CA file).
    pub fn with_logs_trust(mut self, trust: flynn_client::TlsOptions) -> Controller {
        self.logs_trust = trust;
        self
    }

    /// Takes up the deploys a controller that went away left pending.
    pub async fn resume_deploys(&self) {
        match discovery::deploys::pending(&self.etcd).await {
            Ok(list) => {
                for d in list {
                    self.deployer.follow(d);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading pending deploys"),
        }
    }

    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let (s, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let c = self.clone();
            tokio::spawn(async move {
                let accepted = crate::tls::accept(s, c.tls.as_ref()).await;
                let svc = hyper::service::service_fn(move |req| {
                    let c = c.clone();
                    async move {
                        Ok::<_, Infallible>(c.route(req).await.unwrap_or_else(Error::response))
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match accepted {
                    crate::tls::Accepted::Plain(s) => {
                        http.serve_connection(TokioIo::new(s), svc)
                            .with_upgrades()
                            .await
                    }
                    crate::tls::Accepted::Tls(s) => {
                        http.serve_connection(TokioIo::new(s), svc)
                            .with_upgrades()
                            .await
                    }
                    crate::tls::Accepted::Gone => return,
                };
            });
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Resp, Error> {
        let path = req.uri().path().to_string();
        if !routes::is_public(&path) {
            let given = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(self.key.as_str()) {
                return Err(Error::Unauthorized);
            }
        }
        let (route, params) = match routes::lookup(req.method().as_str(), &path) {
            Lookup::Found(route, params) => (route, params),
            Lookup::WrongMethod(allowed) => {
                return Err(Error::MethodNotAllowed {
                    allow: allowed.join(", "),
                    msg: format!(
                        "{} is not served on {path}: use {}",
                        req.method(),
                        allowed.join(" or ")
                    ),
                });
            }
            Lookup::NotFound => {
                return Err(Error::NotFound(format!(
                    "no such endpoint: {} {path} (controller/openapi.json lists them)",
                    req.method()
                )));
            }
        };
        let query = routes::query(route, req.uri().query()).map_err(Error::BadRequest)?;
        let timeout = match query.iter().find(|(k, _)| k == "timeout") {
            Some((_, t)) => Some(t.parse::<u64>().map_err(|_| {
                Error::BadRequest(format!("timeout={t}: give the seconds a deploy may take"))
            })?),
            None => None,
        };
        let app = params.get("app");
        match route.op {
            Op::Health => Ok(json(StatusCode::OK, &serde_json::json!({"ok": true}))),
            Op::CaCert => match &self.ca_pem {
                Some(pem) => {
                    let mut r = Response::new(full(pem.clone()));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/x-pem-file"),
                    );
                    Ok(r)
                }
                None => Err(Error::NotFound(
                    "this controller was given no certificate (it serves plain HTTP): there is no CA to trust"
                        .into(),
                )),
            },
            Op::ListApps => Ok(json(
                StatusCode::OK,
                &discovery::apps::list(&self.etcd).await?,
            )),
            Op::CreateApp => self.create_app(body(req).await?).await,
            Op::AppInfo => self.app_info(app).await,
            Op::DeleteApp => {
                self.app(app).await?;
                discovery::apps::delete(&self.etcd, app).await?;
                Ok(json(StatusCode::OK, &serde_json::json!({"deleted": app})))
            }
            Op::ListReleases => {
                self.app(app).await?;
                Ok(json(
                    StatusCode::OK,
                    &discovery::apps::releases(&self.etcd, app).await?,
                ))
            }
            Op::AddRelease => {
                let r: NewRelease = body(req).await?;
                // Records only (no cluster): nothing to ask for the digest.
                let image = match &self.deployer.token {
                    Some(token) if !r.image.trim().is_empty() => {
                        self.app(app).await?;
                        crate::pin::pin(&self.etcd, token, &r.image).await?
                    }
                    _ => r.image,
                };
                self.deploy(app, image, r.env, r.processes, r.meta, timeout)
                    .await
            }
            Op::SetEnv => {
                let change: EnvChange = body(req).await?;
                let (_, current) = self.current(app).await?;
                let mut env = current.env.clone();
                for k in &change.unset {
                    env.remove(k);
                }
                for (k, v) in change.set {
                    if k.is_empty() || k.contains('=') {
                        return Err(Error::BadRequest(format!("{k:?} is not a variable name")));
                    }
                    env.insert(k, v);
                }
                self.deploy(
                    app,
                    current.image,
                    env,
                    current.processes,
                    current.meta.clone(),
                    timeout,
                )
                .await
            }
            Op::Rollback => self.rollback(app, timeout).await,
            Op::Log => {
                self.app(app).await?;
                let token = self.logagg_token.clone();
                let r = crate::logs::serve(
                    self.etcd.clone(),
                    token,
                    self.logs_trust.clone(),
                    app,
                    req.uri().query(),
                )
                .await?;
                Ok(r.map(|b| b.map_err(|never| match never {}).boxed()))
            }
            Op::ListDeploys => {
                self.app(app).await?;
                Ok(json(
                    StatusCode::OK,
                    &discovery::deploys::of_app(&self.etcd, app).await?,
                ))
            }
            Op::GetDeploy => {
                self.app(app).await?;
                let id = params.get("id");
                match discovery::deploys::get(&self.etcd, app, id).await? {
                    Some(d) => Ok(json(StatusCode::OK, &d)),
                    None => Err(Error::NotFound(format!(
                        "app {app} has no deploy {id} (GET /apps/{app}/deploys lists them)"
                    ))),
                }
            }
            Op::GetFormation => {
                self.app(app).await?;
                self.formation(app).await
            }
            Op::PutFormation => {
                let s: Scale = body(req).await?;
                self.scale(app, s).await
            }
            Op::ListJobs => {
                self.app(app).await?;
                let jobs: Vec<Value> = self
                    .deployer
                    .jobs(app)
                    .await?
                    .into_iter()
                    .map(|j| {
                        json!({
                            "id": j["id"], "type": j["process_type"], "host": j["host"],
                            "state": j["state"], "release": j["release"],
                            "healthy": j["healthy"], "created_at": j["created_at"],
                        })
                    })
                    .collect();
                Ok(json(StatusCode::OK, &jobs))
            }
            Op::RunJob => {
                let o: OneOff = body(req).await?;
                self.one_off(app, o).await
            }
            Op::ImportImage => {
                self.app(app).await?;
                let token = self.deployer.token.clone().ok_or(JobsError::NoToken)?;
                let imported = crate::import::import(&self.etcd, &token, req).await?;
                Ok(json(StatusCode::OK, &imported))
            }
            Op::Relay => {
                self.app(app).await?;
                let token = self.deployer.token.clone().ok_or(JobsError::NoToken)?;
                let to = crate::proxy::Relay {
                    app,
                    host: params.get("host"),
                    job: params.get("id"),
                    path: routes::agent_path(route, &params, req.uri().query()),
                };
                crate::proxy::job_route(&self.etcd, &token, req, to).await
            }
            Op::ListRoutes => {
                self.app(app).await?;
                let routes: Vec<Route> = discovery::routes::list(&self.etcd)
                    .await?
                    .into_iter()
                    .filter(|r| r.app.as_deref() == Some(app))
                    .map(|mut r| {
                        // A route's private key goes to the routers (through etcd),
                        // never back out of the API: a listing shows the chain only.
                        if let Some(c) = &mut r.certificate {
                            c.key.clear();
                        }
                        r
                    })
                    .collect();
                Ok(json(StatusCode::OK, &routes))
            }
            Op::AddRoute => {
                self.app(app).await?;
                let r: NewRoute = body(req).await?;
                let ty = r.process_type.unwrap_or_else(|| "web".into());
                let mut route = Route {
                    id: format!("{app}-{}", new_id()),
                    kind: r.kind,
                    service: format!("{app}-{ty}"),
                    domain: r.domain,
                    path: r.path,
                    sticky: r.sticky,
                    port: r.port,
                    app: Some(app.to_string()),
                    certificate: r.certificate,
                };
                self.check_new_route(&route).await?;
                discovery::routes::put(&self.etcd, &route).await?;
                // The key went to the routers; it never comes back out of the API.
                if let Some(c) = &mut route.certificate {
                    c.key.clear();
                }
                Ok(json(StatusCode::CREATED, &route))
            }
            Op::DeleteRoute => {
                let id = params.get("id");
                let owned = discovery::routes::list(&self.etcd)
                    .await?
                    .into_iter()
                    .any(|r| r.id == id && r.app.as_deref() == Some(app));
                if !owned {
                    return Err(Error::NotFound(format!("app {app} has no route {id}")));
                }
                discovery::routes::delete(&self.etcd, id).await?;
                Ok(json(StatusCode::OK, &serde_json::json!({"deleted": id})))
            }
        }
    }

    /// What a route added through the API must be beyond a valid record: a TCP
    /// port in the range and free, a certificate that serves the domain.
    async fn check_new_route(&self, route: &Route) -> Result<(), Error> {
        let range = self.tcp_ports;
        if route.kind == RouteKind::Tcp {
            let Some(port) = route.port else {
                return Err(Error::BadRequest(format!(
                    "a TCP route needs a port: give one in {range}"
                )));
            };
            if !range.contains(port) {
                return Err(Error::BadRequest(format!(
                    "port {port} is outside the TCP route ports {range}: give one in {range} (the controller's --tcp-route-ports)"
                )));
            }
        }
        route.validate()?;
        if let (Some(c), Some(domain)) = (&route.certificate, &route.domain) {
            flynn_tls::check_pair(&c.cert, &c.key, domain, std::time::SystemTime::now())
                .map_err(|e| Error::BadRequest(format!("the route's TLS certificate: {e}")))?;
        }
        if let Some(port) = route.port
            && let Some(taken) = discovery::routes::list(&self.etcd)
                .await?
                .into_iter()
                .find(|r| r.kind == RouteKind::Tcp && r.port == Some(port))
        {
            return Err(Error::Conflict(format!(
                "port {port} is taken by route {} of {}: pick another in {range}",
                taken.id,
                taken.app.as_deref().unwrap_or("the platform")
            )));
        }
        Ok(())
    }

    async fn app(&self, name: &str) -> Result<App, Error> {
        discovery::apps::check_app(name)?;
        discovery::apps::get(&self.etcd, name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no app named {name} (flynn apps lists them)")))
    }

    async fn current(&self, name: &str) -> Result<(App, Release), Error> {
        let app = self.app(name).await?;
        let id = app.release.clone().ok_or_else(|| {
            Error::Conflict(format!(
                "app {name} has no release yet: add one with flynn -a {name} release add IMAGE"
            ))
        })?;
        let rel = discovery::apps::release(&self.etcd, name, &id)
            .await?
            .ok_or_else(|| {
                Error::Unavailable(format!("release {id} of {name} is missing from etcd"))
            })?;
        Ok((app, rel))
    }

    async fn create_app(&self, req: NewApp) -> Result<Resp, Error> {
        let app = App {
            name: req.name.clone(),
            created_at: chrono::Utc::now(),
            release: None,
            previous_release: None,
            meta: BTreeMap::new(),
        };
        if !discovery::apps::create(&self.etcd, &app).await? {
            return Err(Error::Conflict(format!("an app named {} exists", req.name)));
        }
        let route = Route {
            id: format!("{}-default", app.name),
            kind: RouteKind::Http,
            service: format!("{}-web", app.name),
            domain: Some(format!("{}.{}", app.name, self.domain)),
            path: None,
            sticky: false,
            port: None,
            app: Some(app.name.clone()),
            certificate: None,
        };
        discovery::routes::put(&self.etcd, &route).await?;
        Ok(json(StatusCode::CREATED, &app))
    }

    async fn app_info(&self, name: &str) -> Result<Resp, Error> {
        let app = self.app(name).await?;
        let release = match &app.release {
            Some(id) => discovery::apps::release(&self.etcd, name, id).await?,
            None => None,
        };
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "app": app, "release": release }),
        ))
    }

    async fn deploy(
        &self,
        name: &str,
        image: String,
        env: BTreeMap<String, String>,
        processes: BTreeMap<String, Process>,
        meta: BTreeMap<String, String>,
        timeout: Option<u64>,
    ) -> Result<Resp, Error> {
        let app = self.app(name).await?;
        if image.trim().is_empty() {
            return Err(Error::BadRequest("a release needs an image".into()));
        }
        for ty in processes.keys() {
            discovery::schema::check_service(ty)
                .map_err(|e| Error::BadRequest(format!("process type: {e}")))?;
        }
        let release = Release {
            id: new_id(),
            app: name.to_string(),
            image,
            env,
            processes,
            created_at: chrono::Utc::now(),
            meta,
        };
        if !discovery::apps::deploy(&self.etcd, &app, &release).await? {
            return Err(Error::Conflict(format!(
                "app {name} changed while this release was made (another deploy?): try again"
            )));
        }
        let d = self.start_deploy(&app, &release, timeout).await?;
        Ok(json(StatusCode::CREATED, &with_deploy(&release, &d)))
    }

    /// The app now runs `release`: its formations follow, and the rollout is followed.
    async fn start_deploy(
        &self,
        app: &App,
        release: &Release,
        timeout: Option<u64>,
    ) -> Result<Deploy, Error> {
        let timeout_secs = timeout
            .or_else(|| app.meta.get("deploy_timeout").and_then(|t| t.parse().ok()))
            .unwrap_or(self.deploy_timeout);
        let d = Deploy {
            id: new_id(),
            app: app.name.clone(),
            release: release.id.clone(),
            previous: app.release.clone(),
            previous_previous: app.previous_release.clone(),
            state: DeployState::Pending,
            reason: None,
            timeout_secs,
            created_at: chrono::Utc::now(),
            finished_at: None,
        };
        discovery::deploys::put(&self.etcd, &d).await?;
        crate::deploy::write_formations(&self.etcd, release).await?;
        self.deployer.follow(d.clone());
        Ok(d)
    }

    async fn formation(&self, name: &str) -> Result<Resp, Error> {
        let list: Vec<Value> = discovery::formations::of_app(&self.etcd, name)
            .await?
            .iter()
            .map(|f| json!({"type": f.process_type, "count": f.count, "release": f.release}))
            .collect();
        Ok(json(StatusCode::OK, &list))
    }

    async fn scale(&self, name: &str, s: Scale) -> Result<Resp, Error> {
        let (_, release) = self.current(name).await?;
        for (ty, count) in &s.processes {
            let Some(p) = release.processes.get(ty) else {
                let have: Vec<&str> = release.processes.keys().map(String::as_str).collect();
                return Err(Error::BadRequest(format!(
                    "release {} of {name} has no process type {ty} (it has: {}): add one with flynn -a {name} release add IMAGE --process {ty}=COMMAND",
                    release.id,
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                )));
            };
            // The formation keeps the release it runs (a deploy may be under way).
            let mut f = discovery::formations::of_app(&self.etcd, name)
                .await?
                .into_iter()
                .find(|f| f.process_type == *ty)
                .unwrap_or_else(|| crate::deploy::formation(&release, ty, p, 0));
            f.count = *count;
            discovery::formations::put(&self.etcd, &f).await?;
        }
        self.formation(name).await
    }

    async fn one_off(&self, name: &str, o: OneOff) -> Result<Resp, Error> {
        let (image, mut env, labels) = match &o.image {
            Some(image) if !image.trim().is_empty() => {
                self.app(name).await?;
                (image.clone(), Vec::new(), json!({}))
            }
            Some(_) => return Err(Error::BadRequest("image: give an image name".into())),
            None => {
                let (_, release) = self.current(name).await?;
                let env: Vec<String> = release
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                (release.image, env, json!({"flynn.release": release.id}))
            }
        };
        for (k, v) in &o.env {
            if k.is_empty() || k.contains('=') {
                return Err(Error::BadRequest(format!("{k:?} is not a variable name")));
            }
            env.push(format!("{k}={v}"));
        }
        let mut req = json!({
            "image": image,
            "env": env,
            "tty": o.tty,
            "stdin": o.stdin,
            "auto_remove": !o.keep,
            "labels": labels,
        });
        if !o.cmd.is_empty() {
            req["cmd"] = json!(o.cmd);
        }
        let s = self.deployer.scheduler().await?;
        let placed: Value = s
            .call(
                Method::POST,
                "/jobs",
                Some(&json!({"app": name, "request": req})),
            )
            .await
            .map_err(|e| {
                Error::Unavailable(format!("the scheduler did not place the job: {e:#}"))
            })?;
        Ok(json(
            StatusCode::CREATED,
            &json!({"host_id": placed["host_id"], "job": placed["job"]}),
        ))
    }

    async fn rollback(&self, name: &str, timeout: Option<u64>) -> Result<Resp, Error> {
        let app = self.app(name).await?;
        let prev = app.previous_release.clone().ok_or_else(|| {
            Error::Conflict(format!("app {name} has no earlier release to roll back to"))
        })?;
        let rel = discovery::apps::release(&self.etcd, name, &prev)
            .await?
            .ok_or_else(|| {
                Error::Unavailable(format!("release {prev} of {name} is missing from etcd"))
            })?;
        if !discovery::apps::deploy(&self.etcd, &app, &rel).await? {
            return Err(Error::Conflict(format!(
                "app {name} changed meanwhile: try again"
            )));
        }
        let d = self.start_deploy(&app, &rel, timeout).await?;
        Ok(json(StatusCode::OK, &with_deploy(&rel, &d)))
    }
}

/// A release as the API answers it after a deploy: with the deploy to follow.
fn with_deploy(release: &Release, d: &Deploy) -> Value {
    let mut v = serde_json::to_value(release).unwrap_or_default();
    v["deploy"] = serde_json::to_value(d).unwrap_or_default();
    v
}
