//! Following a prefix through etcd restarts: read, watch from the next revision, and
//! when the stream breaks read again and start over.

use std::collections::VecDeque;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchStream};

use crate::etcd::Etcd;

/// One key as read or watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

impl Entry {
    fn of(kv: &etcd_client::KeyValue) -> Entry {
        Entry {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }
}

/// What a [`PrefixWatch`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Everything under the prefix now: the first report, and again after every
    /// reconnection (whatever happened meanwhile is in the difference to the last state).
    Snapshot {
        entries: Vec<Entry>,
        revision: i64,
    },
    Put(Entry),
    Delete {
        key: String,
        revision: i64,
    },
}

/// A watch of every key under a prefix that never gives up: while etcd is unreachable
/// [`PrefixWatch::next`] retries (with back-off up to 1 s) and returns once it has news.
pub struct PrefixWatch {
    etcd: Etcd,
    prefix: String,
    stream: Option<WatchStream>,
    pending: VecDeque<Change>,
    backoff: Duration,
    failures: u32,
}

const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl PrefixWatch {
    pub fn new(etcd: Etcd, prefix: impl Into<String>) -> PrefixWatch {
        PrefixWatch {
            etcd,
            prefix: prefix.into(),
            stream: None,
            pending: VecDeque::new(),
            backoff: Duration::from_millis(50),
            failures: 0,
        }
    }

    /// The next change.
    pub async fn next(&mut self) -> Change {
        loop {
            if let Some(c) = self.pending.pop_front() {
                return c;
            }
            let Some(stream) = self.stream.as_mut() else {
                match self.open().await {
                    Ok(snapshot) => {
                        self.backoff = Duration::from_millis(50);
                        if self.failures > 0 {
                            tracing::info!(prefix = %self.prefix, "etcd watch resumed");
                        }
                        self.failures = 0;
                        return snapshot;
                    }
                    Err(e) => {
                        self.failures += 1;
                        if self.failures == 1 || self.failures.is_multiple_of(30) {
                            tracing::warn!(prefix = %self.prefix, error = %e, "etcd watch: cannot read; retrying");
                        }
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            };
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        tracing::warn!(prefix = %self.prefix, reason = resp.cancel_reason(), "etcd cancelled the watch; reading again");
                        self.stream = None;
                        continue;
                    }
                    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        match ev.event_type() {
                            EventType::Put => self.pending.push_back(Change::Put(Entry::of(kv))),
                            EventType::Delete => self.pending.push_back(Change::Delete {
                                key: String::from_utf8_lossy(kv.key()).into_owned(),
                                revision: kv.mod_revision().max(revision),
                            }),
                        }
                    }
                }
                Ok(None) => {
                    tracing::warn!(prefix = %self.prefix, "etcd watch stream ended; reading again");
                    self.stream = None;
                }
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, "etcd watch broke; reading again");
                    self.stream = None;
                    tokio::time::sleep(self.backoff).await;
                }
            }
        }
    }

    async fn open(&mut self) -> Result<Change, crate::DiscoveryError> {
        let (kvs, revision) = self.etcd.get_prefix(&self.prefix).await?;
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let stream = self
            .etcd
            .client()
            .watch(self.prefix.as_str(), Some(opts))
            .await
            .map_err(crate::DiscoveryError::etcd(format!(
                "watching {}",
                self.prefix
            )))?;
        self.stream = Some(stream);
        Ok(Change::Snapshot {
            entries: kvs.iter().map(Entry::of).collect(),
            revision,
        })
    }
}
