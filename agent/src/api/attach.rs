//! Attaching to a job or an exec'd process: the HTTP connection is upgraded to a
//! raw byte stream (`Connection: Upgrade`, `Upgrade: tcp`, answered with 101).
//!
//! Output comes from the process's log as it grows: raw bytes for a terminal,
//! otherwise Docker's multiplexed frames (an 8-byte header: stream 1 = stdout,
//! 2 = stderr, three zero bytes, the payload length as big-endian u32). Input
//! from the client goes to the process's stdin through its shim; the client
//! closing its sending side closes that stdin. The stream ends once the process
//! has exited and all of its output was sent.

use std::path::PathBuf;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tail::{self, Start};
use super::{ApiError, ApiState, Body, Query, empty};
use crate::model::LogEntry;

/// What to attach to.
pub struct Target {
    /// The job dir or exec dir: where the shim's socket is.
    pub dir: PathBuf,
    pub log: PathBuf,
    pub tty: bool,
    /// Whether the process was started with stdin open.
    pub stdin: bool,
    /// Read the log from its beginning (an exec), or from now on (a job).
    pub from_start: bool,
    /// Resolves when the process has exited.
    pub exited: tail::Until,
    /// Resolves once the process's shim is up (a job attached before it starts).
    pub started: tail::Until,
}

/// Checks the upgrade request and answers 101; the bridge runs once hyper hands
/// over the connection.
pub fn upgrade(
    state: &ApiState,
    mut req: Request<Incoming>,
    target: Target,
) -> Result<Response<Body>, ApiError> {
    let wants_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"));
    if !wants_upgrade {
        return Err(ApiError::BadRequest(
            "attach needs an HTTP upgrade: send Connection: Upgrade and Upgrade: tcp".to_string(),
        ));
    }
    let query = Query::of(&req);
    let want_stdin = query.flag("stdin", false)?;
    if want_stdin && !target.stdin {
        return Err(ApiError::Conflict(
            "the process was started without stdin: run it with -i to attach input".to_string(),
        ));
    }
    let want = Streams {
        stdin: want_stdin,
        stdout: query.flag("stdout", true)?,
        stderr: query.flag("stderr", true)?,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let drained = state.drained();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "attach: the upgrade did not happen");
                return;
            }
        };
        tokio::select! {
            result = bridge(TokioIo::new(upgraded), target, want) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "attach ended");
                }
            }
            // Handing over: the client sees the stream cut and may attach again.
            _ = drained => {}
        }
    });
    let mut response = empty(StatusCode::SWITCHING_PROTOCOLS);
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    response
        .headers_mut()
        .insert(UPGRADE, HeaderValue::from_static("tcp"));
    Ok(response)
}

struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

async fn bridge<S>(io: S, target: Target, want: Streams) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut client_read, mut client_write) = tokio::io::split(io);
    // An exec's shim creates its log on first output; never truncate it here.
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&target.log)
        .await
        .map_err(|e| format!("opening {}: {e}", target.log.display()))?;
    // The end is taken here, before any input is forwarded: output that the input
    // causes comes after it (a reader task seeking to "the end" later could miss it).
    let start = if target.from_start {
        Start::Beginning
    } else {
        let end = file
            .metadata()
            .await
            .map_err(|e| format!("reading {}: {e}", target.log.display()))?
            .len();
        Start::At(end)
    };
    let mut lines = tail::spawn(file, target.log.clone(), start, Some(target.exited), |_| {
        true
    });

    let input = async {
        if !want.stdin {
            return Ok::<(), String>(());
        }
        // Input typed before the process starts waits in the connection meanwhile.
        target.started.await;
        let mut shim = runtime::shim::ShimClient::attach_stdin(&target.dir)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = client_read
                .read(&mut buf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                // The client closed its side: the process's stdin closes too.
                let _ = shim.shutdown().await;
                return Ok(());
            }
            shim.write_all(&buf[..n])
                .await
                .map_err(|e| format!("writing to the process's stdin: {e}"))?;
        }
    };
    let output = async {
        while let Some(batch) = lines.recv().await {
            let batch = batch?;
            let frames = frames(&batch, target.tty, &want);
            if !frames.is_empty() {
                client_write
                    .write_all(&frames)
                    .await
                    .map_err(|e| e.to_string())?;
                client_write.flush().await.map_err(|e| e.to_string())?;
            }
        }
        // The process has exited and everything was sent: close our side.
        let _ = client_write.shutdown().await;
        Ok::<(), String>(())
    };
    tokio::pin!(input);
    tokio::pin!(output);
    // Output decides the end; input may finish (EOF) long before.
    let mut input_done = false;
    loop {
        tokio::select! {
            result = &mut output => return result,
            result = &mut input, if !input_done => {
                input_done = true;
                if let Err(e) = result {
                    tracing::debug!(error = %e, "attach: input ended");
                }
            }
        }
    }
}

/// Turns a batch of log lines into what the client reads.
fn frames(batch: &Bytes, tty: bool, want: &Streams) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.len());
    for line in batch.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(entry) = serde_json::from_slice::<LogEntry>(line) else {
            continue;
        };
        let (stream, wanted) = match entry.stream {
            runtime::logs::Stream::Stdout => (1u8, want.stdout),
            runtime::logs::Stream::Stderr => (2u8, want.stderr),
        };
        if !wanted || entry.log.is_empty() {
            continue;
        }
        if tty {
            out.extend_from_slice(entry.log.as_bytes());
        } else {
            out.push(stream);
            out.extend_from_slice(&[0, 0, 0]);
            out.extend_from_slice(&(entry.log.len() as u32).to_be_bytes());
            out.extend_from_slice(entry.log.as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_multiplexed_unless_there_is_a_terminal() {
        let batch = Bytes::from(
            "{\"log\":\"out\\n\",\"stream\":\"stdout\",\"time\":\"2026-01-01T00:00:00Z\"}\n\
             {\"log\":\"err\",\"stream\":\"stderr\",\"time\":\"2026-01-01T00:00:00Z\"}\n",
        );
        let all = Streams {
            stdin: false,
            stdout: true,
            stderr: true,
        };
        let framed = frames(&batch, false, &all);
        assert_eq!(
            framed,
            [
                &[1u8, 0, 0, 0, 0, 0, 0, 4][..],
                b"out\n",
                &[2, 0, 0, 0, 0, 0, 0, 3],
                b"err"
            ]
            .concat()
        );
        assert_eq!(frames(&batch, true, &all), b"out\nerr");
        let only_err = Streams {
            stdin: false,
            stdout: false,
            stderr: true,
        };
        assert_eq!(
            frames(&batch, false, &only_err),
            [&[2u8, 0, 0, 0, 0, 0, 0, 3][..], b"err"].concat()
        );
    }
}
