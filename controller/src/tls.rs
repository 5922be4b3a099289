//! The controller's HTTPS. Its certificate comes from the bootstrap (issued by
//! the cluster's CA for `controller.<domain>`, [`flynn_tls::CONTROLLER_NAME`] and
//! loopback) as PEM in its environment. A connection that reached a non-loopback
//! address is TLS: the routers' port 81 passes bytes through to an instance, so
//! the handshake is the client's own, end to end. One on loopback stays plain
//! (a host's own tools, the tests' controller), as the agent's API does.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// A client must start and finish its handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(
        "give both the controller's certificate and its key (FLYNN_CONTROLLER_TLS_CERT and FLYNN_CONTROLLER_TLS_KEY), or neither"
    )]
    HalfPair,
    #[error("the controller's certificate: {0}")]
    Cert(#[from] flynn_tls::TlsError),
}

/// The acceptor presenting `chain_pem` (the certificate, then the CA's) and its
/// key, and the resolver behind it (a renewal swaps the certificate there).
pub fn acceptor(
    chain_pem: &str,
    key_pem: &str,
) -> Result<(TlsAcceptor, Arc<flynn_tls::HostCertResolver>), TlsSetupError> {
    let resolver = Arc::new(flynn_tls::HostCertResolver::from_pem(chain_pem, key_pem)?);
    let acceptor = TlsAcceptor::from(flynn_tls::server_config(resolver.clone())?);
    Ok((acceptor, resolver))
}

/// The last certificate of `chain_pem` (the certificate, then the CA's), PEM: the
/// CA, when the chain has more than the certificate itself.
pub fn ca_of_chain(chain_pem: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    if chain_pem.matches(BEGIN).count() < 2 {
        return None;
    }
    let last = &chain_pem[chain_pem.rfind(BEGIN)?..];
    let end = "-----END CERTIFICATE-----";
    let len = last.find(end)? + end.len();
    Some(format!("{}\n", &last[..len]))
}

/// From the optional pair the arguments give; with `agent` (the host's agent,
/// and its token), the certificate is renewed through it two thirds into its
/// life, from the cluster's CA, without a restart.
pub fn from_args(
    cert: Option<&str>,
    key: Option<&str>,
    agent: Option<flynn_client::Client>,
) -> Result<Option<TlsAcceptor>, TlsSetupError> {
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => return Ok(None),
        _ => return Err(TlsSetupError::HalfPair),
    };
    let (acceptor, resolver) = acceptor(cert, key)?;
    if let Some(agent) = agent {
        let agent = Arc::new(agent);
        let (cert, key) = (cert.to_string(), key.to_string());
        tokio::spawn(async move {
            flynn_tls::renew_through(
                "the controller's certificate",
                cert,
                key,
                move |names, life| {
                    let agent = agent.clone();
                    async move {
                        agent
                            .issue_certificate(&names, life, "flynn controller")
                            .await
                    }
                },
                move |chain, key| resolver.set_pem(chain, key).map_err(|e| e.to_string()),
            )
            .await
        });
    }
    Ok(Some(acceptor))
}

/// What an accepted connection turned out to be.
pub enum Accepted {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Refused (plain HTTP where TLS is wanted, a failed handshake): dropped.
    Gone,
}

/// Decides a connection's side and does the handshake.
pub async fn accept(stream: TcpStream, tls: Option<&TlsAcceptor>) -> Accepted {
    let Some(acceptor) = tls else {
        return Accepted::Plain(stream);
    };
    if !flynn_tls::serves_tls(stream.local_addr().ok().map(|a| a.ip())) {
        return Accepted::Plain(stream);
    }
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            refuse_plain(stream).await;
            return Accepted::Gone;
        }
        _ => return Accepted::Gone,
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Accepted::Tls(Box::new(s)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            Accepted::Gone
        }
        Err(_) => Accepted::Gone,
    }
}

/// A plain request on the TLS side gets a 400 that says what to do, rather than
/// a TLS alert the client cannot read.
async fn refuse_plain(mut stream: TcpStream) {
    let body = serde_json::json!({
        "error": "the controller is served over HTTPS: use https://HOST:81 and the cluster's TLS pin \
                  (flynn cluster add -p PIN NAME https://HOST:81 KEY, as the bootstrap prints it)"
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// `GET /ca-cert` serves the CA of the chain the controller was given: the one
    /// whose pin the cluster's clients hold.
    #[test]
    fn the_ca_is_the_chains_last_certificate() {
        let ca = flynn_tls::Ca::generate("test").unwrap();
        let cert = ca
            .issue(
                "controller",
                &["controller.test".to_owned()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let served = ca_of_chain(&cert.chain_pem).unwrap();
        assert_eq!(
            flynn_tls::pin_of_pem(&served).unwrap().to_string(),
            ca.pin().unwrap().to_string()
        );
        // A certificate alone names no CA.
        let first_end = cert.chain_pem.find("-----END CERTIFICATE-----").unwrap();
        assert_eq!(ca_of_chain(&cert.chain_pem[..first_end + 25]), None);
    }
}
