//! The backends of each service, as discovery says they are, and the choice among
//! them: power of two choices on requests in flight (two backends at random, the less
//! busy one wins), which spreads load nearly as well as least-in-flight without every
//! request looking at every backend.
//!
//! A backend that discovery drops leaves the set at once: no new request goes to it,
//! while the requests it is serving finish on their own connections (a job that is
//! about to stop leaves discovery first, so a deploy fails no request).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

/// One backend (a discovery instance).
pub struct Backend {
    pub addr: SocketAddr,
    inflight: AtomicUsize,
    /// Idle HTTP/1.1 connections to it, reused across requests; one pool per worker
    /// thread, since a connection's task runs on the thread that opened it (a
    /// request sent from another thread would cross threads twice).
    idle: Box<[Mutex<Vec<SendRequest<crate::http::ProxyBody>>>]>,
}

/// Most idle connections kept per backend and worker.
const MAX_IDLE: usize = 256;
/// Pools per backend (workers beyond this share them).
const POOLS: usize = 16;

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Names the current thread's worker (its connection pools); set once per worker.
pub fn set_worker(n: usize) {
    WORKER.with(|w| w.set(n % POOLS));
}

fn pool_index() -> usize {
    WORKER.with(|w| w.get())
}

impl Backend {
    pub fn new(addr: SocketAddr) -> Arc<Backend> {
        Arc::new(Backend {
            addr,
            inflight: AtomicUsize::new(0),
            idle: (0..POOLS).map(|_| Mutex::new(Vec::new())).collect(),
        })
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: self.clone(),
            conn: None,
        }
    }

    /// An idle connection that is still open, if any.
    pub fn take_idle(&self) -> Option<SendRequest<crate::http::ProxyBody>> {
        let mut idle = self.idle[pool_index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if !c.is_closed() && c.is_ready() {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, conn: SendRequest<crate::http::ProxyBody>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle[pool_index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

/// A request in flight on a backend; holds the connection until the response body is
/// done, then gives it back for reuse.
pub struct InFlight {
    backend: Arc<Backend>,
    conn: Option<SendRequest<crate::http::ProxyBody>>,
}

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The connection goes back to the pool when the request is over.
    pub fn keep(&mut self, conn: SendRequest<crate::http::ProxyBody>) {
        self.conn = Some(conn);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.inflight.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = self.conn.take() {
            self.backend.put_idle(c);
        }
    }
}

/// Services → their backends.
#[derive(Default)]
pub struct Backends {
    by_service: RwLock<HashMap<String, Arc<Vec<Arc<Backend>>>>>,
}

impl Backends {
    /// Sets a service's backends; those that stay keep their counters and connections.
    pub fn set(&self, service: &str, addrs: &[SocketAddr]) {
        let mut map = self.by_service.write().unwrap_or_else(|p| p.into_inner());
        let old = map.get(service).cloned().unwrap_or_default();
        let next: Vec<Arc<Backend>> = addrs
            .iter()
            .map(|a| {
                old.iter()
                    .find(|b| b.addr == *a)
                    .cloned()
                    .unwrap_or_else(|| Backend::new(*a))
            })
            .collect();
        if next.is_empty() {
            map.remove(service);
        } else {
            map.insert(service.to_string(), Arc::new(next));
        }
    }

    pub fn get(&self, service: &str) -> Arc<Vec<Arc<Backend>>> {
        self.by_service
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    pub fn services(&self) -> Vec<String> {
        self.by_service
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// Power of two choices among `list`, skipping `tried`.
pub fn choose(list: &[Arc<Backend>], tried: &[SocketAddr]) -> Option<Arc<Backend>> {
    let open: Vec<&Arc<Backend>> = list.iter().filter(|b| !tried.contains(&b.addr)).collect();
    match open.len() {
        0 => None,
        1 => Some(open[0].clone()),
        n => {
            let i = fastrand::usize(..n);
            let mut j = fastrand::usize(..n - 1);
            if j >= i {
                j += 1;
            }
            let (a, b) = (open[i], open[j]);
            Some(if b.inflight() < a.inflight() { b } else { a }.clone())
        }
    }
}

/// Kept for the response body's lifetime: the backend counts the request until then.
pub type Guard = InFlight;

/// The response body from a backend, holding its [`InFlight`] until the body ends.
pub struct GuardedBody {
    pub inner: Incoming,
    pub guard: Option<InFlight>,
}

impl hyper::body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = poll {
            // The body is done: the connection is free for the next request.
            self.guard.take();
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_choices_prefer_the_less_busy_and_skip_tried() {
        let list: Vec<Arc<Backend>> = (1..=3)
            .map(|i| Backend::new(SocketAddr::from(([127, 0, 0, 1], 8000 + i))))
            .collect();
        // Backend 0 is busy: it is never chosen over another, since both choices are
        // distinct.
        let _busy: Vec<InFlight> = (0..5).map(|_| list[0].begin()).collect();
        for _ in 0..200 {
            let b = choose(&list, &[]).unwrap();
            assert_ne!(b.addr, list[0].addr);
        }
        let only = choose(&list, &[list[1].addr, list[2].addr]).unwrap();
        assert_eq!(only.addr, list[0].addr);
        assert!(choose(&list, &[list[0].addr, list[1].addr, list[2].addr]).is_none());
        drop(_busy);
        assert_eq!(list[0].inflight(), 0);
    }

    #[test]
    fn set_keeps_backends_that_stay() {
        let b = Backends::default();
        let a1 = SocketAddr::from(([127, 0, 0, 1], 1));
        let a2 = SocketAddr::from(([127, 0, 0, 1], 2));
        b.set("web", &[a1, a2]);
        let first = b.get("web")[0].clone();
        let _g = first.begin();
        b.set("web", &[a1]);
        assert_eq!(b.get("web")[0].inflight(), 1);
        b.set("web", &[]);
        assert!(b.get("web").is_empty());
        assert!(b.services().is_empty());
    }
}
