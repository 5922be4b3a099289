//! TLS for both of an aggregator's ports, and the client side its shippers and
//! readers use. The server presents its host's certificate (the platform
//! directory the agent gives host-network jobs, `FLYNN_TLS_DIR`, re-read every
//! minute so the host's renewals reach it); clients dial an instance by the
//! address discovery gives and verify the certificate names it, against the
//! cluster's CA. An instance that serves TLS says so in discovery ([`META_TLS`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The instance metadata key that says both ports are TLS.
pub const META_TLS: &str = "tls";

/// How long a handshake may take, either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub type Conn = Box<dyn Stream>;

/// The server side, from a directory holding `cert.pem` (chain) and `key.pem`.
pub fn acceptor(dir: &Path) -> Result<TlsAcceptor, flynn_tls::TlsError> {
    let resolver = flynn_tls::HostCertResolver::watching_dir(dir)?;
    Ok(TlsAcceptor::from(flynn_tls::server_config(resolver)?))
}

/// The client side trusting the CA certificate(s) in the PEM file `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, flynn_tls::TlsError> {
    flynn_tls::client_config(&flynn_tls::Trust::from_ca_file(ca)?)
}

/// Whether an instance's metadata says it serves TLS.
pub fn instance_tls(meta: &std::collections::BTreeMap<String, String>) -> bool {
    meta.get(META_TLS).is_some_and(|v| v == "1" || v == "true")
}

/// Connects to the aggregator at `addr` within `timeout`: over TLS verified by
/// `tls` (the certificate must name `addr`'s IP address) when given, else plain.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<Conn, String> {
    let go = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let Some(config) = tls else {
            return Ok(Box::new(stream) as Conn);
        };
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| {
                format!(
                    "TLS with the log aggregator at {addr}: {e} (is it a host of this cluster, under its CA?)"
                )
            })?;
        Ok(Box::new(stream) as Conn)
    };
    tokio::time::timeout(timeout, go)
        .await
        .map_err(|_| format!("connecting to {addr}: timed out"))?
}
