//! Container output in Docker's json-file format: one JSON object per line,
//! `{"log":"hello\n","stream":"stdout","time":"2026-11-25T13:00:00.123456789Z"}`.
//!
//! Each output line becomes one entry (its newline kept), and output after the last
//! newline of a read becomes an entry at once, without waiting for the rest of its line:
//! a prompt shows before the answer is typed. An entry is at most 16 KiB, as in Docker, so
//! nothing is ever buffered beyond one read (and an incomplete UTF-8 character).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Longest entry; longer lines are split.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// The output, decoded as UTF-8 with invalid bytes replaced.
    pub log: String,
    pub stream: Stream,
    #[serde(with = "rfc3339_nanos")]
    pub time: DateTime<Utc>,
}

/// Docker writes RFC 3339 in UTC with nanoseconds; readers accept any RFC 3339 time.
mod rfc3339_nanos {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Nanos, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open container log {path:?}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read container log: {0}")]
    Read(#[from] std::io::Error),
    #[error("corrupt container log line {line}: {source}")]
    Parse {
        line: usize,
        source: serde_json::Error,
    },
}

/// Cuts one stream's bytes into entries as they arrive: every complete line becomes an
/// entry, and whatever follows the last newline of a read becomes an entry right away
/// (an interactive program's prompt must show before it gets its answer). Entries are
/// at most [`MAX_ENTRY_BYTES`], cut on character boundaries. The only bytes held back are
/// an incomplete UTF-8 sequence at the end of a read (at most 3 bytes): it is completed
/// by the next read, so a character split across two reads is not broken into U+FFFD.
/// Concatenated, the entries are exactly the bytes the program wrote (when they are
/// valid UTF-8).
#[derive(Debug)]
struct Splitter {
    stream: Stream,
    carry: Vec<u8>,
}

impl Splitter {
    fn new(stream: Stream) -> Self {
        Splitter {
            stream,
            carry: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8], emit: &mut impl FnMut(Stream, &[u8])) {
        let joined;
        let mut rest = if self.carry.is_empty() {
            data
        } else {
            joined = [self.carry.as_slice(), data].concat();
            self.carry.clear();
            &joined[..]
        };
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.emit_bounded(&rest[..=nl], emit);
            rest = &rest[nl + 1..];
        }
        let keep = incomplete_utf8_tail(rest);
        let (now, later) = rest.split_at(rest.len() - keep);
        self.emit_bounded(now, emit);
        self.carry.extend_from_slice(later);
    }

    fn finish(&mut self, emit: &mut impl FnMut(Stream, &[u8])) {
        if !self.carry.is_empty() {
            emit(self.stream, &self.carry);
            self.carry.clear();
        }
    }

    /// Emits `bytes` as entries of at most [`MAX_ENTRY_BYTES`].
    fn emit_bounded(&self, mut bytes: &[u8], emit: &mut impl FnMut(Stream, &[u8])) {
        while bytes.len() > MAX_ENTRY_BYTES {
            let cut = char_boundary_before(bytes, MAX_ENTRY_BYTES);
            emit(self.stream, &bytes[..cut]);
            bytes = &bytes[cut..];
        }
        if !bytes.is_empty() {
            emit(self.stream, bytes);
        }
    }
}

fn is_continuation(b: u8) -> bool {
    b & 0b1100_0000 == 0b1000_0000
}

/// The length of the sequence a UTF-8 lead byte starts (0 for a continuation or
/// invalid byte).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

/// How many bytes at the end of `bytes` are the start of a multi-byte character whose
/// remaining bytes have not arrived yet.
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    // A lead byte within the last 3 bytes, followed only by continuation bytes.
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if is_continuation(b) {
            continue;
        }
        let need = utf8_len(b);
        return if need > back { back } else { 0 };
    }
    0
}

/// A cut at or before `max` that does not split a character (`max` itself when the
/// bytes there are not UTF-8 anyway).
fn char_boundary_before(bytes: &[u8], max: usize) -> usize {
    let mut cut = max;
    while cut > max.saturating_sub(3) && cut > 0 && is_continuation(bytes[cut]) {
        cut -= 1;
    }
    if cut > 0 && cut < max && utf8_len(bytes[cut]) > 1 {
        cut
    } else {
        max
    }
}

/// Docker's json-file `max-size` and `max-file`: when the log would grow past
/// `max_size` bytes it is renamed `<log>.1` (`.1` becomes `.2`, and so on), and a new
/// log is begun; at most `max_files` files are kept, the current one included (with
/// one, the log is emptied instead). So a job's output takes at most about
/// `max_size * max_files` bytes of disk.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: u32,
}

/// The path of rotated log number `n` (1 is the newest): `log.json.1`.
pub fn rotated_path(path: &Path, n: u32) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    std::path::PathBuf::from(name)
}

/// Appends container output to a json-file log. Entries are written with one `write`
/// per read from the container (O_APPEND, no fsync: logs are not worth an fsync per line).
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    path: std::path::PathBuf,
    stdout: Splitter,
    stderr: Splitter,
    buf: Vec<u8>,
    rotation: Option<Rotation>,
    /// Bytes in the current file (counted, not asked of the file system).
    size: u64,
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_owned(),
            source,
        })
}

impl LogWriter {
    pub fn open(path: &Path) -> Result<LogWriter, LogError> {
        LogWriter::open_rotating(path, None)
    }

    /// A writer that rotates the log by `rotation` (none: the log only grows).
    pub fn open_rotating(path: &Path, rotation: Option<Rotation>) -> Result<LogWriter, LogError> {
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogWriter {
            file,
            path: path.to_owned(),
            stdout: Splitter::new(Stream::Stdout),
            stderr: Splitter::new(Stream::Stderr),
            buf: Vec::new(),
            rotation,
            size,
        })
    }

    /// Moves the current log aside (or empties it, with one file) and begins anew.
    fn rotate(&mut self, r: Rotation) -> std::io::Result<()> {
        if r.max_files <= 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        // The oldest goes; each other moves one place: .1 → .2, ..., log → .1.
        let _ = std::fs::remove_file(rotated_path(&self.path, r.max_files - 1));
        for n in (1..r.max_files - 1).rev() {
            let from = rotated_path(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated_path(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        self.file = open_append(&self.path).map_err(|e| match e {
            LogError::Open { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        })?;
        self.size = 0;
        Ok(())
    }

    /// Logs bytes read from one of the container's streams.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> std::io::Result<()> {
        let time = Utc::now();
        let buf = &mut self.buf;
        let mut emit = |stream: Stream, bytes: &[u8]| append_entry(buf, stream, bytes, time);
        match stream {
            Stream::Stdout => self.stdout.push(data, &mut emit),
            Stream::Stderr => self.stderr.push(data, &mut emit),
        }
        self.flush_buf()
    }

    /// Writes out what is held back (an incomplete character); called once the streams
    /// are closed.
    pub fn finish(&mut self) -> std::io::Result<()> {
        let time = Utc::now();
        let buf = &mut self.buf;
        let mut emit = |stream: Stream, bytes: &[u8]| append_entry(buf, stream, bytes, time);
        self.stdout.finish(&mut emit);
        self.stderr.finish(&mut emit);
        self.flush_buf()
    }

    fn flush_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let len = self.buf.len() as u64;
        let mut result = Ok(());
        if let Some(r) = self.rotation
            && self.size > 0
            && self.size + len > r.max_size
        {
            result = self.rotate(r);
        }
        if result.is_ok() {
            result = self.file.write_all(&self.buf);
        }
        if result.is_ok() {
            self.size += len;
        }
        // Whatever happened, these entries are done: a full disk must not make the shim
        // hold the container's output in memory.
        self.buf.clear();
        if self.buf.capacity() > 4 * MAX_ENTRY_BYTES {
            self.buf.shrink_to(MAX_ENTRY_BYTES);
        }
        result
    }
}

fn append_entry(buf: &mut Vec<u8>, stream: Stream, bytes: &[u8], time: DateTime<Utc>) {
    let entry = LogEntry {
        log: String::from_utf8_lossy(bytes).into_owned(),
        stream,
        time,
    };
    // Serializing plain strings into a Vec cannot fail.
    if serde_json::to_writer(&mut *buf, &entry).is_ok() {
        buf.push(b'\n');
    }
}

/// Parses a json-file log, one entry per line.
pub fn entries<R: BufRead>(reader: R) -> impl Iterator<Item = Result<LogEntry, LogError>> {
    reader
        .lines()
        .enumerate()
        .filter(|(_, l)| l.as_ref().map(|l| !l.is_empty()).unwrap_or(true))
        .map(|(i, line)| {
            let line = line?;
            serde_json::from_str(&line).map_err(|source| LogError::Parse {
                line: i + 1,
                source,
            })
        })
}

/// Reads a whole json-file log.
pub fn read_all(path: &Path) -> Result<Vec<LogEntry>, LogError> {
    let file = File::open(path).map_err(|source| LogError::Open {
        path: path.to_owned(),
        source,
    })?;
    entries(std::io::BufReader::new(file)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(Stream, Vec<u8>)> {
        let mut s = Splitter::new(Stream::Stdout);
        let mut out = Vec::new();
        let mut emit = |st: Stream, b: &[u8]| out.push((st, b.to_vec()));
        for c in chunks {
            s.push(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    fn texts(out: &[(Stream, Vec<u8>)]) -> Vec<String> {
        out.iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn every_read_is_written_out_at_once() {
        let out = split(&[b"hel", b"lo\nwor", b"ld\n\nlast"]);
        assert_eq!(texts(&out), ["hel", "lo\n", "wor", "ld\n", "\n", "last"]);
        // A prompt without a newline is an entry of its own, right away.
        let mut s = Splitter::new(Stream::Stdout);
        let mut got = Vec::new();
        s.push(b"name? ", &mut |_, b: &[u8]| got.push(b.to_vec()));
        assert_eq!(got, [b"name? ".to_vec()]);
    }

    #[test]
    fn characters_split_across_reads_stay_whole() {
        // "é" is C3 A9, "€" is E2 82 AC, "😀" is F0 9F 98 80.
        let text = "café €5 😀\n".as_bytes();
        for cut in 0..=text.len() {
            for cut2 in cut..=text.len() {
                let out = split(&[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                let joined: String = texts(&out).concat();
                assert_eq!(joined, "café €5 😀\n", "cuts {cut} {cut2}");
            }
        }
        // A sequence that never completes is written at the end, replaced.
        assert_eq!(texts(&split(&[b"ab\xe2\x82"])), ["ab", "\u{fffd}"]);
        // Invalid bytes are not held back.
        assert_eq!(texts(&split(&[b"a\xff", b"b"])), ["a\u{fffd}", "b"]);
    }

    #[test]
    fn long_lines_are_cut_at_16k() {
        let big = vec![b'x'; MAX_ENTRY_BYTES * 2 + 10];
        let mut data = big.clone();
        data.push(b'\n');
        let out = split(&[&data[..100], &data[100..]]);
        let sizes: Vec<usize> = out.iter().map(|(_, b)| b.len()).collect();
        // The first read is written at once; the rest of the line comes in 16 KiB pieces.
        assert_eq!(
            sizes,
            vec![100, MAX_ENTRY_BYTES, data.len() - 100 - MAX_ENTRY_BYTES]
        );
        let joined: Vec<u8> = out.into_iter().flat_map(|(_, b)| b).collect();
        assert_eq!(joined, data);

        // Cuts fall on character boundaries.
        let text = "é".repeat(MAX_ENTRY_BYTES);
        let out = split(&[text.as_bytes()]);
        assert!(out.iter().all(|(_, b)| b.len() <= MAX_ENTRY_BYTES));
        assert!(out.iter().all(|(_, b)| std::str::from_utf8(b).is_ok()));
        assert_eq!(texts(&out).concat(), text);
    }

    #[test]
    fn rotation_keeps_max_files_of_about_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let rotation = Rotation {
            max_size: 10_000,
            max_files: 3,
        };
        let mut w = LogWriter::open_rotating(&path, Some(rotation)).unwrap();
        for i in 0..2000 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let mut total = 0;
        for p in [path.clone(), rotated_path(&path, 1), rotated_path(&path, 2)] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len <= 10_000, "{p:?}: {len}");
            total += len;
        }
        assert!(!rotated_path(&path, 3).exists());
        assert!(total > 20_000, "{total}");
        let last = read_all(&path).unwrap();
        assert_eq!(last.last().unwrap().log, "line 1999\n");
        // Reopened (a restarted monitor), it goes on counting from the file's size.
        drop(w);
        let mut w = LogWriter::open_rotating(&path, Some(rotation)).unwrap();
        w.write(Stream::Stdout, &[b'x'; 9_000]).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() <= 10_000);

        // One file: emptied in place.
        let one = dir.path().join("one.json");
        let mut w = LogWriter::open_rotating(
            &one,
            Some(Rotation {
                max_size: 1000,
                max_files: 1,
            }),
        )
        .unwrap();
        for i in 0..500 {
            w.write(Stream::Stdout, format!("l{i}\n").as_bytes())
                .unwrap();
        }
        assert!(std::fs::metadata(&one).unwrap().len() <= 1000);
        assert!(!rotated_path(&one, 1).exists());
    }

    #[test]
    fn writes_docker_json_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let mut w = LogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"hello\n").unwrap();
        w.write(Stream::Stderr, b"bad \xff byte").unwrap();
        w.write(Stream::Stdout, b"partial").unwrap();
        w.finish().unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with(r#"{"log":"hello\n","stream":"stdout","time":""#),
            "{first}"
        );
        // RFC 3339 with nanoseconds and Z: 2026-11-25T13:00:00.123456789Z
        let time = first
            .rsplit("\"time\":\"")
            .next()
            .unwrap()
            .trim_end_matches("\"}");
        assert_eq!(time.len(), 30, "{time}");
        assert!(time.ends_with('Z'));

        let entries = read_all(&path).unwrap();
        let got: Vec<(Stream, &str)> = entries.iter().map(|e| (e.stream, e.log.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, "hello\n"),
                // Written as it came, without waiting for the rest of the line.
                (Stream::Stderr, "bad \u{fffd} byte"),
                (Stream::Stdout, "partial"),
            ]
        );
    }
}
