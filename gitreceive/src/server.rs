//! The receiver's HTTP server: git's smart HTTP behind the controller key, the
//! build jobs' exchange, slugs by digest, and the peers' copies.
//!
//! | route                                   | who                 | auth             |
//! |-----------------------------------------|---------------------|------------------|
//! | `GET /health`                           | discovery's check   | none             |
//! | `GET|POST /<app>.git/...`               | git clients         | controller key   |
//! | `GET /builds/<id>/{source.tar,cache.tgz}` | the build job     | the id           |
//! | `PUT|POST /builds/<id>/{slug.tgz,cache.tgz,meta}` | the build job | the id     |
//! | `GET /slugs/<hex>.tgz`                  | slug runners        | the digest       |
//! | `PUT /slugs/<hex>.tgz`, `/repos/<app>`, `/caches/<app>` | peers | cluster token |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::store::{self, Store};
use crate::{GitReceiveArgs, PORT};

pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Largest upload taken (a slug, a cache, a peer's repository).
const MAX_UPLOAD: u64 = 1 << 30;

pub(crate) struct Server {
    args: GitReceiveArgs,
    store: Store,
    hook: PathBuf,
}

impl Server {
    pub(crate) fn new(args: GitReceiveArgs, store: Store) -> Server {
        let hook = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/flynn-host"));
        Server { args, store, hook }
    }
}

pub(crate) async fn serve(listener: tokio::net::TcpListener, server: Arc<Server>) {
    loop {
        let (s, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = s.local_addr().ok();
        let server = server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.route(req, peer, local).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(msg)).map_err(|e| match e {}).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed()))
}

fn unauthorized() -> Response<Body> {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "give the controller key as the password (flynn create adds a remote that does)",
    );
    r.headers_mut().insert(
        "www-authenticate",
        hyper::header::HeaderValue::from_static("Basic realm=\"flynn\""),
    );
    r
}

impl Server {
    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Response<Body> {
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let method = req.method().clone();
        match (&method, parts.as_slice()) {
            (&Method::GET, ["health"]) => text(StatusCode::OK, "ok"),
            (_, [repo, ..]) if repo.ends_with(".git") => self.git(req, peer, local).await,
            (&Method::GET, ["builds", id, file])
                if store::valid_build_id(id) && store::BUILD_INPUTS.contains(file) =>
            {
                let dir = self.store.build_dir(id);
                send_file(dir.join(file)).await
            }
            (&Method::PUT | &Method::POST, ["builds", id, file])
                if store::valid_build_id(id) && store::BUILD_OUTPUTS.contains(file) =>
            {
                let dir = self.store.build_dir(id);
                if !dir.is_dir() {
                    return text(StatusCode::NOT_FOUND, format!("no build {id}"));
                }
                self.receive(req, dir.join(file)).await
            }
            (&Method::GET, ["slugs", name]) => match name.strip_suffix(".tgz") {
                Some(hex) if store::valid_slug(hex) => send_file(self.store.slug(hex)).await,
                _ => text(StatusCode::NOT_FOUND, "slugs are /slugs/<sha256 hex>.tgz"),
            },
            (&Method::PUT, ["slugs", _] | ["repos", _] | ["caches", _]) => {
                if !self.peer_authorized(&req) {
                    return text(StatusCode::UNAUTHORIZED, "copies need the cluster token");
                }
                self.put_copy(req, &parts).await
            }
            _ => text(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
        }
    }

    fn peer_authorized(&self, req: &Request<Incoming>) -> bool {
        req.headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            == Some(self.args.token.as_str())
    }

    /// The controller key as an HTTP basic password (any user name), or as a bearer.
    fn git_user(&self, req: &Request<Incoming>) -> Option<String> {
        let value = req
            .headers()
            .get(hyper::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        if let Some(b) = value.strip_prefix("Bearer ") {
            return (b == self.args.key).then(|| "flynn".to_string());
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.strip_prefix("Basic ")?.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        (pass == self.args.key).then(|| user.to_string())
    }

    async fn git(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Response<Body> {
        let Some(user) = self.git_user(&req) else {
            return unauthorized();
        };
        let path = req.uri().path().to_string();
        let Some((repo, _)) = path.trim_start_matches('/').split_once('/') else {
            return text(StatusCode::NOT_FOUND, "repositories are /<app>.git");
        };
        let app = repo.trim_end_matches(".git").to_string();
        if !store::valid_app(&app) {
            return text(StatusCode::NOT_FOUND, format!("{app:?} is not an app name"));
        }
        if !matches!(*req.method(), Method::GET | Method::POST) {
            return text(StatusCode::METHOD_NOT_ALLOWED, "git uses GET and POST");
        }
        match crate::hook::app_exists(&self.args.controller, &self.args.key, &app).await {
            Ok(true) => {}
            Ok(false) => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("no app {app}: create it with `flynn create {app}`"),
                );
            }
            Err(e) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the controller did not answer: {e}"),
                );
            }
        }
        let (store, app2, hook) = (self.store.clone(), app.clone(), self.hook.clone());
        match tokio::task::spawn_blocking(move || store.ensure_repo(&app2, &hook)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("making the repository of {app}: {e}"),
                );
            }
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
        let ip = self
            .args
            .advertise
            .or_else(|| local.map(|l| l.ip()))
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "127.0.0.1".to_string());
        let port = local.map(|l| l.port()).unwrap_or(PORT);
        let mut env = vec![
            ("FLYNN_APP".to_string(), app.clone()),
            (
                "FLYNN_GITRECEIVE_DATA".to_string(),
                self.store.root().display().to_string(),
            ),
            (
                "FLYNN_GITRECEIVE_URL".to_string(),
                format!("http://{ip}:{port}"),
            ),
            ("FLYNN_GITRECEIVE_PORT".to_string(), port.to_string()),
            (
                "FLYNN_CONTROLLER_URL".to_string(),
                self.args.controller.clone(),
            ),
            ("FLYNN_CONTROLLER_KEY".to_string(), self.args.key.clone()),
            ("FLYNN_TOKEN".to_string(), self.args.token.clone()),
            ("FLYNN_HOST".to_string(), self.args.agent.clone()),
            (
                "FLYNN_SLUGBUILDER_IMAGE".to_string(),
                self.args.image.clone(),
            ),
        ];
        // The hook reaches the controller over HTTPS, verified by the cluster's
        // pin (the CGI's environment is cleared: pass it on).
        for name in [flynn_client::TLS_PIN_ENV, flynn_client::TLS_CA_ENV] {
            if let Ok(v) = std::env::var(name) {
                env.push((name.to_string(), v));
            }
        }
        let repos = self.store.repos();
        let cgi = crate::cgi::Cgi {
            backend: &self.args.git_http_backend,
            project_root: &repos,
            path_info: path.clone(),
            remote_user: user,
            remote_addr: peer.ip().to_string(),
            env,
        };
        match crate::cgi::run(cgi, req).await {
            Ok(r) => r,
            Err(e) => text(StatusCode::BAD_GATEWAY, e.to_string()),
        }
    }

    /// A build job's output, written aside and renamed into the build directory.
    async fn receive(&self, req: Request<Incoming>, to: PathBuf) -> Response<Body> {
        let tmp = match self.store.tmp_file("upload") {
            Ok(t) => t,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        match write_body(req.into_body(), &tmp).await {
            Ok(()) => {}
            Err((status, msg)) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return text(status, msg);
            }
        }
        match tokio::fs::rename(&tmp, &to).await {
            Ok(()) => text(StatusCode::OK, "stored"),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    async fn put_copy(&self, req: Request<Incoming>, parts: &[&str]) -> Response<Body> {
        let bytes = match read_body(req.into_body()).await {
            Ok(b) => b,
            Err((status, msg)) => return text(status, msg),
        };
        let store = self.store.clone();
        let hook = self.hook.clone();
        let (kind, name) = (parts[0].to_string(), parts[1].to_string());
        let result = tokio::task::spawn_blocking(move || -> Result<(), (StatusCode, String)> {
            let io = |e: std::io::Error| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            match kind.as_str() {
                "slugs" => {
                    let Some(hex) = name.strip_suffix(".tgz").filter(|h| store::valid_slug(h))
                    else {
                        return Err((StatusCode::BAD_REQUEST, "slugs are <sha256 hex>.tgz".into()));
                    };
                    if !store.put_slug(hex, &bytes).map_err(io)? {
                        return Err((
                            StatusCode::BAD_REQUEST,
                            format!("the bytes sent are not sha256:{hex}"),
                        ));
                    }
                    Ok(())
                }
                _ if !store::valid_app(&name) => Err((
                    StatusCode::BAD_REQUEST,
                    format!("{name:?} is not an app name"),
                )),
                "repos" => store
                    .put_repo(&name, &bytes, &hook)
                    .map_err(|e| (StatusCode::BAD_REQUEST, format!("the repository sent: {e}"))),
                _ => flynn_fsutil::write_atomic(
                    &store.cache(&name),
                    &bytes,
                    flynn_fsutil::Durability::Durable,
                )
                .map_err(io),
            }
        })
        .await;
        match result {
            Ok(Ok(())) => text(StatusCode::OK, "stored"),
            Ok(Err((status, msg))) => text(status, msg),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

async fn send_file(path: PathBuf) -> Response<Body> {
    match tokio::fs::read(&path).await {
        Ok(bytes) => Response::builder()
            .header("content-type", "application/octet-stream")
            .body(
                Full::new(Bytes::from(bytes))
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            text(StatusCode::NOT_FOUND, "not here")
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn read_body(mut body: Incoming) -> Result<Vec<u8>, (StatusCode, String)> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        if let Some(d) = frame.data_ref() {
            out.extend_from_slice(d);
            if out.len() as u64 > MAX_UPLOAD {
                return Err((StatusCode::PAYLOAD_TOO_LARGE, "more than 1 GiB".into()));
            }
        }
    }
    Ok(out)
}

async fn write_body(mut body: Incoming, to: &std::path::Path) -> Result<(), (StatusCode, String)> {
    use tokio::io::AsyncWriteExt;
    let io = |e: std::io::Error| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut f = tokio::fs::File::create(to).await.map_err(io)?;
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        if let Some(d) = frame.data_ref() {
            n += d.len() as u64;
            if n > MAX_UPLOAD {
                return Err((StatusCode::PAYLOAD_TOO_LARGE, "more than 1 GiB".into()));
            }
            f.write_all(d).await.map_err(io)?;
        }
    }
    f.flush().await.map_err(io)?;
    Ok(())
}
