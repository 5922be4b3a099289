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
    let chain = certs_from_pem(&cert.chain_pem, "the host certificate")?;
    let key = key_from_pem(&cert.key_pem, "the host key")?;
    let signing = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl HostCertResolver {
    pub fn new(cert: &HostCert) -> Result<HostCertResolver, TlsError> {
        Ok(HostCertResolver {
            current: RwLock::new(certified(cert)?),
        })
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
