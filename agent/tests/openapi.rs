//! Holds the daemon to its one OpenAPI document (`agent/openapi.json`): every
//! route the server has is documented (and nothing else is), and the responses
//! of a live daemon to each route validate against the documented schemas.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use apidoc::Document;
use common::{Daemon, fixtures};
use serde_json::{Value, json};

/// The daemon's document, checked whole as it loads (apidoc).
struct Spec {
    doc: Document,
}

impl Spec {
    fn load() -> Spec {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        Spec {
            doc: Document::load(path).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// Panics unless `status` is documented for the route.
    fn schema(&self, method: &str, template: &str, status: u16, content_type: &str) {
        self.doc
            .response_schema(method, template, status, content_type)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn check(&self, method: &str, template: &str, status: u16, content_type: &str, body: &Value) {
        self.doc
            .check(method, template, status, content_type, body)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let served = flynn_host::api::ROUTES.iter().map(|(m, p)| (*m, *p, None));
    let differences = Spec::load().doc.differences(served);
    assert!(differences.is_empty(), "{differences:#?}");
}

/// Sends a request and checks the answer against the document; returns (status, JSON body).
fn call(
    d: &Daemon,
    spec: &Spec,
    method: &str,
    template: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body_text = body.map(|b| b.to_string());
    let (status, text) = d.http(method, path, body_text.as_deref());
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
    };
    if status != 204 {
        spec.check(method, template, status, "application/json", &value);
    } else {
        spec.schema(method, template, status, "application/json");
    }
    (status, value)
}

#[test]
fn responses_match_the_document() {
    let spec = Spec::load();
    let d = Daemon::start();
    let fx = fixtures();

    // Events first, so the stream sees what follows.
    let mut events = d.connect().unwrap();
    write!(
        events,
        "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        d.token
    )
    .unwrap();
    events
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut events = BufReader::new(events);
    let mut line = String::new();
    while !line.starts_with(": subscribed") {
        line.clear();
        events.read_line(&mut line).unwrap();
    }

    call(&d, &spec, "GET", "/version", "/version", None);
    let (status, tls) = call(&d, &spec, "GET", "/cluster/tls/ca", "/cluster/tls/ca", None);
    assert_eq!(status, 200, "{tls}");
    // A CA that is not valid PEM: a 400 the document describes.
    let (status, _) = call(
        &d,
        &spec,
        "PUT",
        "/cluster/tls",
        "/cluster/tls",
        Some(serde_json::json!({"ca_cert": "junk", "ca_key": "junk"})),
    );
    assert_eq!(status, 400);
    // A certificate from the host's CA for a service renewing its own, and the
    // names and lives it refuses.
    let (status, issued) = call(
        &d,
        &spec,
        "POST",
        "/cluster/tls/issue",
        "/cluster/tls/issue",
        Some(
            serde_json::json!({"names": ["*.example.test", "example.test"], "lifetime_secs": 3600}),
        ),
    );
    assert_eq!(status, 200, "{issued}");
    let chain = issued["chain"].as_str().unwrap();
    let cert = flynn_tls::parse_cert(chain, issued["key"].as_str().unwrap()).unwrap();
    assert_eq!(cert.names, ["*.example.test", "example.test"]);
    assert!(
        chain.ends_with(tls["ca"].as_str().unwrap()),
        "the chain ends with the CA"
    );
    for bad in [
        serde_json::json!({"names": [], "lifetime_secs": 3600}),
        serde_json::json!({"names": ["a b"], "lifetime_secs": 3600}),
        serde_json::json!({"names": ["ok.test"], "lifetime_secs": 5}),
        serde_json::json!({"names": ["ok.test"], "lifetime_secs": 400_000_000u64}),
    ] {
        let (status, body) = call(
            &d,
            &spec,
            "POST",
            "/cluster/tls/issue",
            "/cluster/tls/issue",
            Some(bad.clone()),
        );
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, host) = call(&d, &spec, "GET", "/host/status", "/host/status", None);
    assert_eq!(status, 200, "{host}");
    // Without the token, every route answers 401 with a documented error.
    let (status, text) = d.http_with("GET", "/jobs", None, None);
    assert_eq!(status, 401);
    spec.check(
        "GET",
        "/jobs",
        401,
        "application/json",
        &serde_json::from_str(&text).unwrap(),
    );
    let busybox = fx.join("busybox-docker.tar");
    let (status, images) = call(
        &d,
        &spec,
        "POST",
        "/images/import",
        "/images/import",
        Some(json!({"path": busybox})),
    );
    assert_eq!(status, 200, "{images}");
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/images/import",
        "/images/import",
        Some(json!({"path": "/no/such/archive.tar"})),
    );
    assert_eq!(status, 400);
    let (status, _) = call(&d, &spec, "GET", "/images", "/images", None);
    assert_eq!(status, 200);

    let (status, job) = call(
        &d,
        &spec,
        "POST",
        "/jobs",
        "/jobs",
        Some(
            json!({"image": "busybox", "cmd": ["sh", "-c", "trap 'exit 3' TERM; echo hi; while true; do sleep 0.1; done"], "start": false, "name": "api"}),
        ),
    );
    assert_eq!(status, 201, "{job}");
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs",
        "/jobs",
        Some(json!({"image": "nosuch"})),
    );
    assert_eq!(status, 404);
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs",
        "/jobs",
        Some(json!({"image": 7})),
    );
    assert_eq!(status, 400);
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs",
        "/jobs",
        Some(json!({"image": "busybox", "name": "api"})),
    );
    assert_eq!(status, 409);

    // The confinement fields, as the document describes them in a request and a record.
    let (status, secure) = call(
        &d,
        &spec,
        "POST",
        "/jobs",
        "/jobs",
        Some(
            json!({"image": "busybox", "cmd": ["true"], "start": false, "userns": true,
            "read_only": true, "cap_add": ["NET_ADMIN"], "cap_drop": ["NET_RAW"],
            "security_opt": ["seccomp=unconfined"], "resources": {"pids_limit": -1}}),
        ),
    );
    assert_eq!(status, 201, "{secure}");
    assert!(secure["config"]["userns"]["host"].is_u64(), "{secure}");
    let secure_path = format!("/jobs/{}", secure["id"].as_str().unwrap());
    let (status, _) = call(&d, &spec, "DELETE", "/jobs/{id}", &secure_path, None);
    assert_eq!(status, 204);
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs",
        "/jobs",
        Some(json!({"image": "busybox", "cap_add": ["NET_FLY"]})),
    );
    assert_eq!(status, 400);

    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs/{id}/start",
        "/jobs/api/start",
        None,
    );
    assert_eq!(status, 200);
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs/{id}/start",
        "/jobs/api/start",
        None,
    );
    assert_eq!(status, 409);
    let (status, _) = call(&d, &spec, "GET", "/jobs/{id}", "/jobs/api", None);
    assert_eq!(status, 200);
    let (status, _) = call(&d, &spec, "GET", "/jobs/{id}", "/jobs/nosuch", None);
    assert_eq!(status, 404);
    let (status, list) = call(&d, &spec, "GET", "/jobs", "/jobs?all=true", None);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (status, _) = call(&d, &spec, "GET", "/jobs", "/jobs?all=perhaps", None);
    assert_eq!(status, 400);
    let (status, _) = call(&d, &spec, "DELETE", "/jobs/{id}", "/jobs/api", None);
    assert_eq!(status, 409);
    let (status, _) = call(
        &d,
        &spec,
        "DELETE",
        "/images/{ref}",
        "/images/busybox",
        None,
    );
    assert_eq!(status, 409);
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs/{id}/kill",
        "/jobs/api/kill?signal=NOPE",
        None,
    );
    assert_eq!(status, 400);

    // Logs: each NDJSON line is a LogEntry.
    d.wait_until("api", "first output", |_| {
        let (_, text) = d.http("GET", "/jobs/api/logs", None);
        text.contains("hi")
    });
    let (status, text) = d.http("GET", "/jobs/api/logs?stdout=true&stderr=false", None);
    assert_eq!(status, 200);
    for line in text.lines() {
        let entry: Value = serde_json::from_str(line).unwrap();
        spec.check(
            "GET",
            "/jobs/{id}/logs",
            200,
            "application/x-ndjson",
            &entry,
        );
    }

    // Exec into the running job, inspect it, wait for it.
    let (status, exec) = call(
        &d,
        &spec,
        "POST",
        "/jobs/{id}/exec",
        "/jobs/api/exec",
        Some(json!({"cmd": ["sh", "-c", "exit 6"]})),
    );
    assert_eq!(status, 201, "{exec}");
    let exec_id = exec["id"].as_str().unwrap().to_string();
    let (status, exit) = call(
        &d,
        &spec,
        "GET",
        "/jobs/{id}/exec/{exec_id}/wait",
        &format!("/jobs/api/exec/{exec_id}/wait"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(exit["exit_code"], 6);
    let (status, exec) = call(
        &d,
        &spec,
        "GET",
        "/jobs/{id}/exec/{exec_id}",
        &format!("/jobs/api/exec/{exec_id}"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(exec["running"], false);
    let (status, _) = call(
        &d,
        &spec,
        "GET",
        "/jobs/{id}/exec/{exec_id}",
        "/jobs/api/exec/000000000000",
        None,
    );
    assert_eq!(status, 404);
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs/{id}/exec",
        "/jobs/api/exec",
        Some(json!({"cmd": []})),
    );
    assert_eq!(status, 400);
    // No terminal to resize; no upgrade asked for.
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs/{id}/resize",
        "/jobs/api/resize?h=10&w=10",
        None,
    );
    assert_eq!(status, 409);
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs/{id}/resize",
        "/jobs/api/resize",
        None,
    );
    assert_eq!(status, 400);
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs/{id}/attach",
        "/jobs/api/attach",
        None,
    );
    assert_eq!(status, 400);

    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs/{id}/kill",
        "/jobs/api/kill?signal=SIGTERM",
        None,
    );
    assert_eq!(status, 204);
    let (status, exit) = call(&d, &spec, "GET", "/jobs/{id}/wait", "/jobs/api/wait", None);
    assert_eq!(status, 200);
    assert!(exit["exit_code"].is_i64(), "{exit}");
    let (status, _) = call(&d, &spec, "POST", "/jobs/{id}/kill", "/jobs/api/kill", None);
    assert_eq!(status, 409);
    let (status, _) = call(
        &d,
        &spec,
        "POST",
        "/jobs/{id}/stop",
        "/jobs/api/stop?t=1",
        None,
    );
    assert_eq!(status, 200);
    let (status, _) = call(&d, &spec, "DELETE", "/jobs/{id}", "/jobs/api", None);
    assert_eq!(status, 204);
    let (status, removed) = call(
        &d,
        &spec,
        "DELETE",
        "/images/{ref}",
        "/images/busybox",
        None,
    );
    assert_eq!(status, 200, "{removed}");
    let (status, _) = call(
        &d,
        &spec,
        "DELETE",
        "/images/{ref}",
        "/images/busybox",
        None,
    );
    assert_eq!(status, 404);

    // The event stream carried those changes, each a documented Event.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &Value| e["kind"] == "image" && e["action"] == "delete")
    {
        line.clear();
        events.read_line(&mut line).unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            let event: Value = serde_json::from_str(data.trim()).unwrap();
            spec.check("GET", "/events", 200, "text/event-stream", &event);
            seen.push(event);
        }
    }
    let actions: Vec<String> = seen
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["kind"].as_str().unwrap(),
                e["action"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "image:import",
        "job:create",
        "job:start",
        "job:exit",
        "job:remove",
        "image:untag",
        "image:delete",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "missing {expected} in {actions:?}"
        );
    }
}
