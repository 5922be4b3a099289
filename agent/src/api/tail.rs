//! Following a json-file log as it grows: the shared engine of `logs` and
//! `attach`. A task reads complete lines and hands them over in batches.

use std::future::Future;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// Where reading starts.
pub enum Start {
    Beginning,
    /// At this offset: the end of the file when the caller looked, so that what a
    /// caller does next (forwarding an attach's input, say) cannot be written
    /// before the reader's start.
    At(u64),
    /// The last N lines that `keep` accepts.
    LastLines(usize),
}

pub type Until = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts reading `file` (whose path is `path`, for inotify) from `start`. With
/// `until`, follows the file until that future resolves, then sends what is left
/// and ends; without, ends at the end of the file. Each item is a batch of
/// complete lines (each ending in '\n') that `keep` accepted; an Err ends it.
pub fn spawn(
    file: tokio::fs::File,
    path: PathBuf,
    start: Start,
    until: Option<Until>,
    keep: impl Fn(&[u8]) -> bool + Send + Sync + 'static,
) -> mpsc::Receiver<Result<Bytes, String>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        if let Err(e) = run(file, path, start, until, &keep, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn run(
    mut file: tokio::fs::File,
    path: PathBuf,
    start: Start,
    until: Option<Until>,
    keep: &(dyn Fn(&[u8]) -> bool + Send + Sync),
    tx: &mpsc::Sender<Result<Bytes, String>>,
) -> Result<(), String> {
    let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    // Watch before the first read so that no write between the two is missed.
    let mut changes = match &until {
        Some(_) => {
            let inotify = inotify::Inotify::init().map_err(|e| err("watching", e))?;
            inotify
                .watches()
                .add(&path, inotify::WatchMask::MODIFY)
                .map_err(|e| err("watching", e))?;
            Some(
                inotify
                    .into_event_stream([0u8; 256])
                    .map_err(|e| err("watching", e))?,
            )
        }
        None => None,
    };
    let mut pending = Vec::new();
    match start {
        Start::Beginning => {}
        Start::At(offset) => {
            // A line torn by a write in progress is dropped by the reader, whose
            // parse of the fragment fails.
            file.seek(SeekFrom::Start(offset))
                .await
                .map_err(|e| err("seeking in", e))?;
        }
        Start::LastLines(n) => {
            let mut all = Vec::new();
            file.read_to_end(&mut all)
                .await
                .map_err(|e| err("reading", e))?;
            let complete = all.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let lines: Vec<&[u8]> = all[..complete]
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty() && keep(l))
                .collect();
            let mut out = Vec::new();
            for line in &lines[lines.len().saturating_sub(n)..] {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            send(tx, out).await?;
            pending.extend_from_slice(&all[complete..]);
        }
    }
    let Some(mut until) = until else {
        return read_available(&mut file, &mut pending, keep, tx).await;
    };
    let Some(changes) = changes.as_mut() else {
        return Ok(());
    };
    // A log rotated by the shim (`--log-opt max-size`) is renamed away and begun
    // anew: once the old file is read to its end, the follow goes on in the new one.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        read_available(&mut file, &mut pending, keep, tx).await?;
        if let Some(new) = reopened(&file, &path).await {
            file = new;
            pending.clear();
            let _ = changes.watches().add(&path, inotify::WatchMask::MODIFY);
            continue;
        }
        tokio::select! {
            _ = changes.next() => {}
            _ = tick.tick() => {}
            _ = &mut until => {
                // Everything the process wrote is in the file by now (or in the
                // one that replaced it).
                loop {
                    read_available(&mut file, &mut pending, keep, tx).await?;
                    match reopened(&file, &path).await {
                        Some(new) => {
                            file = new;
                            pending.clear();
                        }
                        None => return Ok(()),
                    }
                }
            }
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// The file now at `path`, when it is not `file` any more (the log was rotated).
async fn reopened(file: &tokio::fs::File, path: &std::path::Path) -> Option<tokio::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata().await.ok()?;
    let now = tokio::fs::metadata(path).await.ok()?;
    if (held.dev(), held.ino()) == (now.dev(), now.ino()) {
        return None;
    }
    tokio::fs::File::open(path).await.ok()
}

/// Sends every complete line from the current position; keeps a torn tail.
async fn read_available(
    file: &mut tokio::fs::File,
    pending: &mut Vec<u8>,
    keep: &(dyn Fn(&[u8]) -> bool + Send + Sync),
    tx: &mpsc::Sender<Result<Bytes, String>>,
) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading a log: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        let Some(last) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let rest = pending.split_off(last + 1);
        let mut out = Vec::with_capacity(pending.len());
        for line in pending
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty() && keep(l))
        {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        *pending = rest;
        send(tx, out).await?;
    }
}

async fn send(tx: &mpsc::Sender<Result<Bytes, String>>, data: Vec<u8>) -> Result<(), String> {
    if data.is_empty() {
        return Ok(());
    }
    tx.send(Ok(Bytes::from(data)))
        .await
        .map_err(|_| "the reader went away".to_string())
}
