//! What one client can hold of the API: connections, time and bytes. A slowloris
//! client (many connections, each sending its headers a byte at a time) or a
//! thousand callers at once must leave the API answering others.
//!
//! - Headers: hyper closes a connection that has not sent a whole request head
//!   within [`HEADER_TIMEOUT`]; it runs while a keep-alive connection waits for its
//!   next request too, so it is also the idle time-out.
//! - Connections: at most [`MAX_TCP`] on TCP and [`MAX_UNIX`] on the unix socket.
//!   When a listener is full, a new connection takes the place of the one idle the
//!   longest (no request in flight: waiting for headers or between requests); only
//!   when every connection is busy is the new one answered 503 and closed. So a
//!   client holding many half-sent requests loses them to the next real client
//!   instead of shutting it out.
//! - Bodies: a JSON body over 1 MiB is a 413 (`read_json`); a request body that
//!   stops arriving for [`BODY_IDLE`] (an image upload: [`UPLOAD_IDLE`]) is a 408.
//! - File descriptors: the soft `RLIMIT_NOFILE` is raised to the hard one at start,
//!   so the connection caps, not EMFILE, are what a flood meets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::{ApiError, Body};

/// Open TCP connections at most.
pub const MAX_TCP: usize = 1024;
/// Open unix-socket connections at most.
pub const MAX_UNIX: usize = 256;
/// A request's head must arrive within this, counted from when the connection
/// starts waiting for it (also: how long an idle keep-alive connection lives).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body (JSON) that sends nothing for this long is given up (408).
pub const BODY_IDLE: Duration = Duration::from_secs(10);
/// An uploaded archive that sends nothing for this long is given up (408).
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// The HTTP/1 server settings of every connection.
pub fn http1_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        // 64 KiB of request head is far more than any client of ours sends.
        .max_buf_size(64 * 1024);
    b
}

/// The open connections of one listener, and which of them may be evicted.
pub struct ConnLimit {
    max: usize,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Slot>>>,
}

struct Slot {
    /// Requests whose response is not finished.
    busy: AtomicUsize,
    /// When the connection last started or finished a request.
    last: Mutex<Instant>,
    evict: Notify,
}

/// A connection admitted by [`ConnLimit::admit`]; its place is freed on drop.
pub struct Admitted {
    limit: Arc<ConnLimit>,
    id: u64,
    slot: Arc<Slot>,
}

/// A request in flight on a connection: it cannot be evicted until this drops
/// (keep it with the response body, so a streamed response counts).
pub struct InFlight(Arc<Slot>);

impl ConnLimit {
    pub fn new(max: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            max: max.max(1),
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection: a free one, or the place of the connection
    /// idle the longest (which is told to close). `None` when every connection
    /// has a request in flight.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.lock();
        if open.len() >= self.max {
            let victim = open
                .iter()
                .filter(|(_, s)| s.busy.load(Ordering::SeqCst) == 0)
                .min_by_key(|(_, s)| *s.last.lock().unwrap_or_else(|p| p.into_inner()))
                .map(|(id, _)| *id)?;
            if let Some(slot) = open.remove(&victim) {
                slot.evict.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            busy: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            evict: Notify::new(),
        });
        open.insert(id, slot.clone());
        Some(Admitted {
            limit: self.clone(),
            id,
            slot,
        })
    }
}

impl Admitted {
    /// Resolves when this connection must close to make room for another.
    pub async fn evicted(&self) {
        self.slot.evict.notified().await
    }

    /// Marks a request in flight until the returned value drops.
    pub fn request(&self) -> InFlight {
        self.slot.busy.fetch_add(1, Ordering::SeqCst);
        *self.slot.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        InFlight(self.slot.clone())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.limit.lock();
        // It may already be gone (evicted): only remove our own entry.
        if open
            .get(&self.id)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            open.remove(&self.id);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keeps `in_flight` until the response's body is finished or dropped.
pub fn hold_until_sent(
    response: hyper::Response<Body>,
    in_flight: InFlight,
) -> hyper::Response<Body> {
    use http_body_util::BodyExt;
    response.map(|body| {
        body.map_frame(move |frame| {
            let _ = &in_flight;
            frame
        })
        .boxed()
    })
}

/// Answers a connection that found every place busy, and closes it.
pub async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, max: usize) {
    let body = format!(
        "{{\"error\":\"the API has {max} connections open, each with a request in flight: retry shortly\"}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The next data chunk of a request body, or `None` at its end; a body that sends
/// nothing for `idle` is a 408 (`what` names it in the message).
pub async fn next_chunk(
    body: &mut Incoming,
    idle: Duration,
    what: &str,
) -> Result<Option<bytes::Bytes>, ApiError> {
    use http_body_util::BodyExt;
    loop {
        if body.is_end_stream() {
            return Ok(None);
        }
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ApiError::Timeout(format!(
                    "{what}: nothing arrived for {} s; send the body without pausing",
                    idle.as_secs()
                )));
            }
            Ok(None) => return Ok(None),
            Ok(Some(frame)) => {
                frame.map_err(|e| ApiError::BadRequest(format!("reading {what}: {e}")))?
            }
        };
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
}

/// Raises the soft limit of open files to the hard limit, so that the connection
/// caps above are reached before the process runs out of descriptors.
pub fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "raising the open-files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reading the open-files limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_limit_evicts_the_connection_idle_longest_never_a_busy_one() {
        let limit = ConnLimit::new(2);
        let a = limit.admit().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let b = limit.admit().unwrap();
        let busy_b = b.request();
        // a is idle: the third takes its place.
        let c = limit.admit().unwrap();
        assert_eq!(limit.open(), 2);
        let _busy_c = c.request();
        // b and c are both busy: a fourth is refused.
        assert!(limit.admit().is_none());
        drop(busy_b);
        let _d = limit.admit().unwrap();
        drop(a);
        assert_eq!(
            limit.open(),
            2,
            "an evicted connection frees no other's place"
        );
    }
}
