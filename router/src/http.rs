//! The HTTP proxy: HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) from clients,
//! HTTP/1.1 to backends over pooled keep-alive connections; websockets and other
//! upgrades are bridged byte for byte.
//!
//! A request is retried on another backend only when it was never sent: the
//! connection could not be made, or a pooled one turned out closed. Once a backend
//! has the request, its answer (or its failure, as a 502) is the client's: retrying
//! then could run a non-idempotent request twice.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::backends::{Backend, Backends, GuardedBody, choose};
use crate::sticky::{COOKIE, StickyKey, find_cookie};
use crate::table::Table;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Backends tried for one request (on connect errors only).
const MAX_TRIES: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What every request needs: the routes, the backends and the sticky key.
pub struct Proxy {
    table: RwLock<Arc<Table>>,
    pub backends: Arc<Backends>,
    sticky: StickyKey,
}

/// Where a request came in.
#[derive(Clone, Copy)]
pub struct Inbound {
    pub client: SocketAddr,
    pub port: u16,
    pub scheme: &'static str,
}

impl Proxy {
    pub fn new(sticky: StickyKey) -> Proxy {
        Proxy {
            table: RwLock::new(Arc::new(Table::default())),
            backends: Arc::new(Backends::default()),
            sticky,
        }
    }

    pub fn set_table(&self, table: Table) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn handle(&self, mut req: Request<Incoming>, from: Inbound) -> Response<ProxyBody> {
        let host = match req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
        {
            Some(h) => h,
            None => return text(StatusCode::BAD_REQUEST, "the request has no Host header\n"),
        };
        let table = self.table();
        let Some(route) = table.lookup(&host, req.uri().path()).cloned() else {
            return text(
                StatusCode::NOT_FOUND,
                &format!("no route for {host}{}\n", req.uri().path()),
            );
        };
        let list = self.backends.get(&route.service);
        if list.is_empty() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "no backend is up for {} (route {}): its jobs are starting, stopped or failing their health checks\n",
                    route.service, route.id
                ),
            );
        }
        // A sticky client goes back to its backend while that one is up.
        let pinned = route
            .sticky
            .then(|| {
                req.headers()
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(|v| find_cookie(v, COOKIE).and_then(|c| self.sticky.open(c)))
            })
            .flatten()
            .and_then(|addr| list.iter().find(|b| b.addr == addr).cloned());

        let upgrade = is_upgrade(req.headers()) && req.version() == Version::HTTP_11;
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let mut out = match outbound(req, &host, from, upgrade) {
            Ok(r) => r,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        };

        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut first = pinned.clone();
        loop {
            let backend = match first.take().or_else(|| choose(&list, &tried)) {
                Some(b) if tried.len() < MAX_TRIES => b,
                _ => {
                    return text(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "no backend of {} accepted a connection (tried {})\n",
                            route.service,
                            tried
                                .iter()
                                .map(SocketAddr::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
            };
            let mut guard = backend.begin();
            let mut conn = match backend.take_idle() {
                Some(c) => c,
                None => match connect(&backend).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(backend = %backend.addr, error = %e, "connect failed; trying another backend");
                        tried.push(backend.addr);
                        continue;
                    }
                },
            };
            match conn.try_send_request(out).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                        if let Some(client) = client_upgrade {
                            let backend_side =
                                hyper::upgrade::on(Response::from_parts(parts.clone(), body));
                            tokio::spawn(async move {
                                // The guard counts the tunnel as a request in flight.
                                let _guard = guard;
                                if let (Ok(c), Ok(b)) = (client.await, backend_side.await) {
                                    let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
                                    let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                                }
                            });
                        }
                        return Response::from_parts(parts, empty());
                    }
                    guard.keep(conn);
                    strip_hop_by_hop(&mut parts.headers);
                    if route.sticky
                        && pinned_missing(&pinned, &backend)
                        && let Some(v) = self.sticky.seal(backend.addr).and_then(|c| {
                            HeaderValue::from_str(&format!(
                                "{COOKIE}={c}; Path=/; HttpOnly; SameSite=Lax"
                            ))
                            .ok()
                        })
                    {
                        parts.headers.append(header::SET_COOKIE, v);
                    }
                    let body = GuardedBody {
                        inner: body,
                        guard: Some(guard),
                    };
                    return Response::from_parts(parts, body.boxed());
                }
                Err(mut e) => match e.take_message() {
                    // Never sent (the pooled connection had closed): send it elsewhere.
                    Some(req) => {
                        out = req;
                        tried.push(backend.addr);
                    }
                    None => {
                        return text(
                            StatusCode::BAD_GATEWAY,
                            &format!(
                                "backend {} of {} failed: {}\n",
                                backend.addr,
                                route.service,
                                e.into_error()
                            ),
                        );
                    }
                },
            }
        }
    }
}

fn pinned_missing(pinned: &Option<Arc<Backend>>, chosen: &Arc<Backend>) -> bool {
    pinned.as_ref().is_none_or(|p| p.addr != chosen.addr)
}

async fn connect(backend: &Backend) -> std::io::Result<SendRequest<ProxyBody>> {
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(backend.addr),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    for h in named {
        headers.remove(h);
    }
}

/// The request as the backend gets it: origin-form, HTTP/1.1, the host kept, hop-by-hop
/// headers dropped (but an upgrade's kept), `X-Forwarded-*` and `X-Request-Id` set.
fn outbound(
    req: Request<Incoming>,
    host: &str,
    from: Inbound,
    upgrade: bool,
) -> Result<Request<ProxyBody>, String> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = path
        .parse::<Uri>()
        .map_err(|e| format!("the request target {path:?} is not valid: {e}"))?;
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    let upgrade_to = h.get(header::UPGRADE).cloned();
    strip_hop_by_hop(h);
    if upgrade && let Some(u) = upgrade_to {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
    if !h.contains_key(header::HOST) {
        let v = HeaderValue::from_str(host).map_err(|_| format!("bad host {host:?}"))?;
        h.insert(header::HOST, v);
    }
    let client_ip = from.client.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {client_ip}"),
        None => client_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static(from.scheme));
    h.insert("x-forwarded-port", HeaderValue::from(from.port));
    if !h.contains_key("x-request-id") {
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        if let Ok(v) = HeaderValue::from_str(&id) {
            h.insert("x-request-id", v);
        }
    }
    Ok(Request::from_parts(parts, body.boxed()))
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

pub fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
