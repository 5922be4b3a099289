//! An app's log (`GET /apps/{app}/log?lines=N&follow=true&type=T&job=J`): NDJSON from
//! a log aggregator instance found in discovery, and `flynn log`.
//!
//! Every aggregator instance has every line (each host ships to all of them), so any
//! one answers. The controller tries them in discovery's order and takes the first that
//! answers 200; when the one being followed goes away, it follows another, asking it
//! for its whole backlog again and passing over what the client already has (by each
//! job's `seq`, which only grows), so the client neither misses nor doubles a line.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use discovery::Etcd;
use flynn_client::TlsOptions;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_rustls::rustls::ClientConfig;

/// How long an aggregator has to answer before the next one is asked.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// What is asked for again when a follow moves to another instance.
const REFILL_LINES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    BadQuery(String),
    #[error("no log aggregator answers ({0}): is the flynn-logaggregator service running?")]
    Unavailable(String),
}

/// What a client asked for.
#[derive(Debug, Clone, Default)]
struct Query {
    lines: Option<usize>,
    follow: bool,
    process_type: Option<String>,
    job: Option<String>,
}

fn parse_query(q: Option<&str>) -> Result<Query, LogError> {
    let mut out = Query::default();
    for kv in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v);
        match k {
            "lines" => {
                out.lines = Some(v.parse().map_err(|_| {
                    LogError::BadQuery(format!("lines={v} is not a number of lines"))
                })?)
            }
            "follow" => out.follow = matches!(v.as_str(), "true" | "1"),
            "type" if !v.is_empty() => out.process_type = Some(v),
            "job" if !v.is_empty() => out.job = Some(v),
            _ => {}
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Query {
    fn path(&self, app: &str, lines: Option<usize>) -> String {
        let mut p = format!("/logs/{}?", encode(app));
        if let Some(n) = lines.or(self.lines) {
            p.push_str(&format!("lines={n}&"));
        }
        if self.follow {
            p.push_str("follow=true&");
        }
        if let Some(t) = &self.process_type {
            p.push_str(&format!("type={}&", encode(t)));
        }
        if let Some(j) = &self.job {
            p.push_str(&format!("job={}&", encode(j)));
        }
        p.pop();
        p
    }
}

/// The HTTP addresses of the aggregator instances, in discovery's order, and
/// whether each serves TLS.
async fn instances(etcd: &Etcd) -> Result<Vec<(SocketAddr, bool)>, LogError> {
    let state = discovery::services::list(etcd, logagg::SERVICE)
        .await
        .map_err(|e| LogError::Unavailable(e.to_string()))?;
    Ok(state
        .instances
        .iter()
        .filter_map(|i| {
            let port: u16 = i.meta.get(logagg::META_HTTP)?.parse().ok()?;
            Some((
                SocketAddr::new(i.addr.ip(), port),
                logagg::tls::instance_tls(&i.meta),
            ))
        })
        .collect())
}

/// A 200 answer's body from `addr` (over TLS verified by `tls` when given).
async fn ask(
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    path: &str,
    token: Option<&str>,
) -> Result<hyper::body::Incoming, String> {
    let go = async {
        let stream = logagg::tls::connect(addr, tls, ASK_TIMEOUT).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::get(path).header("host", addr.to_string());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("it answered {}", resp.status()));
        }
        Ok(resp.into_body())
    };
    tokio::time::timeout(ASK_TIMEOUT, go)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// The first instance that answers.
async fn first_answer(
    etcd: &Etcd,
    trust: &TlsOptions,
    path: &str,
    token: Option<&str>,
) -> Result<hyper::body::Incoming, LogError> {
    let addrs = instances(etcd).await?;
    if addrs.is_empty() {
        return Err(LogError::Unavailable("none is registered".into()));
    }
    let mut why = Vec::new();
    for (a, tls) in &addrs {
        let config = if *tls {
            match trust.client_config() {
                Ok(c) => Some(c),
                Err(e) => {
                    why.push(format!("{a}: {e:#}"));
                    continue;
                }
            }
        } else {
            None
        };
        match ask(*a, config, path, token).await {
            Ok(body) => return Ok(body),
            Err(e) => {
                tracing::warn!(aggregator = %a, error = %e, "a log aggregator did not answer");
                why.push(format!("{a}: {e}"));
            }
        }
    }
    Err(LogError::Unavailable(why.join("; ")))
}

#[derive(Deserialize)]
struct Key {
    job_id: String,
    seq: u64,
}

pub type Body = BoxBody<Bytes, Infallible>;

/// The route: the app's lines as NDJSON (followed with `follow=true`).
pub async fn serve(
    etcd: Etcd,
    token: Option<String>,
    trust: TlsOptions,
    app: &str,
    query: Option<&str>,
) -> Result<Response<Body>, LogError> {
    let q = parse_query(query)?;
    let first = first_answer(&etcd, &trust, &q.path(app, None), token.as_deref()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let app = app.to_string();
    tokio::spawn(async move {
        let mut sent: HashMap<String, u64> = HashMap::new();
        let mut body = first;
        loop {
            if !forward(&mut body, &tx, &mut sent).await || !q.follow {
                return;
            }
            // The instance went away during a follow: follow another.
            loop {
                if tx.is_closed() {
                    return;
                }
                match first_answer(
                    &etcd,
                    &trust,
                    &q.path(&app, Some(REFILL_LINES)),
                    token.as_deref(),
                )
                .await
                {
                    Ok(b) => {
                        body = b;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "following a log: no aggregator for now");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = tokio_stream::StreamExt::map(stream, |b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(r)
}

/// Forwards whole lines the client does not have yet; false when the client left.
async fn forward(
    body: &mut hyper::body::Incoming,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    sent: &mut HashMap<String, u64>,
) -> bool {
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return true };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let rest = pending.split_off(end + 1);
        let mut out = Vec::with_capacity(pending.len());
        for line in pending.split_inclusive(|b| *b == b'\n') {
            if let Ok(k) = serde_json::from_slice::<Key>(line) {
                let high = sent.entry(k.job_id).or_insert(0);
                if k.seq <= *high {
                    continue;
                }
                *high = k.seq;
            }
            out.extend_from_slice(line);
        }
        pending = rest;
        if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
            return false;
        }
    }
    true
}

/// A line as `flynn log` prints it: `TIME APP[TYPE.JOBID]: line`.
pub fn format_line(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    format!(
        "{} {}[{}.{}]: {}",
        s("time"),
        s("app"),
        s("process_type"),
        s("job_id"),
        s("msg")
    )
}

/// `flynn log`: prints the app's lines in time order, following with `follow`.
pub async fn cli(
    client: &flynn_client::Client,
    app: &str,
    follow: bool,
    lines: Option<usize>,
    process_type: Option<String>,
    job: Option<String>,
) -> anyhow::Result<i32> {
    let q = Query {
        lines,
        follow,
        process_type,
        job,
    };
    let path = format!("/apps/{}/log{}", encode(app), {
        let p = q.path(app, None);
        p.split_once('?')
            .map(|(_, q)| format!("?{q}"))
            .unwrap_or_default()
    });
    let resp = client
        .request(hyper::Method::GET, &path, None, flynn_client::empty())
        .await?;
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    // (time, printed line, when it arrived)
    let mut held: Vec<(String, String, Instant)> = Vec::new();
    let stdout = std::io::stdout();
    // Lines are held a moment and printed sorted by time: without follow, all of
    // them at the end; with it, once the stream is quiet for QUIET or the oldest has
    // waited HOLD (lines of two hosts come by two roads, one a little slower).
    loop {
        let wait = match held.first() {
            Some(_) if follow => {
                let oldest = held.iter().map(|h| h.2).min().unwrap_or_else(Instant::now);
                QUIET.min(HOLD.saturating_sub(oldest.elapsed()))
            }
            _ => Duration::from_secs(3600),
        };
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Ok(Some(Ok(f))) => Some(f),
            Ok(Some(Err(e))) => anyhow::bail!("the log stream broke: {e}"),
            Ok(None) => None,
            Err(_) => {
                print_sorted(&mut held, &stdout)?;
                continue;
            }
        };
        let Some(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            pending.extend_from_slice(&data);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) {
                    let time = v["time"].as_str().unwrap_or("").to_string();
                    held.push((time, format_line(&v), Instant::now()));
                }
            }
        }
        if follow && held.iter().any(|h| h.2.elapsed() >= HOLD) {
            print_sorted(&mut held, &stdout)?;
        }
    }
    print_sorted(&mut held, &stdout)?;
    Ok(0)
}

/// A follow prints once the stream has been quiet this long...
const QUIET: Duration = Duration::from_millis(10);
/// ...or a line has waited this long.
const HOLD: Duration = Duration::from_millis(30);

fn print_sorted(
    lines: &mut Vec<(String, String, Instant)>,
    stdout: &std::io::Stdout,
) -> anyhow::Result<()> {
    use std::io::Write;
    if lines.is_empty() {
        return Ok(());
    }
    // RFC 3339 UTC times with nanoseconds sort as text; the sort is stable.
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = stdout.lock();
    for (_, l, _) in lines.drain(..) {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_rebuild() {
        let q = parse_query(Some("lines=5&follow=true&type=web&job=a%2Fb")).unwrap();
        assert_eq!(q.lines, Some(5));
        assert!(q.follow);
        assert_eq!(q.job.as_deref(), Some("a/b"));
        assert_eq!(
            q.path("demo", None),
            "/logs/demo?lines=5&follow=true&type=web&job=a%2Fb"
        );
        assert_eq!(
            q.path("demo", Some(9)),
            "/logs/demo?lines=9&follow=true&type=web&job=a%2Fb"
        );
        assert_eq!(parse_query(None).unwrap().path("x", None), "/logs/x");
        assert!(parse_query(Some("lines=many")).is_err());
        assert_eq!(percent_decode("a%2"), "a%2");
        let v = serde_json::json!({"time": "2026-01-01T00:00:00Z", "app": "demo",
            "process_type": "web", "job_id": "j1", "msg": "hi"});
        assert_eq!(format_line(&v), "2026-01-01T00:00:00Z demo[web.j1]: hi");
    }
}
