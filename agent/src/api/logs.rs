//! `GET /jobs/{id}/logs`: a job's log as NDJSON (Docker's json-file lines),
//! optionally following it until the job exits.

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::tail::{self, Start};
use super::{ApiError, ApiState, Body, Query, streaming};
use crate::jobs::{JobError, has_exited};
use crate::model::LogEntry;

/// Which entries a reader wants.
#[derive(Clone)]
struct Filter {
    stdout: bool,
    stderr: bool,
    /// Only entries written at or after this time (inclusive, as Docker's).
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl Filter {
    /// Whether a complete log line passes; lines that do not parse are dropped
    /// (the shim only writes whole JSON lines, so that is a torn last line).
    fn keep(&self, line: &[u8]) -> bool {
        if self.stdout && self.stderr && self.since.is_none() {
            return true;
        }
        match serde_json::from_slice::<LogEntry>(line) {
            Ok(entry) => {
                let stream = match entry.stream {
                    runtime::logs::Stream::Stdout => self.stdout,
                    runtime::logs::Stream::Stderr => self.stderr,
                };
                stream && self.since.is_none_or(|since| entry.time >= since)
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
    let start = match query.number::<usize>("tail")? {
        Some(n) => Start::LastLines(n),
        None => Start::Beginning,
    };
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
    let (job_id, path, until) = match state.jobs.get(id) {
        Ok(handle) => {
            let until: Option<tail::Until> = follow.then(|| {
                let mut rx = handle.subscribe();
                Box::pin(async move {
                    let _ = rx.wait_for(has_exited).await.map(|_| ());
                }) as tail::Until
            });
            (handle.id.clone(), state.jobs.log_path(&handle.id), until)
        }
        // Auto-removed a moment ago: a follow cut by a daemon handover reads the
        // rest here. The job is gone, so there is nothing more to wait for.
        Err(e @ JobError::NotFound(_)) => match state.jobs.removed_log(id) {
            Some(path) => (id.to_string(), path, None),
            None => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    // Opened now, so a job removed while we stream (auto-remove) stays readable.
    let (file, path, until) = match tokio::fs::File::open(&path).await {
        Ok(file) => (file, path, until),
        // Removed between the lookup and the open: its log was moved aside.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match state.jobs.removed_log(&job_id) {
                Some(kept) => match tokio::fs::File::open(&kept).await {
                    Ok(file) => (file, kept, None),
                    Err(e) => return Err(open_failed(&path, e)),
                },
                // Removed by `rm` (its log goes with it).
                None => return Err(JobError::NotFound(id.to_string()).into()),
            }
        }
        Err(e) => return Err(open_failed(&path, e)),
    };
    let mut lines = tail::spawn(file, path, start, until, move |l| filter.keep(l));
    let drained = state.drained();
    let (tx, response) = streaming("application/x-ndjson");
    tokio::spawn(async move {
        tokio::pin!(drained);
        loop {
            tokio::select! {
                batch = lines.recv() => match batch {
                    Some(Ok(batch)) => {
                        if tx.send(batch).await.is_err() {
                            return;
                        }
                    }
                    // All of it was sent.
                    None => return,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "log stream failed");
                        tx.abort().await;
                        return;
                    }
                },
                // Handing over to a new daemon: cut short, the client resumes there
                // with `since`.
                _ = &mut drained => {
                    tx.abort().await;
                    return;
                }
            }
        }
    });
    Ok(response)
}

fn open_failed(path: &std::path::Path, e: std::io::Error) -> ApiError {
    ApiError::Internal(format!("opening the log {}: {e}", path.display()))
}
