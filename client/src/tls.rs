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

    /// Trust the CA of `pin` (a client of the cluster's hosts).
    pub fn pinned(pin: &str) -> TlsOptions {
        TlsOptions {
            ca: None,
            pin: Some(pin.to_string()),
        }
    }

    /// Whether anything is said about what to trust.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.pin.is_some()
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

/// The TLS handshake with the server at `authority` (`host:port`), whose
/// certificate must name `host`, or `name` when one is given.
pub(crate) async fn connect(
    config: Arc<ClientConfig>,
    authority: &str,
    name: Option<&str>,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>> {
    let host = name.unwrap_or_else(|| host_of(authority));
    let name = ServerName::try_from(host.to_string())
        .with_context(|| format!("{host:?} is not a host name or address TLS can verify"))?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .with_context(|| {
            format!(
                "TLS with https://{authority} failed: is the pin (--tls-pin, or `flynn cluster \
                 add -p`) this cluster's? `flynn-host tls pin` on a host prints it"
            )
        })
}

/// Why a first contact failed.
#[derive(Debug, thiserror::Error)]
pub enum FirstContactFailure {
    /// Not reached, or it did not speak TLS: worth retrying (a host starting).
    #[error("{0}")]
    Unreachable(String),
    /// It answered, but its answer is not trusted: retrying will not help.
    #[error("{0}")]
    Untrusted(String),
    /// Its proof is not the token's: it holds another token (or something
    /// between us answered for it).
    #[error("{0}")]
    Token(String),
}

/// The first contact with an agent whose CA is not known yet: asks its public
/// `GET /cluster/tls/ca?proof=NONCE` over TLS (sending no token) and trusts the
/// pin it names only if the proof shows it holds `token` and the chain the
/// connection presented is that CA's for the address dialled (see
/// `flynn_tls::check_first_contact`). Returns the pin.
pub async fn first_contact(
    authority: &str,
    token: &str,
    nonce: &str,
) -> Result<String, FirstContactFailure> {
    use http_body_util::BodyExt;
    let unreachable = FirstContactFailure::Unreachable;
    let (config, captured) =
        flynn_tls::capture_config().map_err(|e| FirstContactFailure::Untrusted(e.to_string()))?;
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| unreachable(format!("cannot reach https://{authority}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let host = host_of(authority);
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        FirstContactFailure::Untrusted(format!("{host:?} is not an address TLS can verify: {e}"))
    })?;
    let stream = TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| {
            unreachable(format!(
                "no TLS at https://{authority} ({e}): is its daemon started with --plain-http (or \"tls\": false)? A cluster's hosts serve HTTPS"
            ))
        })?;
    let mut sender = super::handshake(stream)
        .await
        .map_err(|e| unreachable(format!("{e:#}")))?;
    let request = hyper::Request::builder()
        .method(hyper::Method::GET)
        .uri(format!("/cluster/tls/ca?proof={nonce}"))
        .header(hyper::header::HOST, authority)
        .body(super::empty())
        .map_err(|e| FirstContactFailure::Untrusted(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(format!("https://{authority}: {e}")))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(format!("https://{authority}: {e}")))?
        .to_bytes();
    if !status.is_success() {
        return Err(FirstContactFailure::Untrusted(format!(
            "https://{authority} answered {status} to GET /cluster/tls/ca: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    #[derive(serde::Deserialize)]
    struct Info {
        pin: String,
        proof: Option<String>,
    }
    let info: Info = serde_json::from_slice(&body).map_err(|e| {
        FirstContactFailure::Untrusted(format!("https://{authority}: not the answer expected: {e}"))
    })?;
    let proof = info.proof.ok_or_else(|| {
        FirstContactFailure::Untrusted(format!(
            "https://{authority} gives no proof of its pin: is its flynn-host older than this one?"
        ))
    })?;
    match flynn_tls::check_first_contact(&captured, host, &info.pin, &proof, token, nonce) {
        Ok(pin) => Ok(pin.to_string()),
        Err(e @ flynn_tls::FirstContactError::BadProof) => Err(FirstContactFailure::Token(
            format!("https://{authority}: {e}"),
        )),
        Err(e) => Err(FirstContactFailure::Untrusted(format!(
            "https://{authority}: {e}"
        ))),
    }
}

/// The host of `host:port` (brackets of an IPv6 address removed).
pub(crate) fn host_of(authority: &str) -> &str {
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']')
}
