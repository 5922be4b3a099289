//! The pin: base64 of SHA-256 of a CA certificate's DER (see the crate's doc).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::TlsError;

/// A CA's pin, as decoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin(pub [u8; 32]);

impl Pin {
    /// The pin of a certificate, from its DER.
    pub fn of_der(der: &[u8]) -> Pin {
        Pin(Sha256::digest(der).into())
    }

    /// Parses the printed form (what `flynn-host tls pin` prints).
    pub fn parse(text: &str) -> Result<Pin, TlsError> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .map_err(|_| TlsError::BadPin(text.to_string()))?;
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| TlsError::BadPin(text.to_string()))?;
        Ok(Pin(array))
    }

    pub fn matches(&self, der: &[u8]) -> bool {
        Pin::of_der(der) == *self
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

/// The pin of the first certificate in a PEM text.
pub fn pin_of_pem(pem: &str) -> Result<Pin, TlsError> {
    let ders = crate::verify::certs_from_pem(pem, "the CA certificate")?;
    ders.first()
        .map(|der| Pin::of_der(der))
        .ok_or_else(|| TlsError::BadPem {
            what: "the CA certificate".into(),
            detail: "no CERTIFICATE block".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let pin = Pin::of_der(b"a certificate");
        let text = pin.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(Pin::parse(&text).unwrap(), pin);
        assert!(Pin::parse("not base64!").is_err());
        assert!(Pin::parse("YWJj").is_err(), "too short");
        assert!(pin.matches(b"a certificate"));
        assert!(!pin.matches(b"another"));
    }
}
