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

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub step: String,
    pub action: String,
    pub state: State,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ts: chrono::DateTime<chrono::Utc>,
}

pub enum Reporter {
    Json,
    Human {
        spinner: Option<indicatif::ProgressBar>,
        tty: bool,
    },
}

impl Reporter {
    pub fn new(json: bool) -> Reporter {
        if json {
            Reporter::Json
        } else {
            Reporter::Human {
                spinner: None,
                tty: std::io::stderr().is_terminal(),
            }
        }
    }

    pub fn emit(&mut self, e: &Event) {
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
