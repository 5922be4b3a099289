//! Real handshakes over loopback TCP: a client trusting the right CA or pin gets
//! through, a wrong CA or pin is refused, and a renewed certificate is presented
//! from the next handshake without restarting the listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use flynn_tls::{Ca, HostCertResolver, Pin, Trust, client_config, host_names, server_config};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Serves one byte per connection, forever; returns its address.
async fn server(resolver: Arc<HostCertResolver>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(resolver).unwrap());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"!").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Connects with `trust`; the leaf certificate the server presented, or the error.
async fn connect(addr: std::net::SocketAddr, trust: &Trust) -> Result<Vec<u8>, String> {
    let connector = TlsConnector::from(client_config(trust).unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok(leaf)
}

fn names() -> Vec<String> {
    host_names("test-host", &[])
}

#[tokio::test]
async fn right_ca_and_pin_pass_wrong_ones_are_refused() {
    let ca = Ca::generate("right").unwrap();
    let cert = ca
        .issue("host", &names(), Duration::from_secs(3600))
        .unwrap();
    let addr = server(Arc::new(HostCertResolver::new(&cert).unwrap())).await;

    connect(addr, &Trust::from_ca_pem(&ca.cert_pem).unwrap())
        .await
        .unwrap();
    connect(addr, &Trust::Pin(ca.pin().unwrap())).await.unwrap();

    let wrong = Ca::generate("wrong").unwrap();
    let err = connect(addr, &Trust::from_ca_pem(&wrong.cert_pem).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("issuer"),
        "{err}"
    );
    let err = connect(addr, &Trust::Pin(wrong.pin().unwrap()))
        .await
        .unwrap_err();
    assert!(err.contains("pinned"), "{err}");
    let err = connect(addr, &Trust::Pin(Pin::of_der(b"nothing")))
        .await
        .unwrap_err();
    assert!(err.contains("pinned"), "{err}");
}

#[tokio::test]
async fn a_certificate_for_other_names_is_refused_even_from_the_right_ca() {
    let ca = Ca::generate("ca").unwrap();
    let cert = ca
        .issue("host", &["10.9.9.9".to_string()], Duration::from_secs(3600))
        .unwrap();
    let addr = server(Arc::new(HostCertResolver::new(&cert).unwrap())).await;
    let err = connect(addr, &Trust::Pin(ca.pin().unwrap()))
        .await
        .unwrap_err();
    assert!(
        err.contains("NotValidForName") || err.contains("name"),
        "{err}"
    );
}

#[tokio::test]
async fn a_swapped_certificate_is_presented_without_a_restart() {
    let ca = Ca::generate("ca").unwrap();
    let first = ca
        .issue("host", &names(), Duration::from_secs(3600))
        .unwrap();
    let resolver = Arc::new(HostCertResolver::new(&first).unwrap());
    let addr = server(resolver.clone()).await;
    let trust = Trust::Pin(ca.pin().unwrap());
    let before = connect(addr, &trust).await.unwrap();
    let second = ca
        .issue("host", &names(), Duration::from_secs(3600))
        .unwrap();
    resolver.set(&second).unwrap();
    let after = connect(addr, &trust).await.unwrap();
    assert_ne!(
        before, after,
        "the listener kept presenting the old certificate"
    );
}

#[tokio::test]
async fn the_renewal_task_rotates_a_short_lived_certificate() {
    // SAFETY-free env change: this is the only test in this binary that reads it.
    // (Edition 2024 makes set_var unsafe; the lifetime is passed through the env
    // because the daemon reads it there.)
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: no other thread of this test binary reads or writes the environment now.
    unsafe { std::env::set_var(flynn_tls::CERT_LIFETIME_ENV, "3") };
    let tls = Arc::new(flynn_tls::TlsDir::open(dir.path(), "h", &names()).unwrap());
    let addr = server(tls.resolver()).await;
    let trust = Trust::Pin(tls.pin().unwrap());
    let before = connect(addr, &trust).await.unwrap();
    let task = flynn_tls::spawn_renewal(tls.clone(), names);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = connect(addr, &trust).await.unwrap();
    task.abort();
    assert_ne!(
        before, after,
        "the certificate was not renewed after 2/3 of its 3 s"
    );
}
