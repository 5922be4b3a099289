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
