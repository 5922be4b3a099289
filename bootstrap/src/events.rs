//! What the bootstrap tells its user: one event per step change,
//! `{step, action, state, data, error, ts}`, as JSON lines (`--json`) or as human
//! lines, with a spinner while a step runs on a terminal.

use std::io::{IsTerminal, Write};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Start,
    Done,
    Skipped,
    Error,
}

/// One line of `--json`. Every field is always there (`data` and `error` may be
/// null), so a script can read any event the same way.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub step: String,
    pub action: String,
    pub state: State,
    /// What the step found or did (`summary` in a few words, and details); for an
    /// error, the hosts involved.
    pub data: serde_json::Value,
    pub error: Option<String>,
    pub ts: chrono::DateTime<chrono::Utc>,
}

/// Where events go: the user's terminal or pipe ([`Reporter`]), or a test's list.
pub trait Sink {
    fn emit(&mut self, e: &Event);
    /// The run's last words, for a human (nothing in `--json`: the events say it).
    fn finish(&mut self, line: &str);
}

pub enum Reporter {
    Json,
    Human {
        spinner: Option<indicatif::ProgressBar>,
        tty: bool,
    },
}

impl Reporter {
    pub fn new(json: bool, no_spinner: bool) -> Reporter {
        if json {
            Reporter::Json
        } else {
            Reporter::Human {
                spinner: None,
                tty: std::io::stderr().is_terminal() && !no_spinner,
            }
        }
    }
}

impl Sink for Reporter {
    fn finish(&mut self, line: &str) {
        if let Reporter::Human { spinner, .. } = self {
            if let Some(s) = spinner.take() {
                s.finish_and_clear();
            }
            println!("{line}");
        }
    }

    fn emit(&mut self, e: &Event) {
        match self {
            Reporter::Json => {
                if let Ok(line) = serde_json::to_string(e) {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Reporter::Human { spinner, tty } => {
                if let Some(s) = spinner.take() {
                    s.finish_and_clear();
                }
                let what = format!("{} ({})", e.step, e.action);
                match e.state {
                    // The spinner is on stderr (indicatif's default) so stdout stays
                    // the record of what happened.
                    State::Start if *tty => {
                        let s = indicatif::ProgressBar::new_spinner();
                        s.set_message(what);
                        s.enable_steady_tick(std::time::Duration::from_millis(120));
                        *spinner = Some(s);
                    }
                    State::Start => println!("{} start  {what}", e.ts.format("%H:%M:%S")),
                    State::Done => println!(
                        "{} done   {what}{}",
                        e.ts.format("%H:%M:%S"),
                        summary(&e.data)
                    ),
                    State::Skipped => println!(
                        "{} skip   {what}{}",
                        e.ts.format("%H:%M:%S"),
                        summary(&e.data)
                    ),
                    State::Error => println!(
                        "{} ERROR  {what}: {}",
                        e.ts.format("%H:%M:%S"),
                        e.error.as_deref().unwrap_or("failed")
                    ),
                }
            }
        }
    }
}

/// A step's data in a few words: its `summary` field, if it has one.
fn summary(data: &serde_json::Value) -> String {
    data.get("summary")
        .and_then(|s| s.as_str())
        .map(|s| format!(": {s}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_has_every_field() {
        let e = Event {
            step: "etcd".into(),
            action: "etcd".into(),
            state: State::Start,
            data: serde_json::Value::Null,
            error: None,
            ts: chrono::Utc::now(),
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        for k in ["step", "action", "state", "data", "error", "ts"] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(v["state"], "start");
        assert!(chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap()).is_ok());
    }
}
