//! The server certificate behind an `Arc` that renewal swaps: handshakes after a
//! swap present the new certificate; connections already open keep theirs.

use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::verify::{certs_from_pem, key_from_pem};
use crate::{HostCert, TlsError, provider};

#[derive(Debug)]
pub struct HostCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified(cert: &HostCert) -> Result<Arc<CertifiedKey>, TlsError> {
    certified_pem(&cert.chain_pem, &cert.key_pem)
}

fn certified_pem(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs_from_pem(chain_pem, "the host certificate")?;
    let key = key_from_pem(key_pem, "the host key")?;
    let signing = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl HostCertResolver {
    pub fn new(cert: &HostCert) -> Result<HostCertResolver, TlsError> {
        Ok(HostCertResolver {
            current: RwLock::new(certified(cert)?),
        })
    }

    /// A certificate given as PEM (its chain, and its key): a service's own,
    /// issued by the bootstrap.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<HostCertResolver, TlsError> {
        Ok(HostCertResolver {
            current: RwLock::new(certified_pem(chain_pem, key_pem)?),
        })
    }

    /// Presents the certificate of `chain_pem` and `key_pem` from the next
    /// handshake on (a service's renewal).
    pub fn set_pem(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let new = certified_pem(chain_pem, key_pem)?;
        match self.current.write() {
            Ok(mut guard) => *guard = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        Ok(())
    }

    /// Presents `cert` from the next handshake on.
    pub fn set(&self, cert: &HostCert) -> Result<(), TlsError> {
        let new = certified(cert)?;
        match self.current.write() {
            Ok(mut guard) => *guard = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        Ok(())
    }

    /// Presents the certificate of `dir` (`cert.pem`, its chain, and `key.pem`:
    /// a host's platform directory, see `TlsDir::platform_dir`), and re-reads it
    /// every minute, so the host's renewals reach a long-running server.
    pub fn watching_dir(dir: &std::path::Path) -> Result<Arc<HostCertResolver>, TlsError> {
        let load = |dir: &std::path::Path| -> Result<Arc<CertifiedKey>, TlsError> {
            let read = |name: &str| {
                let path = dir.join(name);
                std::fs::read_to_string(&path).map_err(|source| TlsError::Read { path, source })
            };
            certified_pem(&read("cert.pem")?, &read("key.pem")?)
        };
        let resolver = Arc::new(HostCertResolver {
            current: RwLock::new(load(dir)?),
        });
        let (weak, dir) = (Arc::downgrade(&resolver), dir.to_path_buf());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                let Some(r) = weak.upgrade() else { return };
                match load(&dir) {
                    Ok(new) => match r.current.write() {
                        Ok(mut guard) => *guard = new,
                        Err(poisoned) => *poisoned.into_inner() = new,
                    },
                    // A key and certificate read across a re-issue: next time.
                    Err(e) => tracing::debug!(error = %e, "re-reading the certificate"),
                }
            }
        });
        Ok(resolver)
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for HostCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}
