//! The cluster's router (`flynn-host router`, an omni job on the host network): HTTP
//! on port 80 (HTTP/1.1 and cleartext HTTP/2) and TCP routes on their own ports, to
//! the instances discovery lists for each route's service.
//!
//! - Routes live in etcd (`discovery::routes`), written by the controller; backends are
//!   the service's discovery instances, followed by a watch: a backend that leaves
//!   discovery gets no new request at once (see `backends.rs` for draining).
//! - Host routes match the exact name, then the longest `*.` suffix, then the longest
//!   path prefix (`table.rs`).
//! - Balancing is power of two choices on requests in flight; a request is retried on
//!   another backend only if it was never sent (`http.rs`).
//! - 404 names the host and path no route matched; 503 names the service with no
//!   backend up; 502 names the backend that failed.
//! - Sticky sessions by an encrypted cookie (`sticky.rs`), the key shared by the
//!   cluster's routers.
//!
//! Written here rather than taken from a proxy crate: the reverse proxies on
//! crates.io (hyper-reverse-proxy and the like) neither pool per backend nor let the
//! caller pick the backend per attempt, which is the whole of this job; the pieces
//! that are generic (HTTP/1 and HTTP/2, upgrades, AEAD) are hyper's and ring's.

pub mod backends;
pub mod http;
pub mod service;
mod source;
pub mod sticky;
pub mod table;
pub mod tcp;
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::http::{Inbound, Proxy};
use crate::sticky::StickyKey;
use crate::table::Table;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] sticky::BadKey),
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A router: the proxy, and the TCP listeners of its TCP routes.
pub struct Router {
    pub proxy: Proxy,
    /// The certificates HTTPS serves (the routes' and the cluster's).
    pub certs: Arc<tls::Certs>,
    tls: tokio_rustls::TlsAcceptor,
    tcp: Mutex<tcp::TcpRoutes>,
    /// The address TCP routes listen on.
    tcp_bind: std::net::IpAddr,
}

impl Router {
    pub fn new(sticky_key: &[u8], tcp_bind: std::net::IpAddr) -> Result<Arc<Router>, RouterError> {
        let certs = Arc::new(tls::Certs::default());
        Ok(Arc::new(Router {
            proxy: Proxy::new(StickyKey::new(sticky_key)?),
            tls: tls::acceptor(certs.clone())?,
            certs,
            tcp: Mutex::new(tcp::TcpRoutes::default()),
            tcp_bind,
        }))
    }

    /// Takes a new route table: HTTP lookups use it at once, TCP listeners follow it.
    pub fn apply_routes(&self, table: Table) {
        let certs = table
            .certs
            .iter()
            .filter_map(|(id, domain, c)| {
                match tls::load_pair(c.cert.as_bytes(), c.key.as_bytes()) {
                    Ok(k) => Some((domain.clone(), k)),
                    Err(e) => {
                        tracing::warn!(route = %id, error = %e, "ignoring the route's certificate");
                        None
                    }
                }
            })
            .collect();
        self.certs.set_routes(certs);
        self.tcp.lock().unwrap_or_else(|p| p.into_inner()).sync(
            &table.tcp,
            &self.proxy.backends,
            self.tcp_bind,
        );
        self.proxy.set_table(table);
    }

    /// Ports the TCP routes listen on now.
    pub fn tcp_ports(&self) -> Vec<u16> {
        self.tcp.lock().unwrap_or_else(|p| p.into_inner()).ports()
    }

    /// Binds the HTTP listener (so a caller knows it is listening before it returns).
    pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RouterError> {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RouterError::Listen { addr, source })
    }

    /// Binds one of several listeners on the same address (`SO_REUSEPORT`: the kernel
    /// spreads connections over them), for a worker of its own.
    pub fn bind_shared(addr: SocketAddr) -> Result<TcpListener, RouterError> {
        let err = |source| RouterError::Listen { addr, source };
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        socket.set_reuseport(true).map_err(err)?;
        socket.bind(addr).map_err(err)?;
        socket.listen(4096).map_err(err)
    }

    /// Serves HTTP on `listener` until the task is dropped.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) {
        self.serve(listener, false).await
    }

    /// Serves HTTPS on `listener` until the task is dropped.
    pub async fn serve_https(self: Arc<Self>, listener: TcpListener) {
        self.serve(listener, true).await
    }

    async fn serve(self: Arc<Self>, listener: TcpListener, tls: bool) {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, say: back off rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let router = self.clone();
            tokio::spawn(async move {
                let from = Inbound {
                    client,
                    port,
                    scheme: if tls { "https" } else { "http" },
                };
                let acceptor = router.tls.clone();
                let service = service_fn(move |req| {
                    let router = router.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(router.proxy.handle(req, from).await)
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let served = if tls {
                    match acceptor.accept(stream).await {
                        Ok(s) => {
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(s), service)
                                .await
                        }
                        Err(e) => {
                            tracing::debug!(%client, error = %e, "TLS handshake failed");
                            return;
                        }
                    }
                } else {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                };
                if let Err(e) = served {
                    tracing::debug!(%client, error = %e, "client connection ended");
                }
            });
        }
    }

    /// Follows routes and services in etcd until the task is dropped.
    pub async fn follow(self: Arc<Self>, etcd: discovery::Etcd) {
        let r = self.clone();
        let e = etcd.clone();
        let routes = tokio::spawn(async move { source::follow_routes(e, r).await });
        source::follow_services(etcd, self).await;
        routes.abort();
    }
}
