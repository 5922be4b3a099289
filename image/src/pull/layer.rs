//! One layer blob from the registry into the unpacker, as it streams: the async side
//! fetches (resuming with `Range` where a connection broke) and hands chunks over a
//! bounded channel; the unpacker reads them on a blocking thread, hashing the compressed
//! bytes and the tar stream while it writes files. Nothing is buffered whole.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::PullError;
use super::progress::{LayerPhase, Progress, PullEvent};
use crate::registry::client::Remote;
use crate::store::LayerBlob;

/// Chunks in flight between the download and the unpacker (HTTP chunks are small).
pub(super) const CHANNEL_DEPTH: usize = 256;
/// Progress events per layer are sent at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// A download is resumed this many times in a row without getting a byte further.
const MAX_RESUMES: u32 = 5;

pub(super) enum Chunk {
    Data(Bytes),
    /// Every byte of the blob was sent.
    End,
}

/// The unpacker's side: a blocking reader over the channel. A channel closed without
/// [`Chunk::End`] means the download failed or was cancelled: an error, never a short blob.
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    done: bool,
}

impl ChannelReader {
    pub(super) fn new(rx: mpsc::Receiver<Chunk>) -> ChannelReader {
        ChannelReader {
            rx,
            current: Bytes::new(),
            done: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                buf[..n].copy_from_slice(&self.current[..n]);
                self.current.advance(n);
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(bytes)) => self.current = bytes,
                Some(Chunk::End) => self.done = true,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the download stopped before the end of the blob",
                    ));
                }
            }
        }
    }
}

/// How a download ended without error.
pub(super) enum Fed {
    /// The whole blob was handed over.
    Complete,
    /// The unpacker stopped reading (its error is the one to report).
    ReaderGone,
}

/// Fetches the blob and sends it down `tx`, resuming after broken connections.
pub(super) async fn feed(
    remote: &Remote,
    blob: &LayerBlob,
    tx: mpsc::Sender<Chunk>,
    progress: &Progress,
) -> Result<Fed, PullError> {
    let digest = blob.digest.to_string();
    let event = |phase, current, message: Option<String>| PullEvent::Layer {
        digest: digest.clone(),
        phase,
        current,
        total: blob.size,
        message,
    };
    let registry = remote.endpoint().host.clone();
    let mut offset: u64 = 0;
    let mut failures: u32 = 0;
    let mut last_report = Instant::now()
        .checked_sub(PROGRESS_EVERY)
        .unwrap_or_else(Instant::now);
    progress(event(LayerPhase::Downloading, 0, None));
    loop {
        let before = offset;
        let broken = match remote.blob(&blob.digest, offset).await {
            Err(e) if e.is_transient() && failures < MAX_RESUMES => e.to_string(),
            Err(e) => return Err(PullError::Registry(e)),
            Ok(mut stream) => {
                // A registry that ignores the range sends it all again: skip what we have.
                let mut skip = offset - stream.starts_at.min(offset);
                let mut broken = None;
                while let Some(chunk) = stream.stream.next().await {
                    let mut bytes = match chunk {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            broken = Some(e.to_string());
                            break;
                        }
                    };
                    if skip > 0 {
                        let n = skip.min(bytes.len() as u64);
                        bytes.advance(n as usize);
                        skip -= n;
                        if bytes.is_empty() {
                            continue;
                        }
                    }
                    let len = bytes.len() as u64;
                    if offset + len > blob.size {
                        return Err(PullError::BlobSize {
                            registry,
                            digest: blob.digest.clone(),
                            expected: blob.size,
                            received: format!("more than {}", blob.size),
                        });
                    }
                    if tx.send(Chunk::Data(bytes)).await.is_err() {
                        return Ok(Fed::ReaderGone);
                    }
                    offset += len;
                    if last_report.elapsed() >= PROGRESS_EVERY {
                        last_report = Instant::now();
                        progress(event(LayerPhase::Downloading, offset, None));
                    }
                }
                match broken {
                    Some(reason) if failures < MAX_RESUMES || offset > before => reason,
                    Some(reason) => {
                        return Err(PullError::Registry(crate::registry::RegistryError::Http {
                            registry,
                            what: format!("downloading blob {digest}"),
                            detail: reason,
                        }));
                    }
                    None if offset == blob.size => {
                        progress(event(LayerPhase::Downloading, offset, None));
                        return Ok(match tx.send(Chunk::End).await {
                            Ok(()) => Fed::Complete,
                            Err(_) => Fed::ReaderGone,
                        });
                    }
                    // A response that ended cleanly but short: the registry sent another
                    // blob (or a truncated one), not a broken connection.
                    None => {
                        return Err(PullError::BlobSize {
                            registry,
                            digest: blob.digest.clone(),
                            expected: blob.size,
                            received: offset.to_string(),
                        });
                    }
                }
            }
        };
        failures = if offset > before { 1 } else { failures + 1 };
        tracing::warn!(blob = %digest, offset, attempt = failures, reason = broken.as_str(),
            "the download of a layer broke; resuming");
        progress(event(
            LayerPhase::Resuming,
            offset,
            Some(format!("resuming at byte {offset}: {broken}")),
        ));
        tokio::time::sleep(Duration::from_millis(200) * failures).await;
    }
}
