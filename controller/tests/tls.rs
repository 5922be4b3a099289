//! The controller's certificate renewed through its host's agent without a
//! restart: a 9 s certificate, an agent stand-in answering `POST
//! /cluster/tls/issue` from the same CA, and handshakes with the acceptor the
//! controller serves with, by the name clients verify behind an address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// `POST /cluster/tls/issue` answered from `ca`, as an agent answers.
async fn fake_agent(ca: flynn_tls::Ca) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let ca = ca.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let ca = ca.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/cluster/tls/issue");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let ask: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let names: Vec<String> =
                            serde_json::from_value(ask["names"].clone()).unwrap();
                        let life = Duration::from_secs(ask["lifetime_secs"].as_u64().unwrap());
                        let cert = ca.issue("renewed", &names, life).unwrap();
                        let answer = serde_json::json!({
                            "chain": cert.chain_pem,
                            "key": cert.key_pem,
                            "not_after": chrono::DateTime::<chrono::Utc>::from(cert.not_after),
                        });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
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
    addr
}

/// The certificate (DER) `acceptor` presents, verified against `ca` for the
/// controller's name at this moment.
async fn presented(acceptor: &tokio_rustls::TlsAcceptor, ca: &str) -> Result<Vec<u8>, String> {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = acceptor.clone();
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let _ = acceptor.accept(s).await;
    });
    let config = flynn_tls::client_config(&flynn_tls::Trust::from_ca_pem(ca).unwrap()).unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let name =
        rustls_pki_types::ServerName::try_from(flynn_tls::CONTROLLER_NAME.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string());
    let _ = server.await;
    let tls = tls?;
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default())
}

#[tokio::test]
async fn the_certificate_is_renewed_through_the_agent_without_a_restart() {
    let ca = flynn_tls::Ca::generate("controller renew test").unwrap();
    let names = [
        "controller.cluster.local".to_string(),
        flynn_tls::CONTROLLER_NAME.to_string(),
    ];
    let first = ca.issue("first", &names, Duration::from_secs(9)).unwrap();
    let agent = fake_agent(ca.clone()).await;
    let client = flynn_client::Client::from_options(
        Some(&format!("http://{agent}")),
        Some("controller-renew-test-token-0123"),
    )
    .unwrap();
    let acceptor =
        controller::tls::from_args(Some(&first.chain_pem), Some(&first.key_pem), Some(client))
            .unwrap()
            .expect("an acceptor");
    let started = Instant::now();
    let original = presented(&acceptor, &ca.cert_pem).await.unwrap();
    let renewed = loop {
        let der = presented(&acceptor, &ca.cert_pem).await.unwrap();
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
        "renewed {:.1} s after the controller's acceptor was made (the first certificate lives 9 s)",
        started.elapsed().as_secs_f64()
    );
    let past = first
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(past + Duration::from_secs(1)).await;
    assert_eq!(presented(&acceptor, &ca.cert_pem).await.unwrap(), renewed);
    // Another CA's client is refused.
    let other = flynn_tls::Ca::generate("another").unwrap();
    let err = presented(&acceptor, &other.cert_pem).await.unwrap_err();
    println!("another CA: {err}");
}
