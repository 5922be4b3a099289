//! Restart policies: the CLI form and the checks of a job's policy.

use super::{RestartPolicy, RestartPolicyName};

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

/// Checks a job's policy against its other options (at create).
pub fn validate(policy: &RestartPolicy, auto_remove: bool) -> Result<(), String> {
    if auto_remove && !policy.is_no() {
        return Err(
            "conflicting options: a job cannot be both auto-removed and restarted".to_string(),
        );
    }
    if policy.max_retries > 0 && policy.policy != RestartPolicyName::OnFailure {
        return Err("max_retries goes only with the on-failure restart policy".to_string());
    }
    Ok(())
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
}
