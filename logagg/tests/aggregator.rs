//! Two aggregators on 127.0.0.1: lines shipped over TCP, read and followed over HTTP,
//! resent lines kept once, bad frames refused without harm, and a new instance that
//! fills itself from its peer; with TLS, only verified TLS on both ports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use logagg::{Aggregator, LogLine};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

async fn start(token: Option<&str>) -> (Arc<Aggregator>, SocketAddr, SocketAddr) {
    let agg = Aggregator::new(1000, token.map(str::to_string));
    let syslog = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (s, h) = (syslog.local_addr().unwrap(), http.local_addr().unwrap());
    tokio::spawn(agg.clone().serve_syslog(syslog));
    tokio::spawn(agg.clone().serve_http(http));
    (agg, s, h)
}

fn line(job: &str, ty: &str, seq: u64, msg: &str) -> LogLine {
    LogLine {
        app: "demo".into(),
        process_type: ty.into(),
        job_id: job.into(),
        host_id: "h1".into(),
        stream: "stdout".into(),
        time: chrono::Utc::now(),
        seq,
        msg: msg.into(),
    }
}

/// A raw HTTP/1.1 GET: (status line, body lines), reading until `lines` body lines
/// or the end.
async fn get(
    http: SocketAddr,
    path: &str,
    token: Option<&str>,
    lines: usize,
) -> (String, Vec<String>) {
    let mut s = TcpStream::connect(http).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).await.unwrap();
    let mut l = String::new();
    loop {
        l.clear();
        r.read_line(&mut l).await.unwrap();
        if l == "\r\n" {
            break;
        }
    }
    let mut out = Vec::new();
    while out.len() < lines {
        l.clear();
        let n = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut l))
            .await
            .expect("a line in time")
            .unwrap();
        if n == 0 {
            break;
        }
        let t = l.trim();
        // Chunk sizes of the chunked encoding are not lines of ours.
        if t.starts_with('{') {
            out.push(t.to_string());
        } else if t == "0" {
            break;
        }
    }
    (status.trim().to_string(), out)
}

fn msgs(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["msg"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn ships_reads_follows_and_fills_a_new_instance() {
    let (agg, syslog, http) = start(Some("tok")).await;
    let mut ship = TcpStream::connect(syslog).await.unwrap();
    for (i, ty) in [(1, "web"), (2, "worker"), (3, "web")] {
        ship.write_all(&line(&format!("j{ty}"), ty, i, &format!("line {i}")).frame())
            .await
            .unwrap();
    }
    ship.flush().await.unwrap();
    for _ in 0..50 {
        if agg.buffers.apps() == [("demo".to_string(), 3)] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, lines) = get(http, "/logs/demo?lines=10", Some("tok"), 10).await;
    assert!(status.ends_with("200 OK"), "{status}");
    assert_eq!(msgs(&lines), ["line 1", "line 2", "line 3"]);
    let (_, lines) = get(http, "/logs/demo?type=web", Some("tok"), 10).await;
    assert_eq!(msgs(&lines), ["line 1", "line 3"]);
    let (status, _) = get(http, "/logs/demo", None, 1).await;
    assert!(status.contains("401"), "{status}");
    let (status, _) = get(http, "/logs/demo?lines=x", Some("tok"), 1).await;
    assert!(status.contains("400"), "{status}");

    // A follower sees the backlog, then new lines as they come.
    let follower =
        tokio::spawn(
            async move { get(http, "/logs/demo?lines=1&follow=true", Some("tok"), 3).await },
        );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A shipper that reconnects resends line 3: it is kept once.
    let mut ship2 = TcpStream::connect(syslog).await.unwrap();
    ship2
        .write_all(&line("jweb", "web", 3, "line 3").frame())
        .await
        .unwrap();
    ship2
        .write_all(&line("jweb", "web", 4, "line 4").frame())
        .await
        .unwrap();
    ship2
        .write_all(&line("jweb", "web", 5, "line 5").frame())
        .await
        .unwrap();
    let (_, followed) = follower.await.unwrap();
    assert_eq!(msgs(&followed), ["line 3", "line 4", "line 5"]);

    // A broken frame closes that shipper only.
    let mut bad = TcpStream::connect(syslog).await.unwrap();
    bad.write_all(b"xyz not a frame").await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), bad.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the aggregator closed the bad connection");
    ship2
        .write_all(&line("jweb", "web", 6, "line 6").frame())
        .await
        .unwrap();

    // A new instance fills from this one and has every line.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (agg2, _, _) = start(Some("tok")).await;
    let n = agg2.fill_from(&format!("http://{http}")).await.unwrap();
    assert_eq!(n, 6);
    assert_eq!(agg2.buffers.apps(), [("demo".to_string(), 6)]);
    assert!(agg2.fill_from("http://127.0.0.1:1").await.is_err());
}

/// A directory as the agent gives platform jobs: `cert.pem` (for 127.0.0.1,
/// then the CA), `key.pem`, `ca.pem`.
fn tls_dir(ca: &flynn_tls::Ca) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cert = ca
        .issue(
            "aggregator",
            &["127.0.0.1".to_string()],
            Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.chain_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    dir
}

/// Reads an NDJSON answer to `GET path` over `stream` (plain or TLS).
async fn get_over(stream: logagg::tls::Conn, path: &str) -> Result<Vec<String>, String> {
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "127.0.0.1")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .map(str::to_string)
        .collect())
}

#[tokio::test]
async fn with_tls_both_ports_take_only_verified_tls_and_peers_fill_over_it() {
    let ca = flynn_tls::Ca::generate("logagg test").unwrap();
    let dir = tls_dir(&ca);
    let agg = Aggregator::with_tls(
        1000,
        None,
        logagg::tls::acceptor(dir.path()).unwrap(),
        logagg::tls::client_config(&dir.path().join("ca.pem")).unwrap(),
    );
    let syslog = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (s, h) = (syslog.local_addr().unwrap(), http.local_addr().unwrap());
    tokio::spawn(agg.clone().serve_syslog(syslog));
    tokio::spawn(agg.clone().serve_http(http));
    let trust = logagg::tls::client_config(&dir.path().join("ca.pem")).unwrap();
    let timeout = Duration::from_secs(10);

    // Shipped over TLS verified against the CA: taken.
    let mut ship = logagg::tls::connect(s, Some(trust.clone()), timeout)
        .await
        .unwrap();
    for i in 1..=3 {
        ship.write_all(&line("j1", "web", i, &format!("over tls {i}")).frame())
            .await
            .unwrap();
    }
    ship.flush().await.unwrap();
    // Sent in plain TCP: the handshake fails, nothing is taken.
    let mut plain = TcpStream::connect(s).await.unwrap();
    plain
        .write_all(&line("j2", "web", 1, "in clear").frame())
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(timeout, plain.read_to_end(&mut rest)).await;

    let mut got = Vec::new();
    for _ in 0..100 {
        let conn = logagg::tls::connect(h, Some(trust.clone()), timeout)
            .await
            .unwrap();
        got = msgs(&get_over(conn, "/logs/demo?lines=100").await.unwrap());
        if got.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, ["over tls 1", "over tls 2", "over tls 3"]);

    // A reader trusting another CA is refused, as is one speaking plain HTTP.
    let other = flynn_tls::Ca::generate("another").unwrap();
    let other_dir = tls_dir(&other);
    let wrong = logagg::tls::client_config(&other_dir.path().join("ca.pem")).unwrap();
    let err = match logagg::tls::connect(h, Some(wrong), timeout).await {
        Ok(_) => panic!("verified under another CA"),
        Err(e) => e,
    };
    println!("another CA: {err}");
    assert!(err.contains("TLS with the log aggregator"), "{err}");
    let plain = logagg::tls::connect(h, None, timeout).await.unwrap();
    assert!(get_over(plain, "/logs/demo").await.is_err());

    // A new instance fills itself from this one over TLS.
    let peer = Aggregator::with_tls(
        1000,
        None,
        logagg::tls::acceptor(dir.path()).unwrap(),
        logagg::tls::client_config(&dir.path().join("ca.pem")).unwrap(),
    );
    let n = peer.fill_from(&format!("https://{h}")).await.unwrap();
    assert_eq!(n, 3);
}
