//! The router's routes (`/flynn/routes/<id>`): which service answers which host name
//! and path, or which TCP port. Written by whoever owns the app (the controller),
//! read and watched by every router. No lease: a route outlives the processes that
//! serve it (a route with no backend answers 503, which says more than a 404).

use serde::{Deserialize, Serialize};

use crate::error::DiscoveryError;
use crate::etcd::Etcd;
use crate::schema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub id: String,
    pub kind: RouteKind,
    /// The discovery service whose instances are the backends.
    pub service: String,
    /// HTTP: the host name, or `*.example.com` for any name under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// HTTP: a path prefix (`/api`), matched on segment boundaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP: pin a client to one backend by an encrypted cookie.
    #[serde(default)]
    pub sticky: bool,
    /// TCP: the port routers listen on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The app the route belongs to (for listings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// HTTP: the route's own TLS certificate (else routers serve the cluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<RouteCertificate>,
}

/// A certificate chain and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCertificate {
    pub cert: String,
    pub key: String,
}

impl Route {
    /// A route that can be served: HTTP with a domain, TCP with a port.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        schema::check_id("route id", &self.id)?;
        schema::check_service(&self.service)?;
        let bad = |reason| {
            Err(DiscoveryError::InvalidName {
                what: "route",
                value: self.id.clone(),
                reason,
            })
        };
        match self.kind {
            RouteKind::Http => {
                let Some(domain) = &self.domain else {
                    return bad("an HTTP route needs a domain");
                };
                let name = domain.strip_prefix("*.").unwrap_or(domain);
                let ok = !name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !ok {
                    return bad("the domain must be a host name, or *. followed by one");
                }
                if let Some(p) = &self.path
                    && !p.starts_with('/')
                {
                    return bad("the path must start with '/'");
                }
                if self.port.is_some() {
                    return bad("an HTTP route has no port (routers listen on 80 and 443)");
                }
            }
            RouteKind::Tcp => {
                if self.port.is_none_or(|p| p == 0) {
                    return bad("a TCP route needs a port");
                }
                if self.domain.is_some()
                    || self.path.is_some()
                    || self.sticky
                    || self.certificate.is_some()
                {
                    return bad("a TCP route has only a port and a service");
                }
            }
        }
        Ok(())
    }
}

/// The ports users' TCP routes may take (Flynn's routers took 3000-3500): a
/// range keeps the routers' own ports (80, 443, the controller's 81) and the
/// hosts' services out of an app's reach. The controller holds routes to it
/// (`--tcp-route-ports`); the platform's own TCP route (81) is the bootstrap's
/// and outside it on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPortRange {
    pub first: u16,
    pub last: u16,
}

impl TcpPortRange {
    pub const DEFAULT: TcpPortRange = TcpPortRange {
        first: 3000,
        last: 3500,
    };

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl Default for TcpPortRange {
    fn default() -> TcpPortRange {
        TcpPortRange::DEFAULT
    }
}

impl std::fmt::Display for TcpPortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid TCP port range {0:?}: give FIRST-LAST, 1 <= FIRST <= LAST <= 65535 (e.g. 3000-3500)"
)]
pub struct BadPortRange(String);

impl std::str::FromStr for TcpPortRange {
    type Err = BadPortRange;

    fn from_str(s: &str) -> Result<TcpPortRange, BadPortRange> {
        let bad = || BadPortRange(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(TcpPortRange { first, last })
    }
}

pub async fn put(etcd: &Etcd, route: &Route) -> Result<(), DiscoveryError> {
    route.validate()?;
    let key = schema::route(&route.id);
    let value = serde_json::to_vec(route).map_err(|e| DiscoveryError::Decode {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    etcd.client()
        .put(key.as_str(), value, None)
        .await
        .map_err(DiscoveryError::etcd(format!("writing route {}", route.id)))?;
    Ok(())
}

pub async fn delete(etcd: &Etcd, id: &str) -> Result<(), DiscoveryError> {
    etcd.client()
        .delete(schema::route(id), None)
        .await
        .map_err(DiscoveryError::etcd(format!("deleting route {id}")))?;
    Ok(())
}

/// Decodes a route's value; `None` (logged) when it does not decode or validate, so
/// one bad writer cannot take the others' routes down.
pub fn decode(key: &str, value: &[u8]) -> Option<Route> {
    match serde_json::from_slice::<Route>(value) {
        Ok(r) => match r.validate() {
            Ok(()) => Some(r),
            Err(e) => {
                tracing::warn!(%key, error = %e, "skipping a route that is not valid");
                None
            }
        },
        Err(e) => {
            tracing::warn!(%key, error = %e, "skipping a route that does not decode");
            None
        }
    }
}

pub async fn list(etcd: &Etcd) -> Result<Vec<Route>, DiscoveryError> {
    let (kvs, _) = etcd.get_prefix(schema::ROUTES).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_hold_their_ends() {
        let r: TcpPortRange = "3000-3500".parse().unwrap();
        assert_eq!(r, TcpPortRange::DEFAULT);
        assert!(r.contains(3000) && r.contains(3500) && !r.contains(2999) && !r.contains(3501));
        assert_eq!(r.to_string(), "3000-3500");
        assert_eq!("81-81".parse::<TcpPortRange>().unwrap().last, 81);
        for bad in ["", "3000", "3500-3000", "0-10", "1-70000", "a-b", "1-2-3"] {
            assert!(bad.parse::<TcpPortRange>().is_err(), "{bad}");
        }
    }

    fn http(domain: &str, path: Option<&str>) -> Route {
        Route {
            id: "r1".into(),
            kind: RouteKind::Http,
            service: "web".into(),
            domain: Some(domain.into()),
            path: path.map(str::to_string),
            sticky: false,
            port: None,
            app: None,
            certificate: None,
        }
    }

    #[test]
    fn validates() {
        assert!(http("demo.cluster.local", None).validate().is_ok());
        assert!(http("*.example.com", Some("/api")).validate().is_ok());
        assert!(http("bad domain", None).validate().is_err());
        assert!(http("a..b", None).validate().is_err());
        assert!(http("a.b", Some("api")).validate().is_err());
        let tcp = Route {
            kind: RouteKind::Tcp,
            domain: None,
            port: Some(3001),
            ..http("x", None)
        };
        assert!(tcp.validate().is_ok());
        assert!(
            Route {
                port: None,
                ..tcp.clone()
            }
            .validate()
            .is_err()
        );
        assert!(decode("k", b"{not json").is_none());
    }
}
