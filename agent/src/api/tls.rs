//! HTTPS off the host's loopback: a TCP connection accepted on a non-loopback
//! address of the host is TLS (the host certificate of `<state>/tls`, renewed
//! under the listener), one on loopback stays plain HTTP, as the unix socket.
//! Decided per connection by the address it reached, so one listener on
//! 0.0.0.0 serves both. A client speaking plain HTTP to the TLS side gets a
//! 400 that says what to do, not a TLS alert it cannot read.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{ApiState, Peer, conns, spawn_connection};

/// A client must start its handshake (or its plain request) within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// The API's TLS: the host's CA and certificate, and the acceptor presenting it.
pub struct ApiTls {
    pub dir: Arc<flynn_tls::TlsDir>,
    acceptor: TlsAcceptor,
}

impl ApiTls {
    /// Loads `<state>/tls`, making the CA and certificate at the first start.
    pub fn open(state_dir: &Path, host_id: &str) -> Result<ApiTls> {
        let dir = flynn_tls::TlsDir::open(&state_dir.join("tls"), host_id, &host_names())
            .with_context(|| format!("setting up the API's TLS in {}/tls", state_dir.display()))?;
        let config =
            flynn_tls::server_config(dir.resolver()).context("the API's TLS configuration")?;
        Ok(ApiTls {
            dir: Arc::new(dir),
            acceptor: TlsAcceptor::from(config),
        })
    }

    /// Renews the certificate before it expires, and when the host's addresses change.
    pub fn spawn_renewal(&self) -> tokio::task::JoinHandle<()> {
        flynn_tls::spawn_renewal(self.dir.clone(), host_names)
    }
}

/// The names this host's certificate carries: its host name and every address
/// of its interfaces (link-local IPv6 left out: it needs a scope to be dialled).
pub fn host_names() -> Vec<String> {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let mut addrs: Vec<IpAddr> = Vec::new();
    if let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() {
        for ifa in ifaddrs {
            let Some(addr) = ifa.address else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            let link_local_v6 =
                matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if !ip.is_loopback() && !link_local_v6 {
                addrs.push(ip);
            }
        }
    }
    flynn_tls::host_names(&hostname, &addrs)
}

/// Serves one accepted TCP connection: TLS unless it came in on loopback.
pub(super) fn serve_tcp(
    stream: TcpStream,
    peer: Peer,
    state: Arc<ApiState>,
    tracked: conns::Tracked,
    place: super::limits::Admitted,
) {
    let Some(tls) = state.tls.clone() else {
        return spawn_connection(stream, peer, state, tracked, place);
    };
    if !flynn_tls::serves_tls(stream.local_addr().ok().map(|a| a.ip())) {
        return spawn_connection(stream, peer, state, tracked, place);
    }
    tokio::spawn(async move {
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
        match peeked {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
            Ok(Ok(1)) => return refuse_plain(stream).await,
            _ => return,
        }
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => spawn_connection(stream, peer, state, tracked, place),
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    });
}

/// Answers a plain HTTP request on the TLS side with a 400 saying what to use.
async fn refuse_plain(mut stream: TcpStream) {
    let body = serde_json::json!({
        "error": "this address serves the API over HTTPS only: use https://HOST:PORT with --tls-pin PIN \
                  (or --tls-ca FILE); `flynn-host tls pin` on the host prints the pin. \
                  Plain HTTP is served on the host's loopback and unix socket only"
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}
