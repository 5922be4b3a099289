//! `GET /jobs/{id}/logs`: a job's log as NDJSON (Docker's json-file lines),
//! optionally following it until the job exits.

use std::io::SeekFrom;
use std::path::Path;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_stream::StreamExt;

use super::{ApiError, ApiState, Body, Query, StreamTx, streaming};
use crate::jobs::has_exited;
use crate::model::LogEntry;

struct Filter {
    stdout: bool,
    stderr: bool,
    /// Only entries written after this time (to resume a stream without repeats).
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl Filter {
    /// Whether a complete log line passes; lines that do not parse are dropped
    /// (the shim only writes whole JSON lines, so that is a torn last line).
    fn keep(&self, line: &[u8]) -> bool {
        if self.stdout && self.stderr && self.since.is_none() {
            return !line.is_empty();
        }
        match serde_json::from_slice::<LogEntry>(line) {
            Ok(entry) => {
                let stream = match entry.stream {
                    runtime::logs::Stream::Stdout => self.stdout,
                    runtime::logs::Stream::Stderr => self.stderr,
                };
                stream && self.since.is_none_or(|since| entry.time > since)
            }
            Err(_) => false,
        }
    }
}

pub async fn logs(
    state: &ApiState,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::of(&req);
    let follow = query.flag("follow", false)?;
    let tail = query.number::<usize>("tail")?;
    let since = query
        .get("since")
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "invalid since {t:?}: give an RFC 3339 time such as 2026-01-02T03:04:05.123456789Z"
                    ))
                })
        })
        .transpose()?;
    let filter = Filter {
        stdout: query.flag("stdout", true)?,
        stderr: query.flag("stderr", true)?,
        since,
    };
    let handle = state.jobs.get(id)?;
    let path = state.jobs.log_path(&handle.id);
    // Opened now, so a job removed while we stream (auto-remove) stays readable.
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("opening the log {}: {e}", path.display())))?;
    let mut rx = handle.subscribe();
    let drained = state.drained();
    let (tx, response) = streaming("application/x-ndjson");
    tokio::spawn(async move {
        let pumped = tokio::select! {
            pumped = pump(file, &path, tail, follow, &filter, &mut rx, &tx) => pumped,
            // Handing over to a new daemon: cut short, the client resumes there
            // with `since`.
            _ = drained => {
                tx.abort().await;
                return;
            }
        };
        if let Err(e) = pumped {
            tracing::debug!(error = %e, "log stream failed");
            tx.abort().await;
        }
    });
    Ok(response)
}

async fn pump(
    mut file: tokio::fs::File,
    path: &Path,
    tail: Option<usize>,
    follow: bool,
    filter: &Filter,
    rx: &mut tokio::sync::watch::Receiver<crate::model::Job>,
    tx: &StreamTx,
) -> Result<(), String> {
    // Watch before the first read so no write between the two is missed.
    let mut changes = if follow {
        let inotify = inotify::Inotify::init().map_err(|e| e.to_string())?;
        inotify
            .watches()
            .add(path, inotify::WatchMask::MODIFY)
            .map_err(|e| e.to_string())?;
        Some(
            inotify
                .into_event_stream([0u8; 256])
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };

    let mut pending = Vec::new();
    if let Some(n) = tail {
        let mut all = Vec::new();
        file.read_to_end(&mut all)
            .await
            .map_err(|e| e.to_string())?;
        let complete = all.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let lines: Vec<&[u8]> = all[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| filter.keep(l))
            .collect();
        let start = lines.len().saturating_sub(n);
        let mut out = Vec::new();
        for line in &lines[start..] {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        send(tx, out).await?;
        pending.extend_from_slice(&all[complete..]);
        file.seek(SeekFrom::Start(all.len() as u64))
            .await
            .map_err(|e| e.to_string())?;
    }
    loop {
        // Whether the job had exited before this read: then the read sees all output.
        let done = has_exited(&rx.borrow());
        read_available(&mut file, &mut pending, filter, tx).await?;
        let Some(changes) = changes.as_mut() else {
            return Ok(());
        };
        if done {
            return Ok(());
        }
        tokio::select! {
            _ = changes.next() => {}
            changed = rx.changed() => {
                if changed.is_err() {
                    // The job is gone; what is in the file is all there will be.
                    read_available(&mut file, &mut pending, filter, tx).await?;
                    return Ok(());
                }
            }
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// Sends every complete line from the current position; keeps a torn tail.
async fn read_available(
    file: &mut tokio::fs::File,
    pending: &mut Vec<u8>,
    filter: &Filter,
    tx: &StreamTx,
) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        let Some(last) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let rest = pending.split_off(last + 1);
        let mut out = Vec::with_capacity(pending.len());
        for line in pending.split(|&b| b == b'\n').filter(|l| filter.keep(l)) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        *pending = rest;
        send(tx, out).await?;
    }
}

async fn send(tx: &StreamTx, data: Vec<u8>) -> Result<(), String> {
    if data.is_empty() {
        return Ok(());
    }
    tx.send(Bytes::from(data))
        .await
        .map_err(|_| "client went away".to_string())
}
