//! Container output in Docker's json-file format: one JSON object per line,
//! `{"log":"hello\n","stream":"stdout","time":"2026-11-25T13:00:00.123456789Z"}`.
//!
//! Each output line becomes one entry (its newline kept). A line longer than 16 KiB is cut
//! into 16 KiB entries without a newline, as Docker does, so a process that never prints a
//! newline cannot make the shim buffer without bound.

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

/// Reassembles one stream's bytes into lines.
#[derive(Debug)]
struct LineSplitter {
    stream: Stream,
    partial: Vec<u8>,
}

impl LineSplitter {
    fn new(stream: Stream) -> Self {
        LineSplitter {
            stream,
            partial: Vec::new(),
        }
    }

    fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(Stream, &[u8])) {
        while !data.is_empty() {
            let room = MAX_ENTRY_BYTES - self.partial.len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let line = &window[..=nl];
                    if self.partial.is_empty() {
                        emit(self.stream, line);
                    } else {
                        self.partial.extend_from_slice(line);
                        emit(self.stream, &self.partial);
                        self.partial.clear();
                    }
                    data = &data[nl + 1..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &data[window.len()..];
                    if self.partial.len() == MAX_ENTRY_BYTES {
                        emit(self.stream, &self.partial);
                        self.partial.clear();
                    }
                }
            }
        }
    }

    fn finish(&mut self, emit: &mut impl FnMut(Stream, &[u8])) {
        if !self.partial.is_empty() {
            emit(self.stream, &self.partial);
            self.partial.clear();
        }
    }
}

/// Appends container output to a json-file log. Entries are written with one `write`
/// per read from the container (O_APPEND, no fsync: logs are not worth an fsync per line).
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    stdout: LineSplitter,
    stderr: LineSplitter,
    buf: Vec<u8>,
}

impl LogWriter {
    pub fn open(path: &Path) -> Result<LogWriter, LogError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(|source| LogError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(LogWriter {
            file,
            stdout: LineSplitter::new(Stream::Stdout),
            stderr: LineSplitter::new(Stream::Stderr),
            buf: Vec::new(),
        })
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

    /// Writes out unterminated last lines; called once the streams are closed.
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
        let result = self.file.write_all(&self.buf);
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
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        let mut emit = |st: Stream, b: &[u8]| out.push((st, b.to_vec()));
        for c in chunks {
            s.push(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    #[test]
    fn lines_are_reassembled() {
        let out = split(&[b"hel", b"lo\nwor", b"ld\n\nlast"]);
        let lines: Vec<&[u8]> = out.iter().map(|(_, b)| b.as_slice()).collect();
        assert_eq!(lines, vec![&b"hello\n"[..], b"world\n", b"\n", b"last"]);
    }

    #[test]
    fn long_lines_are_cut_at_16k() {
        let big = vec![b'x'; MAX_ENTRY_BYTES * 2 + 10];
        let mut data = big.clone();
        data.push(b'\n');
        let out = split(&[&data[..100], &data[100..]]);
        let sizes: Vec<usize> = out.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, vec![MAX_ENTRY_BYTES, MAX_ENTRY_BYTES, 11]);
        let joined: Vec<u8> = out.into_iter().flat_map(|(_, b)| b).collect();
        assert_eq!(joined, data);
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
                (Stream::Stdout, "partial"),
                (Stream::Stderr, "bad \u{fffd} byte"),
            ]
        );
    }
}
