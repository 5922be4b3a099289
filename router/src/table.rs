//! Which route a request takes: the exact host name first, then the longest wildcard
//! suffix (`*.example.com` matches `a.example.com` and `a.b.example.com`, not
//! `example.com`), then among that host's routes the longest path prefix that ends on
//! a segment boundary (`/api` matches `/api` and `/api/x`, not `/apix`).

use std::collections::HashMap;
use std::sync::Arc;

use discovery::routes::{Route, RouteKind};

/// An HTTP route as the proxy uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoute {
    pub id: String,
    pub service: String,
    /// Normalised: no trailing '/', empty for the whole host.
    pub path: String,
    pub sticky: bool,
}

/// Routes by host name; rebuilt whole on every change (routes change rarely, requests
/// read it constantly).
#[derive(Debug, Default)]
pub struct Table {
    exact: HashMap<String, Vec<Arc<HttpRoute>>>,
    /// Suffix without the `*` (`.example.com`), longest first.
    wildcard: Vec<(String, Vec<Arc<HttpRoute>>)>,
    /// TCP port → service.
    pub tcp: HashMap<u16, String>,
    /// Routes' own certificates: (route id, domain, certificate).
    pub certs: Vec<(String, String, discovery::routes::RouteCertificate)>,
}

impl Table {
    pub fn new(routes: &[Route]) -> Table {
        let mut t = Table::default();
        let mut wild: HashMap<String, Vec<Arc<HttpRoute>>> = HashMap::new();
        for r in routes {
            match r.kind {
                RouteKind::Tcp => {
                    if let Some(p) = r.port {
                        t.tcp.insert(p, r.service.clone());
                    }
                }
                RouteKind::Http => {
                    let Some(domain) = &r.domain else { continue };
                    if let Some(c) = &r.certificate {
                        t.certs.push((r.id.clone(), domain.clone(), c.clone()));
                    }
                    let route = Arc::new(HttpRoute {
                        id: r.id.clone(),
                        service: r.service.clone(),
                        path: r
                            .path
                            .as_deref()
                            .unwrap_or("")
                            .trim_end_matches('/')
                            .to_string(),
                        sticky: r.sticky,
                    });
                    let domain = domain.to_ascii_lowercase();
                    match domain.strip_prefix('*') {
                        Some(suffix) => wild.entry(suffix.to_string()).or_default().push(route),
                        None => t.exact.entry(domain).or_default().push(route),
                    }
                }
            }
        }
        t.wildcard = wild.into_iter().collect();
        t.wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        for routes in t
            .exact
            .values_mut()
            .chain(t.wildcard.iter_mut().map(|w| &mut w.1))
        {
            // Longest path first, then by id, so the choice never depends on etcd's order.
            routes.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.id.cmp(&b.id)));
        }
        t
    }

    /// The route for `host` (any `:port` and case ignored) and `path`.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<HttpRoute>> {
        let host = strip_port(host).to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        if let Some(routes) = self.exact.get(host)
            && let Some(r) = by_path(routes, path)
        {
            return Some(r);
        }
        self.wildcard
            .iter()
            .filter(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .find_map(|(_, routes)| by_path(routes, path))
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.tcp.is_empty()
    }
}

fn by_path<'a>(routes: &'a [Arc<HttpRoute>], path: &str) -> Option<&'a Arc<HttpRoute>> {
    routes.iter().find(|r| {
        r.path.is_empty()
            || path.strip_prefix(r.path.as_str()).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')
            })
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal: [::1]:80
        return host
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(id: &str, domain: &str, path: Option<&str>) -> Route {
        Route {
            id: id.into(),
            kind: RouteKind::Http,
            service: format!("svc-{id}"),
            domain: Some(domain.into()),
            path: path.map(str::to_string),
            sticky: false,
            port: None,
            app: None,
            certificate: None,
        }
    }

    #[test]
    fn exact_then_wildcard_then_longest_path() {
        let t = Table::new(&[
            http("a", "demo.cluster.local", None),
            http("b", "demo.cluster.local", Some("/api/")),
            http("c", "*.cluster.local", None),
            http("d", "*.b.cluster.local", None),
            http("e", "www.example.com", Some("/shop")),
        ]);
        let id = |h: &str, p: &str| t.lookup(h, p).map(|r| r.id.clone());
        assert_eq!(id("demo.cluster.local", "/"), Some("a".into()));
        assert_eq!(id("DEMO.cluster.local:8080", "/api"), Some("b".into()));
        assert_eq!(id("demo.cluster.local", "/api/x?y"), Some("b".into()));
        assert_eq!(id("demo.cluster.local", "/apix"), Some("a".into()));
        assert_eq!(id("other.cluster.local", "/"), Some("c".into()));
        assert_eq!(id("x.b.cluster.local", "/"), Some("d".into()));
        assert_eq!(id("cluster.local", "/"), None);
        assert_eq!(id("www.example.com", "/"), None);
        assert_eq!(id("www.example.com", "/shop/cart"), Some("e".into()));
        assert_eq!(id("demo.cluster.local.", "/"), Some("a".into()));
    }
}
