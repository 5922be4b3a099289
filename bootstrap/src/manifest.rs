//! The manifest: ordered steps, each an id and an action (and the action's
//! parameters). The built-in one is `bootstrap/manifest.json`; `--manifest FILE`
//! replaces it (to skip a step, reorder, or add the next layer's steps).
//!
//! Adding an action: a variant of [`Action`], its name and parameters in
//! [`Action::ALL`] and [`Action::params`], and its arm in the runner's `step`
//! (the compiler points at it: the match is exhaustive).

use serde::Deserialize;

pub const BUILT_IN: &str = include_str!("../manifest.json");

/// What the executor knows how to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    OnlineHosts,
    Tls,
    Preflight,
    Etcd,
    Join,
    Scheduler,
    Controller,
    Router,
    LogAggregator,
    GitReceive,
    Inception,
}

impl Action {
    pub const ALL: &[(Action, &str)] = &[
        (Action::OnlineHosts, "online-hosts"),
        (Action::Tls, "tls"),
        (Action::Preflight, "preflight"),
        (Action::Etcd, "etcd"),
        (Action::Join, "join"),
        (Action::Scheduler, "scheduler"),
        (Action::Controller, "controller"),
        (Action::Router, "router"),
        (Action::LogAggregator, "logaggregator"),
        (Action::GitReceive, "gitreceive"),
        (Action::Inception, "inception"),
    ];

    pub fn name(self) -> &'static str {
        Action::ALL
            .iter()
            .find(|(a, _)| *a == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(a, _)| *a)
    }

    /// The parameters a step of this action may have (anything else is a typo the
    /// user should hear of, not a setting silently ignored).
    fn params(self) -> &'static [&'static str] {
        match self {
            Action::Etcd => &["members"],
            Action::Scheduler | Action::LogAggregator | Action::GitReceive => {
                &["instances", "image"]
            }
            Action::Controller => &["instances", "image", "domain"],
            Action::Router => &["image"],
            Action::OnlineHosts
            | Action::Tls
            | Action::Preflight
            | Action::Join
            | Action::Inception => &[],
        }
    }

    fn names() -> String {
        Action::ALL
            .iter()
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    steps: Vec<RawStep>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawStep {
    id: String,
    action: String,
    #[serde(flatten)]
    params: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub action: Action,
    /// The action's parameters (e.g. `members` for etcd), checked by [`Manifest::parse`].
    pub params: serde_json::Map<String, serde_json::Value>,
}

impl Step {
    pub fn param_u64(&self, name: &str) -> Option<u64> {
        self.params.get(name).and_then(serde_json::Value::as_u64)
    }

    pub fn param_str(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(serde_json::Value::as_str)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "the manifest is not valid JSON of {{\"steps\": [{{\"id\": ..., \"action\": ...}}, ...]}}: {0}"
    )]
    Parse(String),
    #[error(
        "step {step}: unknown action {action:?}; the actions are: {}",
        Action::names()
    )]
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
        let raw: RawManifest =
            serde_json::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        if raw.steps.is_empty() {
            return Err(ManifestError::Empty);
        }
        let mut seen = std::collections::HashSet::new();
        let mut steps = Vec::with_capacity(raw.steps.len());
        for s in raw.steps {
            let param = |reason: String| ManifestError::Param {
                step: s.id.clone(),
                reason,
            };
            if s.id.trim().is_empty() {
                return Err(param("the id is empty".into()));
            }
            let Some(action) = Action::from_name(&s.action) else {
                return Err(ManifestError::UnknownAction {
                    step: s.id,
                    action: s.action,
                });
            };
            if !seen.insert(s.id.clone()) {
                return Err(ManifestError::DuplicateId(s.id));
            }
            for k in s.params.keys() {
                if !action.params().contains(&k.as_str()) {
                    return Err(param(format!(
                        "{} takes no parameter {k:?}{}",
                        action.name(),
                        if action.params().is_empty() {
                            String::new()
                        } else {
                            format!(" (it takes: {})", action.params().join(", "))
                        }
                    )));
                }
            }
            if let Some(m) = s.params.get("members")
                && !m.as_u64().is_some_and(|n| [1, 3, 5].contains(&n))
            {
                return Err(param(
                    "members must be 1, 3 or 5 (an even count adds a failure, not safety)".into(),
                ));
            }
            if let Some(m) = s.params.get("instances")
                && !m.as_u64().is_some_and(|n| (1..=16).contains(&n))
            {
                return Err(param("instances must be between 1 and 16".into()));
            }
            if let Some(m) = s.params.get("image")
                && m.as_str().is_none_or(|i| i.trim().is_empty())
            {
                return Err(param("image must be an image reference".into()));
            }
            steps.push(Step {
                id: s.id,
                action,
                params: s.params,
            });
        }
        Ok(Manifest { steps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_manifest_is_layer_0_then_layer_1_in_order() {
        let m = Manifest::parse(BUILT_IN).unwrap();
        let ids: Vec<&str> = m.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "online-hosts",
                "tls",
                "preflight",
                "etcd",
                "join",
                "scheduler",
                "controller",
                "router",
                "logaggregator",
                "gitreceive",
                "inception"
            ]
        );
        for s in &m.steps {
            assert_eq!(s.action.name(), s.id);
        }
    }

    #[test]
    fn refuses_what_cannot_run() {
        assert!(matches!(Manifest::parse("{"), Err(ManifestError::Parse(_))));
        let e = Manifest::parse(r#"{"steps":[{"id":"a","action":"fly"}]}"#).unwrap_err();
        assert!(matches!(e, ManifestError::UnknownAction { .. }));
        assert!(
            e.to_string().contains("online-hosts, tls, preflight"),
            "{e}"
        );
        assert!(matches!(
            Manifest::parse(r#"{"steps":[{"id":"a","action":"etcd"},{"id":"a","action":"join"}]}"#),
            Err(ManifestError::DuplicateId(_))
        ));
        assert!(matches!(
            Manifest::parse(r#"{"steps":[]}"#),
            Err(ManifestError::Empty)
        ));
        assert!(matches!(
            Manifest::parse(r#"{"stepz":[]}"#),
            Err(ManifestError::Parse(_))
        ));
        assert!(matches!(
            Manifest::parse(r#"{"steps":[{"action":"etcd"}]}"#),
            Err(ManifestError::Parse(_))
        ));
        for bad in [
            r#"{"steps":[{"id":"e","action":"etcd","members":2}]}"#,
            r#"{"steps":[{"id":"e","action":"etcd","member":3}]}"#,
            r#"{"steps":[{"id":"j","action":"join","members":3}]}"#,
            r#"{"steps":[{"id":"s","action":"scheduler","instances":0}]}"#,
            r#"{"steps":[{"id":"s","action":"scheduler","image":""}]}"#,
            r#"{"steps":[{"id":" ","action":"join"}]}"#,
        ] {
            let e = Manifest::parse(bad).unwrap_err();
            assert!(matches!(e, ManifestError::Param { .. }), "{bad}: {e}");
        }
        let e = Manifest::parse(r#"{"steps":[{"id":"e","action":"etcd","member":3}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("it takes: members"), "{e}");
    }

    #[test]
    fn parameters_reach_the_step() {
        let one = Manifest::parse(
            r#"{"steps":[{"id":"e","action":"etcd","members":1},
                {"id":"s2","action":"scheduler","instances":3,"image":"me/host:1"}]}"#,
        )
        .unwrap();
        assert_eq!(one.steps[0].param_u64("members"), Some(1));
        assert_eq!(one.steps[1].action, Action::Scheduler);
        assert_eq!(one.steps[1].param_u64("instances"), Some(3));
        assert_eq!(one.steps[1].param_str("image"), Some("me/host:1"));
    }
}
