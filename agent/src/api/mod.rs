//! The HTTP API (JSON over HTTP/1.1, hyper). One route table; every route is
//! described in `agent/openapi.json`, and the OpenAPI test holds responses to it.

mod attach;
mod auth;
mod cluster;
mod conns;
mod error;
mod events;
mod exec;
mod grid;
mod host;
mod images;
mod jobs;
pub mod limits;
mod logs;
mod pull;
pub mod tail;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
pub use conns::Connections;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

pub use error::ApiError;

use crate::jobs::JobManager;
use crate::model::Event;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Largest JSON request body accepted.
const MAX_JSON_BODY: usize = 1 << 20;

/// What handlers share.
pub struct ApiState {
    pub jobs: Arc<JobManager>,
    pub images: Arc<image::ImageStore>,
    /// Pulls from registries (shared, so concurrent pulls fetch each blob once).
    pub puller: Arc<image::Puller>,
    pub events: broadcast::Sender<Event>,
    /// The cluster this host is in (its grid, once joined).
    pub membership: Arc<crate::grid::membership::Membership>,
    /// Where uploaded archives are received before import.
    pub tmp_dir: PathBuf,
    pub state_dir: PathBuf,
    pub host_id: String,
    /// Required (as a bearer token) on TCP; the unix socket admits root only instead.
    pub token: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The UDP probe listeners of `/host/probe/listen`.
    pub probes: Arc<crate::preflight::Probes>,
    /// Turns true when this daemon hands over to a new one: streams end (clients
    /// reconnect to the successor) so that the connections can drain.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// HTTPS for connections off the host's loopback (None: plain everywhere,
    /// `--plain-http`).
    pub tls: Option<Arc<tls::ApiTls>>,
}

impl ApiState {
    /// The grid, when the host is in a cluster.
    pub fn grid(&self) -> Option<&Arc<crate::grid::Grid>> {
        self.membership.grid()
    }

    /// Resolves once this daemon is handing over; for streaming handlers.
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.draining.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug)]
enum Peer {
    Tcp(SocketAddr),
    /// A root process on the local unix socket (others are turned away at accept).
    LocalRoot,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::LocalRoot => write!(f, "unix:root"),
        }
    }
}

/// Every route the server answers, as (method, OpenAPI path template).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/version"),
    ("GET", "/host/status"),
    ("GET", "/host/log"),
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/{id}"),
    ("DELETE", "/jobs/{id}"),
    ("POST", "/jobs/{id}/start"),
    ("POST", "/jobs/{id}/stop"),
    ("POST", "/jobs/{id}/kill"),
    ("GET", "/jobs/{id}/wait"),
    ("GET", "/jobs/{id}/logs"),
    ("POST", "/jobs/{id}/attach"),
    ("POST", "/jobs/{id}/resize"),
    ("POST", "/jobs/{id}/exec"),
    ("GET", "/jobs/{id}/exec/{exec_id}"),
    ("GET", "/jobs/{id}/exec/{exec_id}/wait"),
    ("POST", "/jobs/{id}/exec/{exec_id}/attach"),
    ("POST", "/jobs/{id}/exec/{exec_id}/resize"),
    ("GET", "/events"),
    ("GET", "/images"),
    ("POST", "/images/import"),
    ("POST", "/images/pull"),
    ("POST", "/images/fetch"),
    ("GET", "/images/{ref}/archive"),
    ("DELETE", "/images/{ref}"),
    ("GET", "/cluster/hosts"),
    ("GET", "/discovery/services"),
    ("GET", "/discovery/services/{name}"),
    ("GET", "/discovery/services/{name}/leader"),
    ("GET", "/discovery/services/{name}/watch"),
    ("GET", "/cluster"),
    ("PUT", "/cluster/etcd"),
    ("PUT", "/cluster/join"),
    ("GET", "/host/preflight"),
    ("POST", "/host/probe/listen"),
    ("GET", "/host/probe/listen/{nonce}"),
    ("POST", "/host/probe/send"),
    ("GET", "/cluster/tls/ca"),
    ("GET", "/cluster/tls"),
    ("PUT", "/cluster/tls"),
    ("POST", "/cluster/tls/issue"),
];

/// Serves the API on TCP (every request needs the token) and on the local unix
/// socket (root only, no token) until `stop` turns true. Returns the open
/// connections, for a daemon handing over to drain.
pub async fn serve(
    tcp: TcpListener,
    unix: UnixListener,
    state: Arc<ApiState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Connections {
    let connections = Connections::default();
    let (tcp_limit, unix_limit) = (
        limits::ConnLimit::new(limits::MAX_TCP),
        limits::ConnLimit::new(limits::MAX_UNIX),
    );
    loop {
        tokio::select! {
            changed = stop.changed() => {
                let stopping = changed.is_err() || *stop.borrow();
                if stopping {
                    return connections;
                }
            }
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match tcp_limit.admit() {
                        Some(place) => tls::serve_tcp(stream, Peer::Tcp(peer), state.clone(), connections.track(), place),
                        None => { tokio::spawn(limits::refuse(stream, limits::MAX_TCP)); }
                    }
                }
                Err(e) => accept_failed(e).await,
            },
            accepted = unix.accept() => match accepted {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(cred) if cred.uid() == 0 => match unix_limit.admit() {
                        Some(place) => spawn_connection(stream, Peer::LocalRoot, state.clone(), connections.track(), place),
                        None => { tokio::spawn(limits::refuse(stream, limits::MAX_UNIX)); }
                    },
                    Ok(cred) => {
                        tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a non-root client on the unix socket");
                    }
                    Err(e) => tracing::warn!(error = %e, "reading a unix client's credentials"),
                },
                Err(e) => accept_failed(e).await,
            },
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    // EMFILE and friends: back off a little instead of spinning.
    tracing::warn!(error = %e, "accepting a connection");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

fn spawn_connection<S>(
    stream: S,
    peer: Peer,
    state: Arc<ApiState>,
    mut tracked: conns::Tracked,
    place: limits::Admitted,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let place = Arc::new(place);
        let in_service = place.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            let in_flight = in_service.request();
            async move {
                let response = handle(state, req, peer).await;
                Ok::<_, Infallible>(limits::hold_until_sent(response, in_flight))
            }
        });
        let conn = limits::http1_builder()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = place.evicted() => {
                tracing::debug!(%peer, "closing an idle connection to make room for a new one");
                return;
            }
            _ = tracked.closing() => {
                // Finish the request in flight (if any), then close.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    });
}

async fn handle(state: Arc<ApiState>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    // The CA certificate is public: a client fetches it to compare its pin.
    let public = method == Method::GET && path == "/cluster/tls/ca";
    let authorized = match peer {
        Peer::LocalRoot => true,
        Peer::Tcp(_) => public || auth::has_token(&req, &state.token),
    };
    let response = if authorized {
        route(&state, req)
            .await
            .unwrap_or_else(|e| e.into_response())
    } else {
        auth::unauthorized(&state.state_dir)
    };
    tracing::debug!(%peer, %method, %path, status = response.status().as_u16(), elapsed = ?started.elapsed(), "request");
    response
}

async fn route(state: &Arc<ApiState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let decoded = path
        .trim_matches('/')
        .split('/')
        .map(decode_segment)
        .collect::<Result<Vec<String>, ApiError>>()?;
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (segments.as_slice(), method) {
        (["version"], Method::GET) => json(
            StatusCode::OK,
            &crate::model::Version {
                version: env!("CARGO_PKG_VERSION").to_string(),
                api_version: "1".to_string(),
            },
        ),
        (["host", "status"], Method::GET) => host::status(state),
        (["host", "log"], Method::GET) => host::log(&req).await,
        (["jobs"], Method::GET) => jobs::list(state, req).await,
        (["jobs"], Method::POST) => jobs::create(state, req).await,
        (["jobs", id], Method::GET) => jobs::inspect(state, id),
        (["jobs", id], Method::DELETE) => jobs::remove(state, id, req).await,
        (["jobs", id, "start"], Method::POST) => jobs::start(state, id).await,
        (["jobs", id, "stop"], Method::POST) => jobs::stop(state, id, req).await,
        (["jobs", id, "kill"], Method::POST) => jobs::kill(state, id, req).await,
        (["jobs", id, "wait"], Method::GET) => jobs::wait(state, id, req),
        (["jobs", id, "logs"], Method::GET) => logs::logs(state, id, req).await,
        (["jobs", id, "attach"], Method::POST) => exec::attach(state, id, req),
        (["jobs", id, "resize"], Method::POST) => exec::resize(state, id, None, req).await,
        (["jobs", id, "exec"], Method::POST) => exec::create(state, id, req).await,
        (["jobs", id, "exec", e], Method::GET) => exec::inspect(state, id, e),
        (["jobs", id, "exec", e, "wait"], Method::GET) => exec::wait(state, id, e).await,
        (["jobs", id, "exec", e, "attach"], Method::POST) => exec::attach_exec(state, id, e, req),
        (["jobs", id, "exec", e, "resize"], Method::POST) => {
            exec::resize(state, id, Some(e), req).await
        }
        (["events"], Method::GET) => events::events(state),
        (["images"], Method::GET) => images::list(state).await,
        (["images", "import"], Method::POST) => images::import(state, req).await,
        (["images", "pull"], Method::POST) => pull::pull(state, req).await,
        (["images", "fetch"], Method::POST) => images::fetch(state, req).await,
        (["images", name, "archive"], Method::GET) => images::archive(state, name).await,
        // `/images/import`, `/images/pull` and `/images/fetch` are routes of their own,
        // not images named so (as in the document, where concrete paths come before
        // templated ones).
        (["images", name], Method::DELETE) if !matches!(*name, "import" | "pull" | "fetch") => {
            images::remove(state, name).await
        }
        (["cluster", "hosts"], Method::GET) => grid::hosts(state).await,
        (["discovery", "services"], Method::GET) => grid::services(state).await,
        (["discovery", "services", name], Method::GET) => grid::service(state, name).await,
        (["discovery", "services", name, "leader"], Method::GET) => grid::leader(state, name).await,
        (["discovery", "services", name, "watch"], Method::GET) => grid::watch(state, name),
        (["cluster"], Method::GET) => cluster::info(state).await,
        (["cluster", "etcd"], Method::PUT) => cluster::etcd(state, req).await,
        (["cluster", "join"], Method::PUT) => cluster::join(state, req).await,
        (["host", "preflight"], Method::GET) => cluster::preflight(state).await,
        (["host", "probe", "listen"], Method::POST) => cluster::probe_listen(state, req).await,
        (["host", "probe", "listen", nonce], Method::GET) => cluster::probe_heard(state, nonce),
        (["host", "probe", "send"], Method::POST) => cluster::probe_send(req).await,
        (["cluster", "tls", "ca"], Method::GET) => cluster::tls_ca(state, &req),
        (["cluster", "tls"], Method::GET) => cluster::tls_export(state),
        (["cluster", "tls"], Method::PUT) => cluster::tls_install(state, req).await,
        (["cluster", "tls", "issue"], Method::POST) => cluster::tls_issue(state, req).await,
        (segments, _) => {
            let matching: Vec<&(&str, &str)> = ROUTES
                .iter()
                .filter(|(_, template)| template_matches(template, segments))
                .collect();
            // A concrete path hides a templated one that also matches it.
            let concrete = matching.iter().any(|(_, t)| !t.contains('{'));
            let allowed: Vec<&str> = matching
                .iter()
                .filter(|(_, t)| !concrete || !t.contains('{'))
                .map(|(method, _)| *method)
                .collect();
            if !allowed.is_empty() {
                // RFC 9110 §15.5.6: a 405 names the methods the resource has.
                let allow = allowed.join(", ");
                let mut response = ApiError::MethodNotAllowed(format!(
                    "{} is not allowed on {path} (use {allow})",
                    req.method()
                ))
                .into_response();
                if let Ok(value) = HeaderValue::from_str(&allow) {
                    response.headers_mut().insert(hyper::header::ALLOW, value);
                }
                Ok(response)
            } else {
                Err(ApiError::NotFound(format!("no such endpoint: {path}")))
            }
        }
    }
}

fn template_matches(template: &str, segments: &[&str]) -> bool {
    let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
    parts.len() == segments.len()
        && parts
            .iter()
            .zip(segments)
            .all(|(p, s)| p.starts_with('{') || p == s)
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Response<Body>, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(with_type(status, full(body), "application/json"))
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(Vec::new()));
    *response.status_mut() = status;
    response
}

fn full(data: Vec<u8>) -> Body {
    Full::new(Bytes::from(data))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn with_type(status: StatusCode, body: Body, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The sending side of a streamed response body.
#[derive(Clone)]
pub struct StreamTx(mpsc::Sender<Result<Bytes, std::io::Error>>);

impl StreamTx {
    /// Sends a chunk; Err means the client went away.
    pub async fn send(&self, data: Bytes) -> Result<(), ()> {
        self.0.send(Ok(data)).await.map_err(|_| ())
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.0.closed().await
    }

    /// Ends the response unfinished, so the client knows it was cut short (and
    /// resumes elsewhere) rather than complete.
    pub async fn abort(self) {
        let _ = self
            .0
            .send(Err(std::io::Error::other("the daemon is handing over")))
            .await;
    }
}

/// [`StreamTx`] for a blocking thread, as a `Write`: each write is one chunk.
pub struct BlockingStream(mpsc::Sender<Result<Bytes, std::io::Error>>);

impl StreamTx {
    pub fn into_blocking(self) -> BlockingStream {
        BlockingStream(self.0)
    }
}

impl BlockingStream {
    /// Ends the response unfinished (the client sees a broken body, not a short one).
    pub fn fail(self, e: std::io::Error) {
        let _ = self.0.blocking_send(Err(e));
    }
}

impl std::io::Write for BlockingStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A response whose body is whatever the returned sender sends; it ends when the
/// sender is dropped, or unfinished on [`StreamTx::abort`].
pub fn streaming(content_type: &'static str) -> (StreamTx, Response<Body>) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let stream = ReceiverStream::new(rx).map(|chunk| chunk.map(Frame::data));
    let body = BodyExt::boxed(StreamBody::new(stream));
    (StreamTx(tx), with_type(StatusCode::OK, body, content_type))
}

/// Reads and parses a JSON body, refusing bodies over `MAX_JSON_BODY`.
pub async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = read_body(req, MAX_JSON_BODY).await?;
    parse_json(&bytes)
}

/// Parses a request body. JSON (and the document's JSON Schema) has one number type:
/// `8080.0` is the integer 8080, as clients that hold every number as a float (and
/// schemathesis) send it. So integral floats are made integers before the typed parse;
/// a fraction where an integer is wanted is still refused.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bad =
        |e: serde_json::Error| ApiError::BadRequest(format!("invalid JSON request body: {e}"));
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(bad)?;
    integral_floats_to_integers(&mut value);
    serde_json::from_value(value).map_err(bad)
}

fn integral_floats_to_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
            {
                // Exact conversions only: within ±2^63 (and 2^64 unsigned) every integral
                // f64 is an integer the cast keeps.
                if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
                    *n = serde_json::Number::from(f as i64);
                } else if (0.0..1.844_674_407_370_955_2e19).contains(&f) {
                    *n = serde_json::Number::from(f as u64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = req.into_body();
    let mut data = Vec::new();
    while let Some(chunk) =
        limits::next_chunk(&mut body, limits::BODY_IDLE, "the request body").await?
    {
        if data.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(format!(
                "request body is larger than {limit} bytes"
            )));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(data))
}

/// The query string as (key, value) pairs.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn of<B>(req: &Request<B>) -> Query {
        Query(
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for `key` (a repeated parameter).
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn flag(&self, key: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(default),
            // The document says boolean: exactly true or false, nothing taken for one.
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(ApiError::BadRequest(format!(
                "invalid value {other:?} for {key}: use true or false"
            ))),
        }
    }

    pub fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<T>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "invalid value {v:?} for {key}: expected a number"
                    ))
                })
            })
            .transpose()
    }
}

/// Percent-decodes one path segment (image references carry '/' and ':').
pub fn decode_segment(segment: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::BadRequest(format!("path segment {segment:?} is not valid UTF-8")))
}
