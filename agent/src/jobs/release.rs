//! Giving back a stopped job's network (address, ports, namespace), in the
//! background but exactly: a job's next start waits for its teardown.

use super::{JobHandle, JobManager};
use crate::model::NetworkMode;

impl JobManager {
    /// Gives back a stopped job's address, ports and namespace. Idempotent.
    ///
    /// The teardown runs in the background: deleting a veth waits for an RCU grace
    /// period in the kernel (~30 ms), which an exit or a `rm` need not wait for. It is
    /// still exact: the address stays reserved and the next start of the job waits
    /// (`detached`) until it is done, and a daemon that dies meanwhile leaves a
    /// record-less or stopped endpoint that the next start-up frees.
    pub(super) async fn release_network(&self, handle: &JobHandle) {
        self.release_network_then(handle, true).await
    }

    /// As [`Self::release_network`], recording the release only if `persist` (see
    /// [`Self::update_then`]).
    pub(super) async fn release_network_then(&self, handle: &JobHandle, persist: bool) {
        if handle.snapshot().config.network != NetworkMode::Bridge {
            return;
        }
        if handle.snapshot().network.is_some()
            && let Err(e) = self.update_then(handle, persist, |j| j.network = None)
        {
            tracing::warn!(job = %handle.id, error = %e, "recording a job's released network");
        }
        let id = handle.id.clone();
        let seq = self
            .detach_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let network = self.network.clone();
        let detaching = self.detaching.clone();
        let mut pending = detaching.lock().unwrap_or_else(|p| p.into_inner());
        let previous = pending.remove(&id).map(|(_, task)| task);
        let task = tokio::spawn({
            let detaching = self.detaching.clone();
            let id = id.clone();
            async move {
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                if let Err(e) = network.detach(&id).await {
                    tracing::warn!(job = %id, error = %e, "releasing a job's network");
                }
                let mut pending = detaching.lock().unwrap_or_else(|p| p.into_inner());
                if pending.get(&id).is_some_and(|(s, _)| *s == seq) {
                    pending.remove(&id);
                }
            }
        });
        pending.insert(id, (seq, task));
    }

    /// Waits for the network teardown of job `id`, if one is under way.
    pub(super) async fn detached(&self, id: &str) {
        let task = self
            .detaching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some((_, task)) = task {
            let _ = task.await;
        }
    }

    /// Waits until every network teardown under way has finished (tests, shutdown).
    pub async fn all_detached(&self) {
        let ids: Vec<String> = self
            .detaching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.detached(&id).await;
        }
    }
}
