//! The cluster CA and the host certificates it signs (rcgen; ECDSA P-256 keys).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{Pin, TlsError};

/// How long a CA lives: far longer than any host certificate it signs, which
/// renew themselves; replacing a CA is a re-bootstrap of trust, not a rotation.
const CA_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// A certificate's start is set back a little: clocks of a cluster differ.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// The cluster CA: its certificate and private key, as PEM.
#[derive(Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never goes to a log.
        f.debug_struct("Ca").field("pin", &self.pin().ok()).finish()
    }
}

/// A host's certificate chain (its own, then the CA's) and key, as PEM.
#[derive(Clone)]
pub struct HostCert {
    pub chain_pem: String,
    pub key_pem: String,
    /// The names it was issued for (see [`host_names`]).
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Ca {
    /// A new CA named for `cluster` (a cluster or host id; only a label).
    pub fn generate(cluster: &str) -> Result<Ca, TlsError> {
        let gen_err = |source| TlsError::Generate {
            what: "the cluster CA",
            source,
        };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Flynn");
        dn.push(DnType::CommonName, format!("Flynn cluster CA {cluster}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + CA_LIFETIME).into();
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CA from its PEM texts, checked: the key must load and the certificate parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let ca = Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        };
        ca.issuer()?;
        Ok(ca)
    }

    pub fn pin(&self) -> Result<Pin, TlsError> {
        crate::pin_of_pem(&self.cert_pem)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| TlsError::BadPem {
            what: "the CA key".into(),
            detail: e.to_string(),
        })?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(|e| TlsError::BadPem {
            what: "the CA certificate".into(),
            detail: e.to_string(),
        })
    }

    /// A certificate for a host (or a platform job) named by `names` (DNS names
    /// and IP addresses), valid for `lifetime`, usable by a server and a client
    /// (etcd's peers are both).
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        lifetime: Duration,
    ) -> Result<HostCert, TlsError> {
        let gen_err = |source| TlsError::Generate {
            what: "a host certificate",
            source,
        };
        let issuer = self.issuer()?;
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Flynn");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        // A short lifetime (tests) starts now; a long one allows for clock skew.
        let skew = if lifetime > CLOCK_SKEW * 24 {
            CLOCK_SKEW
        } else {
            Duration::ZERO
        };
        let not_before = now - skew;
        let not_after = now + lifetime;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        Ok(HostCert {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            names: names.to_vec(),
            not_before,
            not_after,
        })
    }
}

/// The names a host's certificate carries: its host name, `localhost`, its
/// addresses and the loopback ones (a client may reach the API through a
/// forwarded port on its own loopback), sorted and without repeats.
pub fn host_names(hostname: &str, addrs: &[IpAddr]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !hostname.is_empty() && rcgen::string::Ia5String::try_from(hostname).is_ok() {
        names.push(hostname.to_string());
    }
    names.extend(addrs.iter().map(|a| a.to_string()));
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signs_host_certificates_and_reloads() {
        let ca = Ca::generate("test").unwrap();
        let again = Ca::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        assert_eq!(ca.pin().unwrap(), again.pin().unwrap());
        let names = host_names("node1", &["10.0.0.5".parse().unwrap()]);
        assert!(names.contains(&"10.0.0.5".to_string()) && names.contains(&"node1".to_string()));
        let host = again
            .issue("host node1", &names, Duration::from_secs(60))
            .unwrap();
        assert_eq!(host.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(host.not_after > SystemTime::now());
        assert!(Ca::from_pem(&ca.cert_pem, "junk").is_err());
    }

    #[test]
    fn two_cas_have_two_pins() {
        let a = Ca::generate("a").unwrap();
        let b = Ca::generate("b").unwrap();
        assert_ne!(a.pin().unwrap(), b.pin().unwrap());
    }
}
