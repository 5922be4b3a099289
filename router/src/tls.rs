//! HTTPS: the certificate for each connection chosen by the name the client asks for
//! (SNI): a route's own certificate (exact name, then the longest `*.` suffix), else
//! the cluster's (`--tls-cert`/`--tls-key`, made at bootstrap). rustls, with the
//! ring provider the rest of the tree uses (see `flynn_tls::provider` for why not
//! aws-lc).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate PEM holds no certificate")]
    NoCertificate,
    #[error("the certificate PEM is not valid: {0}")]
    BadCertificate(String),
    #[error("the key PEM is not valid: {0}")]
    BadKey(String),
    #[error("the key does not go with the certificate, or is of an unsupported type: {0}")]
    Mismatch(String),
    #[error("setting up TLS: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, from PEM.
pub fn load_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey(e.to_string()))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| TlsError::Mismatch(e.to_string()))
}

/// The certificates the router serves, by name.
#[derive(Debug, Default)]
pub struct Certs {
    by_name: RwLock<Names>,
}

#[derive(Debug, Default)]
struct Names {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (suffix without the `*`, key), longest first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl Certs {
    pub fn set_default(&self, key: Option<Arc<CertifiedKey>>) {
        self.by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .default = key;
    }

    /// Replaces the routes' certificates (`domain` as routes give it).
    pub fn set_routes(&self, certs: Vec<(String, Arc<CertifiedKey>)>) {
        let mut n = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        n.exact.clear();
        n.wildcard.clear();
        for (domain, key) in certs {
            let domain = domain.to_ascii_lowercase();
            match domain.strip_prefix('*') {
                Some(suffix) => n.wildcard.push((suffix.to_string(), key)),
                None => {
                    n.exact.insert(domain, key);
                }
            }
        }
        n.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
    }

    fn lookup(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let n = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = name.map(str::to_ascii_lowercase) {
            if let Some(k) = n.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, k)) = n
                .wildcard
                .iter()
                .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()))
            {
                return Some(k.clone());
            }
        }
        n.default.clone()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

/// The server side: HTTP/2 and HTTP/1.1 by ALPN, certificates from `certs`.
pub fn acceptor(certs: Arc<Certs>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}
