//! The controller's API against a real etcd: apps with their default route, releases,
//! env changes as new releases, rollback, routes, the key, and bad input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use controller::Controller;
use discovery::testing::TestEtcd;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const KEY: &str = "0123456789abcdef0123";

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: &str,
) -> (u16, Value) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "controller")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn call_key(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(addr, method, path, body, KEY).await
}

#[tokio::test]
async fn apps_releases_env_rollback_and_routes() {
    let etcd_proc = TestEtcd::start().expect("etcd (Debian's etcd-server): scripts/deps.sh");
    let etcd = etcd_proc.client().await.expect("etcd answers");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        Arc::new(Controller::new(
            etcd.clone(),
            KEY.into(),
            "cluster.local".into(),
        ))
        .serve(l),
    );

    assert_eq!(call(addr, "GET", "/apps", None, "wrong").await.0, 401);
    let (s, app) = call_key(addr, "POST", "/apps", Some(json!({"name": "demo"}))).await;
    assert_eq!(s, 201, "{app}");
    let (s, e) = call_key(addr, "POST", "/apps", Some(json!({"name": "demo"}))).await;
    assert_eq!(s, 409, "{e}");
    let (s, e) = call_key(addr, "POST", "/apps", Some(json!({"name": "Bad_Name"}))).await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("app name"), "{e}");
    let (s, e) = call_key(addr, "POST", "/apps", Some(json!({"nme": "x"}))).await;
    assert_eq!(s, 400, "{e}");
    // The default route goes to <app>-web at <app>.<domain>.
    let (_, routes) = call_key(addr, "GET", "/apps/demo/routes", None).await;
    assert_eq!(routes[0]["domain"], "demo.cluster.local");
    assert_eq!(routes[0]["service"], "demo-web");

    let (s, e) = call_key(
        addr,
        "POST",
        "/apps/demo/env",
        Some(json!({"set": {"A": "1"}})),
    )
    .await;
    assert_eq!(s, 409, "no release yet: {e}");
    let rel =
        json!({"image": "busybox", "processes": {"web": {"cmd": ["httpd", "-f"], "port": 8080}}});
    let (s, r1) = call_key(addr, "POST", "/apps/demo/releases", Some(rel)).await;
    assert_eq!(s, 201, "{r1}");
    // Nothing is scaled and there is no cluster: the deploy completes at once.
    assert_eq!(deploy_of(addr, &r1).await["state"], "complete");
    let (s, r2) = call_key(
        addr,
        "POST",
        "/apps/demo/env",
        Some(json!({"set": {"GREETING": "hi"}})),
    )
    .await;
    assert_eq!(s, 201, "{r2}");
    assert_eq!(r2["env"]["GREETING"], "hi");
    assert_eq!(r2["processes"], r1["processes"], "env keeps the processes");
    let (_, info) = call_key(addr, "GET", "/apps/demo", None).await;
    assert_eq!(info["app"]["release"], r2["id"]);
    assert_eq!(info["release"]["env"]["GREETING"], "hi");
    let (s, back) = call_key(addr, "POST", "/apps/demo/rollback", None).await;
    assert_eq!(s, 200, "{back}");
    assert_eq!(back["id"], r1["id"]);
    let (_, info) = call_key(addr, "GET", "/apps/demo", None).await;
    assert_eq!(info["app"]["release"], r1["id"]);
    let (_, releases) = call_key(addr, "GET", "/apps/demo/releases", None).await;
    assert_eq!(releases.as_array().unwrap().len(), 2);

    let (s, r) = call_key(
        addr,
        "POST",
        "/apps/demo/routes",
        Some(json!({"kind": "http", "domain": "www.example.com", "path": "/api", "sticky": true})),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let (s, t) = call_key(
        addr,
        "POST",
        "/apps/demo/routes",
        Some(json!({"kind": "tcp", "port": 3001})),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let (s, e) = call_key(
        addr,
        "POST",
        "/apps/demo/routes",
        Some(json!({"kind": "tcp"})),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(discovery::routes::list(&etcd).await.unwrap().len(), 3);
    let (s, _) = call_key(
        addr,
        "DELETE",
        &format!("/apps/demo/routes/{}", t["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(s, 200);

    assert_eq!(call_key(addr, "GET", "/apps/nope", None).await.0, 404);
    let (s, _) = call_key(addr, "DELETE", "/apps/demo", None).await;
    assert_eq!(s, 200);
    assert!(
        discovery::routes::list(&etcd).await.unwrap().is_empty(),
        "the app's routes went with it"
    );
    assert!(
        discovery::apps::releases(&etcd, "demo")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn deploy_of(addr: SocketAddr, rel: &Value) -> Value {
    let id = rel["deploy"]["id"].as_str().expect("a deploy").to_string();
    for _ in 0..100 {
        let (s, d) = call_key(addr, "GET", &format!("/apps/demo/deploys/{id}"), None).await;
        assert_eq!(s, 200, "{d}");
        if d["state"] != "pending" {
            return d;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("deploy {id} still pending after 10 s");
}

/// Deploys without a cluster: formations follow the release (counts kept, `$PORT` and
/// the `<app>-<type>` service with a TCP check); with nothing to run a deploy is
/// complete at once; one whose jobs cannot be seen healthy (no scheduler here) is
/// rolled back after its time-out, formations and app alike.
#[tokio::test]
async fn deploys_follow_formations_and_roll_back_when_not_healthy() {
    let etcd_proc = TestEtcd::start().expect("etcd (Debian's etcd-server): scripts/deps.sh");
    let etcd = etcd_proc.client().await.expect("etcd answers");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        Arc::new(
            Controller::new(etcd.clone(), KEY.into(), "cluster.local".into())
                .with_cluster(Some("cluster-token-0123456789".into()), 60),
        )
        .serve(l),
    );
    call_key(addr, "POST", "/apps", Some(json!({"name": "demo"}))).await;
    // No host here to ask for a digest: a name with one is kept as given.
    let (s, e) = call_key(
        addr,
        "POST",
        "/apps/demo/releases",
        Some(json!({"image": "busybox"})),
    )
    .await;
    assert_eq!(s, 503, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("no host answered"),
        "{e}"
    );
    let image = format!("busybox@sha256:{}", "ab".repeat(32));
    let rel = json!({"image": image, "processes": {"web": {"cmd": ["httpd", "-f"], "port": 8080}}});
    let (s, r1) = call_key(addr, "POST", "/apps/demo/releases?timeout=1", Some(rel)).await;
    assert_eq!(s, 201, "{r1}");
    assert_eq!(r1["deploy"]["state"], "pending");
    let d1 = deploy_of(addr, &r1).await;
    assert_eq!(d1["state"], "failed", "{d1}");
    assert!(
        d1["reason"]
            .as_str()
            .unwrap()
            .contains("no earlier release"),
        "{d1}"
    );
    let (s, f) = call_key(
        addr,
        "PUT",
        "/apps/demo/formation",
        Some(json!({"processes": {"web": 2}})),
    )
    .await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f, json!([{"type": "web", "count": 2, "release": r1["id"]}]));
    let formation = discovery::formations::of_app(&etcd, "demo").await.unwrap();
    assert!(formation[0].env.contains(&"PORT=8080".to_string()));
    assert_eq!(formation[0].services[0]["name"], "demo-web");
    assert_eq!(formation[0].services[0]["check"]["kind"], "tcp");
    let (s, e) = call_key(
        addr,
        "PUT",
        "/apps/demo/formation",
        Some(json!({"processes": {"worker": 1}})),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("release add"), "{e}");
    let (s, e) = call_key(addr, "GET", "/apps/demo/jobs", None).await;
    assert_eq!(s, 503, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("flynn-scheduler"),
        "{e}"
    );

    // A new release whose jobs are never seen healthy: rolled back by itself.
    let (s, r2) = call_key(
        addr,
        "POST",
        "/apps/demo/env?timeout=1",
        Some(json!({"set": {"GREETING": "hi"}})),
    )
    .await;
    assert_eq!(s, 201, "{r2}");
    let formation = discovery::formations::of_app(&etcd, "demo").await.unwrap();
    assert_eq!(
        formation[0].release.as_ref(),
        r2["id"].as_str().map(String::from).as_ref()
    );
    assert_eq!(formation[0].count, 2, "a deploy keeps the counts");
    let d2 = deploy_of(addr, &r2).await;
    assert_eq!(d2["state"], "failed", "{d2}");
    let reason = d2["reason"].as_str().unwrap();
    assert!(
        reason.contains("not healthy within 1 s") && reason.contains("rolled back to release"),
        "{reason}"
    );
    let formation = discovery::formations::of_app(&etcd, "demo").await.unwrap();
    assert_eq!(formation[0].release.as_deref(), r1["id"].as_str());
    assert_eq!(formation[0].count, 2);
    let (_, info) = call_key(addr, "GET", "/apps/demo", None).await;
    assert_eq!(info["app"]["release"], r1["id"]);
    assert!(info["app"]["previous_release"].is_null(), "{info}");
    let (_, list) = call_key(addr, "GET", "/apps/demo/deploys", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (s, e) = call_key(addr, "GET", "/apps/demo/deploys/nope", None).await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = call_key(
        addr,
        "POST",
        "/apps/demo/releases?timeout=x",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 400, "{e}");
}
