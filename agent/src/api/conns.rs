//! Open connections: counted, so a daemon handing over knows when the requests
//! in flight are done, and told to close once they are.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    open: AtomicUsize,
    close: watch::Sender<bool>,
}

/// One open connection; dropping it closes the count.
pub struct Tracked {
    inner: Arc<Inner>,
    close: watch::Receiver<bool>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            inner: Arc::new(Inner {
                open: AtomicUsize::new(0),
                close: watch::Sender::new(false),
            }),
        }
    }
}

impl Connections {
    pub fn track(&self) -> Tracked {
        self.inner.open.fetch_add(1, Ordering::SeqCst);
        Tracked {
            inner: self.inner.clone(),
            close: self.inner.close.subscribe(),
        }
    }

    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Asks every connection to close once its current request is answered.
    pub fn close_all(&self) {
        let _ = self.inner.close.send(true);
    }
}

impl Tracked {
    /// Resolves when connections are asked to close.
    pub async fn closing(&mut self) {
        let _ = self.close.wait_for(|c| *c).await;
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::SeqCst);
    }
}
