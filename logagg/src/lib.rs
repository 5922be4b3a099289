//! The log aggregator (`flynn-host logaggregator`, two instances of the platform): the
//! agents ship every job's lines to every instance over TCP (`message.rs`: RFC 5424
//! in RFC 6587 octet-counted frames), each instance keeps the last lines of each app
//! (`buffer.rs`: bounded, each job's lines once, so a shipper that resends after a
//! break duplicates nothing) and serves them over HTTP, following as they come.
//! A new instance fills itself from a peer (`--peer`), so redeploying the aggregator
//! loses no line (Flynn lost them there).
//!
//! HTTP: `GET /health`, `GET /apps`, `GET /logs/{app}?lines=N&follow=true&type=T&job=J`
//! (NDJSON, one line object per line), `GET /snapshot` (NDJSON, every line: for peers),
//! `GET /cursors?host=H` (`{job: highest seq}` of that host's jobs: where its shipper
//! resumes, as Flynn's did). With a token, every route but `/health` and `/cursors`
//! wants `Authorization: Bearer TOKEN`: the shippers (agents) hold no aggregator
//! token, and cursors carry job ids and numbers, never a line.
//!
//! With `--tls-dir` (the platform directory the agent gives host-network jobs,
//! `FLYNN_TLS_DIR`) both ports are TLS only, with the host's certificate, and a
//! peer is verified against the CA file of that directory (`tls.rs`); the
//! instance says so in discovery ([`META_TLS`]) and shippers and readers verify
//! it against the cluster's CA.
//!
//! With `--etcd`, an instance registers itself in discovery (service
//! [`SERVICE`], its syslog address, the HTTP port in the metadata [`META_HTTP`]) on a
//! lease of its own, and without `--peer` fills itself from another instance it
//! finds there.

pub mod buffer;
pub mod message;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ClientConfig;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

pub use buffer::{Buffers, Filter};
pub use message::LogLine;
pub use tls::META_TLS;

/// The discovery service the instances register as (and shippers follow).
pub const SERVICE: &str = "flynn-logaggregator";
/// The instance metadata key that holds the HTTP API's port.
pub const META_HTTP: &str = "http";
/// The lease of an instance's registration: a killed instance leaves within it.
const LEASE_TTL: Duration = Duration::from_secs(5);

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, thiserror::Error)]
pub enum AggError {
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("filling from peer {peer}: {reason}")]
    Peer { peer: String, reason: String },
    #[error("the HTTP server's task ended: {0}")]
    Serving(String),
    #[error("TLS from {dir}: {source}")]
    Tls {
        dir: String,
        #[source]
        source: flynn_tls::TlsError,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct AggArgs {
    /// Where agents ship lines (syslog over TCP, octet-counted).
    #[arg(long, default_value = "0.0.0.0:5140")]
    pub syslog: SocketAddr,
    /// Where the HTTP API is served.
    #[arg(long, default_value = "0.0.0.0:5141")]
    pub http: SocketAddr,
    /// Another instance to fill the buffers from at start (http://HOST:PORT, or
    /// https://ADDRESS:PORT, verified against the CA of --tls-dir).
    #[arg(long)]
    pub peer: Option<String>,
    /// Lines kept per app.
    #[arg(long, default_value_t = buffer::DEFAULT_LINES_PER_APP)]
    pub lines_per_app: usize,
    /// The token readers must give (the cluster's API token).
    #[arg(long, env = "FLYNN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// etcd endpoints (http://HOST:PORT, comma-separated): find a peer there when
    /// --peer is not given, and register in discovery when there is an address to
    /// advertise (as a platform job, the agent registers it instead).
    #[arg(long, env = "FLYNN_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The address registered in discovery (default: the --syslog address, when it
    /// is not 0.0.0.0; with neither, this process does not register itself).
    #[arg(long)]
    pub advertise: Option<std::net::IpAddr>,
    /// Serve both ports over TLS only, with the certificate of this directory
    /// (`cert.pem`, `key.pem`, re-read every minute; `ca.pem` verifies peers).
    #[arg(long, env = "FLYNN_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
}

pub struct Aggregator {
    pub buffers: Buffers,
    token: Option<String>,
    /// Both ports' TLS, when served.
    tls: Option<TlsAcceptor>,
    /// What a peer's TLS is verified against.
    peer_tls: Option<Arc<ClientConfig>>,
}

impl Aggregator {
    pub fn new(lines_per_app: usize, token: Option<String>) -> Arc<Aggregator> {
        Arc::new(Aggregator {
            buffers: Buffers::new(lines_per_app),
            token,
            tls: None,
            peer_tls: None,
        })
    }

    /// As [`Aggregator::new`], serving TLS with `acceptor` and verifying peers
    /// with `peers`.
    pub fn with_tls(
        lines_per_app: usize,
        token: Option<String>,
        acceptor: TlsAcceptor,
        peers: Arc<ClientConfig>,
    ) -> Arc<Aggregator> {
        Arc::new(Aggregator {
            buffers: Buffers::new(lines_per_app),
            token,
            tls: Some(acceptor),
            peer_tls: Some(peers),
        })
    }

    /// The accepted connection, after the TLS handshake when TLS is served.
    async fn accepted(&self, s: tokio::net::TcpStream) -> Result<tls::Conn, String> {
        let _ = s.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(s)),
            Some(acceptor) => {
                match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(s)).await {
                    Ok(Ok(s)) => Ok(Box::new(s)),
                    Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                    Err(_) => Err("TLS handshake timed out".into()),
                }
            }
        }
    }

    /// Takes lines from shippers until the task is dropped.
    pub async fn serve_syslog(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((s, from)) => {
                    let agg = self.clone();
                    tokio::spawn(async move {
                        let s = match agg.accepted(s).await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(%from, error = %e, "refusing a shipper");
                                return;
                            }
                        };
                        if let Err(e) = agg.ingest(s).await {
                            tracing::warn!(%from, error = %e, "closing a shipper's connection");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a shipper");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn ingest(&self, mut s: impl AsyncRead + Unpin) -> Result<(), String> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            for frame in message::take_frames(&mut buf).map_err(|e| e.to_string())? {
                match LogLine::parse(&frame) {
                    Ok(line) => {
                        self.buffers.push(line);
                    }
                    // One bad message is skipped; the stream's framing is intact.
                    Err(e) => tracing::warn!(error = %e, "skipping a message"),
                }
            }
        }
    }

    /// Loads a peer's lines (those we have are skipped); a peer that does not
    /// answer within [`FILL_TIMEOUT`] is given up.
    pub async fn fill_from(&self, peer: &str) -> Result<usize, AggError> {
        tokio::time::timeout(FILL_TIMEOUT, self.fill_from_unbounded(peer))
            .await
            .map_err(|_| AggError::Peer {
                peer: peer.to_string(),
                reason: format!("no snapshot within {}s", FILL_TIMEOUT.as_secs()),
            })?
    }

    async fn fill_from_unbounded(&self, peer: &str) -> Result<usize, AggError> {
        let err = |reason: String| AggError::Peer {
            peer: peer.to_string(),
            reason,
        };
        let (https, rest) = match peer.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (
                false,
                peer.strip_prefix("http://")
                    .ok_or_else(|| err("give http://HOST:PORT or https://ADDRESS:PORT".into()))?,
            ),
        };
        let authority = rest.trim_end_matches('/').to_string();
        let addr: SocketAddr = tokio::net::lookup_host(&authority)
            .await
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("no address".into()))?;
        let tls = match (https, &self.peer_tls) {
            (false, _) => None,
            (true, Some(config)) => Some(config.clone()),
            (true, None) => {
                return Err(err("an https:// peer needs --tls-dir (its ca.pem)".into()));
            }
        };
        let stream = tls::connect(addr, tls, Duration::from_secs(5))
            .await
            .map_err(err)?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| err(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = Request::get("/snapshot").header("host", authority.as_str());
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| err(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| err(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(err(format!("it answered {}", resp.status())));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?
            .to_bytes();
        let mut n = 0;
        for l in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(line) = serde_json::from_slice::<LogLine>(l)
                && self.buffers.push(line)
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Serves the HTTP API until the task is dropped.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (s, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let agg = self.clone();
            tokio::spawn(async move {
                let s = match agg.accepted(s).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "refusing an HTTP client");
                        return;
                    }
                };
                let svc = hyper::service::service_fn(move |req| {
                    let agg = agg.clone();
                    async move { Ok::<_, Infallible>(agg.route(req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    }

    fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().trim_matches('/').to_string();
        if path == "health" {
            return text(StatusCode::OK, "ok\n");
        }
        if path == "cursors" {
            let host = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("host="))
                .unwrap_or("");
            return json_response(&serde_json::json!(self.buffers.cursors(host)));
        }
        if let Some(t) = &self.token {
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(t.as_str()) {
                return text(
                    StatusCode::UNAUTHORIZED,
                    "give the cluster's token: Authorization: Bearer TOKEN\n",
                );
            }
        }
        if req.method() != hyper::Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
        }
        let query: Vec<(String, String)> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
            })
            .collect();
        let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["apps"] => {
                let apps: Vec<serde_json::Value> = self
                    .buffers
                    .apps()
                    .into_iter()
                    .map(|(app, lines)| serde_json::json!({"app": app, "lines": lines}))
                    .collect();
                json_response(&serde_json::Value::Array(apps))
            }
            ["snapshot"] => ndjson(self.buffers.snapshot(), None, Filter::default()),
            ["logs", app] => {
                let lines = match q("lines").map(|v| v.parse::<usize>()) {
                    None => 100,
                    Some(Ok(n)) => n,
                    Some(Err(_)) => {
                        return text(StatusCode::BAD_REQUEST, "lines must be a number\n");
                    }
                };
                let follow = matches!(q("follow").as_deref(), Some("true" | "1"));
                let filter = Filter {
                    process_type: q("type"),
                    job_id: q("job"),
                };
                let (past, rx) = self.buffers.read(app, &filter, lines);
                ndjson(past, follow.then_some(rx), filter)
            }
            _ => text(
                StatusCode::NOT_FOUND,
                &format!("no such endpoint: /{path}\n"),
            ),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r
}

fn json_response(v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Lines as NDJSON; with `follow`, then every new matching line until the client goes.
fn ndjson(
    past: Vec<LogLine>,
    follow: Option<broadcast::Receiver<LogLine>>,
    filter: Filter,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        for l in past {
            if tx.send(line_bytes(&l)).await.is_err() {
                return;
            }
        }
        let Some(mut follow) = follow else { return };
        loop {
            match follow.recv().await {
                Ok(l) if filter.matches(&l) => {
                    if tx.send(line_bytes(&l)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "a follower fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let stream = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

fn line_bytes(l: &LogLine) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// How long a fill from a peer may take, snapshot included.
const FILL_TIMEOUT: Duration = Duration::from_secs(30);

/// `flynn-host logaggregator`: serves until the process is stopped.
pub async fn run(args: AggArgs) -> Result<(), AggError> {
    let agg = match &args.tls_dir {
        Some(dir) => {
            let err = |source| AggError::Tls {
                dir: dir.display().to_string(),
                source,
            };
            Aggregator::with_tls(
                args.lines_per_app,
                args.token.clone(),
                tls::acceptor(dir).map_err(err)?,
                tls::client_config(&dir.join("ca.pem")).map_err(err)?,
            )
        }
        None => Aggregator::new(args.lines_per_app, args.token.clone()),
    };
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| AggError::Listen { addr, source })
    };
    let syslog = bind(args.syslog).await?;
    let http = bind(args.http).await?;
    // HTTP is served before the fill: two instances starting together each find
    // the other registered (the agent registers a job once its port accepts) and
    // fill from it; had each waited to serve until its own fill ended, both would
    // wait for ever. A reader meanwhile sees what has arrived so far.
    let serving = tokio::spawn(agg.clone().serve_http(http));
    let advertise = match (args.advertise, args.syslog.ip()) {
        (Some(ip), _) => Some(ip),
        (None, ip) if !ip.is_unspecified() => Some(ip),
        (None, _) => None,
    };
    // Without an address to advertise (a job on the host network listening on
    // 0.0.0.0), etcd only finds peers: the agent registers the job's declared
    // service itself, on its host's lease, once its health check passes.
    let etcd = if args.etcd.is_empty() {
        None
    } else {
        Some(connect_etcd(&args.etcd).await)
    };
    let me = advertise.map(|ip| instance_id(SocketAddr::new(ip, args.syslog.port())));
    let mut peers: Vec<String> = args.peer.iter().cloned().collect();
    if peers.is_empty()
        && let Some(etcd) = &etcd
    {
        peers = discovered_peers(etcd, me.as_deref()).await;
    }
    for peer in &peers {
        match agg.fill_from(peer).await {
            Ok(n) => {
                tracing::info!(%peer, lines = n, "filled from a peer");
                break;
            }
            // Alone is better than not at all: the shippers resend what they have.
            Err(e) => tracing::warn!(error = %e, "not filled from this peer"),
        }
    }
    tracing::info!(syslog = %args.syslog, http = %args.http, "log aggregator serving");
    tokio::spawn(agg.clone().serve_syslog(syslog));
    if let (Some(etcd), Some(ip), Some(id)) = (etcd, advertise, me) {
        let inst = discovery::Instance {
            service: SERVICE.into(),
            id,
            addr: SocketAddr::new(ip, args.syslog.port()),
            host_id: ip.to_string(),
            job_id: std::env::var("FLYNN_JOB_ID").ok(),
            meta: [(META_HTTP.to_string(), args.http.port().to_string())]
                .into_iter()
                .chain(
                    args.tls_dir
                        .is_some()
                        .then(|| (META_TLS.to_string(), "1".to_string())),
                )
                .collect(),
            registered_at: chrono::Utc::now(),
        };
        tokio::spawn(discovery::services::announce(etcd, inst, LEASE_TTL));
    }
    serving
        .await
        .map_err(|e| AggError::Serving(e.to_string()))?;
    Ok(())
}

/// An instance's id in discovery: one per syslog address, so a restarted instance
/// takes its predecessor's place rather than sitting beside it until the lease ends.
fn instance_id(addr: SocketAddr) -> String {
    format!("logagg-{}", addr.to_string().replace(['[', ']'], ""))
}

async fn connect_etcd(endpoints: &[String]) -> discovery::Etcd {
    loop {
        match discovery::Etcd::connect(endpoints, Duration::from_secs(3)).await {
            Ok(e) if e.ping().await.is_ok() => return e,
            Ok(_) => tracing::warn!("etcd does not answer yet"),
            Err(e) => tracing::warn!(error = %e, "connecting to etcd"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The HTTP addresses of the other registered instances.
async fn discovered_peers(etcd: &discovery::Etcd, me: Option<&str>) -> Vec<String> {
    match discovery::services::list(etcd, SERVICE).await {
        Ok(state) => state
            .instances
            .iter()
            .filter(|i| Some(i.id.as_str()) != me)
            .filter_map(|i| {
                let port = i.meta.get(META_HTTP)?;
                let scheme = if tls::instance_tls(&i.meta) {
                    "https"
                } else {
                    "http"
                };
                Some(format!(
                    "{scheme}://{}",
                    SocketAddr::new(i.addr.ip(), port.parse().ok()?)
                ))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "looking for a peer in discovery");
            Vec::new()
        }
    }
}
