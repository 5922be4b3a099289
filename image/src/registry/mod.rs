//! Talking to registries (the OCI distribution API, Docker's registry v2): where a
//! repository is fetched from (mirrors, then the registry itself; Docker Hub's endpoint),
//! over which scheme (HTTPS, or plain HTTP for insecure registries), with which
//! credentials (given, or from Docker's `config.json`), and the HTTP requests themselves
//! through the `oci-client` crate ([`client`]).
//!
//! This module fetches bytes and reports typed errors; it never writes to the store.
//! Verification and unpacking are [`crate::pull`]'s.

pub mod auth;
pub(crate) mod client;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::reference::Reference;

pub use auth::{AuthError, Credentials, DockerConfig};

/// Docker Hub's name in references, and the host that serves its registry API.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// Why talking to a registry failed. Each names the registry (host) it was talking to.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "registry {registry}: access to {repository} denied ({detail}); {hint}",
        hint = if *.with_credentials {
            "the username or password is wrong, or the account may not pull this repository"
        } else {
            "log in (credentials in ~/.docker/config.json) or check the repository name"
        }
    )]
    Unauthorized {
        registry: String,
        repository: String,
        with_credentials: bool,
        detail: String,
    },
    #[error("registry {registry}: {what} not found (is the name or tag right?)")]
    NotFound { registry: String, what: String },
    #[error("registry {registry}: cannot connect: {detail}")]
    Connect { registry: String, detail: String },
    #[error("registry {registry}: {what} failed: {detail}")]
    Http {
        registry: String,
        what: String,
        detail: String,
    },
    #[error(
        "registry {registry}: {what} is {size} bytes; documents above {limit} bytes are refused"
    )]
    TooLarge {
        registry: String,
        what: String,
        size: u64,
        limit: u64,
    },
    #[error(
        "registry {registry} served a wrong {what}: its digest is {actual}, but {expected} was \
         asked for; the registry or something between us is corrupt or tampering"
    )]
    DigestMismatch {
        registry: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "invalid insecure registry entry {entry:?}: give host[:port] or a CIDR such as 10.0.0.0/8"
    )]
    BadInsecureEntry { entry: String },
    #[error(
        "invalid mirror {mirror:?} for {registry}: give host[:port] (an http:// or https:// prefix is allowed)"
    )]
    BadMirror { registry: String, mirror: String },
}

impl RegistryError {
    /// True when asking again later (or elsewhere) may succeed: connection trouble and
    /// server errors, not a refusal or a missing name.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Connect { .. } | RegistryError::Http { .. }
        )
    }
}

/// Registry settings from the daemon's config file.
///
/// ```json
/// {"mirrors": {"docker.io": ["mirror.local:5000"]}, "insecure": ["10.0.0.0/8", "reg.lan:5000"]}
/// ```
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry domain (as in references: `docker.io`, `quay.io`, `host:port`) -> mirrors,
    /// tried in order before the registry itself.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registries reached over plain HTTP: `host[:port]` (a host without a port matches
    /// every port) or a CIDR of registry addresses. 127.0.0.0/8, ::1 and `localhost` are
    /// always insecure, as in Docker.
    #[serde(default)]
    pub insecure: Vec<String>,
}

/// One place to fetch a repository from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` that serves `/v2/`.
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// A mirror: failures fall through to the next endpoint.
    pub mirror: bool,
}

impl RegistryConfig {
    /// Checks every entry, so a bad config file is refused when the daemon starts.
    pub fn validate(&self) -> Result<(), RegistryError> {
        for entry in &self.insecure {
            if !valid_insecure_entry(entry) {
                return Err(RegistryError::BadInsecureEntry {
                    entry: entry.clone(),
                });
            }
        }
        for (registry, mirrors) in &self.mirrors {
            for mirror in mirrors {
                if mirror_host(mirror).is_none() {
                    return Err(RegistryError::BadMirror {
                        registry: registry.clone(),
                        mirror: mirror.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Where to fetch `reference` from, in order: its mirrors, then the registry itself
    /// (Docker Hub's API is served by `registry-1.docker.io`).
    pub fn endpoints(&self, reference: &Reference) -> Vec<Endpoint> {
        let domain = reference.domain();
        let mut out = Vec::new();
        for mirror in self.mirrors.get(domain).into_iter().flatten() {
            let Some((host, scheme)) = mirror_host(mirror) else {
                continue;
            };
            let insecure = match scheme {
                Some("http") => true,
                Some(_) => false,
                None => self.is_insecure(&host),
            };
            out.push(Endpoint {
                host,
                insecure,
                mirror: true,
            });
        }
        let host = if domain == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT.to_owned()
        } else {
            domain.to_owned()
        };
        out.push(Endpoint {
            insecure: self.is_insecure(&host),
            host,
            mirror: false,
        });
        out
    }

    /// Whether `host[:port]` is reached over plain HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        let (name, _) = split_host_port(host);
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let ip = name.parse::<IpAddr>().ok();
        if ip.is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.insecure.iter().any(|entry| {
            if let Ok(net) = entry.parse::<ipnet::IpNet>() {
                return ip.is_some_and(|ip| net.contains(&ip));
            }
            let (entry_name, entry_port) = split_host_port(entry);
            let (_, port) = split_host_port(host);
            entry_name.eq_ignore_ascii_case(name) && (entry_port.is_none() || entry_port == port)
        })
    }
}

/// `host:port` -> (`host`, Some(`port`)); handles `[::1]:5000`.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((addr, tail)) => (addr, tail.strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => {
            (name, Some(port))
        }
        _ => (host, None),
    }
}

fn valid_host(host: &str) -> bool {
    let (name, port) = split_host_port(host);
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    let name_ok = !name.is_empty()
        && (name.parse::<IpAddr>().is_ok()
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    port_ok && name_ok && !host.contains('/')
}

fn valid_insecure_entry(entry: &str) -> bool {
    entry.parse::<ipnet::IpNet>().is_ok() || valid_host(entry)
}

/// A mirror entry: `host[:port]`, optionally with `http://` or `https://` and a trailing
/// `/`. Returns the host and the scheme given, if any.
fn mirror_host(mirror: &str) -> Option<(String, Option<&'static str>)> {
    let (scheme, rest) = if let Some(rest) = mirror.strip_prefix("http://") {
        (Some("http"), rest)
    } else if let Some(rest) = mirror.strip_prefix("https://") {
        (Some("https"), rest)
    } else {
        (None, mirror)
    };
    let host = rest.trim_end_matches('/');
    valid_host(host).then(|| (host.to_owned(), scheme))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_and_localhost_are_insecure_by_default() {
        let config = RegistryConfig::default();
        assert!(config.is_insecure("127.0.0.1:5000"));
        assert!(config.is_insecure("127.3.2.1"));
        assert!(config.is_insecure("localhost:5000"));
        assert!(config.is_insecure("[::1]:5000"));
        assert!(!config.is_insecure("registry-1.docker.io"));
        assert!(!config.is_insecure("10.1.2.3:5000"));
    }

    #[test]
    fn insecure_entries_match_hosts_ports_and_cidrs() {
        let config = RegistryConfig {
            insecure: vec![
                "10.0.0.0/8".into(),
                "reg.lan".into(),
                "other.lan:5000".into(),
            ],
            ..RegistryConfig::default()
        };
        config.validate().unwrap();
        assert!(config.is_insecure("10.1.2.3:5000"));
        assert!(!config.is_insecure("11.1.2.3:5000"));
        let v6 = RegistryConfig {
            insecure: vec!["fd00::/8".into(), "192.168.1.7/16".into()],
            ..RegistryConfig::default()
        };
        v6.validate().unwrap();
        assert!(v6.is_insecure("[fd12::1]:5000"));
        assert!(!v6.is_insecure("[fe80::1]:5000"));
        assert!(v6.is_insecure("192.168.200.1"));
        assert!(!v6.is_insecure("10.1.2.3"));
        for bad in ["10.0.0.0/33", "fd00::/129"] {
            let c = RegistryConfig {
                insecure: vec![bad.into()],
                ..RegistryConfig::default()
            };
            assert!(c.validate().is_err(), "{bad}");
        }
        assert!(config.is_insecure("reg.lan:443"));
        assert!(config.is_insecure("other.lan:5000"));
        assert!(!config.is_insecure("other.lan:6000"));
        let bad = RegistryConfig {
            insecure: vec!["http://x/y".into()],
            ..RegistryConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(RegistryError::BadInsecureEntry { .. })
        ));
    }

    #[test]
    fn docker_hub_is_served_by_registry_1_after_its_mirrors() {
        let mut config = RegistryConfig::default();
        config.mirrors.insert(
            "docker.io".into(),
            vec!["http://127.0.0.1:5001/".into(), "mirror.lan:5000".into()],
        );
        config.validate().unwrap();
        let endpoints = config.endpoints(&r("busybox"));
        assert_eq!(
            endpoints,
            vec![
                Endpoint {
                    host: "127.0.0.1:5001".into(),
                    insecure: true,
                    mirror: true
                },
                Endpoint {
                    host: "mirror.lan:5000".into(),
                    insecure: false,
                    mirror: true
                },
                Endpoint {
                    host: "registry-1.docker.io".into(),
                    insecure: false,
                    mirror: false
                },
            ]
        );
        let endpoints = config.endpoints(&r("127.0.0.1:5000/a/b:1"));
        assert_eq!(
            endpoints,
            vec![Endpoint {
                host: "127.0.0.1:5000".into(),
                insecure: true,
                mirror: false
            }]
        );
    }
}
