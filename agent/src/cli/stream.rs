//! The CLI's long-lived requests: following a job's log and waiting for its
//! exit. Both survive the daemon handing over to a new one (an upgrade in
//! place): a stream that ends early is picked up again from where it stopped.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use hyper::Method;
use hyper::body::Incoming;

use crate::client::{ApiFailure, Client, encode};
use crate::model::{ErrorBody, ExitInfo, Job, JobState, LogEntry};

/// How many times a dropped stream is resumed before giving up, and how long to
/// wait between tries (a daemon handing over takes a moment).
const RESUME_TRIES: u32 = 100;
const RESUME_PAUSE: Duration = Duration::from_millis(100);

pub struct LogOptions {
    pub follow: bool,
    pub timestamps: bool,
    pub tail: Option<usize>,
}

/// Prints a job's log to stdout/stderr; with `follow`, until the job exits.
/// `first` is a log response already opened (by `run`, before starting the job).
pub async fn follow_logs(
    client: &Client,
    id: &str,
    options: &LogOptions,
    first: Option<Incoming>,
) -> Result<()> {
    let mut cursor = Cursor::default();
    let mut body = first;
    let mut tries = 0;
    let mut follow = options.follow;
    loop {
        let current = match body.take() {
            Some(b) => b,
            None => {
                let mut path = format!("/jobs/{}/logs?follow={follow}", encode(id));
                match cursor.resume() {
                    Some(since) => path.push_str(&format!("&since={since}")),
                    None => {
                        if let Some(n) = options.tail {
                            path.push_str(&format!("&tail={n}"));
                        }
                    }
                }
                match client.send_json(Method::GET, &path, None::<&()>).await {
                    Ok(response) => response.into_body(),
                    Err(e) if cursor.resuming() && is_transient(&e) && tries < RESUME_TRIES => {
                        tries += 1;
                        tokio::time::sleep(RESUME_PAUSE).await;
                        continue;
                    }
                    Err(e) if cursor.resuming() && is_gone(&e) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        match print_entries(current, options.timestamps, &mut cursor).await? {
            // The daemon ends a followed log once the job has exited and all of
            // its output was sent.
            Printed::StdoutClosed | Printed::Ended => return Ok(()),
            Printed::Broken if tries < RESUME_TRIES => {
                cursor.broken = true;
                tries += 1;
            }
            Printed::Broken => return Err(anyhow!("the log stream kept breaking off")),
        }
        // Cut short (the daemon handed over, or the connection broke): resume,
        // unless the job is done by now.
        match job_state(client, id).await {
            Ok(Some(JobState::Running | JobState::Created)) => {}
            // Done: read what is left (it may have been written after the stream
            // was cut) without following, through the same retries.
            Ok(_) => follow = false,
            Err(e) if is_transient(&e) && tries < RESUME_TRIES => {
                tries += 1;
                tokio::time::sleep(RESUME_PAUSE).await;
            }
            Err(e) => return Err(e),
        }
        // Resume from the last entry; with nothing printed yet, from the start.
    }
}

/// Where a cut log stream resumes. `since` is inclusive (as Docker's), and the
/// shim stamps every line of one read with the same time, so the entries
/// already printed at the last time are skipped rather than lost or repeated.
#[derive(Default)]
struct Cursor {
    last: Option<DateTime<Utc>>,
    /// Entries printed whose time is `last`.
    at_last: usize,
    /// Entries at `last` still to skip in the stream being read.
    skip: usize,
    /// A stream was cut: the next request resumes.
    broken: bool,
}

impl Cursor {
    fn resuming(&self) -> bool {
        self.broken
    }

    /// The `since` of a resumed request (encoded), and arms the skipping.
    fn resume(&mut self) -> Option<String> {
        if !self.broken && self.last.is_none() {
            return None;
        }
        self.skip = self.at_last;
        let since = self.last.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        Some(encode(
            &since.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        ))
    }

    /// Whether an entry at `time` is new; counts it if so.
    fn admit(&mut self, time: DateTime<Utc>) -> bool {
        if self.last == Some(time) {
            if self.skip > 0 {
                self.skip -= 1;
                return false;
            }
            self.at_last += 1;
        } else {
            self.skip = 0;
            self.last = Some(time);
            self.at_last = 1;
        }
        true
    }
}

enum Printed {
    /// The daemon ended the stream: all of it was sent.
    Ended,
    /// Cut short: the daemon handed over, or the connection broke.
    Broken,
    /// Our stdout is closed (`| head`): stop quietly.
    StdoutClosed,
}

/// Writes a log stream (NDJSON of log entries) to stdout and stderr, moving the
/// cursor past each entry.
async fn print_entries(
    mut body: Incoming,
    timestamps: bool,
    cursor: &mut Cursor,
) -> Result<Printed> {
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Ok(Printed::Broken);
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        let Some(last) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let rest = pending.split_off(last + 1);
        let mut out = Vec::new();
        let mut err = Vec::new();
        for line in pending.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(entry) = serde_json::from_slice::<LogEntry>(line) else {
                continue;
            };
            if !cursor.admit(entry.time) {
                continue;
            }
            let target = match entry.stream {
                runtime::logs::Stream::Stdout => &mut out,
                runtime::logs::Stream::Stderr => &mut err,
            };
            if timestamps {
                target.extend_from_slice(
                    entry
                        .time
                        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                        .as_bytes(),
                );
                target.push(b' ');
            }
            target.extend_from_slice(entry.log.as_bytes());
        }
        pending = rest;
        if !out.is_empty() {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(&out)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return Ok(Printed::StdoutClosed);
            }
        }
        if !err.is_empty() {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(&err).and_then(|()| stderr.flush());
        }
    }
    Ok(Printed::Ended)
}

/// Waits for the job's exit (`condition`: exited or removed). `first` is a wait
/// response already opened (by `run`, before starting the job). An answer cut
/// short by a daemon handing over is asked again of its successor.
pub async fn wait_for_exit(
    client: &Client,
    id: &str,
    condition: &str,
    first: Option<Incoming>,
) -> Result<ExitInfo> {
    let path = format!("/jobs/{}/wait?condition={condition}", encode(id));
    let mut body = first;
    let mut tries = 0;
    loop {
        let current = match body.take() {
            Some(b) => Ok(b),
            None => client
                .send_json(Method::GET, &path, None::<&()>)
                .await
                .map(|r| r.into_body()),
        };
        let outcome = match current {
            Ok(b) => read_exit(b).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Some(exit)) => return Ok(exit),
            // Cut short (empty answer) or no daemon right now: ask again.
            Ok(None) if tries < RESUME_TRIES => {}
            Err(e) if is_transient(&e) && tries < RESUME_TRIES => {}
            Ok(None) => return Err(anyhow!("the daemon never answered the wait")),
            Err(e) => return Err(e),
        }
        tries += 1;
        tokio::time::sleep(RESUME_PAUSE).await;
    }
}

/// The exit in a wait answer; None when the answer was cut short.
async fn read_exit(body: Incoming) -> Result<Option<ExitInfo>> {
    let Ok(collected) = body.collect().await else {
        return Ok(None);
    };
    let bytes = collected.to_bytes();
    if bytes.is_empty() {
        return Ok(None);
    }
    if let Ok(exit) = serde_json::from_slice::<ExitInfo>(&bytes) {
        return Ok(Some(exit));
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(e) => Err(anyhow!(e.error)),
        Err(_) => Err(anyhow!(
            "the daemon's answer to the wait is not an exit status"
        )),
    }
}

async fn job_state(client: &Client, id: &str) -> Result<Option<JobState>> {
    match client
        .call::<Job>(Method::GET, &format!("/jobs/{}", encode(id)), None::<&()>)
        .await
    {
        Ok(job) => Ok(Some(job.state)),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// No answer at all (connection refused or cut): worth trying again shortly.
fn is_transient(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>().is_none()
}

fn is_gone(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>()
        .is_some_and(|f| f.status == hyper::StatusCode::NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_stream_skips_exactly_the_entries_already_printed_at_the_last_time() {
        let t1 = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(1);
        let t2 = t1 + chrono::Duration::nanoseconds(1);
        let mut cursor = Cursor::default();
        assert!(cursor.resume().is_none(), "a first request starts afresh");
        // Three lines from one read share t2; the stream is cut after two of them.
        assert!(cursor.admit(t1) && cursor.admit(t2) && cursor.admit(t2));
        cursor.broken = true;
        assert!(cursor.resume().is_some());
        // The successor sends everything at or after t2 again.
        assert!(!cursor.admit(t2), "printed already");
        assert!(!cursor.admit(t2), "printed already");
        assert!(cursor.admit(t2), "the third line of the read");
        // Cut again right there: the three at t2 are all skipped next time.
        assert!(cursor.resume().is_some());
        assert!(!cursor.admit(t2) && !cursor.admit(t2) && !cursor.admit(t2));
        assert!(cursor.admit(t2 + chrono::Duration::nanoseconds(1)));
    }
}
