//! What an HTTPS client of the agent trusts, and the handshake. The trust is a
//! CA file (`--tls-ca`, `FLYNN_TLS_CA`) or a pin (`--tls-pin`, `FLYNN_TLS_PIN`);
//! with neither, root on a host trusts that host's own CA file. The rustls
//! configuration is built once per process per trust and shared: building the
//! root store and verifier is most of a short-lived client's TLS set-up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, anyhow};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

/// A CA file (PEM) the agent's certificate must chain to.
pub const TLS_CA_ENV: &str = "FLYNN_TLS_CA";
/// The pin of the CA (`flynn-host tls pin` prints it).
pub const TLS_PIN_ENV: &str = "FLYNN_TLS_PIN";
/// The host's own CA, trusted by root on the host when nothing else is said.
const HOST_CA_FILE: &str = "/var/lib/flynn/tls/ca.pem";

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsOptions {
    pub ca: Option<PathBuf>,
    pub pin: Option<String>,
}

impl TlsOptions {
    /// `FLYNN_TLS_CA` and `FLYNN_TLS_PIN` (empty is unset).
    pub fn from_env() -> TlsOptions {
        let var = |name| {
            std::env::var(name)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        TlsOptions {
            ca: var(TLS_CA_ENV).map(PathBuf::from),
            pin: var(TLS_PIN_ENV),
        }
    }

    fn trust(&self) -> Result<flynn_tls::Trust> {
        match (&self.ca, &self.pin) {
            (Some(_), Some(_)) => Err(anyhow!(
                "give a TLS CA file or a pin, not both (--tls-ca, --tls-pin)"
            )),
            (Some(path), None) => Ok(flynn_tls::Trust::from_ca_file(path)?),
            (None, Some(pin)) => Ok(flynn_tls::Trust::Pin(flynn_tls::Pin::parse(pin)?)),
            (None, None) if Path::new(HOST_CA_FILE).exists() => {
                Ok(flynn_tls::Trust::from_ca_file(Path::new(HOST_CA_FILE))?)
            }
            (None, None) => Err(anyhow!(
                "an https:// address needs what to trust: --tls-pin PIN (or FLYNN_TLS_PIN; \
                 `flynn-host tls pin` on the host prints it) or --tls-ca FILE (FLYNN_TLS_CA)"
            )),
        }
    }

    /// The client configuration for this trust, built once per process.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        static BUILT: OnceLock<Mutex<HashMap<TlsOptions, Arc<ClientConfig>>>> = OnceLock::new();
        let cache = BUILT.get_or_init(Default::default);
        if let Ok(built) = cache.lock()
            && let Some(config) = built.get(self)
        {
            return Ok(config.clone());
        }
        let config = flynn_tls::client_config(&self.trust()?)?;
        if let Ok(mut built) = cache.lock() {
            built.insert(self.clone(), config.clone());
        }
        Ok(config)
    }
}

/// The TLS handshake with the agent at `authority` (`host:port`), whose
/// certificate must name `host`.
pub(crate) async fn connect(
    config: Arc<ClientConfig>,
    authority: &str,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>> {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .with_context(|| format!("{host:?} is not a host name or address TLS can verify"))?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .with_context(|| {
            format!(
                "TLS with the daemon at https://{authority} failed: is --tls-pin (or --tls-ca) \
                 this cluster's? `flynn-host tls pin` on the host prints its pin"
            )
        })
}
