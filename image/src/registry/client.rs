//! One repository at one endpoint, through `oci-client`: manifests by tag or digest, small
//! blobs whole, layer blobs as byte streams from an offset (HTTP `Range`, to resume).
//!
//! `oci-client` does the protocol work: the `/v2/` challenge, the bearer-token flow
//! (anonymous or with credentials), basic auth, token caching and expiry, HTTPS with the
//! system's roots or plain HTTP per registry, mirrors (`?ns=` as containerd sends). What
//! it reports is mapped here to [`RegistryError`]s that name the registry and say what to
//! do. Digests are checked by the caller, which knows what each blob is for.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use super::{Credentials, Endpoint, RegistryError};
use crate::digest::Digest;
use crate::reference::Reference;

/// A stalled connection is given up after this long without a byte (then resumed).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const USER_AGENT: &str = concat!("flynn-host/", env!("CARGO_PKG_VERSION"));

/// What a manifest request names.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    Tag(String),
    Digest(Digest),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tag(t) => write!(f, "tag {t}"),
            Target::Digest(d) => write!(f, "manifest {d}"),
        }
    }
}

/// A byte stream of a blob, starting where it was asked to, or at 0 when the registry
/// ignored the range.
pub(crate) struct BlobStream {
    pub stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
    pub starts_at: u64,
}

/// A repository at one endpoint.
pub(crate) struct Remote {
    client: oci_client::Client,
    domain: String,
    repository: String,
    endpoint: Endpoint,
    auth: RegistryAuth,
}

impl Remote {
    pub(crate) fn new(
        reference: &Reference,
        endpoint: &Endpoint,
        credentials: Option<&Credentials>,
    ) -> Result<Remote, RegistryError> {
        let protocol = if endpoint.insecure {
            ClientProtocol::HttpsExcept(vec![endpoint.host.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            read_timeout: Some(READ_TIMEOUT),
            connect_timeout: Some(CONNECT_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        // reqwest takes the process's default crypto provider (and would panic without
        // one): ring's, as everywhere in the workspace. An error only says a default
        // is already there.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::try_from(config).map_err(|e| RegistryError::Connect {
            registry: endpoint.host.clone(),
            detail: format!("setting up the HTTP client: {e}"),
        })?;
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Ok(Remote {
            client,
            domain: reference.domain().to_owned(),
            repository: reference.path().to_owned(),
            endpoint: endpoint.clone(),
            auth,
        })
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn oci_reference(&self, target: &Target) -> oci_client::Reference {
        let mut reference = match target {
            Target::Tag(tag) => oci_client::Reference::with_tag(
                self.domain.clone(),
                self.repository.clone(),
                tag.clone(),
            ),
            Target::Digest(d) => oci_client::Reference::with_digest(
                self.domain.clone(),
                self.repository.clone(),
                d.to_string(),
            ),
        };
        if self.endpoint.host != self.domain {
            reference.set_mirror_registry(self.endpoint.host.clone());
        }
        reference
    }

    /// The manifest (or index) bytes and their digest. When `target` is a digest, the
    /// bytes are checked against it.
    pub(crate) async fn manifest(
        &self,
        target: &Target,
        accept: &[&str],
    ) -> Result<(Bytes, Digest), RegistryError> {
        let reference = self.oci_reference(target);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, accept)
            .await
            .map_err(|e| self.map_error(&target.to_string(), e))?;
        let actual = Digest::of(&bytes);
        if let Target::Digest(expected) = target
            && *expected != actual
        {
            return Err(RegistryError::DigestMismatch {
                registry: self.endpoint.host.clone(),
                what: "manifest".to_owned(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok((bytes, actual))
    }

    /// A blob's bytes from `offset` on. Authenticates first if no manifest request did.
    pub(crate) async fn blob(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobStream, RegistryError> {
        let reference = self.oci_reference(&Target::Digest(digest.clone()));
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth)
            .await;
        let digest_text = digest.to_string();
        let response = self
            .client
            .pull_blob_stream_partial(&reference, digest_text.as_str(), offset, None)
            .await
            .map_err(|e| self.map_error(&format!("blob {digest}"), e))?;
        Ok(match response {
            BlobResponse::Partial(s) => BlobStream {
                stream: s.stream,
                starts_at: offset,
            },
            BlobResponse::Full(s) => BlobStream {
                stream: s.stream,
                starts_at: 0,
            },
        })
    }

    /// A small blob (a config) whole, at most `limit` bytes, checked against its digest.
    pub(crate) async fn small_blob(
        &self,
        digest: &Digest,
        what: &str,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut blob = self.blob(digest, 0).await?;
        let mut data = Vec::new();
        while let Some(chunk) = blob.stream.next().await {
            let chunk = chunk.map_err(|e| RegistryError::Http {
                registry: self.endpoint.host.clone(),
                what: format!("reading {what} {digest}"),
                detail: e.to_string(),
            })?;
            data.extend_from_slice(&chunk);
            if data.len() as u64 > limit {
                return Err(RegistryError::TooLarge {
                    registry: self.endpoint.host.clone(),
                    what: format!("{what} {digest}"),
                    size: data.len() as u64,
                    limit,
                });
            }
        }
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                registry: self.endpoint.host.clone(),
                what: what.to_owned(),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(data)
    }

    fn map_error(&self, what: &str, e: OciDistributionError) -> RegistryError {
        let registry = self.endpoint.host.clone();
        let unauthorized = |detail: String| RegistryError::Unauthorized {
            registry: registry.clone(),
            repository: self.repository.clone(),
            with_credentials: matches!(self.auth, RegistryAuth::Basic(..)),
            detail,
        };
        let not_found = || RegistryError::NotFound {
            registry: registry.clone(),
            what: format!("{}: {what}", self.repository),
        };
        let http = |detail: String| RegistryError::Http {
            registry: registry.clone(),
            what: format!("fetching {what}"),
            detail,
        };
        match e {
            OciDistributionError::UnauthorizedError { .. } => {
                unauthorized("401 Unauthorized".into())
            }
            OciDistributionError::AuthenticationFailure(reason) => {
                unauthorized(format!("the token service refused: {}", reason.trim()))
            }
            OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    not_found()
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    unauthorized(detail)
                } else {
                    http(detail)
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                404 => not_found(),
                401 | 403 => unauthorized(format!("HTTP {code}")),
                _ => http(format!("HTTP {code}: {}", truncate(message.trim(), 200))),
            },
            OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
                RegistryError::Connect {
                    detail: self.tls_hint(error_chain(&e)),
                    registry,
                }
            }
            OciDistributionError::RequestError(e) => http(self.tls_hint(error_chain(&e))),
            other => http(other.to_string()),
        }
    }
}

impl Remote {
    /// An HTTPS failure against a registry that may speak plain HTTP says how to allow it.
    fn tls_hint(&self, detail: String) -> String {
        let lower = detail.to_ascii_lowercase();
        let tls = ["tls", "ssl", "certificate", "handshake", "corrupt message"]
            .iter()
            .any(|w| lower.contains(w));
        if tls && !self.endpoint.insecure {
            format!(
                "{detail} (if {} serves plain HTTP, list it under \"registry\": {{\"insecure\": [...]}} in the daemon's config file)",
                self.endpoint.host
            )
        } else {
            detail
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// reqwest's errors keep the useful part ("connection refused") in their sources.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut current = e.source();
    while let Some(cause) = current {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        current = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The HTTPS client runs on the workspace's ring provider (reqwest has none of its
    /// own): it is built, sends a ClientHello, and a registry that answers in plain
    /// HTTP gets the hint that says how to allow it.
    #[tokio::test]
    async fn https_runs_on_ring_and_a_plain_http_registry_gets_the_hint() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let (tls_seen, mut saw_tls) = tokio::sync::watch::channel(false);
        // Answers every connection in plain HTTP (the client may try more than once).
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut hello = [0u8; 5];
                if conn.read_exact(&mut hello).await.is_ok() && hello[0] == 22 && hello[1] == 3 {
                    // A TLS handshake record: content type 22, version 3.x.
                    let _ = tls_seen.send(true);
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let endpoint = Endpoint {
            host: host.clone(),
            insecure: false,
            mirror: false,
        };
        let reference: Reference = format!("{host}/demo:1").parse().unwrap();
        let remote = Remote::new(&reference, &endpoint, None).unwrap();
        let err = remote
            .manifest(&Target::Tag("1".to_owned()), &["application/json"])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            *saw_tls.borrow_and_update(),
            "the client did not start a TLS handshake"
        );
        assert!(err.contains("serves plain HTTP"), "{err}");
    }
}
