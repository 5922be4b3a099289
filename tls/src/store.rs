//! The TLS state on a host's disk (`<state>/tls`) and its renewal:
//!
//! ```text
//! ca.pem    the cluster CA's certificate (public: `GET /cluster/tls/ca`)
//! ca.key    its key (0600): every host holds it, so each renews its own certificate
//! host.pem  this host's certificate, then the CA's (the chain it presents)
//! host.key  its key (0600)
//! cluster   present once the CA is the cluster's (installed by `PUT /cluster/tls`)
//! platform/ ca.pem, cert.pem (= host.pem), key.pem (= host.key), and no CA key:
//!           what the host's etcd member and the platform's host-network jobs
//!           get (a read-only volume), kept in step with every re-issue
//! ```
//!
//! Files are replaced atomically (key first, then the certificate), so a crash
//! leaves a pair that loads or a certificate that is re-issued at the next start.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use flynn_fsutil::{Durability, write_atomic};

use crate::{Ca, HostCert, HostCertResolver, Pin, TlsError};

/// Overrides the host certificates' lifetime, in seconds (tests make it short
/// to watch a rotation).
pub const CERT_LIFETIME_ENV: &str = "FLYNN_TLS_CERT_LIFETIME";

/// 90 days, renewed after 60.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// The host certificates' lifetime: [`CERT_LIFETIME_ENV`] or 90 days.
pub fn cert_lifetime() -> Result<Duration, TlsError> {
    match std::env::var(CERT_LIFETIME_ENV) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(secs) if secs >= 3 => Ok(Duration::from_secs(secs)),
            _ => Err(TlsError::BadLifetime(text)),
        },
        Err(_) => Ok(DEFAULT_LIFETIME),
    }
}

/// A host's TLS: its CA, its current certificate, and the resolver its
/// listeners present it through.
pub struct TlsDir {
    dir: PathBuf,
    label: String,
    lifetime: Duration,
    resolver: Arc<HostCertResolver>,
    state: Mutex<(Ca, HostCert)>,
}

fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    write_atomic(path, text.as_bytes(), Durability::Durable).map_err(err)?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(())
}

/// The directory of what platform jobs get (no CA key).
const PLATFORM: &str = "platform";

/// Writes `<dir>/platform`: a certificate holder replaces its files one by one
/// (key first), each atomically, so a reader sees an old or a new file whole; a
/// key and certificate read across a re-issue may not match for a moment, which
/// the next handshake's read corrects.
fn write_platform(dir: &Path, ca: &Ca, host: &HostCert) -> Result<(), TlsError> {
    let platform = dir.join(PLATFORM);
    std::fs::create_dir_all(&platform).map_err(|source| TlsError::Write {
        path: platform.clone(),
        source,
    })?;
    write(&platform.join("key.pem"), &host.key_pem, true)?;
    write(&platform.join("cert.pem"), &host.chain_pem, false)?;
    write(&platform.join("ca.pem"), &ca.cert_pem, false)
}

/// The validity and names of a certificate (the first in the chain) with its
/// key, as [`Ca::issue`] gives them: `None` when the PEM is not one.
pub fn parse_cert(chain_pem: &str, key_pem: &str) -> Option<HostCert> {
    parse_host(chain_pem, key_pem)
}

/// The validity and names of a certificate this crate wrote (the first in the chain).
fn parse_host(chain_pem: &str, key_pem: &str) -> Option<HostCert> {
    use x509_parser::extensions::GeneralName;
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => names.push(
                        std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string(),
                    ),
                    16 => names.push(
                        std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    names.sort();
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Some(HostCert {
        chain_pem: chain_pem.to_string(),
        key_pem: key_pem.to_string(),
        names,
        not_before: at(cert.validity().not_before.timestamp()),
        not_after: at(cert.validity().not_after.timestamp()),
    })
}

/// Whether `cert` is two thirds into its life (or past it): time to replace it.
pub fn renewal_due(cert: &HostCert) -> bool {
    SystemTime::now() >= renew_at(cert)
}

/// When a certificate should be replaced: two thirds into its life.
fn renew_at(cert: &HostCert) -> SystemTime {
    let life = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default();
    cert.not_before + life * 2 / 3
}

impl TlsDir {
    /// Opens `dir` (created 0700 if missing): loads the CA or makes one named
    /// `label`, and loads the host certificate or issues one for `names` (also
    /// when it names other addresses or is due for renewal).
    pub fn open(dir: &Path, label: &str, names: &[String]) -> Result<TlsDir, TlsError> {
        let mkdir_err = |source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(mkdir_err)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(mkdir_err)?;
        }
        let lifetime = cert_lifetime()?;
        let ca = match (read(&dir.join("ca.pem"))?, read(&dir.join("ca.key"))?) {
            (Some(cert), Some(key)) => Ca::from_pem(&cert, &key)?,
            _ => {
                let ca = Ca::generate(label)?;
                write(&dir.join("ca.key"), &ca.key_pem, true)?;
                write(&dir.join("ca.pem"), &ca.cert_pem, false)?;
                tracing::info!(pin = %ca.pin()?, "made a CA for this host's API");
                ca
            }
        };
        let loaded = match (read(&dir.join("host.pem"))?, read(&dir.join("host.key"))?) {
            (Some(chain), Some(key)) => parse_host(&chain, &key),
            _ => None,
        };
        let mut wanted = names.to_vec();
        wanted.sort();
        let ca_pem_matches = |h: &HostCert| h.chain_pem.ends_with(&ca.cert_pem);
        let host = match loaded {
            Some(h)
                if h.names == wanted && renew_at(&h) > SystemTime::now() && ca_pem_matches(&h) =>
            {
                if !dir.join(PLATFORM).join("key.pem").exists() {
                    write_platform(dir, &ca, &h)?;
                }
                h
            }
            _ => Self::issue(dir, &ca, label, &wanted, lifetime)?,
        };
        let resolver = Arc::new(HostCertResolver::new(&host)?);
        Ok(TlsDir {
            dir: dir.to_path_buf(),
            label: label.to_string(),
            lifetime,
            resolver,
            state: Mutex::new((ca, host)),
        })
    }

    fn issue(
        dir: &Path,
        ca: &Ca,
        label: &str,
        names: &[String],
        lifetime: Duration,
    ) -> Result<HostCert, TlsError> {
        let host = ca.issue(&format!("flynn host {label}"), names, lifetime)?;
        write(&dir.join("host.key"), &host.key_pem, true)?;
        write(&dir.join("host.pem"), &host.chain_pem, false)?;
        write_platform(dir, ca, &host)?;
        Ok(host)
    }

    /// `<dir>/platform`: the CA certificate, this host's certificate and key,
    /// without the CA's key (see the module's notes).
    pub fn platform_dir(&self) -> PathBuf {
        self.dir.join(PLATFORM)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Ca, HostCert)> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn resolver(&self) -> Arc<HostCertResolver> {
        self.resolver.clone()
    }

    pub fn ca_pem(&self) -> String {
        self.lock().0.cert_pem.clone()
    }

    pub fn ca(&self) -> Ca {
        self.lock().0.clone()
    }

    pub fn pin(&self) -> Result<Pin, TlsError> {
        self.lock().0.pin()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The current certificate's expiry and names.
    pub fn host(&self) -> HostCert {
        self.lock().1.clone()
    }

    /// Issues a new certificate if the current one is due or names other
    /// addresses than `names`; returns whether it did.
    pub fn renew_if_due(&self, names: &[String]) -> Result<bool, TlsError> {
        let mut wanted = names.to_vec();
        wanted.sort();
        let mut state = self.lock();
        if state.1.names == wanted && renew_at(&state.1) > SystemTime::now() {
            return Ok(false);
        }
        let host = Self::issue(&self.dir, &state.0, &self.label, &wanted, self.lifetime)?;
        self.resolver.set(&host)?;
        state.1 = host;
        Ok(true)
    }

    /// Replaces the CA (the bootstrap hands every host the cluster's) and
    /// re-issues this host's certificate under it at once; marks it the
    /// cluster's. Returns whether anything changed: the same CA, already marked,
    /// is left as it is (a re-run of the bootstrap re-issues nothing).
    pub fn install_ca(&self, ca: Ca, names: &[String]) -> Result<bool, TlsError> {
        let mut wanted = names.to_vec();
        wanted.sort();
        let mut state = self.lock();
        let marker = self.dir.join("cluster");
        if state.0.cert_pem == ca.cert_pem && marker.exists() {
            return Ok(false);
        }
        write(&self.dir.join("ca.key"), &ca.key_pem, true)?;
        write(&self.dir.join("ca.pem"), &ca.cert_pem, false)?;
        let host = Self::issue(&self.dir, &ca, &self.label, &wanted, self.lifetime)?;
        self.resolver.set(&host)?;
        *state = (ca, host);
        // Last: a crash before it leaves the CA in place, unmarked, and the next
        // bootstrap marks it.
        write(&marker, "", false)?;
        Ok(true)
    }

    /// Whether the CA is the cluster's (installed by the bootstrap) rather than
    /// the one this host made at its first start.
    pub fn is_cluster_ca(&self) -> bool {
        self.dir.join("cluster").exists()
    }

    /// The directory (`<state>/tls`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long until the current certificate is due.
    fn until_due(&self) -> Duration {
        renew_at(&self.lock().1)
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

/// Renews the host certificate in the background: when it is due, and when the
/// host's addresses (`names()`) change (checked at least every minute).
pub fn spawn_renewal<F>(tls: Arc<TlsDir>, names: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Vec<String> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let wait = tls
                .until_due()
                .clamp(Duration::from_millis(200), Duration::from_secs(60));
            tokio::time::sleep(wait).await;
            let tls = tls.clone();
            let wanted = names();
            match tokio::task::spawn_blocking(move || tls.renew_if_due(&wanted)).await {
                Ok(Ok(true)) => tracing::info!("renewed the API's TLS certificate"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    "renewing the API's TLS certificate: {e} (retrying in a minute at most)"
                ),
                Err(e) => tracing::warn!("renewing the API's TLS certificate: {e}"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_once_then_reloads_the_same_ca_and_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let names = crate::host_names("h", &["10.1.2.3".parse().unwrap()]);
        let first = TlsDir::open(&dir.path().join("tls"), "h", &names).unwrap();
        let second = TlsDir::open(&dir.path().join("tls"), "h", &names).unwrap();
        assert_eq!(first.pin().unwrap(), second.pin().unwrap());
        assert_eq!(first.host().chain_pem, second.host().chain_pem);
        assert!(!second.renew_if_due(&names).unwrap());
        // Another address: a new certificate.
        let moved = crate::host_names("h", &["10.1.2.4".parse().unwrap()]);
        assert!(second.renew_if_due(&moved).unwrap());
        assert!(second.host().names.contains(&"10.1.2.4".to_string()));
        // A new CA: a new pin and a certificate under it.
        let ca = Ca::generate("cluster").unwrap();
        let pin = ca.pin().unwrap();
        assert!(!second.is_cluster_ca());
        assert!(second.install_ca(ca.clone(), &moved).unwrap());
        assert_eq!(second.pin().unwrap(), pin);
        assert!(second.is_cluster_ca());
        // The same CA again changes nothing.
        let chain = second.host().chain_pem;
        assert!(!second.install_ca(ca, &moved).unwrap());
        assert_eq!(second.host().chain_pem, chain);
        // What platform jobs get: the CA's certificate and the host's, no CA key.
        let platform = second.platform_dir();
        assert_eq!(
            std::fs::read_to_string(platform.join("cert.pem")).unwrap(),
            second.host().chain_pem
        );
        assert_eq!(
            std::fs::read_to_string(platform.join("ca.pem")).unwrap(),
            second.ca_pem()
        );
        assert!(!platform.join("ca.key").exists());
        let reopened = TlsDir::open(&dir.path().join("tls"), "h", &moved).unwrap();
        assert_eq!(reopened.pin().unwrap(), pin);
        assert_eq!(reopened.host().chain_pem, second.host().chain_pem);
    }
}
