//! The router against real HTTP backends on 127.0.0.1 (hyper servers in the test, each
//! answering with its name and the forwarding headers it got, and echoing bytes after
//! an upgrade), and with routes and backends from a real etcd (Debian's).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use discovery::routes::{Route, RouteKind};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use router::Router;
use router::table::Table;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A backend: answers `name` and the forwarding headers; bridges an upgrade to an echo.
async fn backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<hyper::body::Incoming>| async move {
                    if req.headers().contains_key("upgrade") {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let mut io = TokioIo::new(on.await.unwrap());
                            let mut buf = [0u8; 64];
                            loop {
                                let n = io.read(&mut buf).await.unwrap_or(0);
                                if n == 0 {
                                    return;
                                }
                                io.write_all(&buf[..n]).await.unwrap();
                            }
                        });
                        return Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "echo")
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        );
                    }
                    let h = |k: &str| {
                        req.headers()
                            .get(k)
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default()
                    };
                    let body = serde_json::json!({
                        "name": name,
                        "path": req.uri().to_string(),
                        "host": h("host"),
                        "xff": h("x-forwarded-for"),
                        "proto": h("x-forwarded-proto"),
                        "port": h("x-forwarded-port"),
                        "rid": h("x-request-id"),
                        "conn": h("connection"),
                    });
                    Ok(Response::new(Full::new(Bytes::from(body.to_string()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn start_router() -> (Arc<Router>, SocketAddr) {
    let r = Router::new(&[9u8; 32], LOCAL).unwrap();
    let l = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(r.clone().serve_http(l));
    (r, addr)
}

fn http_route(id: &str, domain: &str, path: Option<&str>, service: &str, sticky: bool) -> Route {
    Route {
        id: id.into(),
        kind: RouteKind::Http,
        service: service.into(),
        domain: Some(domain.into()),
        path: path.map(str::to_string),
        sticky,
        port: None,
        app: None,
        certificate: None,
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, headers, body).
async fn get(
    router: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, hyper::HeaderMap, String) {
    let s = TcpStream::connect(router).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::get(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(b.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn name_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn routes_spread_forward_headers_and_say_what_is_wrong() {
    let (r, addr) = start_router().await;
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    r.apply_routes(Table::new(&[
        http_route("web", "demo.cluster.local", None, "web", false),
        http_route("api", "demo.cluster.local", Some("/api"), "api", false),
        http_route("empty", "down.cluster.local", None, "nobody", false),
    ]));
    r.proxy.backends.set("web", &[a, b, c]);
    let api = backend("api").await;
    r.proxy.backends.set("api", &[api]);

    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let (status, _, body) = get(addr, "demo.cluster.local", "/x?q=1", &[]).await;
        assert_eq!(status, 200, "{body}");
        *seen.entry(name_of(&body)).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "every backend serves: {seen:?}");

    let (_, _, body) = get(
        addr,
        "demo.cluster.local:80",
        "/api/v1",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
        ],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["name"], "api");
    assert_eq!(v["path"], "/api/v1");
    assert_eq!(v["host"], "demo.cluster.local:80");
    assert_eq!(v["xff"], "203.0.113.9, 127.0.0.1");
    assert_eq!(v["proto"], "http");
    assert_eq!(v["port"], addr.port().to_string());
    assert_eq!(v["rid"].as_str().unwrap().len(), 32);
    let (_, _, body) = get(addr, "demo.cluster.local", "/", &[("x-request-id", "mine")]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["rid"],
        "mine"
    );

    let (status, _, body) = get(addr, "nowhere.example", "/p", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("no route for nowhere.example/p"), "{body}");
    let (status, _, body) = get(addr, "down.cluster.local", "/", &[]).await;
    assert_eq!(status, 503);
    assert!(body.contains("no backend is up for nobody"), "{body}");

    // A backend that refuses connections costs a retry, never a failed request.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    r.proxy.backends.set("web", &[a, closed]);
    for _ in 0..20 {
        let (status, _, body) = get(addr, "demo.cluster.local", "/", &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(name_of(&body), "a");
    }
    r.proxy.backends.set("web", &[closed]);
    let (status, _, body) = get(addr, "demo.cluster.local", "/", &[]).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("accepted a connection"), "{body}");

    // A backend dropped from discovery gets no new request.
    r.proxy.backends.set("web", &[a, b]);
    r.proxy.backends.set("web", &[b]);
    for _ in 0..10 {
        let (_, _, body) = get(addr, "demo.cluster.local", "/", &[]).await;
        assert_eq!(name_of(&body), "b");
    }

    // Garbage gets a 400 and the router keeps serving.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    let (status, _, _) = get(addr, "demo.cluster.local", "/", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sticky_sessions_keep_a_client_on_its_backend() {
    let (r, addr) = start_router().await;
    let list = [backend("a").await, backend("b").await, backend("c").await];
    r.apply_routes(Table::new(&[http_route(
        "s",
        "sticky.local",
        None,
        "web",
        true,
    )]));
    r.proxy.backends.set("web", &list);
    let (_, headers, body) = get(addr, "sticky.local", "/", &[]).await;
    let first = name_of(&body);
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("_flynn_route="), "{cookie}");
    for _ in 0..20 {
        let (_, h, body) = get(addr, "sticky.local", "/", &[("cookie", &cookie)]).await;
        assert_eq!(name_of(&body), first);
        assert!(
            !h.contains_key("set-cookie"),
            "a pinned client is not re-pinned"
        );
    }
    // A forged cookie is ignored (and replaced).
    let (status, h, _) = get(
        addr,
        "sticky.local",
        "/",
        &[("cookie", "_flynn_route=00ff")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(h.contains_key("set-cookie"));
}

#[tokio::test]
async fn upgrades_http2_and_tcp_routes_pass_through() {
    let (r, addr) = start_router().await;
    let a = backend("a").await;
    // A TCP echo backend.
    let echo = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut rd, mut wr) = s.split();
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                });
            }
        });
        e
    };
    let tcp_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    r.apply_routes(Table::new(&[
        http_route("ws", "ws.local", None, "web", false),
        Route {
            id: "t".into(),
            kind: RouteKind::Tcp,
            service: "echo".into(),
            domain: None,
            path: None,
            sticky: false,
            port: Some(tcp_port),
            app: None,
            certificate: None,
        },
    ]));
    r.proxy.backends.set("web", &[a]);
    r.proxy.backends.set("echo", &[echo]);

    // An upgrade (as a websocket's) becomes a two-way byte stream.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.local\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 0];
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"ping through the router").await.unwrap();
    let mut buf = [0u8; 23];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through the router");

    // HTTP/2 with prior knowledge.
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get("http://ws.local/h2")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["path"], "/h2");
    assert_eq!(v["host"], "ws.local");

    // The TCP route.
    assert_eq!(r.tcp_ports(), vec![tcp_port]);
    let mut s = TcpStream::connect((LOCAL, tcp_port)).await.unwrap();
    s.write_all(b"tcp!").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"tcp!");
    // Removing the route closes its listener.
    r.apply_routes(Table::new(&[]));
    assert!(r.tcp_ports().is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect((LOCAL, tcp_port)).await.is_err());
}

/// The RFC 6455 (section 1.3) example: the accept a server answers this key with.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A client's text frame: masked, as RFC 6455 wants from clients.
fn client_frame(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A server's text frame: unmasked.
fn server_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81, payload.len() as u8];
    f.extend_from_slice(payload);
    f
}

/// Reads up to the end of an HTTP head.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A websocket backend written on raw TCP (no HTTP library to smooth anything
/// over): it wants the handshake's headers as the client sent them, answers the 101
/// and a greeting frame in one write, then unmasks each frame and echoes it.
async fn websocket_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let head = read_head(&mut s).await.to_ascii_lowercase();
                let ok = head.contains("upgrade: websocket\r\n")
                    && head.contains(&format!(
                        "sec-websocket-key: {}\r\n",
                        WS_KEY.to_ascii_lowercase()
                    ))
                    && head.contains("sec-websocket-version: 13\r\n")
                    && head
                        .lines()
                        .any(|l| l.starts_with("connection:") && l.contains("upgrade"));
                if !ok {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let mut out = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
                )
                .into_bytes();
                out.extend(server_frame(b"hello"));
                s.write_all(&out).await.unwrap();
                loop {
                    let mut h = [0u8; 2];
                    if s.read_exact(&mut h).await.is_err() {
                        return;
                    }
                    let len = usize::from(h[1] & 127);
                    let mut mask = [0u8; 4];
                    s.read_exact(&mut mask).await.unwrap();
                    let mut p = vec![0u8; len];
                    s.read_exact(&mut p).await.unwrap();
                    for (i, b) in p.iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                    s.write_all(&server_frame(&p)).await.unwrap();
                }
            });
        }
    });
    addr
}

/// A websocket through the router: the handshake's headers reach the backend, its
/// accept reaches the client, bytes each side sent along with its head (the
/// client's first frame, the server's greeting) are not lost, and frames go both
/// ways, on several sockets at once.
#[tokio::test]
async fn a_websocket_passes_through_with_its_handshake_and_frames() {
    let (r, addr) = start_router().await;
    let ws = websocket_backend().await;
    r.apply_routes(Table::new(&[http_route(
        "ws", "ws.local", None, "ws", false,
    )]));
    r.proxy.backends.set("ws", &[ws]);
    let mut clients = Vec::new();
    for n in 0..4u8 {
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut hello = format!(
                "GET /chat HTTP/1.1\r\nHost: ws.local\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .into_bytes();
            // The first frame in the same write as the handshake.
            hello.extend(client_frame(format!("first {n}").as_bytes(), [1, 2, 3, n]));
            s.write_all(&hello).await.unwrap();
            let head = read_head(&mut s).await;
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            // (Header names are case-insensitive: the router writes them lowercase.)
            assert!(
                head.to_ascii_lowercase().contains(&format!(
                    "sec-websocket-accept: {}\r\n",
                    WS_ACCEPT.to_ascii_lowercase()
                )),
                "{head}"
            );
            let want = [server_frame(b"hello"), server_frame(format!("first {n}").as_bytes())].concat();
            let mut got = vec![0u8; want.len()];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want);
            for i in 0..20u8 {
                let msg = format!("message {i} on socket {n}: \u{0}\u{7f}");
                s.write_all(&client_frame(msg.as_bytes(), [i, n, 0xff, 0x55]))
                    .await
                    .unwrap();
                let want = server_frame(msg.as_bytes());
                let mut got = vec![0u8; want.len()];
                s.read_exact(&mut got).await.unwrap();
                assert_eq!(got, want);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    // A backend that refuses the upgrade: its answer is the client's, and the
    // connection is not left half-upgraded.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: ws.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

use discovery::testing::TestEtcd;

#[tokio::test]
async fn routes_and_backends_follow_etcd() {
    let etcd_proc = TestEtcd::start().expect("etcd (Debian's etcd-server): scripts/deps.sh");
    let etcd = etcd_proc.client().await.expect("etcd answers");
    let (r, addr) = start_router().await;
    tokio::spawn(r.clone().follow(etcd.clone()));
    let a = backend("a").await;
    discovery::routes::put(
        &etcd,
        &http_route("demo", "demo.cluster.local", None, "web", false),
    )
    .await
    .unwrap();
    let lease = etcd.grant(Duration::from_secs(30)).await.unwrap();
    let inst = discovery::Instance {
        service: "web".into(),
        id: "j1-8080".into(),
        addr: a,
        host_id: "h1".into(),
        job_id: Some("j1".into()),
        meta: Default::default(),
        registered_at: chrono::Utc::now(),
    };
    discovery::services::register(&etcd, lease, &inst)
        .await
        .unwrap();
    let mut status = StatusCode::NOT_FOUND;
    for _ in 0..50 {
        status = get(addr, "demo.cluster.local", "/", &[]).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    // The instance leaves discovery: 503 at once, not a connection to a stopped job.
    discovery::services::deregister(&etcd, "web", "j1-8080")
        .await
        .unwrap();
    for _ in 0..50 {
        status = get(addr, "demo.cluster.local", "/", &[]).await.0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 503);
    discovery::routes::delete(&etcd, "demo").await.unwrap();
    for _ in 0..50 {
        status = get(addr, "demo.cluster.local", "/", &[]).await.0;
        if status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_router_process_serves_from_every_worker() {
    let etcd_proc = TestEtcd::start().expect("etcd (Debian's etcd-server): scripts/deps.sh");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = router::service::RouterArgs {
        http: SocketAddr::new(LOCAL, port),
        tcp_bind: LOCAL,
        https: "off".into(),
        tls_cert: None,
        tls_key: None,
        tls_cert_pem: None,
        tls_key_pem: None,
        etcd: vec![etcd_proc.url.clone()],
        threads: Some(3),
        sticky_key: Some("ab".repeat(32)),
        agent: None,
        token: None,
    };
    tokio::spawn(router::service::run(args));
    let etcd = loop {
        match discovery::Etcd::connect(std::slice::from_ref(&etcd_proc.url), Duration::from_secs(2))
            .await
        {
            Ok(e) if e.ping().await.is_ok() => break e,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let a = backend("a").await;
    discovery::routes::put(&etcd, &http_route("p", "p.local", None, "web", false))
        .await
        .unwrap();
    let lease = etcd.grant(Duration::from_secs(30)).await.unwrap();
    let inst = discovery::Instance {
        service: "web".into(),
        id: "j1-80".into(),
        addr: a,
        host_id: "h1".into(),
        job_id: None,
        meta: Default::default(),
        registered_at: chrono::Utc::now(),
    };
    discovery::services::register(&etcd, lease, &inst)
        .await
        .unwrap();
    let addr = SocketAddr::new(LOCAL, port);
    let mut ok = 0;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() && get(addr, "p.local", "/", &[]).await.0 == 200 {
            ok += 1;
            if ok == 30 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // New connections land on any of the three workers' listeners: all serve.
    assert_eq!(ok, 30);
    let bad = router::service::RouterArgs {
        http: SocketAddr::new(LOCAL, port),
        tcp_bind: LOCAL,
        https: "off".into(),
        tls_cert: None,
        tls_key: None,
        tls_cert_pem: None,
        tls_key_pem: None,
        etcd: vec![etcd_proc.url.clone()],
        threads: Some(1),
        sticky_key: Some("xyz".into()),
        agent: None,
        token: None,
    };
    let err = router::service::run(bad).await.unwrap_err();
    assert!(err.to_string().contains("64 hex digits"), "{err}");
}

/// A self-signed certificate for `name` (openssl): (cert PEM, key PEM, cert path).
fn self_signed(dir: &std::path::Path, name: &str) -> (String, String, std::path::PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    (
        std::fs::read_to_string(&c).unwrap(),
        std::fs::read_to_string(&k).unwrap(),
        c,
    )
}

fn curl_https(port: u16, name: &str, ca: &std::path::Path) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args([
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            &format!("https://{name}:{port}/t"),
        ])
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_each_route_its_certificate_and_the_cluster_one_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, route_ca) = self_signed(dir.path(), "secure.local");
    let (ccert, ckey, cluster_ca) = self_signed(dir.path(), "other.local");
    let r = Router::new(&[9u8; 32], LOCAL).unwrap();
    r.certs.set_default(Some(
        router::tls::load_pair(ccert.as_bytes(), ckey.as_bytes()).unwrap(),
    ));
    let l = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(r.clone().serve_https(l));
    let a = backend("a").await;
    let mut secure = http_route("s", "secure.local", None, "web", false);
    secure.certificate = Some(discovery::routes::RouteCertificate { cert, key });
    let mut broken = http_route("b", "broken.local", None, "web", false);
    broken.certificate = Some(discovery::routes::RouteCertificate {
        cert: "junk".into(),
        key: "junk".into(),
    });
    r.apply_routes(Table::new(&[
        secure,
        broken,
        http_route("o", "other.local", None, "web", false),
    ]));
    r.proxy.backends.set("web", &[a]);
    let (body, err) =
        tokio::task::spawn_blocking(move || curl_https(port, "secure.local", &route_ca))
            .await
            .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body} {err}"));
    assert_eq!(v["proto"], "https");
    assert_eq!(v["name"], "a");
    // Another name gets the cluster's certificate (a bad route certificate is ignored).
    let ca = cluster_ca.clone();
    let (body, err) = tokio::task::spawn_blocking(move || curl_https(port, "other.local", &ca))
        .await
        .unwrap();
    assert!(body.contains("\"proto\":\"https\""), "{body} {err}");
    // The cluster certificate does not name secure.local's CA: verification fails.
    let (_, err) =
        tokio::task::spawn_blocking(move || curl_https(port, "secure.local", &cluster_ca))
            .await
            .unwrap();
    assert!(!err.is_empty());
}

/// A stand-in for the host's agent: `POST /cluster/tls/issue` answered from
/// `ca`, as the agent answers from the cluster's CA. Counts the certificates.
async fn fake_agent(ca: flynn_tls::Ca) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = issued.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (ca, count) = (ca.clone(), count.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (ca, count) = (ca.clone(), count.clone());
                    async move {
                        assert_eq!(req.uri().path(), "/cluster/tls/issue");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let ask: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let names: Vec<String> =
                            serde_json::from_value(ask["names"].clone()).unwrap();
                        let life = Duration::from_secs(ask["lifetime_secs"].as_u64().unwrap());
                        let cert = ca.issue("renewed", &names, life).unwrap();
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let answer = serde_json::json!({
                            "chain": cert.chain_pem,
                            "key": cert.key_pem,
                            "not_after": chrono::DateTime::<chrono::Utc>::from(cert.not_after),
                        });
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            answer.to_string(),
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, issued)
}

/// The certificate (DER) the router presents for `name`, verified against `ca`
/// at this moment: an error when it does not verify (expired, another CA).
async fn presented(port: u16, name: &str, ca: &str) -> Result<Vec<u8>, String> {
    let trust = flynn_tls::Trust::from_ca_pem(ca).unwrap();
    let config = flynn_tls::client_config(&trust).unwrap();
    let stream = TcpStream::connect((LOCAL, port))
        .await
        .map_err(|e| e.to_string())?;
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server, stream)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    Ok(conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default())
}

#[tokio::test]
async fn the_default_certificate_is_renewed_through_the_agent_without_a_restart() {
    let etcd_proc = discovery::testing::TestEtcd::start()
        .expect("etcd (Debian's etcd-server): scripts/deps.sh");
    let ca = flynn_tls::Ca::generate("renew test").unwrap();
    // A short life: renewed two thirds into it (6 s), expired after 9 s.
    let first = ca
        .issue(
            "first",
            &["*.renew.local".to_string(), "renew.local".to_string()],
            Duration::from_secs(9),
        )
        .unwrap();
    let (agent, issued) = fake_agent(ca.clone()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let args = router::service::RouterArgs {
        http,
        tcp_bind: LOCAL,
        https: format!("127.0.0.1:{port}"),
        tls_cert: None,
        tls_key: None,
        tls_cert_pem: Some(first.chain_pem.clone()),
        tls_key_pem: Some(first.key_pem.clone()),
        etcd: vec![etcd_proc.url.clone()],
        threads: Some(1),
        sticky_key: Some("ab".repeat(32)),
        agent: Some(format!("http://{agent}")),
        token: Some("renew-test-token-0123456789".into()),
    };
    tokio::spawn(router::service::run(args));
    let started = std::time::Instant::now();
    let original = loop {
        match presented(port, "a.renew.local", &ca.cert_pem).await {
            Ok(der) => break der,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the router's HTTPS: {e}"),
        }
    };
    // Another one is presented once it is renewed, with no restart.
    let renewed = loop {
        let der = presented(port, "a.renew.local", &ca.cert_pem)
            .await
            .unwrap();
        if der != original {
            break der;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not renewed after a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "renewed {:.1} s after the router started (the first certificate lives 9 s)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1);
    // After the first certificate's end, HTTPS still verifies: the new one.
    let past = first
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(past + Duration::from_secs(1)).await;
    let now = presented(port, "a.renew.local", &ca.cert_pem)
        .await
        .unwrap();
    assert_eq!(now, renewed);
    // The same names: the bare domain verifies too.
    let bare = presented(port, "renew.local", &ca.cert_pem).await.unwrap();
    assert_eq!(bare, renewed);
}
