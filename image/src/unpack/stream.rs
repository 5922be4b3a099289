//! The reading half of an unpack: read the blob once, hash the compressed bytes, detect and
//! undo the compression, hash the tar stream, and hand the tar bytes to the writer thread.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use crate::digest::{Digest, Hasher};

use super::UnpackError;

/// Size of the buffers passed between the threads: large enough that channel overhead is
/// negligible, small enough that a few in flight stay in cache.
const CHUNK: usize = 256 * 1024;

/// How a layer blob is compressed, decided from its first bytes (never from the media type,
/// which registries and tools get wrong).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Guesses the compression from a blob's first bytes; anything unrecognized is taken as
    /// a plain tar (unpacking reports unsupported formats).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// What the reading half measured.
pub(super) struct StreamDigests {
    pub compressed: Digest,
    pub compressed_size: u64,
    pub diff_id: Digest,
    pub size: u64,
    pub compression: Compression,
}

fn detect(head: &[u8], layer: &str) -> Result<Compression, UnpackError> {
    let unsupported = |format| UnpackError::UnsupportedCompression {
        layer: layer.to_owned(),
        format,
    };
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Compression::Zstd)
    } else if head.starts_with(b"BZh") {
        Err(unsupported("bzip2"))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Err(unsupported("xz"))
    } else {
        Ok(Compression::None)
    }
}

/// Hashes and counts every byte read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads until `buf` is full or the stream ends; fewer, fuller chunks mean fewer handoffs.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Ends of the channels between the reading thread and the writing thread.
pub(super) struct Pipe {
    pub to_writer: SyncSender<(Vec<u8>, usize)>,
    pub recycled: Receiver<Vec<u8>>,
}

/// Runs on the reading thread. Returns `Ok(None)` when the writer asked it to stop (the
/// writer's error is then the one to report).
pub(super) fn produce(
    src: impl Read,
    pipe: Pipe,
    stop: &AtomicBool,
    layer: &str,
) -> Result<Option<StreamDigests>, UnpackError> {
    let mut raw = HashingReader {
        inner: src,
        hasher: Hasher::default(),
    };
    let mut head = [0u8; 6];
    let n = read_full(&mut raw, &mut head).map_err(|source| UnpackError::Read {
        layer: layer.to_owned(),
        source,
    })?;
    let compression = detect(&head[..n], layer)?;
    let decompress_err = |source| UnpackError::Decompress {
        layer: layer.to_owned(),
        format: compression.name(),
        source,
    };
    let pumped = {
        let stream = (&head[..n]).chain(&mut raw);
        match compression {
            Compression::None => pump(stream, &pipe, stop),
            Compression::Gzip => pump(flate2::read::MultiGzDecoder::new(stream), &pipe, stop),
            Compression::Zstd => {
                let decoder = zstd::stream::read::Decoder::new(stream).map_err(decompress_err)?;
                pump(decoder, &pipe, stop)
            }
        }
    };
    let uncompressed = match pumped {
        Ok(Some(hasher)) => hasher,
        Ok(None) => return Ok(None),
        Err(source) if compression == Compression::None => {
            return Err(UnpackError::Read {
                layer: layer.to_owned(),
                source,
            });
        }
        Err(source) => return Err(decompress_err(source)),
    };
    // Bytes after the end of the compressed stream still belong to the blob's digest.
    io::copy(&mut raw, &mut io::sink()).map_err(|source| UnpackError::Read {
        layer: layer.to_owned(),
        source,
    })?;
    Ok(Some(StreamDigests {
        compressed_size: raw.hasher.len(),
        compressed: raw.hasher.finish(),
        size: uncompressed.len(),
        diff_id: uncompressed.finish(),
        compression,
    }))
}

/// Moves the whole decompressed stream to the writer, hashing it on the way. Keeps reading
/// (hash only) after the writer hung up, because the diff id covers the tar padding too.
fn pump(mut r: impl Read, pipe: &Pipe, stop: &AtomicBool) -> io::Result<Option<Hasher>> {
    let mut hasher = Hasher::default();
    let mut detached: Option<Vec<u8>> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut buf = match detached.take() {
            Some(buf) => buf,
            None => pipe
                .recycled
                .try_recv()
                .unwrap_or_else(|_| vec![0u8; CHUNK]),
        };
        let n = read_full(&mut r, &mut buf)?;
        if n == 0 {
            return Ok(Some(hasher));
        }
        hasher.update(&buf[..n]);
        if let Err(returned) = pipe.to_writer.send((buf, n)) {
            detached = Some(returned.0.0);
        }
    }
}

/// The writer's view of the stream: a `Read` over the buffers the reading thread sends.
pub(super) struct ChannelReader {
    rx: Receiver<(Vec<u8>, usize)>,
    recycle: Sender<Vec<u8>>,
    current: Vec<u8>,
    len: usize,
    pos: usize,
}

impl ChannelReader {
    pub(super) fn new(rx: Receiver<(Vec<u8>, usize)>, recycle: Sender<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            rx,
            recycle,
            current: Vec::new(),
            len: 0,
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            match self.rx.recv() {
                Ok((next, len)) => {
                    let spent = std::mem::replace(&mut self.current, next);
                    if spent.capacity() > 0 {
                        // The reader may be gone already; then the buffer is simply freed.
                        let _ = self.recycle.send(spent);
                    }
                    self.len = len;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
