//! rustls configs: the server's (a renewing host certificate) and the client's,
//! which trusts either a CA certificate or a pin.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::{HostCertResolver, Pin, TlsError, provider};

/// What a client trusts: the CA certificate(s) of a PEM file, or a pin.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The CA certificates (DER), usually one, read from `--tls-ca FILE`.
    Ca(Vec<CertificateDer<'static>>),
    /// `--tls-pin PIN`: the server's chain must hold the pinned CA, and its
    /// certificate must be signed by it and name the address dialled.
    Pin(Pin),
}

impl Trust {
    /// The certificates of a PEM text (a CA file's content).
    pub fn from_ca_pem(pem: &str) -> Result<Trust, TlsError> {
        Ok(Trust::Ca(certs_from_pem(pem, "the CA file")?))
    }

    /// The CA file at `path`.
    pub fn from_ca_file(path: &std::path::Path) -> Result<Trust, TlsError> {
        let pem = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let certs = certs_from_pem(&pem, &path.display().to_string())?;
        if certs.is_empty() {
            return Err(TlsError::NoCaCert(path.to_path_buf()));
        }
        Ok(Trust::Ca(certs))
    }
}

pub(crate) fn certs_from_pem(
    pem: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what: what.to_string(),
            detail: e.to_string(),
        })
}

pub(crate) fn key_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::BadPem {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// The server side: HTTP/1.1 only (the API is HTTP/1.1), the certificate from
/// `resolver` (which the renewal task swaps).
pub fn server_config(resolver: Arc<HostCertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side, trusting `trust`. Build it once per process and share it:
/// building the root store and verifier is the costly part.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut config = match trust {
        Trust::Ca(certs) => {
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots.add(cert.clone())?;
            }
            builder
                .with_root_certificates(Arc::new(roots))
                .with_no_client_auth()
        }
        Trust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pin_verifier(pin)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The verifier of a pin (also used alone by the first contact's check).
pub(crate) fn pin_verifier(pin: &Pin) -> PinVerifier {
    PinVerifier {
        pin: pin.clone(),
        verified: Mutex::new(None),
    }
}

/// Verifies by pin: finds the pinned CA in the chain the server sent, then
/// verifies the chain and name against it as a root, as a CA file would.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    pin: Pin,
    /// The verifier built for the pinned CA (same pin, same CA: built once).
    verified: Mutex<Option<Arc<WebPkiServerVerifier>>>,
}

impl PinVerifier {
    fn for_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        if let Ok(guard) = self.verified.lock()
            && let Some(v) = guard.as_ref()
        {
            return Ok(v.clone());
        }
        let ca = intermediates
            .iter()
            .chain(std::iter::once(end_entity))
            .find(|c| self.pin.matches(c))
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's certificate is not from the CA pinned ({}): a wrong --tls-pin, or not a host of this cluster",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(format!("the pinned CA: {e}")))?;
        if let Ok(mut guard) = self.verified.lock() {
            *guard = Some(verifier.clone());
        }
        Ok(verifier)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verifier = self.for_chain(end_entity, intermediates)?;
        // The CA itself is a root for webpki, not an intermediate.
        let rest: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| !self.pin.matches(c))
            .cloned()
            .collect();
        verifier.verify_server_cert(end_entity, &rest, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
