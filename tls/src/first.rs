//! The first contact with a host whose CA is not known yet (the bootstrap meeting
//! hosts that still have the self-signed CA of their first start).
//!
//! Trust comes from the cluster token, which every host and the bootstrap share,
//! without the token ever being sent before the host is verified:
//!
//! 1. the client connects with [`capture_config`], which accepts any chain but
//!    keeps it, and asks the public `GET /cluster/tls/ca?proof=NONCE` (no token);
//! 2. the host answers its CA, its pin and [`proof`]: an HMAC-SHA256 keyed by the
//!    token over the pin and the client's fresh nonce;
//! 3. the client checks ([`check_first_contact`]) that the proof is right for that
//!    pin and nonce, and that the chain the connection presented verifies against
//!    the CA of that pin for the address dialled.
//!
//! A machine in the middle without the token cannot make a proof for a CA of its
//! own, and cannot present a chain under the host's CA (it lacks that key); a
//! proof it relays from the real host names the real host's pin, which its own
//! chain does not verify against. From then on the client pins that CA.

use std::sync::{Arc, Mutex};

use ring::hmac;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::{Pin, TlsError, provider};

/// What the HMAC covers besides the pin and nonce: a proof for this use only.
const PROOF_CONTEXT: &[u8] = b"flynn-tls-first-contact\0";

/// The proof a host gives that it holds `token` and vouches for `pin`, for the
/// client's `nonce` (lowercase hex).
pub fn proof(token: &str, pin: &Pin, nonce: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(PROOF_CONTEXT);
    ctx.update(&pin.0);
    ctx.update(b"\0");
    ctx.update(nonce.as_bytes());
    ctx.sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The chain a server presented, as a [`capture_config`] connection saw it.
#[derive(Debug, Default)]
pub struct Captured {
    chain: Mutex<Option<(Vec<CertificateDer<'static>>, UnixTime)>>,
}

/// A client configuration that accepts any server chain and keeps it in the
/// returned [`Captured`]: only for [`check_first_contact`], which verifies it.
pub fn capture_config() -> Result<(Arc<ClientConfig>, Arc<Captured>), TlsError> {
    let captured = Arc::new(Captured::default());
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Capture(captured.clone())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), captured))
}

/// Why a first contact is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum FirstContactError {
    #[error("the connection presented no certificate")]
    NoChain,
    #[error(
        "the host's proof does not match the cluster token: it has another token, or something between us answered for it"
    )]
    BadProof,
    #[error("the certificate presented is not from the CA the host named: {0}")]
    Chain(String),
    #[error(transparent)]
    Pin(#[from] TlsError),
}

/// Checks a first contact: `proof` is the token's for `pin` and `nonce`, and the
/// chain `captured` holds verifies against the CA of `pin` for `server_name`.
pub fn check_first_contact(
    captured: &Captured,
    server_name: &str,
    pin: &str,
    proof_given: &str,
    token: &str,
    nonce: &str,
) -> Result<Pin, FirstContactError> {
    let pin = Pin::parse(pin)?;
    let expected = proof(token, &pin, nonce);
    // Compared in constant time: the expected value is a secret's function.
    let differ = expected.len() != proof_given.len()
        || expected
            .bytes()
            .zip(proof_given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0;
    if differ {
        return Err(FirstContactError::BadProof);
    }
    let (chain, now) = captured
        .chain
        .lock()
        .ok()
        .and_then(|g| g.clone())
        .ok_or(FirstContactError::NoChain)?;
    let (end_entity, intermediates) = chain.split_first().ok_or(FirstContactError::NoChain)?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| FirstContactError::Chain(format!("{server_name:?}: {e}")))?;
    crate::verify::pin_verifier(&pin)
        .verify_server_cert(end_entity, intermediates, &name, &[], now)
        .map_err(|e| FirstContactError::Chain(e.to_string()))?;
    Ok(pin)
}

#[derive(Debug)]
struct Capture(Arc<Captured>);

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain: Vec<CertificateDer<'static>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        if let Ok(mut guard) = self.0.chain.lock() {
            *guard = Some((chain, now));
        }
        Ok(ServerCertVerified::assertion())
    }

    // The handshake's signature is still checked against the presented key, so
    // the peer holds the key of the chain that is captured and verified later.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn captured_chain(ca: &crate::Ca, names: &[String]) -> Captured {
        let host = ca
            .issue("host", names, std::time::Duration::from_secs(600))
            .unwrap();
        let chain = crate::verify::certs_from_pem(&host.chain_pem, "chain").unwrap();
        Captured {
            chain: Mutex::new(Some((chain, UnixTime::now()))),
        }
    }

    #[test]
    fn a_proof_for_the_hosts_pin_and_chain_is_trusted_anything_else_is_not() {
        let ca = crate::Ca::generate("h").unwrap();
        let pin = ca.pin().unwrap();
        let names = crate::host_names("h", &["192.0.2.1".parse().unwrap()]);
        let seen = captured_chain(&ca, &names);
        let token = "a-cluster-token-of-some-length";
        let good = proof(token, &pin, "n1");
        let p = pin.to_string();
        assert_eq!(
            check_first_contact(&seen, "192.0.2.1", &p, &good, token, "n1").unwrap(),
            pin
        );
        // Another nonce, another token: refused.
        assert!(matches!(
            check_first_contact(&seen, "192.0.2.1", &p, &good, token, "n2"),
            Err(FirstContactError::BadProof)
        ));
        assert!(matches!(
            check_first_contact(&seen, "192.0.2.1", &p, &good, "another-token-xxxxxxx", "n1"),
            Err(FirstContactError::BadProof)
        ));
        // The address dialled must be in the certificate.
        assert!(matches!(
            check_first_contact(&seen, "192.0.2.9", &p, &good, token, "n1"),
            Err(FirstContactError::Chain(_))
        ));
        // A relayed proof of the real host, with a chain of another CA: refused.
        let other = crate::Ca::generate("mitm").unwrap();
        let mitm = captured_chain(&other, &names);
        assert!(matches!(
            check_first_contact(&mitm, "192.0.2.1", &p, &good, token, "n1"),
            Err(FirstContactError::Chain(_))
        ));
        assert!(matches!(
            check_first_contact(&Captured::default(), "192.0.2.1", &p, &good, token, "n1"),
            Err(FirstContactError::NoChain)
        ));
    }
}
