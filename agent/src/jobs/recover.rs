//! Recovery after a (re)start of the daemon: records are loaded, running jobs
//! re-adopted, ended ones recorded, interrupted removals finished, leftovers of
//! starts the daemon did not see through cleared.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{JobError, JobHandle, JobManager, record};
use crate::model::JobState;

impl JobManager {
    /// Loads records from disk after a (re)start: re-adopts running jobs whose
    /// shim is alive, records the exit of those that ended meanwhile, and finishes
    /// interrupted removals.
    pub(super) async fn recover(self: &Arc<Self>) {
        let records = record::load_all(&self.paths.jobs);
        for job in records {
            let handle = JobHandle::new(job.clone());
            self.lock_jobs().insert(job.id.clone(), handle.clone());
            match job.state {
                JobState::Running => self.monitor(handle),
                JobState::Removing => {
                    if let Err(e) = self.remove(&handle, true).await {
                        tracing::error!(job = %job.id, error = %e, "finishing an interrupted removal");
                    }
                }
                JobState::Created | JobState::Exited if self.adopt_if_running(&handle).await => {}
                JobState::Exited => {
                    self.clear_leftovers(&job.id).await;
                    // The previous daemon recorded the exit but died (or handed over)
                    // before it could finish: `--rm` waiters are still waiting.
                    if job.config.auto_remove {
                        if let Err(e) = self.remove(&handle, true).await {
                            tracing::error!(job = %job.id, error = %e, "auto-removing a job that exited before the restart");
                        }
                        continue;
                    }
                    self.release_network(&handle).await;
                    let policy = job.config.restart.policy;
                    // Docker's rule: `always` comes back with the daemon even after a stop.
                    let always = policy == crate::model::RestartPolicyName::Always;
                    if always && job.manually_stopped {
                        let _ = self.update(&handle, |j| j.manually_stopped = false);
                    }
                    if job.restart_at.is_some() || (always && !job.config.auto_remove) {
                        self.schedule_restart(handle, Duration::ZERO);
                    }
                }
                JobState::Created => {
                    self.clear_leftovers(&job.id).await;
                    self.release_network(&handle).await;
                }
                JobState::Removed => {}
            }
        }
    }

    /// A daemon killed between starting a container and recording it leaves a
    /// running shim under a created/exited record: take it over as running.
    pub(super) async fn adopt_if_running(self: &Arc<Self>, handle: &Arc<JobHandle>) -> bool {
        let dir = self.paths.job_dir(&handle.id);
        let Ok(client) = runtime::shim::ShimClient::connect(&dir).await else {
            return false;
        };
        let Ok(state) = client.state().await else {
            return false;
        };
        if state.status != runtime::shim::Status::Running {
            return false;
        }
        tracing::warn!(job = %handle.id, pid = state.pid, "found the job running under a record that says otherwise; adopting it");
        if let Err(e) = self.update(handle, |j| {
            j.state = JobState::Running;
            j.pid = Some(state.pid);
            j.started_at.get_or_insert_with(Utc::now);
            j.exit = None;
        }) {
            tracing::error!(job = %handle.id, error = %e, "recording an adopted job");
        }
        self.monitor(handle.clone());
        true
    }

    /// For a job that is not running: a rootfs still mounted, or container state
    /// left by a start the daemon did not see through, is removed.
    pub(super) async fn clear_leftovers(&self, id: &str) {
        let dir = self.paths.job_dir(id);
        let containers = self.paths.containers.clone();
        let id = id.to_string();
        let result = tokio::task::spawn_blocking(move || {
            if let Err(e) = runtime::shim::wait_shim_gone(&dir, Duration::from_secs(10)) {
                tracing::warn!(job = %id, error = %e, "a shim is still running for a stopped job");
            }
            record::unmount_rootfs(&dir)?;
            runtime::shim::cleanup(&containers, &id)?;
            Ok::<_, JobError>(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "clearing what a stopped job left"),
            Err(e) => tracing::warn!(error = %e, "clearing what a stopped job left"),
        }
    }
}
