//! The aggregator's memory: the last lines of every app, in the order they arrived,
//! bounded per app, each job's lines kept once (a shipper that resends after a break
//! sends lines we have: their `seq` is not above the job's highest).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::message::LogLine;

/// Lines kept per app.
pub const DEFAULT_LINES_PER_APP: usize = 10_000;
/// Lines a slow follower may fall behind before it is told it missed some.
const FOLLOW_BACKLOG: usize = 4096;

struct AppLog {
    lines: VecDeque<LogLine>,
    /// Highest seq per job (for deduplication), and the job's host (for
    /// [`Buffers::cursors`]).
    seen: HashMap<String, (u64, String)>,
    tx: broadcast::Sender<LogLine>,
}

pub struct Buffers {
    per_app: usize,
    apps: Mutex<HashMap<String, AppLog>>,
}

/// Which lines of an app a reader wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub process_type: Option<String>,
    pub job_id: Option<String>,
}

impl Filter {
    pub fn matches(&self, l: &LogLine) -> bool {
        self.process_type
            .as_ref()
            .is_none_or(|t| *t == l.process_type)
            && self.job_id.as_ref().is_none_or(|j| *j == l.job_id)
    }
}

impl Buffers {
    pub fn new(per_app: usize) -> Buffers {
        Buffers {
            per_app: per_app.max(1),
            apps: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AppLog>> {
        self.apps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a line; false when it was already there.
    pub fn push(&self, line: LogLine) -> bool {
        let mut apps = self.lock();
        let app = apps.entry(line.app.clone()).or_insert_with(|| AppLog {
            lines: VecDeque::new(),
            seen: HashMap::new(),
            tx: broadcast::channel(FOLLOW_BACKLOG).0,
        });
        let high = app
            .seen
            .entry(line.job_id.clone())
            .or_insert_with(|| (0, line.host_id.clone()));
        if line.seq <= high.0 {
            return false;
        }
        high.0 = line.seq;
        if app.lines.len() >= self.per_app {
            app.lines.pop_front();
        }
        let _ = app.tx.send(line.clone());
        app.lines.push_back(line);
        true
    }

    /// The last `n` matching lines of `app` and, to follow, a receiver of what comes
    /// next (taken under the same lock: no line falls between the two).
    pub fn read(
        &self,
        app: &str,
        filter: &Filter,
        n: usize,
    ) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let mut apps = self.lock();
        let app = apps.entry(app.to_string()).or_insert_with(|| AppLog {
            lines: VecDeque::new(),
            seen: HashMap::new(),
            tx: broadcast::channel(FOLLOW_BACKLOG).0,
        });
        let mut lines: Vec<LogLine> = app
            .lines
            .iter()
            .rev()
            .filter(|l| filter.matches(l))
            .take(n)
            .cloned()
            .collect();
        lines.reverse();
        (lines, app.tx.subscribe())
    }

    /// Everything, for a peer filling itself.
    pub fn snapshot(&self) -> Vec<LogLine> {
        self.lock()
            .values()
            .flat_map(|a| a.lines.iter().cloned())
            .collect()
    }

    /// The highest seq held of every job of `host`: where that host's shipper
    /// resumes after a break (every lower seq of the job is here too, or was before
    /// the buffer let it go: a job's lines arrive in order on one connection).
    pub fn cursors(&self, host: &str) -> HashMap<String, u64> {
        self.lock()
            .values()
            .flat_map(|a| a.seen.iter())
            .filter(|(_, (_, h))| h == host)
            .map(|(job, (seq, _))| (job.clone(), *seq))
            .collect()
    }

    pub fn apps(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .lock()
            .iter()
            .filter(|(_, a)| !a.lines.is_empty())
            .map(|(k, a)| (k.clone(), a.lines.len()))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(app: &str, job: &str, seq: u64) -> LogLine {
        LogLine {
            app: app.into(),
            process_type: if job == "j1" { "web" } else { "worker" }.into(),
            job_id: job.into(),
            host_id: "h".into(),
            stream: "stdout".into(),
            time: chrono::Utc::now(),
            seq,
            msg: format!("{job} {seq}"),
        }
    }

    #[test]
    fn bounded_deduplicated_filtered() {
        let b = Buffers::new(3);
        assert!(b.push(l("a", "j1", 1)));
        assert!(!b.push(l("a", "j1", 1)), "a resent line is kept once");
        assert!(b.push(l("a", "j2", 1)));
        assert!(b.push(l("a", "j1", 2)));
        assert!(b.push(l("a", "j1", 3)));
        assert!(b.push(l("b", "j9", 1)));
        let (lines, _) = b.read("a", &Filter::default(), 100);
        let msgs: Vec<&str> = lines.iter().map(|l| l.msg.as_str()).collect();
        assert_eq!(msgs, ["j2 1", "j1 2", "j1 3"], "the oldest line went");
        let web = Filter {
            process_type: Some("web".into()),
            job_id: None,
        };
        assert_eq!(b.read("a", &web, 1).0[0].msg, "j1 3");
        assert_eq!(b.apps(), [("a".to_string(), 3), ("b".to_string(), 1)]);
        assert_eq!(b.snapshot().len(), 4);
        assert_eq!(b.cursors("h").get("j1"), Some(&3));
        assert!(b.cursors("other").is_empty());
        let (_, mut rx) = b.read("a", &Filter::default(), 0);
        b.push(l("a", "j1", 4));
        assert_eq!(rx.try_recv().unwrap().seq, 4);
    }
}
