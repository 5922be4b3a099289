//! Holds the controller to its one OpenAPI document (`controller/openapi.json`): the
//! document is whole, every route served (`controller::ROUTES`, which the request
//! router dispatches from) is documented with its query parameters and nothing else
//! is, and a live controller's answers (against a real etcd) on a walk through every
//! route validate against the documented schemas, errors included.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use apidoc::Document;
use bytes::Bytes;
use controller::Controller;
use discovery::testing::TestEtcd;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const KEY: &str = "0123456789abcdef0123";

fn document() -> Document {
    Document::load(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap()
}

#[test]
fn every_route_served_is_documented_and_nothing_else() {
    let served = controller::ROUTES
        .iter()
        .map(|r| (r.method, r.path, Some(r.query)));
    let differences = document().differences(served);
    assert!(differences.is_empty(), "{differences:#?}");
    // /health is the only route without the key, in the code as in the document.
    let doc = document();
    for r in controller::ROUTES {
        let op = &doc.value()["paths"][r.path][r.method.to_ascii_lowercase()];
        let open = op["security"] == json!([]);
        assert_eq!(open, r.public, "{} {}", r.method, r.path);
    }
}

/// A live controller, the document, and which operations the walk has called.
struct Walk {
    addr: SocketAddr,
    doc: Document,
    called: Mutex<BTreeSet<(String, String)>>,
}

struct Answer {
    status: u16,
    allow: Option<String>,
    body: Value,
}

impl Walk {
    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Answer {
        let s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "controller");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let header = |h| {
            resp.headers()
                .get(h)
                .map(|v: &hyper::header::HeaderValue| v.to_str().unwrap().to_string())
        };
        let allow = header(hyper::header::ALLOW);
        let content_type = header(hyper::header::CONTENT_TYPE).unwrap_or_default();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = if text.is_empty() {
            Value::Null
        } else if content_type == "application/x-ndjson" {
            Value::Array(
                text.lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect(),
            )
        } else {
            assert_eq!(content_type, "application/json", "{method} {path}: {text}");
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
        };
        Answer {
            status,
            allow,
            body,
        }
    }

    /// Calls `path` (an instance of `template`) with the key; checks the answer
    /// against the document.
    async fn call(
        &self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let a = self.raw(method, path, body, Some(KEY)).await;
        self.called
            .lock()
            .unwrap()
            .insert((method.to_string(), template.to_string()));
        self.doc
            .check(method, template, a.status, "application/json", &a.body)
            .unwrap_or_else(|e| panic!("{e}"));
        (a.status, a.body)
    }
}

async fn controller(etcd: &discovery::Etcd, token: Option<&str>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let c = Controller::new(etcd.clone(), KEY.into(), "cluster.local".into())
        .with_cluster(token.map(String::from), 60);
    tokio::spawn(Arc::new(c).serve(l));
    addr
}

#[tokio::test]
async fn answers_on_a_walk_through_every_route_match_the_document() {
    let etcd_proc = TestEtcd::start().expect("etcd (Debian's etcd-server): scripts/deps.sh");
    let etcd = etcd_proc.client().await.expect("etcd answers");
    // Records only (no cluster token): releases deploy at once with nothing to run.
    let w = Walk {
        addr: controller(&etcd, None).await,
        doc: document(),
        called: Mutex::default(),
    };
    // With the cluster's token but no hosts and no scheduler: the relay's own answers.
    let cluster = Walk {
        addr: controller(&etcd, Some("cluster-token-0123456789")).await,
        doc: document(),
        called: Mutex::default(),
    };

    // /health: no key, GET only.
    let a = w.raw("GET", "/health", None, None).await;
    assert_eq!(a.status, 200);
    w.doc
        .check("GET", "/health", 200, "application/json", &a.body)
        .unwrap();
    w.called
        .lock()
        .unwrap()
        .insert(("GET".into(), "/health".into()));
    // /ca-cert: no key; this controller was given no certificate, so there is no CA
    // (the grid's git push test takes the CA a bootstrapped controller serves).
    let a = w.raw("GET", "/ca-cert", None, None).await;
    assert_eq!(a.status, 404);
    w.doc
        .check("GET", "/ca-cert", 404, "application/json", &a.body)
        .unwrap();
    w.called
        .lock()
        .unwrap()
        .insert(("GET".into(), "/ca-cert".into()));
    for m in ["POST", "PUT", "DELETE", "HEAD"] {
        let a = w.raw(m, "/health", None, None).await;
        assert_eq!((a.status, a.allow.as_deref()), (405, Some("GET")), "{m}");
        if m != "HEAD" {
            w.doc.check_schema("Error", &a.body).unwrap();
        }
    }
    // Without the key (or with a wrong one): 401, documented.
    for key in [None, Some("wrong")] {
        let a = w.raw("GET", "/apps", None, key).await;
        assert_eq!(a.status, 401);
        w.doc
            .check("GET", "/apps", 401, "application/json", &a.body)
            .unwrap();
    }
    // A served path with another method: 405 and what is allowed; an unknown one: 404.
    let a = w.raw("PATCH", "/apps", None, Some(KEY)).await;
    assert_eq!((a.status, a.allow.as_deref()), (405, Some("GET, POST")));
    w.doc.check_schema("Error", &a.body).unwrap();
    let a = w
        .raw("GET", "/apps/demo/hosts/h1/images", None, Some(KEY))
        .await;
    assert_eq!(a.status, 404, "only the job routes are relayed");
    w.doc.check_schema("Error", &a.body).unwrap();

    // Apps.
    let (s, app) = w
        .call("POST", "/apps", "/apps", Some(json!({"name": "demo"})))
        .await;
    assert_eq!(s, 201, "{app}");
    let (s, _) = w
        .call("POST", "/apps", "/apps", Some(json!({"name": "demo"})))
        .await;
    assert_eq!(s, 409);
    let (s, _) = w
        .call("POST", "/apps", "/apps", Some(json!({"name": "Bad_Name"})))
        .await;
    assert_eq!(s, 400);
    let (s, list) = w.call("GET", "/apps", "/apps", None).await;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(1)));
    let (s, info) = w.call("GET", "/apps/{app}", "/apps/demo", None).await;
    assert_eq!(s, 200);
    assert!(info["release"].is_null());
    let (s, _) = w.call("GET", "/apps/{app}", "/apps/nope", None).await;
    assert_eq!(s, 404);

    // Releases, env, rollback, deploys; ?timeout only where a deploy is made.
    let (s, _) = w
        .call(
            "POST",
            "/apps/{app}/env",
            "/apps/demo/env",
            Some(json!({"set": {"A": "1"}})),
        )
        .await;
    assert_eq!(s, 409, "no release yet");
    let rel = json!({"image": "busybox", "env": {"A": "1"},
        "processes": {"web": {"cmd": ["httpd", "-f"], "port": 8080}}});
    let (s, r1) = w
        .call(
            "POST",
            "/apps/{app}/releases",
            "/apps/demo/releases?timeout=30",
            Some(rel.clone()),
        )
        .await;
    assert_eq!(s, 201, "{r1}");
    assert_eq!(r1["deploy"]["timeout_secs"], 30);
    let (s, e) = w
        .call(
            "POST",
            "/apps/{app}/releases",
            "/apps/demo/releases?timeot=30",
            Some(rel.clone()),
        )
        .await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("timeout"), "{e}");
    let (s, _) = w
        .call(
            "POST",
            "/apps/{app}/releases",
            "/apps/demo/releases",
            Some(json!({"image": ""})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, releases) = w
        .call("GET", "/apps/{app}/releases", "/apps/demo/releases", None)
        .await;
    assert_eq!((s, releases.as_array().map(Vec::len)), (200, Some(1)));
    let (s, r2) = w
        .call(
            "POST",
            "/apps/{app}/env",
            "/apps/demo/env?timeout=5",
            Some(json!({"set": {"B": "2"}, "unset": ["A"]})),
        )
        .await;
    assert_eq!(s, 201, "{r2}");
    let (s, back) = w
        .call(
            "POST",
            "/apps/{app}/rollback",
            "/apps/demo/rollback?timeout=5",
            None,
        )
        .await;
    assert_eq!((s, &back["id"]), (200, &r1["id"]));
    let (s, _) = w
        .call(
            "POST",
            "/apps/{app}/rollback",
            "/apps/demo/rollback?timeout=soon",
            None,
        )
        .await;
    assert_eq!(s, 400);
    let (s, info) = w.call("GET", "/apps/{app}", "/apps/demo", None).await;
    assert_eq!((s, &info["release"]["id"]), (200, &r1["id"]));
    let id = back["deploy"]["id"].as_str().unwrap().to_string();
    let mut state = Value::Null;
    for _ in 0..100 {
        let (s, d) = w
            .call(
                "GET",
                "/apps/{app}/deploys/{id}",
                &format!("/apps/demo/deploys/{id}"),
                None,
            )
            .await;
        assert_eq!(s, 200);
        state = d["state"].clone();
        if state != "pending" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(state, "complete");
    let (s, _) = w
        .call(
            "GET",
            "/apps/{app}/deploys/{id}",
            "/apps/demo/deploys/nope",
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, deploys) = w
        .call("GET", "/apps/{app}/deploys", "/apps/demo/deploys", None)
        .await;
    assert_eq!((s, deploys.as_array().map(Vec::len)), (200, Some(3)));

    // Formations.
    let (s, f) = w
        .call("GET", "/apps/{app}/formation", "/apps/demo/formation", None)
        .await;
    assert_eq!((s, &f[0]["count"]), (200, &json!(0)));
    let (s, f) = w
        .call(
            "PUT",
            "/apps/{app}/formation",
            "/apps/demo/formation",
            Some(json!({"processes": {"web": 0}})),
        )
        .await;
    assert_eq!((s, &f[0]["type"]), (200, &json!("web")));
    let (s, _) = w
        .call(
            "PUT",
            "/apps/{app}/formation",
            "/apps/demo/formation?timeout=5",
            Some(json!({"processes": {"web": 0}})),
        )
        .await;
    assert_eq!(s, 400, "a scale makes no deploy: no timeout");
    let (s, _) = w
        .call(
            "PUT",
            "/apps/{app}/formation",
            "/apps/demo/formation",
            Some(json!({"processes": {"worker": 1}})),
        )
        .await;
    assert_eq!(s, 400);

    // Jobs and logs need the cluster: without it, a 503 that says so.
    let (s, e) = w
        .call("GET", "/apps/{app}/jobs", "/apps/demo/jobs", None)
        .await;
    assert_eq!(s, 503, "{e}");
    let (s, _) = w
        .call(
            "POST",
            "/apps/{app}/jobs",
            "/apps/demo/jobs",
            Some(json!({"cmd": ["true"], "tty": false})),
        )
        .await;
    assert_eq!(s, 503);
    let (s, _) = w
        .call(
            "POST",
            "/apps/{app}/jobs",
            "/apps/demo/jobs",
            Some(json!({"command": ["true"]})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, e) = w
        .call("POST", "/apps/{app}/import", "/apps/demo/import", None)
        .await;
    assert_eq!(s, 503, "an import needs the cluster: {e}");
    let (s, e) = w
        .call("GET", "/apps/{app}/log", "/apps/demo/log?lines=10", None)
        .await;
    assert_eq!(s, 503, "no aggregator: {e}");
    let (s, _) = w
        .call("GET", "/apps/{app}/log", "/apps/demo/log?lines=ten", None)
        .await;
    assert_eq!(s, 400);
    let (s, _) = w
        .call("GET", "/apps/{app}/log", "/apps/demo/log?timeout=1", None)
        .await;
    assert_eq!(s, 400);
    let (s, e) = cluster
        .call("GET", "/apps/{app}/jobs", "/apps/demo/jobs", None)
        .await;
    assert_eq!(s, 503, "no scheduler: {e}");
    assert!(
        e["error"].as_str().unwrap().contains("flynn-scheduler"),
        "{e}"
    );

    // The relayed job routes: each answers (no such host here), with its own
    // query parameters only; the controller without the cluster's token says so.
    let relayed: Vec<&controller::Endpoint> = controller::ROUTES
        .iter()
        .filter(|r| r.path.starts_with("/apps/{app}/hosts/"))
        .collect();
    assert_eq!(relayed.len(), 8);
    for r in relayed {
        let path = r
            .path
            .replace("{app}", "demo")
            .replace("{host}", "h1")
            .replace("{id}", "j1");
        let (s, e) = cluster.call(r.method, r.path, &path, None).await;
        assert_eq!(s, 404, "{} {path}: {e}", r.method);
        assert!(e["error"].as_str().unwrap().contains("no live host"), "{e}");
        let (s, e) = cluster
            .call(r.method, r.path, &format!("{path}?cmd=sh"), None)
            .await;
        assert_eq!(s, 400, "{} {path}?cmd=sh: {e}", r.method);
        let (s, _) = w.call(r.method, r.path, &path, None).await;
        assert_eq!(s, 503, "no token: {} {path}", r.method);
    }

    // Routes.
    let (s, routes) = w
        .call("GET", "/apps/{app}/routes", "/apps/demo/routes", None)
        .await;
    assert_eq!(
        (s, &routes[0]["domain"]),
        (200, &json!("demo.cluster.local"))
    );
    let (s, r) = w
        .call(
            "POST",
            "/apps/{app}/routes",
            "/apps/demo/routes",
            Some(json!({"kind": "http", "domain": "www.example.com", "path": "/api", "sticky": true})),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    let (s, t) = w
        .call(
            "POST",
            "/apps/{app}/routes",
            "/apps/demo/routes",
            Some(json!({"kind": "tcp", "port": 3001, "type": "web"})),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    // Outside the TCP route ports, and a port taken: documented refusals.
    let (s, _) = w
        .call(
            "POST",
            "/apps/{app}/routes",
            "/apps/demo/routes",
            Some(json!({"kind": "tcp", "port": 81})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = w
        .call(
            "POST",
            "/apps/{app}/routes",
            "/apps/demo/routes",
            Some(json!({"kind": "tcp", "port": 3001})),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = w
        .call(
            "POST",
            "/apps/{app}/routes",
            "/apps/demo/routes",
            Some(json!({"kind": "tcp"})),
        )
        .await;
    assert_eq!(s, 400);
    let route_path = format!("/apps/demo/routes/{}", t["id"].as_str().unwrap());
    let (s, _) = w
        .call("DELETE", "/apps/{app}/routes/{id}", &route_path, None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = w
        .call("DELETE", "/apps/{app}/routes/{id}", &route_path, None)
        .await;
    assert_eq!(s, 404);

    let (s, _) = w.call("DELETE", "/apps/{app}", "/apps/demo", None).await;
    assert_eq!(s, 200);
    let (s, _) = w.call("DELETE", "/apps/{app}", "/apps/demo", None).await;
    assert_eq!(s, 404);

    // The walk called every documented operation.
    let mut called = w.called.into_inner().unwrap();
    called.extend(cluster.called.into_inner().unwrap());
    let missed: Vec<_> = w.doc.operations().difference(&called).cloned().collect();
    assert!(missed.is_empty(), "not walked: {missed:?}");
}

/// The lines `GET /apps/{app}/log` passes on are the aggregators' (`logagg`), as the
/// document's LogLine describes them.
#[test]
fn log_lines_match_the_document() {
    let line = logagg::message::LogLine {
        app: "demo".into(),
        process_type: "web".into(),
        job_id: "j1".into(),
        host_id: "h1".into(),
        stream: "stdout".into(),
        time: chrono::Utc::now(),
        seq: 1,
        msg: "hello".into(),
    };
    document()
        .check_schema("LogLine", &serde_json::to_value(&line).unwrap())
        .unwrap();
}
