//! Restart policies: whether an exited job starts again, and after how long.
//!
//! The delay doubles from 100 ms up to a minute while the job keeps exiting
//! quickly, and goes back to 100 ms once a run has lasted 10 seconds (Docker's
//! rules), so a crash loop costs little and a flaky service comes back fast.

use std::time::Duration;

use super::JobError;
use crate::model::{Job, RestartPolicy, RestartPolicyName};

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long resets the delay.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// Parses the CLI form: `no`, `always`, `unless-stopped`, `on-failure[:N]`.
pub fn parse(text: &str) -> Result<RestartPolicy, String> {
    let (name, count) = match text.split_once(':') {
        Some((name, count)) => (name, Some(count)),
        None => (text, None),
    };
    let policy = match name {
        "no" => RestartPolicyName::No,
        "on-failure" => RestartPolicyName::OnFailure,
        "always" => RestartPolicyName::Always,
        "unless-stopped" => RestartPolicyName::UnlessStopped,
        other => {
            return Err(format!(
                "invalid restart policy {other:?}: use no, on-failure[:N], always or unless-stopped"
            ));
        }
    };
    let max_retries = match (policy, count) {
        (_, None) => 0,
        (RestartPolicyName::OnFailure, Some(n)) => n
            .parse::<u32>()
            .map_err(|_| format!("invalid maximum retry count {n:?}: give a whole number"))?,
        (_, Some(_)) => {
            return Err(format!(
                "a maximum retry count goes only with on-failure, not {name}"
            ));
        }
    };
    Ok(RestartPolicy {
        policy,
        max_retries,
    })
}

pub fn validate(policy: &RestartPolicy, auto_remove: bool) -> Result<(), JobError> {
    if auto_remove && !policy.is_no() {
        return Err(JobError::BadRequest(
            "conflicting options: a job cannot be both auto-removed and restarted".to_string(),
        ));
    }
    if policy.max_retries > 0 && policy.policy != RestartPolicyName::OnFailure {
        return Err(JobError::BadRequest(
            "max_retries goes only with the on-failure restart policy".to_string(),
        ));
    }
    Ok(())
}

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
    fn policies_parse_like_docker() {
        assert_eq!(parse("no").unwrap(), RestartPolicy::default());
        assert_eq!(
            parse("on-failure:3").unwrap(),
            RestartPolicy {
                policy: RestartPolicyName::OnFailure,
                max_retries: 3
            }
        );
        assert_eq!(parse("always").unwrap().policy, RestartPolicyName::Always);
        assert_eq!(
            parse("unless-stopped").unwrap().policy,
            RestartPolicyName::UnlessStopped
        );
        assert!(parse("sometimes").is_err());
        assert!(parse("always:3").is_err());
        assert!(parse("on-failure:x").is_err());
    }

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
