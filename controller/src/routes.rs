//! Every route the controller serves, in one table (`ROUTES`): the request router
//! in `api.rs` dispatches from it, so a route is served if and only if it is here;
//! `controller/openapi.json` documents the same routes, methods and query
//! parameters, which `tests/openapi.rs` checks both ways.
//!
//! Each route names the query parameters it takes: anything else is refused with a
//! 400 saying which ones it takes (a `?timeout=` on a route that makes no deploy
//! would otherwise be silently ignored). A known path asked with another method gets
//! 405 and an `Allow` header.

/// What the request router does for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Health,
    CaCert,
    ListApps,
    CreateApp,
    AppInfo,
    DeleteApp,
    ListReleases,
    AddRelease,
    SetEnv,
    Rollback,
    Log,
    ListDeploys,
    GetDeploy,
    GetFormation,
    PutFormation,
    ListJobs,
    RunJob,
    /// An image archive into every host's store (`import.rs`).
    ImportImage,
    /// Relayed to the job's host's agent (`proxy.rs`): the route's path after
    /// `RELAY_PREFIX` is the agent's.
    Relay,
    ListRoutes,
    AddRoute,
    DeleteRoute,
}

/// One route: method, OpenAPI path template, the query parameters it takes.
#[derive(Debug)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub query: &'static [&'static str],
    /// Served without the controller key.
    pub public: bool,
    pub(crate) op: Op,
}

const fn r(method: &'static str, path: &'static str, op: Op) -> Endpoint {
    Endpoint {
        method,
        path,
        query: &[],
        public: false,
        op,
    }
}

const fn q(
    method: &'static str,
    path: &'static str,
    query: &'static [&'static str],
    op: Op,
) -> Endpoint {
    Endpoint {
        method,
        path,
        query,
        public: false,
        op,
    }
}

/// The part of a relayed route's path that names the job's host; the rest is the
/// agent's own route.
pub(crate) const RELAY_PREFIX: &str = "/apps/{app}/hosts/{host}";

/// The deploy routes take how long the new release has to get healthy.
const DEPLOY_QUERY: &[&str] = &["timeout"];

/// Every route served. The relayed job routes are exactly those a `flynn run`
/// follower uses on the agent (create is the controller's own `POST /apps/{app}/jobs`),
/// with the agent's query parameters for each; no other agent route is reachable.
pub const ROUTES: &[Endpoint] = &[
    Endpoint {
        method: "GET",
        path: "/health",
        query: &[],
        public: true,
        op: Op::Health,
    },
    // The cluster's CA certificate, as Flynn's controller served it: public (a
    // certificate is no secret); a client checks it against the pin it was given
    // before trusting it (`flynn create` hands it to git for the HTTPS remote).
    Endpoint {
        method: "GET",
        path: "/ca-cert",
        query: &[],
        public: true,
        op: Op::CaCert,
    },
    r("GET", "/apps", Op::ListApps),
    r("POST", "/apps", Op::CreateApp),
    r("GET", "/apps/{app}", Op::AppInfo),
    r("DELETE", "/apps/{app}", Op::DeleteApp),
    r("GET", "/apps/{app}/releases", Op::ListReleases),
    q("POST", "/apps/{app}/releases", DEPLOY_QUERY, Op::AddRelease),
    q("POST", "/apps/{app}/env", DEPLOY_QUERY, Op::SetEnv),
    q("POST", "/apps/{app}/rollback", DEPLOY_QUERY, Op::Rollback),
    q(
        "GET",
        "/apps/{app}/log",
        &["lines", "follow", "type", "job"],
        Op::Log,
    ),
    r("GET", "/apps/{app}/deploys", Op::ListDeploys),
    r("GET", "/apps/{app}/deploys/{id}", Op::GetDeploy),
    r("GET", "/apps/{app}/formation", Op::GetFormation),
    r("PUT", "/apps/{app}/formation", Op::PutFormation),
    r("GET", "/apps/{app}/jobs", Op::ListJobs),
    r("POST", "/apps/{app}/jobs", Op::RunJob),
    r("POST", "/apps/{app}/import", Op::ImportImage),
    r("GET", "/apps/{app}/hosts/{host}/jobs/{id}", Op::Relay),
    q(
        "DELETE",
        "/apps/{app}/hosts/{host}/jobs/{id}",
        &["force"],
        Op::Relay,
    ),
    r(
        "POST",
        "/apps/{app}/hosts/{host}/jobs/{id}/start",
        Op::Relay,
    ),
    q(
        "POST",
        "/apps/{app}/hosts/{host}/jobs/{id}/kill",
        &["signal"],
        Op::Relay,
    ),
    q(
        "GET",
        "/apps/{app}/hosts/{host}/jobs/{id}/wait",
        &["condition"],
        Op::Relay,
    ),
    q(
        "GET",
        "/apps/{app}/hosts/{host}/jobs/{id}/logs",
        &["follow", "tail", "stdout", "stderr", "since"],
        Op::Relay,
    ),
    q(
        "POST",
        "/apps/{app}/hosts/{host}/jobs/{id}/attach",
        &["stdin", "stdout", "stderr"],
        Op::Relay,
    ),
    q(
        "POST",
        "/apps/{app}/hosts/{host}/jobs/{id}/resize",
        &["h", "w"],
        Op::Relay,
    ),
    r("GET", "/apps/{app}/routes", Op::ListRoutes),
    r("POST", "/apps/{app}/routes", Op::AddRoute),
    r("DELETE", "/apps/{app}/routes/{id}", Op::DeleteRoute),
];

/// The values of a matched route's path parameters.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The value of `{name}` (empty if the template has none: a programming error
    /// that the route table's tests would show).
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// What a request's method and path are.
#[derive(Debug)]
pub(crate) enum Lookup {
    Found(&'static Endpoint, Params),
    /// The path is served, with these methods only.
    WrongMethod(Vec<&'static str>),
    NotFound,
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_matches('/').split('/').collect()
}

/// `template`'s parameters bound to `segs`, if the path fits it.
fn bind(template: &'static str, segs: &[&str]) -> Option<Params> {
    let parts = segments(template);
    if parts.len() != segs.len() {
        return None;
    }
    let mut params = Params::default();
    for (p, s) in parts.into_iter().zip(segs) {
        match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if !s.is_empty() => params.0.push((name, s.to_string())),
            Some(_) => return None,
            None if p == *s => {}
            None => return None,
        }
    }
    Some(params)
}

pub(crate) fn lookup(method: &str, path: &str) -> Lookup {
    let segs = segments(path);
    let mut allowed = Vec::new();
    for route in ROUTES {
        if let Some(params) = bind(route.path, &segs) {
            if route.method == method {
                return Lookup::Found(route, params);
            }
            allowed.push(route.method);
        }
    }
    if allowed.is_empty() {
        Lookup::NotFound
    } else {
        Lookup::WrongMethod(allowed)
    }
}

/// Whether `path` is served without the key (whatever the method).
pub(crate) fn is_public(path: &str) -> bool {
    let segs = segments(path);
    ROUTES
        .iter()
        .any(|r| r.public && bind(r.path, &segs).is_some())
}

/// The query's `key=value` pairs (a bare `key` has an empty value), each checked
/// against what `route` takes.
pub(crate) fn query(route: &Endpoint, q: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for kv in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if !route.query.contains(&k) {
            let takes = if route.query.is_empty() {
                "it takes none".to_string()
            } else {
                format!("it takes {}", route.query.join(", "))
            };
            return Err(format!(
                "{} {} has no query parameter {k:?}: {takes}",
                route.method, route.path
            ));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// A relayed route's path on the agent, with the request's (checked) query.
pub(crate) fn agent_path(route: &Endpoint, params: &Params, q: Option<&str>) -> String {
    let rest = route.path.strip_prefix(RELAY_PREFIX).unwrap_or(route.path);
    let mut path = rest.replace("{id}", params.get("id"));
    if let Some(q) = q.filter(|q| !q.is_empty()) {
        path.push('?');
        path.push_str(q);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_and_path_is_one_route_and_every_relay_is_a_job_route() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
            assert!(r.path.starts_with('/'), "{}", r.path);
            if r.op == Op::Relay {
                assert!(
                    r.path.starts_with(&format!("{RELAY_PREFIX}/jobs/{{id}}")),
                    "{}",
                    r.path
                );
            }
        }
    }

    #[test]
    fn lookups_bind_parameters_and_tell_wrong_methods_from_unknown_paths() {
        match lookup("GET", "/apps/demo/deploys/d1/") {
            Lookup::Found(r, p) => {
                assert_eq!(r.op, Op::GetDeploy);
                assert_eq!((p.get("app"), p.get("id")), ("demo", "d1"));
            }
            other => panic!("{other:?}"),
        }
        match lookup("PATCH", "/apps") {
            Lookup::WrongMethod(m) => assert_eq!(m, ["GET", "POST"]),
            other => panic!("{other:?}"),
        }
        match lookup("POST", "/health") {
            Lookup::WrongMethod(m) => assert_eq!(m, ["GET"]),
            other => panic!("{other:?}"),
        }
        // Agent routes that are not relayed are not served at all.
        for path in [
            "/apps/demo/hosts/h1/jobs/j1/exec",
            "/apps/demo/hosts/h1/jobs",
            "/apps/demo/hosts/h1/images",
            "/apps/demo/hosts/h1/jobs/j1/exec/e1/attach",
            "/apps//releases",
        ] {
            assert!(matches!(lookup("POST", path), Lookup::NotFound), "{path}");
        }
        assert!(is_public("/health/") && !is_public("/apps"));
    }

    #[test]
    fn queries_are_limited_to_what_the_route_takes() {
        let Lookup::Found(release, _) = lookup("POST", "/apps/a/releases") else {
            panic!()
        };
        assert_eq!(
            query(release, Some("timeout=5")).unwrap(),
            [("timeout".to_string(), "5".to_string())]
        );
        let Lookup::Found(scale, _) = lookup("PUT", "/apps/a/formation") else {
            panic!()
        };
        let e = query(scale, Some("timeout=5")).unwrap_err();
        assert!(e.contains("takes none"), "{e}");
        let Lookup::Found(kill, p) = lookup("POST", "/apps/a/hosts/h/jobs/j1/kill") else {
            panic!()
        };
        assert!(query(kill, Some("signal=TERM")).is_ok());
        assert!(query(kill, Some("path=/etc")).is_err());
        assert_eq!(
            agent_path(kill, &p, Some("signal=TERM")),
            "/jobs/j1/kill?signal=TERM"
        );
    }
}
