//! The log shipper: every line of every job that belongs to an app (label
//! `flynn.app`, with `flynn.type`) goes to every instance of the `flynn-logaggregator`
//! service, as RFC 5424 messages in RFC 6587 frames (`logagg::message`), each
//! instance followed through a discovery watch as instances come and go.
//!
//! - **The job's log file is the queue.** Nothing is buffered in memory: each
//!   instance has a cursor per job (a byte offset in the job's `log.json`) and reads
//!   the file from there, so an aggregator that is away costs nothing but the cursor,
//!   and a job's writes never wait for a shipper (the shim writes the file, not us).
//! - **seq is the line's byte offset in the log file, plus one.** It grows with every
//!   line of the job, survives an agent restart unchanged (the file is append-only),
//!   and names a place in the file: after a break the shipper asks the instance for
//!   the highest seq it holds of each of this host's jobs (`GET /cursors?host=H`) and
//!   resumes just after that line. Lines sent into a connection that broke are sent
//!   again, and lines the instance got from its peer are not; the aggregator keeps each
//!   seq once. When the instance cannot say, the shipper resumes from its own cursor.
//! - **Jobs that end** keep being shipped: the log is opened when the job is first
//!   seen and the descriptor is held after the job is removed (its file unlinked or
//!   moved), until every instance has all of it or [`KEEP_REMOVED`] has passed.
//! - Logs grow under inotify (one watch per log file); a tick every
//!   [`RESCAN`] catches anything an event missed.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use discovery::{Etcd, Instance, ServiceEventKind};
use logagg::LogLine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};
use tokio_rustls::rustls::ClientConfig;
use tokio_stream::StreamExt;

use crate::jobs::JobManager;
use crate::model::{Event, Job};

/// The label that makes a job's lines shipped, and the one that names its type.
pub const APP_LABEL: &str = "flynn.app";
pub const TYPE_LABEL: &str = "flynn.type";
/// How long a removed job's log is held for an aggregator that does not have it all.
const KEEP_REMOVED: Duration = Duration::from_secs(600);
/// Removed jobs' logs held at most (the oldest is let go first).
const MAX_REMOVED: usize = 1024;
/// How often jobs and logs are looked at without an event.
const RESCAN: Duration = Duration::from_secs(1);
/// Bytes read from a log at once (a batch of lines, one write to the socket).
const CHUNK: usize = 128 * 1024;
/// A line longer than this in the file (JSON) is skipped; entries are at most
/// 16 KiB of output, which JSON escapes can make six times longer.
const MAX_LINE: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A write that takes longer is an aggregator that stopped reading: reconnect.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("sending to {addr}: {reason}")]
    Send { addr: String, reason: String },
    #[error("reading the log of job {job}: {source}")]
    Read {
        job: String,
        #[source]
        source: std::io::Error,
    },
}

/// One job's log, as the shipper holds it.
struct JobLog {
    id: String,
    app: String,
    process_type: String,
    path: PathBuf,
    /// Opened once; held after the job is removed.
    file: Mutex<Option<Arc<File>>>,
    /// When the job was removed (its file no longer grows).
    removed: Mutex<Option<Instant>>,
    /// Each instance's cursor in this log, for letting a removed log go.
    shipped: Mutex<HashMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single read or write: nothing is half-done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl JobLog {
    fn file(&self, fallback: Option<PathBuf>) -> Option<Arc<File>> {
        let mut f = lock(&self.file);
        if f.is_none() {
            let opened = File::open(&self.path)
                .or_else(|e| fallback.map_or(Err(e), File::open))
                .ok();
            *f = opened.map(Arc::new);
        }
        f.clone()
    }
}

/// Ships this host's jobs' lines.
pub struct Shipper {
    host_id: String,
    jobs: Arc<JobManager>,
    logs: Mutex<HashMap<String, Arc<JobLog>>>,
    /// Bumped whenever a log may have grown or a job came.
    changed: watch::Sender<u64>,
    watches: Mutex<Option<inotify::Watches>>,
    /// The instances shipped to now (a removed log is let go once all have it).
    instances: Mutex<Vec<String>>,
    /// The cluster's CA certificate (this host's `<state>/tls/platform/ca.pem`):
    /// an instance that says it serves TLS is verified against it.
    tls_ca: Option<PathBuf>,
}

impl Shipper {
    pub fn new(host_id: String, jobs: Arc<JobManager>, tls_ca: Option<PathBuf>) -> Arc<Shipper> {
        Arc::new(Shipper {
            host_id,
            tls_ca,
            jobs,
            logs: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
            watches: Mutex::new(None),
            instances: Mutex::new(Vec::new()),
        })
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Follows jobs and aggregator instances until the task is dropped.
    pub async fn run(self: Arc<Self>, etcd: Etcd, events: broadcast::Receiver<Event>) {
        let s = self.clone();
        let jobs_task = tokio::spawn(async move { s.follow_jobs(events).await });
        let s = self.clone();
        let notify_task = tokio::spawn(async move { s.follow_writes().await });
        self.follow_instances(etcd).await;
        jobs_task.abort();
        notify_task.abort();
    }

    /// Starts shipping `job`'s log if it belongs to an app.
    fn track(&self, job: &Job) {
        let Some(app) = job.config.labels.get(APP_LABEL) else {
            return;
        };
        let mut logs = lock(&self.logs);
        if let Some(log) = logs.get(&job.id).cloned() {
            drop(logs);
            self.open(&log);
            return;
        }
        let log = Arc::new(JobLog {
            id: job.id.clone(),
            app: app.clone(),
            process_type: job
                .config
                .labels
                .get(TYPE_LABEL)
                .cloned()
                .unwrap_or_default(),
            path: self.jobs.log_path(&job.id),
            file: Mutex::new(None),
            removed: Mutex::new(None),
            shipped: Mutex::new(HashMap::new()),
        });
        logs.insert(job.id.clone(), log.clone());
        drop(logs);
        self.open(&log);
        self.bump();
    }

    /// Opens a log not open yet (a job's log appears when it starts) and watches it.
    fn open(&self, log: &JobLog) {
        let open = lock(&log.file).is_some();
        if open || log.file(None).is_none() {
            return;
        }
        if let Some(w) = lock(&self.watches).as_mut()
            && let Err(e) = w.add(&log.path, inotify::WatchMask::MODIFY)
        {
            tracing::debug!(job = %log.id, error = %e, "watching a log (the rescan covers it)");
        }
        self.bump();
    }

    fn removed(&self, id: &str) {
        if let Some(log) = lock(&self.logs).get(id) {
            // The file may be gone already: an auto-removed job's log was moved aside.
            log.file(self.jobs.removed_log(id));
            lock(&log.removed).get_or_insert_with(Instant::now);
        }
        self.bump();
    }

    /// Job events, and a rescan of every job now and then (events can be missed).
    async fn follow_jobs(self: Arc<Self>, mut events: broadcast::Receiver<Event>) {
        self.rescan();
        let mut tick = tokio::time::interval(RESCAN);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) if ev.kind == "job" => match (ev.action.as_str(), &ev.job) {
                        ("create" | "start", Some(job)) => self.track(job),
                        ("exit", _) => self.bump(),
                        ("remove", _) => self.removed(&ev.id),
                        _ => {}
                    },
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => self.rescan(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => self.rescan(),
            }
        }
    }

    fn rescan(&self) {
        let jobs = self.jobs.list(true);
        for job in &jobs {
            self.track(job);
        }
        let known: Vec<Arc<JobLog>> = lock(&self.logs).values().cloned().collect();
        for log in &known {
            if !jobs.iter().any(|j| j.id == log.id) && lock(&log.removed).is_none() {
                self.removed(&log.id);
            }
            // A log that did not exist when the job was first seen.
            self.open(log);
        }
        self.let_go();
        // Files grow without events only if inotify failed; a bump is cheap.
        self.bump();
    }

    /// Forgets removed jobs every instance has all of, or held too long.
    fn let_go(&self) {
        let instances = lock(&self.instances).clone();
        let mut logs = lock(&self.logs);
        let mut removed: Vec<(Instant, String)> = Vec::new();
        logs.retain(|id, log| {
            let Some(at) = *lock(&log.removed) else {
                return true;
            };
            let len = lock(&log.file)
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map_or(0, |m| m.len());
            let shipped = lock(&log.shipped);
            // With no instance at all, the next one to come needs it.
            let done = !instances.is_empty()
                && instances
                    .iter()
                    .all(|i| shipped.get(i).is_some_and(|c| *c >= len));
            let keep = !done && at.elapsed() < KEEP_REMOVED;
            if keep {
                removed.push((at, id.clone()));
            }
            keep
        });
        if removed.len() > MAX_REMOVED {
            removed.sort();
            for (_, id) in &removed[..removed.len() - MAX_REMOVED] {
                logs.remove(id);
            }
        }
    }

    /// inotify on every held log: a write wakes the senders at once.
    async fn follow_writes(self: Arc<Self>) {
        let stream = inotify::Inotify::init().and_then(|i| i.into_event_stream([0u8; 1024]));
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no inotify: logs are shipped every second");
                return;
            }
        };
        *lock(&self.watches) = Some(stream.watches());
        let paths: Vec<PathBuf> = lock(&self.logs).values().map(|l| l.path.clone()).collect();
        if let Some(w) = lock(&self.watches).as_mut() {
            for p in paths {
                let _ = w.add(&p, inotify::WatchMask::MODIFY);
            }
        }
        while stream.next().await.is_some() {
            self.bump();
        }
    }

    /// One sender per instance of the aggregator service, as discovery has them.
    async fn follow_instances(self: &Arc<Self>, etcd: Etcd) {
        let mut senders: HashMap<String, (Instance, tokio::task::JoinHandle<()>)> = HashMap::new();
        let mut rx = loop {
            match discovery::services::watch(etcd.clone(), Some(logagg::SERVICE)) {
                Ok(rx) => break rx,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the log aggregators");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        while let Some(ev) = rx.recv().await {
            let Some(inst) = ev.instance else { continue };
            match ev.kind {
                ServiceEventKind::Up | ServiceEventKind::Update => {
                    if senders
                        .get(&inst.id)
                        .is_some_and(|(old, _)| old.addr == inst.addr && old.meta == inst.meta)
                    {
                        continue;
                    }
                    if let Some((_, task)) = senders.remove(&inst.id) {
                        task.abort();
                    }
                    tracing::info!(instance = %inst.id, addr = %inst.addr, "shipping logs to an aggregator");
                    let s = self.clone();
                    let i = inst.clone();
                    let task = tokio::spawn(async move { s.ship_to(i).await });
                    senders.insert(inst.id.clone(), (inst, task));
                    *lock(&self.instances) = senders.keys().cloned().collect();
                }
                ServiceEventKind::Down => {
                    if let Some((_, task)) = senders.remove(&inst.id) {
                        tracing::info!(instance = %inst.id, "an aggregator left");
                        task.abort();
                    }
                    *lock(&self.instances) = senders.keys().cloned().collect();
                    for log in lock(&self.logs).values() {
                        lock(&log.shipped).remove(&inst.id);
                    }
                }
                ServiceEventKind::Leader | ServiceEventKind::Current => {}
            }
        }
        for (_, (_, task)) in senders {
            task.abort();
        }
    }

    /// Ships to one instance for as long as it is in discovery: connect, resume where
    /// it stopped, send what the logs have, wait for more; after a break, again.
    async fn ship_to(self: Arc<Self>, inst: Instance) {
        let mut cursors: HashMap<String, u64> = HashMap::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            if let Err(e) = self.session(&inst, &mut cursors).await {
                tracing::debug!(instance = %inst.id, error = %e, "log shipping interrupted");
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(
        &self,
        inst: &Instance,
        cursors: &mut HashMap<String, u64>,
    ) -> Result<(), ShipError> {
        let addr = inst.addr.to_string();
        let tls = self.tls_for(inst).map_err(|reason| ShipError::Connect {
            addr: addr.clone(),
            reason,
        })?;
        let mut stream = logagg::tls::connect(inst.addr, tls, CONNECT_TIMEOUT)
            .await
            .map_err(|reason| ShipError::Connect {
                addr: addr.clone(),
                reason,
            })?;
        if let Some(remote) = self.remote_cursors(inst).await {
            let logs: Vec<Arc<JobLog>> = lock(&self.logs).values().cloned().collect();
            cursors.clear();
            for log in logs {
                let at = match remote.get(&log.id) {
                    Some(seq) => match log.file(None) {
                        Some(f) => line_end(f, seq.saturating_sub(1), &log.id).await?,
                        None => 0,
                    },
                    None => 0,
                };
                cursors.insert(log.id.clone(), at);
            }
        }
        let mut changed = self.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let logs: Vec<Arc<JobLog>> = lock(&self.logs).values().cloned().collect();
            cursors.retain(|id, _| logs.iter().any(|l| l.id == *id));
            for log in logs {
                let Some(file) = log.file(None) else { continue };
                let cur = cursors.entry(log.id.clone()).or_insert(0);
                loop {
                    let (frames, next) = self.read_frames(&log, file.clone(), *cur).await?;
                    if next == *cur {
                        break;
                    }
                    if !frames.is_empty() {
                        match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&frames)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                return Err(ShipError::Send {
                                    addr,
                                    reason: e.to_string(),
                                });
                            }
                            Err(_) => {
                                return Err(ShipError::Send {
                                    addr,
                                    reason: "the aggregator stopped reading".into(),
                                });
                            }
                        }
                    }
                    *cur = next;
                }
                lock(&log.shipped).insert(inst.id.clone(), *cur);
            }
            // The aggregator never writes to us: a read that ends is a closed
            // connection (noticed at once rather than at the next write).
            let mut probe = [0u8; 1];
            tokio::select! {
                r = changed.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                }
                r = stream.read(&mut probe) => {
                    return Err(ShipError::Send {
                        addr,
                        reason: match r {
                            Ok(_) => "the aggregator closed the connection".into(),
                            Err(e) => e.to_string(),
                        },
                    });
                }
            }
        }
    }

    /// Frames for the complete lines of `log` from `offset`, and the offset after them.
    async fn read_frames(
        &self,
        log: &JobLog,
        file: Arc<File>,
        offset: u64,
    ) -> Result<(Vec<u8>, u64), ShipError> {
        let id = log.id.clone();
        let chunk = tokio::task::spawn_blocking(move || read_lines(&file, offset))
            .await
            .map_err(|e| ShipError::Read {
                job: id.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| ShipError::Read { job: id, source })?;
        let bytes = match chunk {
            Chunk::Lines(b) => b,
            Chunk::Skip(n) => {
                tracing::warn!(job = %log.id, bytes = n, "passing over a log line too long to ship");
                return Ok((Vec::new(), offset + n));
            }
        };
        let mut frames = Vec::with_capacity(bytes.len() + bytes.len() / 2);
        let mut at = offset;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let seq = at + 1;
            at += line.len() as u64;
            let Ok(entry) = serde_json::from_slice::<runtime::logs::LogEntry>(line) else {
                continue;
            };
            let mut msg = entry.log;
            if msg.ends_with('\n') {
                msg.pop();
            }
            let l = LogLine {
                app: log.app.clone(),
                process_type: log.process_type.clone(),
                job_id: log.id.clone(),
                host_id: self.host_id.clone(),
                stream: match entry.stream {
                    runtime::logs::Stream::Stdout => "stdout",
                    runtime::logs::Stream::Stderr => "stderr",
                }
                .to_string(),
                time: entry.time,
                seq,
                msg,
            };
            frames.extend_from_slice(&l.frame());
        }
        Ok((frames, at))
    }

    /// The TLS an instance is reached with: none unless it says it serves TLS,
    /// then the cluster's CA, read afresh (the bootstrap may have just installed
    /// it; a session is long, so this is not per line).
    fn tls_for(&self, inst: &Instance) -> Result<Option<Arc<ClientConfig>>, String> {
        if !logagg::tls::instance_tls(&inst.meta) {
            return Ok(None);
        }
        let ca = self.tls_ca.as_ref().ok_or_else(|| {
            "the aggregator serves TLS and this host has no CA to verify it with".to_string()
        })?;
        logagg::tls::client_config(ca)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// What the instance holds of this host's jobs (`None` when it cannot say).
    async fn remote_cursors(&self, inst: &Instance) -> Option<HashMap<String, u64>> {
        let port: u16 = inst.meta.get(logagg::META_HTTP)?.parse().ok()?;
        let addr = std::net::SocketAddr::new(inst.addr.ip(), port);
        let host: String = self
            .host_id
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let tls = self.tls_for(inst).ok()?;
        let ask = async {
            let mut s = logagg::tls::connect(addr, tls, CONNECT_TIMEOUT)
                .await
                .ok()?;
            let req = format!(
                "GET /cursors?host={host} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.ok()?;
            let mut resp = Vec::new();
            // Over TLS a peer that closes without close_notify ends the read with
            // an error after the whole answer: what was read is judged below.
            let _ = s.take(16 << 20).read_to_end(&mut resp).await;
            let text = String::from_utf8(resp).ok()?;
            let (head, body) = text.split_once("\r\n\r\n")?;
            if !head.starts_with("HTTP/1.1 200") {
                return None;
            }
            // hyper sends a known length here, not chunks.
            serde_json::from_str::<HashMap<String, u64>>(body).ok()
        };
        let got = tokio::time::timeout(CONNECT_TIMEOUT, ask)
            .await
            .ok()
            .flatten();
        if got.is_none() {
            tracing::debug!(instance = %inst.id, "the aggregator did not say where it stopped; resuming from our cursor");
        }
        got
    }
}

enum Chunk {
    /// Complete lines (each ending in '\n'); empty when none has ended yet.
    Lines(Vec<u8>),
    /// A line over [`MAX_LINE`] of this many bytes: passed over, not shipped.
    Skip(u64),
}

/// Complete lines from `offset`, at most [`CHUNK`] bytes unless one line is longer.
fn read_lines(file: &File, offset: u64) -> std::io::Result<Chunk> {
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0;
    loop {
        let n = file.read_at(&mut buf[len..], offset + len as u64)?;
        len += n;
        if let Some(end) = buf[..len].iter().rposition(|b| *b == b'\n') {
            buf.truncate(end + 1);
            return Ok(Chunk::Lines(buf));
        }
        if n == 0 {
            // Only an incomplete line so far: it is shipped once it ends.
            return Ok(Chunk::Lines(Vec::new()));
        }
        if len < buf.len() {
            continue;
        }
        if buf.len() < MAX_LINE {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        // Find the line's end without holding it.
        let mut at = offset + len as u64;
        loop {
            let n = file.read_at(&mut buf[..CHUNK], at)?;
            if n == 0 {
                return Ok(Chunk::Lines(Vec::new()));
            }
            if let Some(i) = buf[..n].iter().position(|b| *b == b'\n') {
                return Ok(Chunk::Skip(at + i as u64 + 1 - offset));
            }
            at += n as u64;
        }
    }
}

/// The offset just after the line that starts at `start`.
async fn line_end(file: Arc<File>, start: u64, job: &str) -> Result<u64, ShipError> {
    let r = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let mut buf = vec![0u8; 16 * 1024];
        let mut at = start;
        loop {
            let n = file.read_at(&mut buf, at)?;
            if n == 0 {
                // Not a line end we know: resend from the line itself.
                return Ok(start);
            }
            if let Some(i) = buf[..n].iter().position(|b| *b == b'\n') {
                return Ok(at + i as u64 + 1);
            }
            at += n as u64;
        }
    })
    .await
    .map_err(|e| ShipError::Read {
        job: job.to_string(),
        source: std::io::Error::other(e),
    })?;
    r.map_err(|source| ShipError::Read {
        job: job.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_complete_lines_only_and_passes_over_huge_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.json");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"{\"a\":1}\n{\"b\":2}\n{\"c\"").unwrap();
        let r = File::open(&p).unwrap();
        let lines = |c: Chunk| match c {
            Chunk::Lines(b) => b,
            Chunk::Skip(n) => panic!("skipped {n}"),
        };
        assert_eq!(lines(read_lines(&r, 0).unwrap()), b"{\"a\":1}\n{\"b\":2}\n");
        assert!(
            lines(read_lines(&r, 16).unwrap()).is_empty(),
            "a torn line waits"
        );
        f.write_all(b":3}\n").unwrap();
        f.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        f.write_all(b"\nnext\n").unwrap();
        let at = 16 + 8;
        assert!(matches!(read_lines(&r, at).unwrap(), Chunk::Skip(n) if n == MAX_LINE as u64 + 11));
        assert_eq!(
            lines(read_lines(&r, at + MAX_LINE as u64 + 11).unwrap()),
            b"next\n"
        );
    }
}
