//! The HTTP client of the agent's API: `https://HOST:PORT` (verified by a CA
//! file or a pin, see `tls.rs`) or `http://HOST:PORT` (the host's loopback) with
//! the API token, or the root-only unix socket without one; and the rule API tokens follow. Used by
//! the CLI, by the appliance's init (which starts the daemon and imports its
//! baked images through it) and, later, by the platform's own services.
//! Knows the wire only as JSON (`serde`): the request and response types are the
//! agent's `model`.

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod tls;
pub use tls::{FirstContactFailure, TLS_CA_ENV, TLS_PIN_ENV, TlsOptions, first_contact};

/// Where the daemon listens for root on the host itself.
pub const DEFAULT_SOCKET: &str = "/run/flynn/host.sock";

/// The body of every error the API returns.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// What an API token must be: long enough not to be guessed, and printable.
pub fn validate_token(token: &str) -> Result<()> {
    if token.len() < 16 {
        anyhow::bail!("an API token must be at least 16 characters");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!("an API token may hold only printable ASCII characters without spaces");
    }
    Ok(())
}

pub type RequestBody = BoxBody<Bytes, std::io::Error>;

/// A non-2xx answer from the daemon.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
}

/// Where the daemon is.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// `host:port`, plain HTTP.
    Tcp(String),
    /// `host:port`, HTTPS.
    Https(String),
    Unix(PathBuf),
}

pub struct Client {
    endpoint: Endpoint,
    /// For `Https`: the TLS client configuration (built once per process).
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// What HTTPS trusts, for clients made from this one (other hosts).
    trust: TlsOptions,
    token: Option<String>,
    /// Put before every path: a service that relays an agent's job routes under a
    /// path of its own (the controller's `/apps/{app}/hosts/{host}`).
    prefix: String,
    /// For `Https`: the name the server's certificate must carry, when it is not
    /// the host dialled (the controller behind any router's port 81).
    server_name: Option<String>,
}

const DEFAULT_TCP: &str = "127.0.0.1:1113";

/// How long connecting to the daemon may take, TCP, TLS and HTTP handshakes
/// together: they take milliseconds, seconds on a loaded emulated machine.
const CONNECT_BOUND: std::time::Duration = std::time::Duration::from_secs(30);
const DEFAULT_TOKEN_FILE: &str = "/var/lib/flynn/token";

impl Client {
    /// `host` is `https://HOST[:PORT]`, `http://HOST[:PORT]` or `unix:///PATH`;
    /// without one, the local root socket if it exists, else TCP on
    /// 127.0.0.1:1113. `token` is sent on TCP; without one, root on the daemon's
    /// host finds it in the default state dir. HTTPS trusts what
    /// `FLYNN_TLS_PIN` / `FLYNN_TLS_CA` say, else the host's own CA file.
    pub fn from_options(host: Option<&str>, token: Option<&str>) -> Result<Client> {
        Client::from_options_tls(host, token, &TlsOptions::from_env())
    }

    /// As [`Client::from_options`], trusting what `tls` says for HTTPS.
    pub fn from_options_tls(
        host: Option<&str>,
        token: Option<&str>,
        tls_options: &TlsOptions,
    ) -> Result<Client> {
        let endpoint = match host {
            Some(url) => parse_endpoint(url)?,
            None if Path::new(DEFAULT_SOCKET).exists() => Endpoint::Unix(DEFAULT_SOCKET.into()),
            None => Endpoint::Tcp(DEFAULT_TCP.to_string()),
        };
        let token = match token {
            Some(t) => Some(t.trim().to_string()),
            None => std::fs::read_to_string(DEFAULT_TOKEN_FILE)
                .ok()
                .map(|t| t.trim().to_string()),
        };
        let tls = match &endpoint {
            Endpoint::Https(_) => Some(tls_options.client_config()?),
            _ => None,
        };
        Ok(Client {
            endpoint,
            tls,
            trust: tls_options.clone(),
            token,
            prefix: String::new(),
            server_name: None,
        })
    }

    /// The same client with `prefix` put before every path it requests.
    pub fn with_prefix(mut self, prefix: &str) -> Client {
        self.prefix = prefix.trim_end_matches('/').to_string();
        self
    }

    /// The same client verifying that an HTTPS server's certificate names `name`
    /// rather than the host dialled (still against the trusted CA or pin).
    pub fn with_server_name(mut self, name: &str) -> Client {
        self.server_name = Some(name.to_string());
        self
    }

    /// Whether the endpoint is `https://` to an IP address (not a name).
    pub fn dials_address(&self) -> bool {
        match &self.endpoint {
            Endpoint::Https(authority) | Endpoint::Tcp(authority) => {
                tls::host_of(authority).parse::<std::net::IpAddr>().is_ok()
            }
            Endpoint::Unix(_) => false,
        }
    }

    /// What this client trusts for HTTPS (a client for another host of the
    /// cluster trusts the same).
    pub fn tls_options(&self) -> &TlsOptions {
        &self.trust
    }

    /// The token this client sends (platform services use the cluster's).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp(authority) => format!("http://{authority}"),
            Endpoint::Https(authority) => format!("https://{authority}"),
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: RequestBody,
    ) -> Result<Response<Incoming>> {
        self.send(method, path, content_type, body, false).await
    }

    /// A connection to the daemon (TCP, TLS or the unix socket) and the `Host`
    /// its requests carry, within [`CONNECT_BOUND`]: a host whose kernel takes the
    /// connection but whose daemon never answers the handshake is an error that
    /// says so, not a command that waits for ever.
    async fn connect(
        &self,
    ) -> Result<(hyper::client::conn::http1::SendRequest<RequestBody>, String)> {
        match tokio::time::timeout(CONNECT_BOUND, self.connect_unbounded()).await {
            Ok(connected) => connected,
            Err(_) => Err(anyhow!(
                "the flynn-host daemon at {} did not complete a connection within {} s: \
                 is the host overloaded or its daemon stuck? (its log says more)",
                self.describe(),
                CONNECT_BOUND.as_secs()
            )),
        }
    }

    async fn connect_unbounded(
        &self,
    ) -> Result<(hyper::client::conn::http1::SendRequest<RequestBody>, String)> {
        let unreachable = || {
            format!(
                "cannot reach the flynn-host daemon at {}: is it running? (set --host or FLYNN_HOST)",
                self.describe()
            )
        };
        Ok(match &self.endpoint {
            Endpoint::Tcp(authority) => {
                let stream = TcpStream::connect(authority)
                    .await
                    .with_context(unreachable)?;
                let _ = stream.set_nodelay(true);
                (handshake(stream).await?, authority.clone())
            }
            Endpoint::Https(authority) => {
                let stream = TcpStream::connect(authority)
                    .await
                    .with_context(unreachable)?;
                // Without it, the handshake's small writes meet Nagle and the
                // peer's delayed ACK: tens of milliseconds per call.
                let _ = stream.set_nodelay(true);
                let config = self
                    .tls
                    .clone()
                    .ok_or_else(|| anyhow!("no TLS configuration for {}", self.describe()))?;
                let stream =
                    tls::connect(config, authority, self.server_name.as_deref(), stream).await?;
                (handshake(stream).await?, authority.clone())
            }
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).await.with_context(unreachable)?;
                (handshake(stream).await?, "localhost".to_string())
            }
        })
    }

    /// Sends a request made elsewhere (a relay's: its method, path, headers and
    /// body) with this client's `Host`, token and path prefix; any status is an
    /// answer, and an upgrade can follow (`hyper::upgrade::on`).
    pub async fn forward(&self, request: Request<RequestBody>) -> Result<Response<Incoming>> {
        let (mut sender, host) = self.connect().await?;
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = format!("{}{path}", self.prefix)
            .parse()
            .context("the relayed request's path")?;
        parts.headers.insert(
            HOST,
            host.parse()
                .context("the daemon's address as a Host header")?,
        );
        if let (Endpoint::Tcp(_) | Endpoint::Https(_), Some(token)) = (&self.endpoint, &self.token)
        {
            parts.headers.insert(
                AUTHORIZATION,
                format!("Bearer {token}")
                    .parse()
                    .context("the token as a header")?,
            );
        }
        sender
            .send_request(Request::from_parts(parts, body))
            .await
            .context("the daemon closed the connection")
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: RequestBody,
        upgrade: bool,
    ) -> Result<Response<Incoming>> {
        let (mut sender, host) = self.connect().await?;
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(HOST, host.as_str());
        if let (Endpoint::Tcp(_) | Endpoint::Https(_), Some(token)) = (&self.endpoint, &self.token)
        {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(ct) = content_type {
            builder = builder.header(CONTENT_TYPE, ct);
        }
        if upgrade {
            builder = builder.header(CONNECTION, "Upgrade").header(UPGRADE, "tcp");
        }
        let request = builder.body(body).context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .context("the daemon closed the connection")?;
        if response.status().is_success() || upgrade {
            Ok(response)
        } else {
            Err(failure(response).await.into())
        }
    }

    async fn send_upgrade(&self, method: Method, path: &str) -> Result<Response<Incoming>> {
        self.send(method, path, None, empty(), true).await
    }

    /// A request answered by `101 Switching Protocols`: the connection becomes a
    /// raw byte stream (attach).
    pub async fn upgrade(&self, method: Method, path: &str) -> Result<hyper::upgrade::Upgraded> {
        let response = self.send_upgrade(method, path).await?;
        if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            return Err(failure(response).await.into());
        }
        hyper::upgrade::on(response)
            .await
            .context("the daemon did not switch the connection over")
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

    /// A certificate from the agent's CA (`POST /cluster/tls/issue`, with the
    /// token): a platform service renewing its own. Its chain and key, PEM.
    pub async fn issue_certificate(
        &self,
        names: &[String],
        life: std::time::Duration,
        common_name: &str,
    ) -> std::result::Result<(String, String), String> {
        #[derive(serde::Deserialize)]
        struct Issued {
            chain: String,
            key: String,
        }
        let issued: Issued = self
            .call(
                Method::POST,
                "/cluster/tls/issue",
                Some(&serde_json::json!({
                    "names": names,
                    "lifetime_secs": life.as_secs(),
                    "common_name": common_name,
                })),
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok((issued.chain, issued.key))
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

async fn handshake<S>(stream: S) -> Result<hyper::client::conn::http1::SendRequest<RequestBody>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("talking to the daemon")?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

fn parse_endpoint(url: &str) -> Result<Endpoint> {
    if let Some(path) = url.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(anyhow!(
                "invalid daemon address {url:?}: use unix:///ABSOLUTE/PATH"
            ));
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    let (https, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://").unwrap_or(url)),
    };
    if rest.contains("://") {
        return Err(anyhow!(
            "unsupported daemon address {url:?}: use https://HOST:PORT, http://HOST:PORT or unix:///PATH"
        ));
    }
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(anyhow!(
            "invalid daemon address {url:?}: use http://HOST:PORT"
        ));
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:1113")
    };
    Ok(if https {
        Endpoint::Https(authority)
    } else {
        Endpoint::Tcp(authority)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that takes the TCP connection but never answers the TLS
    /// handshake (a stuck daemon behind a live kernel): the call fails, saying
    /// so, once the bound has passed (time runs paused here: no 30 s wait).
    #[tokio::test(start_paused = true)]
    async fn a_handshake_never_answered_is_an_error_after_the_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            drop(stream);
        });
        let pin = flynn_tls::Ca::generate("test")
            .unwrap()
            .pin()
            .unwrap()
            .to_string();
        let client = Client::from_options_tls(
            Some(&format!("https://{addr}")),
            Some("token"),
            &TlsOptions::pinned(&pin),
        )
        .unwrap();
        let started = tokio::time::Instant::now();
        let err = client
            .send_json(Method::GET, "/version", None::<&()>)
            .await
            .unwrap_err();
        assert!(started.elapsed() >= CONNECT_BOUND, "{err:#}");
        assert!(
            format!("{err:#}").contains("did not complete a connection within 30 s"),
            "{err:#}"
        );
        held.abort();
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9").unwrap(),
            Endpoint::Tcp("127.0.0.1:9".into())
        );
        assert_eq!(
            parse_endpoint("10.0.0.5").unwrap(),
            Endpoint::Tcp("10.0.0.5:1113".into())
        );
        assert_eq!(
            parse_endpoint("unix:///run/flynn/host.sock").unwrap(),
            Endpoint::Unix("/run/flynn/host.sock".into())
        );
        assert_eq!(
            parse_endpoint("https://10.0.0.5").unwrap(),
            Endpoint::Https("10.0.0.5:1113".into())
        );
        assert!(parse_endpoint("ftp://x").is_err());
        assert!(parse_endpoint("unix://relative").is_err());
        assert!(parse_endpoint("http://host/path").is_err());
    }
}
