//! The controller's routes. Errors are JSON `{"error": "..."}` that say what is wrong
//! and what to send instead.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use discovery::apps::{App, Process, Release};
use discovery::routes::{Route, RouteKind};
use discovery::{DiscoveryError, Etcd};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::DeserializeOwned;

const MAX_BODY: usize = 1 << 20;

pub struct Controller {
    etcd: Etcd,
    key: String,
    domain: String,
    /// The token the log aggregators want (`crate::logs`).
    pub(crate) logagg_token: Option<String>,
}

#[derive(Debug)]
enum Error {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
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

impl From<DiscoveryError> for Error {
    fn from(e: DiscoveryError) -> Error {
        match e {
            DiscoveryError::InvalidName { .. } => Error::BadRequest(e.to_string()),
            _ => Error::Unavailable(e.to_string()),
        }
    }
}

type Resp = Response<crate::logs::Body>;

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

impl Error {
    fn response(self) -> Resp {
        let (status, msg) = match self {
            Error::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Error::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "give the controller key: Authorization: Bearer KEY (flynn cluster add prints how)"
                    .into(),
            ),
            Error::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Error::Conflict(m) => (StatusCode::CONFLICT, m),
            Error::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        };
        json(status, &serde_json::json!({ "error": msg }))
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvChange {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    unset: Vec<String>,
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
            etcd,
            key,
            domain,
            logagg_token: None,
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
                let svc = hyper::service::service_fn(move |req| {
                    let c = c.clone();
                    async move {
                        Ok::<_, Infallible>(c.route(req).await.unwrap_or_else(Error::response))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Resp, Error> {
        let path = req.uri().path().trim_matches('/').to_string();
        let segs: Vec<&str> = path.split('/').collect();
        let method = req.method().clone();
        if segs == ["health"] {
            return Ok(json(StatusCode::OK, &serde_json::json!({"ok": true})));
        }
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(self.key.as_str()) {
            return Err(Error::Unauthorized);
        }
        match (segs.as_slice(), method) {
            (["apps"], Method::GET) => Ok(json(
                StatusCode::OK,
                &discovery::apps::list(&self.etcd).await?,
            )),
            (["apps"], Method::POST) => self.create_app(body(req).await?).await,
            (["apps", app], Method::GET) => self.app_info(app).await,
            (["apps", app], Method::DELETE) => {
                self.app(app).await?;
                discovery::apps::delete(&self.etcd, app).await?;
                Ok(json(StatusCode::OK, &serde_json::json!({"deleted": app})))
            }
            (["apps", app, "releases"], Method::GET) => {
                self.app(app).await?;
                Ok(json(
                    StatusCode::OK,
                    &discovery::apps::releases(&self.etcd, app).await?,
                ))
            }
            (["apps", app, "releases"], Method::POST) => {
                let r: NewRelease = body(req).await?;
                self.deploy(app, r.image, r.env, r.processes).await
            }
            (["apps", app, "env"], Method::POST) => {
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
                self.deploy(app, current.image, env, current.processes)
                    .await
            }
            (["apps", app, "rollback"], Method::POST) => self.rollback(app).await,
            (["apps", app, "log"], Method::GET) => {
                self.app(app).await?;
                let token = self.logagg_token.clone();
                crate::logs::serve(self.etcd.clone(), token, app, req.uri().query())
                    .await
                    .map_err(Error::from)
            }
            (["apps", app, "routes"], Method::GET) => {
                self.app(app).await?;
                let routes: Vec<Route> = discovery::routes::list(&self.etcd)
                    .await?
                    .into_iter()
                    .filter(|r| r.app.as_deref() == Some(*app))
                    .collect();
                Ok(json(StatusCode::OK, &routes))
            }
            (["apps", app, "routes"], Method::POST) => {
                self.app(app).await?;
                let r: NewRoute = body(req).await?;
                let ty = r.process_type.unwrap_or_else(|| "web".into());
                let route = Route {
                    id: format!("{app}-{}", new_id()),
                    kind: r.kind,
                    service: format!("{app}-{ty}"),
                    domain: r.domain,
                    path: r.path,
                    sticky: r.sticky,
                    port: r.port,
                    app: Some(app.to_string()),
                    certificate: None,
                };
                route.validate()?;
                discovery::routes::put(&self.etcd, &route).await?;
                Ok(json(StatusCode::CREATED, &route))
            }
            (["apps", app, "routes", id], Method::DELETE) => {
                let owned = discovery::routes::list(&self.etcd)
                    .await?
                    .into_iter()
                    .any(|r| r.id == *id && r.app.as_deref() == Some(*app));
                if !owned {
                    return Err(Error::NotFound(format!("app {app} has no route {id}")));
                }
                discovery::routes::delete(&self.etcd, id).await?;
                Ok(json(StatusCode::OK, &serde_json::json!({"deleted": id})))
            }
            (_, m) => Err(Error::NotFound(format!("no such endpoint: {m} /{path}"))),
        }
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
        };
        if !discovery::apps::deploy(&self.etcd, &app, &release).await? {
            return Err(Error::Conflict(format!(
                "app {name} changed while this release was made (another deploy?): try again"
            )));
        }
        Ok(json(StatusCode::CREATED, &release))
    }

    async fn rollback(&self, name: &str) -> Result<Resp, Error> {
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
        Ok(json(StatusCode::OK, &rel))
    }
}
