//! Git's smart HTTP by Debian's `git-http-backend`, run as a CGI program per
//! request: the request body streams into its stdin while its stdout streams back
//! (a push's progress and the hooks' output reach the client as they are written,
//! over git's sideband).

use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::server::Body;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CgiError {
    #[error("starting git-http-backend: {0}")]
    Spawn(std::io::Error),
    #[error("git-http-backend ended before its headers: {0}")]
    NoHeaders(String),
}

/// What of the request the CGI environment carries beside the request itself.
pub(crate) struct Cgi<'a> {
    pub backend: &'a Path,
    pub project_root: &'a Path,
    /// PATH_INFO: `/<app>.git/...`.
    pub path_info: String,
    pub remote_user: String,
    pub remote_addr: String,
    /// Passed through to git and from it to the hooks.
    pub env: Vec<(String, String)>,
}

const MAX_HEADERS: usize = 64 * 1024;

pub(crate) async fn run(cgi: Cgi<'_>, req: Request<Incoming>) -> Result<Response<Body>, CgiError> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut cmd = tokio::process::Command::new(cgi.backend);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("GIT_PROJECT_ROOT", cgi.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", req.method().as_str())
        .env("PATH_INFO", &cgi.path_info)
        .env("QUERY_STRING", req.uri().query().unwrap_or(""))
        .env("REMOTE_USER", &cgi.remote_user)
        .env("REMOTE_ADDR", &cgi.remote_addr)
        .envs(cgi.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (var, name) in [
        ("CONTENT_TYPE", "content-type"),
        ("CONTENT_LENGTH", "content-length"),
        ("HTTP_CONTENT_ENCODING", "content-encoding"),
        ("GIT_PROTOCOL", "git-protocol"),
    ] {
        if let Some(v) = header(name) {
            cmd.env(var, v);
        }
    }
    let mut child = cmd.spawn().map_err(CgiError::Spawn)?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(CgiError::Spawn(std::io::Error::other("no pipes")));
    };
    let mut body = req.into_body();
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref()
                && stdin.write_all(data).await.is_err()
            {
                break;
            }
        }
        // EOF: git-http-backend reads a chunked body (no CONTENT_LENGTH) to the end.
        drop(stdin);
    });
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        if !text.trim().is_empty() {
            tracing::warn!(stderr = %text.trim(), "git-http-backend");
        }
    });
    // The CGI headers, up to the blank line.
    let mut head = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let (end, skip) = loop {
        if let Some(i) = find(&head, b"\r\n\r\n") {
            break (i, 4);
        }
        if let Some(i) = find(&head, b"\n\n") {
            break (i, 2);
        }
        if head.len() > MAX_HEADERS {
            return Err(CgiError::NoHeaders("more than 64 KiB of headers".into()));
        }
        let n = stdout
            .read(&mut buf)
            .await
            .map_err(|e| CgiError::NoHeaders(e.to_string()))?;
        if n == 0 {
            let status = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            return Err(CgiError::NoHeaders(format!("it exited ({status})")));
        }
        head.extend_from_slice(&buf[..n]);
    };
    let rest = head.split_off(end + skip);
    let mut resp = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&head[..end]).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("status") {
            let code = v.split_whitespace().next().unwrap_or("500");
            resp = resp.status(code.parse::<u16>().unwrap_or(500));
        } else {
            resp = resp.header(k, v);
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        if !rest.is_empty() && tx.send(Ok(Bytes::from(rest))).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx
                        .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        // The client went away: kill_on_drop ends git.
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
        let _ = child.wait().await;
    });
    let stream = ReceiverStream::new(rx).map(|r| r.map(Frame::data));
    let body = http_body_util::StreamBody::new(stream).boxed();
    resp.body(body)
        .map_err(|e| CgiError::NoHeaders(format!("a header git-http-backend sent: {e}")))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
