//! A certificate and key a user hands the platform to serve a name with (a
//! route's own certificate): checked where it is given, so a pair the routers
//! could not serve is refused with the reason, rather than stored and then
//! skipped by every router with a line in its log.

use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use crate::provider;
use crate::verify::{certs_from_pem, key_from_pem};

/// Why a pair cannot serve a name; each message says what to give instead.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("the certificate PEM holds no certificate (give the chain, server certificate first)")]
    NoCertificate,
    #[error("the certificate is not valid PEM or DER: {0}")]
    BadCertificate(String),
    #[error("the key is not a valid PEM private key (PKCS#8, PKCS#1 or SEC1): {0}")]
    BadKey(String),
    #[error("the key is of a type the routers cannot sign with: {0}")]
    UnsupportedKey(String),
    #[error("the key does not go with the certificate (its public key differs)")]
    KeyMismatch,
    #[error("the certificate expired on {0}")]
    Expired(String),
    #[error("the certificate is not valid before {0}")]
    NotYetValid(String),
    #[error("the certificate does not name {name}: it names {names}")]
    NameMismatch { name: String, names: String },
}

/// Checks that `chain_pem` (the server's certificate first, then intermediates)
/// and `key_pem` can serve `name` over TLS at `now`: both parse, the key is one
/// rustls signs with and is the certificate's, the certificate is within its
/// validity, and it names `name` (exactly, or by a wildcard one label deep; a
/// wildcard `name` wants the same wildcard). The chain's trust is the user's
/// business: a certificate of a private CA is theirs to serve.
pub fn check_pair(
    chain_pem: &str,
    key_pem: &str,
    name: &str,
    now: SystemTime,
) -> Result<(), PairError> {
    let chain = certs_from_pem(chain_pem, "the certificate")
        .map_err(|e| PairError::BadCertificate(e.to_string()))?;
    let Some(leaf) = chain.first().cloned() else {
        return Err(PairError::NoCertificate);
    };
    let key = key_from_pem(key_pem, "the key").map_err(|e| PairError::BadKey(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| PairError::UnsupportedKey(e.to_string()))?;
    match CertifiedKey::new(chain, signing).keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(PairError::KeyMismatch);
        }
        // A key that cannot show its public half (none of ring's) cannot be
        // compared; rustls itself lets such a pair through, and so do we.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(PairError::BadCertificate(e.to_string())),
    }
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| PairError::BadCertificate(e.to_string()))?;
    let validity = cert.validity();
    let at = |t: &x509_parser::time::ASN1Time| t.to_string();
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    if validity.not_after.timestamp() < now_s {
        return Err(PairError::Expired(at(&validity.not_after)));
    }
    if validity.not_before.timestamp() > now_s {
        return Err(PairError::NotYetValid(at(&validity.not_before)));
    }
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(dns) = n {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    // Without subject alternative names, clients fall back to the common name.
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let want = name.to_ascii_lowercase();
    if names.iter().any(|n| covers(n, &want)) {
        Ok(())
    } else {
        Err(PairError::NameMismatch {
            name: name.to_string(),
            names: if names.is_empty() {
                "no DNS name".to_string()
            } else {
                names.join(", ")
            },
        })
    }
}

/// Whether the certificate name `cert` serves `name` (both lower case): the same
/// name, or `*.suffix` for a name one label above `suffix` (RFC 6125: a wildcard
/// covers one label).
fn covers(cert: &str, name: &str) -> bool {
    if cert == name {
        return true;
    }
    match (cert.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => !label.is_empty() && label != "*" && rest == suffix,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ca;
    use std::time::Duration;

    #[test]
    fn names_a_wildcard_covers() {
        assert!(covers("www.example.com", "www.example.com"));
        assert!(covers("*.example.com", "www.example.com"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("www.example.com", "*.example.com"));
    }

    #[test]
    fn a_good_pair_passes_and_each_fault_is_named() {
        let ca = Ca::generate("test").unwrap();
        let names = vec!["www.example.com".to_string()];
        let c = ca.issue("www", &names, Duration::from_secs(3600)).unwrap();
        let now = SystemTime::now();
        check_pair(&c.chain_pem, &c.key_pem, "www.example.com", now).unwrap();
        check_pair(&c.chain_pem, &c.key_pem, "WWW.Example.com", now).unwrap();
        let other = ca.issue("www", &names, Duration::from_secs(3600)).unwrap();
        assert!(matches!(
            check_pair(&c.chain_pem, &other.key_pem, "www.example.com", now),
            Err(PairError::KeyMismatch)
        ));
        assert!(matches!(
            check_pair(&c.chain_pem, &c.key_pem, "api.example.com", now),
            Err(PairError::NameMismatch { .. })
        ));
        assert!(matches!(
            check_pair(
                &c.chain_pem,
                &c.key_pem,
                "www.example.com",
                now + Duration::from_secs(7200)
            ),
            Err(PairError::Expired(_))
        ));
        assert!(matches!(
            check_pair("", &c.key_pem, "www.example.com", now),
            Err(PairError::NoCertificate)
        ));
        assert!(matches!(
            check_pair(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                &c.key_pem,
                "www.example.com",
                now
            ),
            Err(PairError::BadCertificate(_))
        ));
        assert!(matches!(
            check_pair(&c.chain_pem, "no key here", "www.example.com", now),
            Err(PairError::BadKey(_))
        ));
    }
}
