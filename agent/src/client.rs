//! The CLI's HTTP client for the daemon's API.

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::model::ErrorBody;

pub type RequestBody = BoxBody<Bytes, std::io::Error>;

/// A non-2xx answer from the daemon.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
}

pub struct Client {
    /// `host:port` to connect to.
    authority: String,
}

impl Client {
    /// `url` is `http://HOST:PORT` (the scheme may be left out).
    pub fn new(url: &str) -> Result<Client> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        if rest.starts_with("https://") || rest.contains("://") {
            return Err(anyhow!(
                "unsupported daemon address {url:?}: use http://HOST:PORT"
            ));
        }
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(anyhow!(
                "invalid daemon address {url:?}: use http://HOST:PORT"
            ));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:1113")
        };
        Ok(Client { authority })
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: RequestBody,
    ) -> Result<Response<Incoming>> {
        let stream = TcpStream::connect(&self.authority).await.with_context(|| {
            format!(
                "cannot reach the flynn-host daemon at http://{}: is it running? (set --host or FLYNN_HOST)",
                self.authority
            )
        })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("talking to the daemon")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority);
        if let Some(ct) = content_type {
            builder = builder.header(CONTENT_TYPE, ct);
        }
        let request = builder.body(body).context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .context("the daemon closed the connection")?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(failure(response).await.into())
        }
    }

    /// A request with an optional JSON body, and a JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let response = self.send_json(method, path, body).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("reading the daemon's answer")?
            .to_bytes();
        serde_json::from_slice(&bytes).context("the daemon's answer is not the JSON expected")
    }

    /// A request whose answer body is not needed.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Response<Incoming>> {
        match body {
            Some(value) => {
                let data = serde_json::to_vec(value).context("encoding the request")?;
                self.request(method, path, Some("application/json"), full(data))
                    .await
            }
            None => self.request(method, path, None, empty()).await,
        }
    }
}

pub fn full(data: Vec<u8>) -> RequestBody {
    Full::new(Bytes::from(data))
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> RequestBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

async fn failure(response: Response<Incoming>) -> ApiFailure {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|e| e.error)
        .unwrap_or_else(|_| format!("the daemon answered {status}"));
    ApiFailure { status, message }
}

/// Percent-encodes a value for a path segment or query.
pub fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}
