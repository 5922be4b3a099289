//! The manifest: ordered steps, each an id and an action (and the action's
//! parameters). The built-in one is `bootstrap/manifest.json`; `--manifest FILE`
//! replaces it (to skip a step, reorder, or add the next layer's steps).

use serde::Deserialize;

pub const BUILT_IN: &str = include_str!("../manifest.json");

/// What the executor knows how to do.
pub const ACTIONS: &[&str] = &["online-hosts", "preflight", "etcd", "join", "scheduler"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    pub id: String,
    pub action: String,
    /// The action's parameters (e.g. `members` for etcd).
    #[serde(flatten)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON of {{\"steps\": [{{\"id\", \"action\"}}, ...]}}: {0}")]
    Parse(String),
    #[error("step {step}: unknown action {action:?}; the actions are: {}", ACTIONS.join(", "))]
    UnknownAction { step: String, action: String },
    #[error("two steps are called {0}: step ids must differ (a re-run finds steps by id)")]
    DuplicateId(String),
    #[error("the manifest has no steps")]
    Empty,
    #[error("step {step}: {reason}")]
    Param { step: String, reason: String },
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            serde_json::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        if m.steps.is_empty() {
            return Err(ManifestError::Empty);
        }
        let mut seen = std::collections::HashSet::new();
        for s in &m.steps {
            if !ACTIONS.contains(&s.action.as_str()) {
                return Err(ManifestError::UnknownAction {
                    step: s.id.clone(),
                    action: s.action.clone(),
                });
            }
            if !seen.insert(s.id.as_str()) {
                return Err(ManifestError::DuplicateId(s.id.clone()));
            }
            if let Some(m) = s.params.get("members") {
                let ok = m.as_u64().is_some_and(|n| [1, 3, 5].contains(&n));
                if !ok {
                    return Err(ManifestError::Param {
                        step: s.id.clone(),
                        reason: "members must be 1, 3 or 5".into(),
                    });
                }
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_what_cannot_run() {
        let m = Manifest::parse(BUILT_IN).unwrap();
        let ids: Vec<&str> = m.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            ["online-hosts", "preflight", "etcd", "join", "scheduler"]
        );
        assert!(matches!(Manifest::parse("{"), Err(ManifestError::Parse(_))));
        assert!(matches!(
            Manifest::parse(r#"{"steps":[{"id":"a","action":"fly"}]}"#),
            Err(ManifestError::UnknownAction { .. })
        ));
        assert!(matches!(
            Manifest::parse(r#"{"steps":[{"id":"a","action":"etcd"},{"id":"a","action":"join"}]}"#),
            Err(ManifestError::DuplicateId(_))
        ));
        assert!(matches!(
            Manifest::parse(r#"{"steps":[]}"#),
            Err(ManifestError::Empty)
        ));
        assert!(matches!(
            Manifest::parse(r#"{"steps":[{"id":"e","action":"etcd","members":2}]}"#),
            Err(ManifestError::Param { .. })
        ));
        let one = Manifest::parse(r#"{"steps":[{"id":"e","action":"etcd","members":1}]}"#).unwrap();
        assert_eq!(one.steps[0].params["members"], 1);
    }
}
