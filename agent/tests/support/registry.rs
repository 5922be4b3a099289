//! Registries for the pull tests, all inside the daemon's network namespace (a server
//! on the host's 127.0.0.1 is not reachable from there): Debian's `docker-registry`
//! (plain, htpasswd or token auth), images pushed with skopeo, a token server, and a
//! proxy that counts blob requests and can corrupt, slow down or cut a blob.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A port nothing listens on in a fresh namespace (picked on the host, where it is
/// free too, so that two tests do not pick the same one at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free port")
}

/// Runs `f` on a new thread that entered network namespace `netns`; threads it starts
/// are in that namespace too.
fn in_netns<F: FnOnce() + Send + 'static>(netns: &str, f: F) {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("opening the netns");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    });
}

fn nsenter(netns: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{netns}")).arg("--");
    cmd
}

pub enum Auth {
    None,
    /// htpasswd (bcrypt) with one user.
    Basic {
        user: String,
        password: String,
    },
    /// Bearer tokens from `realm`, signed by the key of `cert`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        cert: PathBuf,
    },
}

/// A `docker-registry` process in the namespace.
pub struct Registry {
    child: Child,
    /// `ip:port`, as images are named.
    pub addr: String,
    netns: String,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(netns: &str, ip: &str, auth: Auth) -> Registry {
        Registry::start_at(netns, &format!("{ip}:{}", free_port()), auth)
    }

    /// A registry listening on `addr` (`ip:port`).
    pub fn start_at(netns: &str, addr: &str, auth: Auth) -> Registry {
        let addr = addr.to_string();
        let dir = tempfile::Builder::new()
            .prefix("flynn-registry-")
            .tempdir_in("/var/tmp")
            .expect("registry dir");
        let auth_section = match &auth {
            Auth::None => String::new(),
            Auth::Basic { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("running htpasswd (apache2-utils)");
                assert!(out.status.success(), "htpasswd failed");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).expect("writing htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: flynn-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token {
                realm,
                service,
                issuer,
                cert,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                cert.display()
            ),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_section}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("writing the registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = nsenter(netns)
            .arg("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry (apt-get install docker-registry)");
        let registry = Registry {
            child,
            addr,
            netns: netns.to_string(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while super::common::connect_in(netns, &registry.addr).is_none() {
            assert!(
                Instant::now() < deadline,
                "the registry did not start: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes `src` (a skopeo source, e.g. `oci:DIR:REF`) as `repo:tag`; `all` keeps
    /// every image of an index.
    pub fn push(&self, src: &str, dest: &str, creds: Option<(&str, &str)>, all: bool) {
        let mut cmd = nsenter(&self.netns);
        cmd.args(["skopeo", "copy", "-q", "--dest-tls-verify=false"]);
        if all {
            cmd.arg("--all");
        }
        if let Some((user, password)) = creds {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        let out = cmd
            .arg(src)
            .arg(format!("docker://{}/{dest}", self.addr))
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {src} -> {dest} failed: {}\nregistry log: {}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The blob files of the registry's storage, by digest hex.
    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type ProxyBody = BoxBody<Bytes, std::io::Error>;

fn text_body(text: &str) -> ProxyBody {
    http_body_util::Full::new(Bytes::from(text.to_string()))
        .map_err(|never| match never {})
        .boxed()
}

/// What the proxy does to one blob.
#[derive(Clone, Debug, Default)]
pub struct BlobRule {
    /// Flip the bytes of the body from this offset on (same length: a wrong blob).
    pub corrupt_from: Option<u64>,
    /// Send at most this many bytes a second.
    pub rate: Option<u64>,
    /// Cut the connection after this many bytes, for the first N requests.
    pub cut_after: Option<(u64, usize)>,
    /// Wait this long before the first byte.
    pub delay: Option<Duration>,
}

/// A blob GET the proxy saw.
#[derive(Clone, Debug)]
pub struct BlobGet {
    pub digest: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct ProxyState {
    rules: HashMap<String, BlobRule>,
    gets: Vec<BlobGet>,
    cuts: HashMap<String, usize>,
}

/// An HTTP proxy in front of a registry.
pub struct Proxy {
    pub addr: String,
    state: Arc<Mutex<ProxyState>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Proxy {
    pub fn start(netns: &str, upstream: &str) -> Proxy {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel();
        let (shared, upstream, listen) = (state.clone(), upstream.to_string(), addr.clone());
        in_netns(netns, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .expect("proxy bind");
                let _ = ready.send(());
                let client: hyper_util::client::legacy::Client<_, Incoming> =
                    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
                tokio::pin!(stopped);
                loop {
                    let (stream, _) = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let (state, upstream, client) =
                        (shared.clone(), upstream.clone(), client.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let (state, upstream, client) =
                                (state.clone(), upstream.clone(), client.clone());
                            async move {
                                Ok::<_, Infallible>(forward(req, &state, &upstream, &client).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        is_ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the proxy did not start");
        Proxy {
            addr,
            state,
            stop: Some(stop),
        }
    }

    pub fn set_rule(&self, digest: &str, rule: BlobRule) {
        let mut state = self.state.lock().unwrap();
        state.cuts.remove(digest);
        state.rules.insert(digest.to_string(), rule);
    }

    pub fn clear_rules(&self) {
        let mut state = self.state.lock().unwrap();
        state.rules.clear();
        state.cuts.clear();
    }

    pub fn gets(&self) -> Vec<BlobGet> {
        self.state.lock().unwrap().gets.clone()
    }

    pub fn clear_gets(&self) {
        self.state.lock().unwrap().gets.clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `/v2/<name>/blobs/sha256:<hex>` -> the digest.
fn blob_digest(path: &str) -> Option<String> {
    let (_, digest) = path.rsplit_once("/blobs/")?;
    digest.starts_with("sha256:").then(|| digest.to_string())
}

async fn forward(
    req: Request<Incoming>,
    state: &Arc<Mutex<ProxyState>>,
    upstream: &str,
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Incoming,
    >,
) -> Response<ProxyBody> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".to_string());
    let digest = blob_digest(req.uri().path());
    let is_get = req.method() == hyper::Method::GET;
    let range = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let rule = match (&digest, is_get) {
        (Some(d), true) => {
            let mut s = state.lock().unwrap();
            s.gets.push(BlobGet {
                digest: d.clone(),
                range: range.clone(),
            });
            let rule = s.rules.get(d).cloned();
            // Cut only the first N requests of the blob.
            let cut = rule
                .as_ref()
                .and_then(|r| r.cut_after)
                .and_then(|(bytes, times)| {
                    let n = s.cuts.entry(d.clone()).or_insert(0);
                    (*n < times).then(|| {
                        *n += 1;
                        bytes
                    })
                });
            rule.map(|r| (r, cut))
        }
        _ => None,
    };
    let (parts, body) = req.into_parts();
    let mut builder = Request::builder()
        .method(parts.method)
        .uri(format!("http://{upstream}{path}"));
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST {
            builder = builder.header(name, value);
        }
    }
    let Ok(upstream_req) = builder.header(hyper::header::HOST, upstream).body(body) else {
        return Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(text_body("bad request"))
            .unwrap();
    };
    let response = match client.request(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(text_body(&e.to_string()))
                .unwrap();
        }
    };
    let (parts, mut body) = response.into_parts();
    let Some((rule, cut)) = rule else {
        return Response::from_parts(parts, body.map_err(std::io::Error::other).boxed());
    };
    // The range's start, so corruption lands at the same blob offsets when resumed.
    let start: u64 = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse().ok())
        .filter(|_| parts.status == StatusCode::PARTIAL_CONTENT)
        .unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        if let Some(delay) = rule.delay {
            tokio::time::sleep(delay).await;
        }
        let mut offset = start;
        let mut sent: u64 = 0;
        let began = Instant::now();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                let _ = tx.send(Err(std::io::Error::other("upstream broke"))).await;
                return;
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let mut data = data.to_vec();
            if let Some(from) = rule.corrupt_from {
                for (i, byte) in data.iter_mut().enumerate() {
                    if offset + i as u64 >= from {
                        *byte ^= 0x5a;
                    }
                }
            }
            for piece in data.chunks(16 * 1024) {
                if let Some(limit) = cut
                    && sent + piece.len() as u64 > limit
                {
                    let _ = tx
                        .send(Err(std::io::Error::other("cut by the test proxy")))
                        .await;
                    return;
                }
                if let Some(rate) = rule.rate {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(began.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                if tx
                    .send(Ok(Frame::data(Bytes::copy_from_slice(piece))))
                    .await
                    .is_err()
                {
                    return;
                }
                sent += piece.len() as u64;
            }
            offset += data.len() as u64;
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::from_parts(parts, StreamBody::new(stream).boxed())
}

/// A token server for the registry's `auth.token`: grants pull access to anyone
/// anonymous, or to `user:password` when they are given (wrong ones get 401).
pub struct TokenServer {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub cert: PathBuf,
    pub requests: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TokenServer {
    pub fn start(netns: &str, user: Option<(&str, &str)>) -> TokenServer {
        let dir = tempfile::tempdir().expect("token dir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-subj", "/CN=flynn-test-token"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running openssl");
        assert!(status.success(), "openssl req failed");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "der", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl x509");
        assert!(der.status.success());
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let port = free_port();
        let realm = format!("http://127.0.0.1:{port}/token");
        let (service, issuer) = (
            "flynn-test-registry".to_string(),
            "flynn-test-issuer".to_string(),
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel();
        let user = user.map(|(u, p)| (u.to_string(), p.to_string()));
        let ctx = Arc::new(TokenContext {
            key,
            x5c,
            service: service.clone(),
            issuer: issuer.clone(),
            user,
            requests: requests.clone(),
        });
        in_netns(netns, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("token runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .expect("token bind");
                let _ = ready.send(());
                tokio::pin!(stopped);
                loop {
                    let (stream, _) = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let ctx = ctx.clone();
                            async move { Ok::<_, Infallible>(ctx.answer(&req)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        is_ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the token server did not start");
        TokenServer {
            realm,
            service,
            issuer,
            cert,
            requests,
            _dir: dir,
            stop: Some(stop),
        }
    }

    pub fn auth(&self) -> Auth {
        Auth::Token {
            realm: self.realm.clone(),
            service: self.service.clone(),
            issuer: self.issuer.clone(),
            cert: self.cert.clone(),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct TokenContext {
    key: PathBuf,
    x5c: String,
    service: String,
    issuer: String,
    user: Option<(String, String)>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TokenContext {
    fn answer(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let query = req.uri().query().unwrap_or("").to_string();
        self.requests.lock().unwrap().push(query.clone());
        let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let subject = match (&self.user, given) {
            (Some((u, p)), Some(given)) if given == format!("{u}:{p}") => u.clone(),
            (_, Some(_)) | (Some(_), None) => {
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .body(text_body("{\"details\":\"bad credentials\"}"))
                    .unwrap();
            }
            (None, None) => String::new(),
        };
        let access: Vec<serde_json::Value> = params
            .get("scope")
            .and_then(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                let actions: Vec<&str> = actions.split(',').collect();
                Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
            })
            .into_iter()
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": subject, "aud": self.service,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", std::process::id()), "access": access,
        });
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = sign(&self.key, signing_input.as_bytes());
        let token = format!("{signing_input}.{}", b64(&signature));
        let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
        Response::builder()
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(text_body(&body.to_string()))
            .unwrap()
    }
}

/// RS256: `openssl dgst -sha256 -sign` is PKCS#1 v1.5 over SHA-256, as JWS wants.
fn sign(key: &Path, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl dgst");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("writing to openssl");
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl dgst -sign failed");
    out.stdout
}

/// Checks NDJSON pull events against `PullEvent` in the OpenAPI document.
pub fn check_events(events: &[serde_json::Value]) {
    let doc = apidoc::Document::load(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    for event in events {
        doc.check_schema("PullEvent", event)
            .unwrap_or_else(|e| panic!("pull event: {e}"));
    }
}
