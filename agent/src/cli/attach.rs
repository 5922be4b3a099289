//! The client side of an attach: an upgraded connection carrying the process's
//! output to us and our input to it.

use std::io::Write;

use anyhow::{Context, Result};
use hyper::Method;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tty;
use crate::client::Client;

/// Opens the attach stream at `path` (…/attach?stdin=…).
pub async fn open(client: &Client, path: &str) -> Result<TokioIo<Upgraded>> {
    let upgraded = client
        .upgrade(Method::POST, path)
        .await
        .context("attaching")?;
    Ok(TokioIo::new(upgraded))
}

/// Keeps the remote terminal's size equal to ours: now, and on every SIGWINCH.
pub async fn follow_size(client: &Client, resize_path: String) {
    let Ok(mut winch) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    else {
        return;
    };
    loop {
        if let Some((rows, cols)) = tty::size() {
            let path = format!("{resize_path}?h={rows}&w={cols}");
            let _ = client.send_json(Method::POST, &path, None::<&()>).await;
        }
        if winch.recv().await.is_none() {
            return;
        }
    }
}

/// Pumps our stdin to the process (if `send_stdin`) and its output to our
/// stdout/stderr, until the daemon ends the stream (the process has exited).
pub async fn session(io: TokioIo<Upgraded>, tty: bool, send_stdin: bool) -> Result<()> {
    let (mut read, mut write) = tokio::io::split(io);
    let input = async move {
        if !send_stdin {
            return;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 8192];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    // Our stdin ended: so does the process's.
                    let _ = write.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    let _ = write.flush().await;
                }
            }
        }
    };
    let output = async move {
        let mut demux = Demux::default();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = read
                .read(&mut buf)
                .await
                .context("reading the job's output")?;
            if n == 0 {
                return Ok::<(), anyhow::Error>(());
            }
            if tty {
                let mut out = std::io::stdout().lock();
                out.write_all(&buf[..n])?;
                out.flush()?;
            } else {
                demux.feed(&buf[..n])?;
            }
        }
    };
    tokio::pin!(input);
    tokio::pin!(output);
    // Input ending does not end the session: output carries on to the exit.
    let mut input_done = false;
    loop {
        tokio::select! {
            result = &mut output => return result,
            () = &mut input, if !input_done => input_done = true,
        }
    }
}

/// Splits Docker's multiplexed frames into stdout and stderr.
#[derive(Default)]
struct Demux {
    pending: Vec<u8>,
}

impl Demux {
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(data);
        loop {
            if self.pending.len() < 8 {
                return Ok(());
            }
            let len = u32::from_be_bytes([
                self.pending[4],
                self.pending[5],
                self.pending[6],
                self.pending[7],
            ]) as usize;
            if self.pending.len() < 8 + len {
                return Ok(());
            }
            let stream = self.pending[0];
            let payload: Vec<u8> = self.pending.drain(..8 + len).skip(8).collect();
            if stream == 2 {
                let mut err = std::io::stderr().lock();
                err.write_all(&payload)?;
                err.flush()?;
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(&payload)?;
                out.flush()?;
            }
        }
    }
}
