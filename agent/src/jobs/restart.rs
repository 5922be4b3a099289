//! Restart policies: whether an exited job starts again, and after how long (the
//! policies are parsed and checked in [`crate::model::restart`]).
//!
//! The delay doubles from 100 ms up to a minute while the job keeps exiting
//! quickly, and goes back to 100 ms once a run has lasted 10 seconds (Docker's
//! rules), so a crash loop costs little and a flaky service comes back fast.

use std::time::Duration;

use crate::model::{Job, RestartPolicyName};

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long resets the delay.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// Whether the policy starts this just-exited job again.
pub fn should_restart(job: &Job) -> bool {
    let Some(exit) = &job.exit else {
        return false;
    };
    if job.config.auto_remove || job.manually_stopped {
        return false;
    }
    let restart = &job.config.restart;
    match restart.policy {
        RestartPolicyName::No => false,
        RestartPolicyName::Always | RestartPolicyName::UnlessStopped => true,
        RestartPolicyName::OnFailure => {
            exit.exit_code != 0
                && (restart.max_retries == 0 || job.restart_count < restart.max_retries)
        }
    }
}

/// The delay before the next restart of one job.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_DELAY }
    }
}

impl Backoff {
    /// The delay to wait now, given how long the run that just ended lasted.
    pub fn after_run(&mut self, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.next = FIRST_DELAY;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        delay
    }

    pub fn reset(&mut self) {
        self.next = FIRST_DELAY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets_after_a_healthy_run() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(5);
        let delays: Vec<u128> = (0..4).map(|_| b.after_run(quick).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800]);
        for _ in 0..20 {
            b.after_run(quick);
        }
        assert_eq!(b.after_run(quick), MAX_DELAY);
        assert_eq!(b.after_run(Duration::from_secs(11)), FIRST_DELAY);
    }
}
