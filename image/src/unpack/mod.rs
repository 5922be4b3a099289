//! Layer unpacking: one pass over a (possibly compressed) layer blob that verifies both of
//! its digests and writes its files into a directory meant to be an overlayfs lowerdir.
//!
//! Two threads share the work: one reads, hashes and decompresses; the other parses the tar
//! and writes files. Entries are applied with the rules in [`apply`]; nothing is ever
//! written outside the destination, whatever the tar says.

mod apply;
mod path;
mod stream;

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use std::os::unix::fs::OpenOptionsExt;

use crate::digest::Digest;
pub use stream::Compression;

/// Tar byte buffers in flight between the two threads (each 256 KiB).
const PIPE_DEPTH: usize = 16;

/// Why a layer could not be unpacked. `layer` names the layer (its digest or archive path).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: reading the blob failed: {source}")]
    Read {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer {layer}: the blob is {format}-compressed; only gzip, zstd and uncompressed tar \
         layers are supported (recompress the layer)"
    )]
    UnsupportedCompression { layer: String, format: &'static str },
    #[error(
        "layer {layer}: {format} decompression failed, the blob is corrupt or truncated: {source}"
    )]
    Decompress {
        layer: String,
        format: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: the tar stream is corrupt or truncated: {source}")]
    Tar {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer {layer}: entry {entry:?} points outside the layer root; refusing a malicious or broken layer"
    )]
    PathEscapes { layer: String, entry: String },
    #[error(
        "layer {layer}: hardlink {entry:?} targets {target:?}, outside the layer root; refusing a \
         malicious or broken layer"
    )]
    LinkEscapes {
        layer: String,
        entry: String,
        target: String,
    },
    #[error(
        "layer {layer}: hardlink {entry:?} targets {target:?}, which is not earlier in the same layer"
    )]
    LinkTargetMissing {
        layer: String,
        entry: String,
        target: String,
    },
    #[error("layer {layer}: invalid entry {entry:?}: {reason}")]
    InvalidEntry {
        layer: String,
        entry: String,
        reason: &'static str,
    },
    #[error("layer {layer}: entry {entry:?}: {op} failed: {source}")]
    Entry {
        layer: String,
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer {layer}: the blob's digest is {actual}, but {expected} was expected; the blob is \
         corrupt or was tampered with, fetch the image again"
    )]
    CompressedDigestMismatch {
        layer: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "layer {layer}: the uncompressed content's digest (diff id) is {actual}, but the image \
         config lists {expected}; the layer or the config is corrupt"
    )]
    DiffIdMismatch {
        layer: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {layer}: the blob is {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch {
        layer: String,
        expected: u64,
        actual: u64,
    },
    #[error("layer {layer}: cannot use {path} as the unpack destination: {source}")]
    Destination {
        layer: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: flushing the unpacked files to disk failed: {source}")]
    Sync {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: the decompression thread panicked; this is a bug")]
    ThreadPanicked { layer: String },
}

impl UnpackError {
    /// True when the layer's content is at fault, false when the host is (disk full, I/O
    /// errors, a read-only store).
    pub fn is_client_error(&self) -> bool {
        let host_errno = |e: &io::Error| {
            matches!(
                e.raw_os_error(),
                Some(
                    libc::ENOSPC
                        | libc::EDQUOT
                        | libc::EIO
                        | libc::EROFS
                        | libc::ENOMEM
                        | libc::EMFILE
                )
            )
        };
        match self {
            UnpackError::Destination { .. }
            | UnpackError::Sync { .. }
            | UnpackError::ThreadPanicked { .. } => false,
            UnpackError::Read { source, .. } | UnpackError::Entry { source, .. } => {
                !host_errno(source)
            }
            _ => true,
        }
    }
}

/// Digests and sizes the unpacked blob must have; `None` means "accept and report".
#[derive(Clone, Debug, Default)]
pub struct Expected {
    pub compressed: Option<Digest>,
    pub compressed_size: Option<u64>,
    pub diff_id: Option<Digest>,
}

/// What was unpacked.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// Digest and size of the blob as read (compressed or not).
    pub compressed: Digest,
    pub compressed_size: u64,
    /// Digest and size of the uncompressed tar stream.
    pub diff_id: Digest,
    pub size: u64,
    pub compression: Compression,
}

/// Unpacks the layer blob read from `src` into `dest`, an existing empty directory, and
/// flushes it to disk (one `syncfs`). `layer` names the layer in errors and logs.
///
/// On error `dest` holds a partial tree: the caller must delete it. On success the caller
/// can rename `dest` into place; nothing in it is visible to anyone before that.
pub fn unpack_layer<R: Read + Send>(
    src: R,
    dest: &Path,
    layer: &str,
    expected: &Expected,
) -> Result<Unpacked, UnpackError> {
    let root: std::os::fd::OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dest)
        .map_err(|source| UnpackError::Destination {
            layer: layer.to_owned(),
            path: dest.to_owned(),
            source,
        })?
        .into();
    let stop = AtomicBool::new(false);
    let (produced, applied) = std::thread::scope(|scope| {
        let (to_writer, from_reader) = mpsc::sync_channel(PIPE_DEPTH);
        let (recycle, recycled) = mpsc::channel();
        let stop = &stop;
        let producer = scope.spawn(move || {
            stream::produce(
                src,
                stream::Pipe {
                    to_writer,
                    recycled,
                },
                stop,
                layer,
            )
        });
        let applied = apply_all(
            stream::ChannelReader::new(from_reader, recycle),
            &root,
            layer,
        );
        if applied.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        (producer.join(), applied)
    });
    let produced = produced.map_err(|_| UnpackError::ThreadPanicked {
        layer: layer.to_owned(),
    })?;
    // A decompression error explains any tar error it caused, so it is reported first.
    let digests = match (produced, applied) {
        (Err(e), _) => return Err(e),
        (Ok(_), Err(e)) => return Err(e),
        (Ok(None), Ok(())) => {
            return Err(UnpackError::ThreadPanicked {
                layer: layer.to_owned(),
            });
        }
        (Ok(Some(d)), Ok(())) => d,
    };
    if let Some(expected) = &expected.compressed
        && *expected != digests.compressed
    {
        return Err(UnpackError::CompressedDigestMismatch {
            layer: layer.to_owned(),
            expected: expected.clone(),
            actual: digests.compressed,
        });
    }
    if let Some(expected) = expected.compressed_size
        && expected != digests.compressed_size
    {
        return Err(UnpackError::SizeMismatch {
            layer: layer.to_owned(),
            expected,
            actual: digests.compressed_size,
        });
    }
    if let Some(expected) = &expected.diff_id
        && *expected != digests.diff_id
    {
        return Err(UnpackError::DiffIdMismatch {
            layer: layer.to_owned(),
            expected: expected.clone(),
            actual: digests.diff_id,
        });
    }
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root)).map_err(|e| UnpackError::Sync {
        layer: layer.to_owned(),
        source: e.into(),
    })?;
    Ok(Unpacked {
        compressed: digests.compressed,
        compressed_size: digests.compressed_size,
        diff_id: digests.diff_id,
        size: digests.size,
        compression: digests.compression,
    })
}

fn apply_all(
    reader: stream::ChannelReader,
    root: &std::os::fd::OwnedFd,
    layer: &str,
) -> Result<(), UnpackError> {
    let tar_err = |source| UnpackError::Tar {
        layer: layer.to_owned(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    let mut applier = apply::Applier::new(root.as_fd(), layer);
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        applier.apply(&mut entry)?;
    }
    applier.finish()
}
