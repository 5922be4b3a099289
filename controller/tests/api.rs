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

/// TCP routes take a port of the controller's range (3000-3500 unless set), each
/// port once; an HTTP route may carry its own certificate, which must serve its
/// domain, is stored for the routers and never shown again with its key.
#[tokio::test]
async fn tcp_routes_keep_to_the_port_range_and_route_certificates_are_checked() {
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
    let (s, _) = call_key(addr, "POST", "/apps", Some(json!({"name": "demo"}))).await;
    assert_eq!(s, 201);
    let tcp = |port: u16| Some(json!({"kind": "tcp", "port": port}));

    // The default range's ends are in; a step outside either end, the routers'
    // own ports and the controller's 81 are refused, saying the range.
    for port in [3000, 3500] {
        let (s, r) = call_key(addr, "POST", "/apps/demo/routes", tcp(port)).await;
        assert_eq!(s, 201, "{port}: {r}");
        assert_eq!(r["port"], port);
    }
    for port in [2999, 3501, 80, 81, 443, 65535] {
        let (s, e) = call_key(addr, "POST", "/apps/demo/routes", tcp(port)).await;
        assert_eq!(s, 400, "{port}: {e}");
        let msg = e["error"].as_str().unwrap();
        assert!(
            msg.contains(&format!("port {port} is outside")) && msg.contains("3000-3500"),
            "{msg}"
        );
    }
    let (s, e) = call_key(
        addr,
        "POST",
        "/apps/demo/routes",
        Some(json!({"kind": "tcp"})),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("3000-3500"), "{e}");
    // A port another route holds: 409, naming it.
    let (s, e) = call_key(addr, "POST", "/apps/demo/routes", tcp(3000)).await;
    assert_eq!(s, 409, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("port 3000 is taken"),
        "{e}"
    );
    let tcp_routes = || async {
        discovery::routes::list(&etcd)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|r| r.port)
            .collect::<Vec<u16>>()
    };
    let mut ports = tcp_routes().await;
    ports.sort();
    assert_eq!(ports, [3000, 3500], "nothing refused was stored");

    // Another controller given another range holds routes to that one.
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr2 = l2.local_addr().unwrap();
    tokio::spawn(
        Arc::new(
            Controller::new(etcd.clone(), KEY.into(), "cluster.local".into())
                .with_tcp_ports("4000-4001".parse().unwrap()),
        )
        .serve(l2),
    );
    let (s, e) = call_key(addr2, "POST", "/apps/demo/routes", tcp(3001)).await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("4000-4001"), "{e}");
    let (s, r) = call_key(addr2, "POST", "/apps/demo/routes", tcp(4001)).await;
    assert_eq!(s, 201, "{r}");

    // A route's own certificate: stored whole for the routers, the key never
    // shown back (not in the 201, not in the listing).
    let ca = flynn_tls::Ca::generate("user").unwrap();
    let day = std::time::Duration::from_secs(86_400);
    let www = ca
        .issue("www", &["www.example.com".to_string()], day)
        .unwrap();
    let wild = ca
        .issue("wild", &["*.apps.example.com".to_string()], day)
        .unwrap();
    let http = |domain: &str, cert: &str, key: &str| {
        Some(json!({"kind": "http", "domain": domain, "certificate": {"cert": cert, "key": key}}))
    };
    let (s, r) = call_key(
        addr,
        "POST",
        "/apps/demo/routes",
        http("www.example.com", &www.chain_pem, &www.key_pem),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["certificate"]["cert"], www.chain_pem.as_str());
    assert_eq!(r["certificate"]["key"], "");
    let stored = discovery::routes::list(&etcd)
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.domain.as_deref() == Some("www.example.com"))
        .expect("the route in etcd");
    let c = stored.certificate.expect("its certificate");
    assert_eq!(
        (c.cert, c.key),
        (www.chain_pem.clone(), www.key_pem.clone())
    );
    let (_, listed) = call_key(addr, "GET", "/apps/demo/routes", None).await;
    let listed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["domain"] == "www.example.com")
        .unwrap()
        .clone();
    assert_eq!(listed["certificate"]["key"], "", "{listed}");
    // A wildcard certificate serves a name one label under it.
    let (s, r) = call_key(
        addr,
        "POST",
        "/apps/demo/routes",
        http("shop.apps.example.com", &wild.chain_pem, &wild.key_pem),
    )
    .await;
    assert_eq!(s, 201, "{r}");

    // Pairs the routers could not serve are refused, each saying why.
    let before = discovery::routes::list(&etcd).await.unwrap().len();
    for (what, body, says) in [
        (
            "another certificate's key",
            http("www.example.com", &www.chain_pem, &wild.key_pem),
            "the key does not go with the certificate",
        ),
        (
            "a certificate for other names",
            http("api.example.com", &www.chain_pem, &www.key_pem),
            "does not name api.example.com: it names www.example.com",
        ),
        (
            "a wildcard two labels up",
            http("a.b.apps.example.com", &wild.chain_pem, &wild.key_pem),
            "does not name a.b.apps.example.com",
        ),
        (
            "no certificate in the PEM",
            http("www.example.com", "hello", &www.key_pem),
            "holds no certificate",
        ),
        (
            "a broken certificate",
            http(
                "www.example.com",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                &www.key_pem,
            ),
            "the certificate is not valid",
        ),
        (
            "no key",
            http("www.example.com", &www.chain_pem, "not a key"),
            "the key is not a valid PEM private key",
        ),
        (
            "a certificate on a TCP route",
            Some(
                json!({"kind": "tcp", "port": 3100, "certificate": {"cert": www.chain_pem, "key": www.key_pem}}),
            ),
            "a TCP route has only a port and a service",
        ),
        (
            "half a pair",
            Some(
                json!({"kind": "http", "domain": "www.example.com", "certificate": {"cert": www.chain_pem}}),
            ),
            "key",
        ),
    ] {
        let (s, e) = call_key(addr, "POST", "/apps/demo/routes", body).await;
        assert_eq!(s, 400, "{what}: {e}");
        let msg = e["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{what}: {msg:?} should say {says:?}");
    }
    assert_eq!(
        discovery::routes::list(&etcd).await.unwrap().len(),
        before,
        "nothing refused was stored"
    );
}
