//! The bootstrap: from hosts that share a token to a cluster, by one command
//! (`flynn-host bootstrap --peers IP,IP,IP`) run from any machine that reaches their
//! APIs. It runs a manifest of steps (`manifest.rs`), reporting each (`events.rs`);
//! the steps (`steps.rs`) talk to the agents only through their HTTP APIs
//! (`/host/status`, `/host/preflight`, `/host/probe/*`, `/cluster`, `/cluster/etcd`,
//! `/cluster/join`) and, once etcd runs, record the cluster under `/flynn/cluster`
//! and `/flynn/bootstrap` through `discovery`.
//!
//! **Resumable and idempotent**, which Flynn's bootstrap never was: every step looks
//! at the real state first and reports `skipped` when it already holds, and every
//! request it makes is idempotent on the agent's side. A run killed at any point is
//! completed by the next; a run on a finished cluster starts nothing and says so.

pub mod error;
pub mod events;
mod layer1;
pub mod manifest;
mod steps;

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

pub use error::{InputError, StepError};
use events::{Event, Reporter, Sink, State};
use manifest::{Manifest, Step};

#[derive(clap::Args, Debug, Clone)]
pub struct BootstrapArgs {
    /// The hosts' addresses (comma-separated), each running flynn-host with the same token.
    #[arg(long, value_delimiter = ',', required = true, value_name = "IP,IP,...", value_parser = parse_peer)]
    pub peers: Vec<Ipv4Addr>,
    /// The agents' API port.
    #[arg(long, default_value_t = 1113)]
    pub port: u16,
    /// The hosts' shared API token.
    #[arg(long, env = "FLYNN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Go on once this many hosts answer [default: all of them].
    #[arg(long)]
    pub min_hosts: Option<usize>,
    /// Seconds each step may wait (for hosts to answer, etcd to be healthy, hosts to join).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// One JSON event a line: {step, action, state, data, error, ts}.
    #[arg(long)]
    pub json: bool,
    /// A manifest of steps to run instead of the built-in one.
    #[arg(long)]
    pub manifest: Option<std::path::PathBuf>,
    /// Plain lines even on a terminal: the appliance's init runs the bootstrap with
    /// the machine's consoles as its output, which are logs.
    #[arg(skip)]
    pub no_spinner: bool,
}

/// A peer's address, refused with what to type instead.
fn parse_peer(s: &str) -> Result<Ipv4Addr, String> {
    s.trim().parse().map_err(|_| {
        format!(
            "{s:?} is not an IPv4 address: give the hosts' addresses, comma-separated, e.g. --peers 10.0.0.11,10.0.0.12,10.0.0.13 (names are not resolved)"
        )
    })
}

/// What a step found: it acted (`Done`) or the state already held (`Skipped`); the
/// data goes into the event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done(serde_json::Value),
    Skipped(serde_json::Value),
}

/// Carries out steps. The real one talks to the agents (`steps::Run`); the
/// executor knows only this, so its order, stop and resume rules are tested alone.
pub trait Runner {
    fn step(&mut self, step: &Step) -> impl Future<Output = Result<Outcome, StepError>> + Send;
    /// Notes a finished step (once there is somewhere to note it: etcd).
    fn record(&mut self, step: &Step) -> impl Future<Output = ()> + Send;
    /// The cluster in a line, for the end of a run.
    fn summary(&self) -> String;
}

/// How a run ended that reached its last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Some step acted.
    Built,
    /// Every step found its state holding: nothing was started.
    AlreadyUp,
}

/// Runs the steps in order, each reported as it starts and ends; the first error
/// stops the run (later steps never start: a failed preflight starts nothing).
pub async fn execute<R: Runner, S: Sink>(
    manifest: &Manifest,
    runner: &mut R,
    sink: &mut S,
) -> Result<Finished, StepError> {
    let mut acted = false;
    for step in &manifest.steps {
        let event = |state, data, error| Event {
            step: step.id.clone(),
            action: step.action.name().to_string(),
            state,
            data,
            error,
            ts: chrono::Utc::now(),
        };
        sink.emit(&event(State::Start, serde_json::Value::Null, None));
        match runner.step(step).await {
            Ok(Outcome::Done(data)) => {
                acted = true;
                sink.emit(&event(State::Done, data, None));
                runner.record(step).await;
            }
            Ok(Outcome::Skipped(data)) => {
                sink.emit(&event(State::Skipped, data, None));
                runner.record(step).await;
            }
            Err(e) => {
                sink.emit(&event(State::Error, e.data(), Some(e.to_string())));
                return Err(e);
            }
        }
    }
    Ok(if acted {
        Finished::Built
    } else {
        Finished::AlreadyUp
    })
}

/// The manifest and the runner the arguments ask for.
fn prepare(args: &BootstrapArgs) -> Result<(Manifest, steps::Run), InputError> {
    let text = match &args.manifest {
        Some(p) => std::fs::read_to_string(p).map_err(|source| InputError::ReadManifest {
            path: p.display().to_string(),
            source,
        })?,
        None => manifest::BUILT_IN.to_string(),
    };
    let manifest = Manifest::parse(&text)?;
    let mut peers = args.peers.clone();
    peers.sort();
    peers.dedup();
    if peers.is_empty() {
        return Err(InputError::NoPeers);
    }
    if args.min_hosts.is_some_and(|n| n == 0 || n > peers.len()) {
        return Err(InputError::MinHosts(peers.len()));
    }
    let token = args.token.trim().to_string();
    if token.is_empty() {
        return Err(InputError::NoToken);
    }
    let run = steps::Run::new(
        peers,
        args.port,
        token,
        args.min_hosts,
        Duration::from_secs(args.timeout.max(1)),
    );
    Ok((manifest, run))
}

/// Runs the bootstrap; the process's exit code (0: the cluster is up, 1: a step
/// failed, 2: the input is wrong).
pub async fn run(args: BootstrapArgs) -> i32 {
    let (manifest, mut runner) = match prepare(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("flynn-host bootstrap: {e}");
            return 2;
        }
    };
    let mut reporter = Reporter::new(args.json, args.no_spinner);
    match execute(&manifest, &mut runner, &mut reporter).await {
        Ok(Finished::AlreadyUp) => {
            reporter.finish(&format!(
                "the cluster was already up: nothing was started; {}",
                runner.summary()
            ));
            0
        }
        Ok(Finished::Built) => {
            reporter.finish(&format!("the cluster is up: {}", runner.summary()));
            0
        }
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Steps whose outcome a test sets: `done`, `skip` or `fail` by step id, as a
    /// real agent would find it; it notes the steps it ran and recorded.
    #[derive(Default)]
    struct Fake {
        outcome: HashMap<String, &'static str>,
        ran: Vec<String>,
        recorded: Vec<String>,
    }

    impl Runner for Fake {
        async fn step(&mut self, step: &Step) -> Result<Outcome, StepError> {
            self.ran.push(step.id.clone());
            let data = serde_json::json!({"summary": format!("{} ok", step.id)});
            match self.outcome.get(&step.id).copied().unwrap_or("done") {
                "skip" => Ok(Outcome::Skipped(data)),
                "fail" => Err(StepError::Preflight(vec![error::PreflightFailure::Udp {
                    from: Ipv4Addr::new(192, 0, 2, 1),
                    to: Ipv4Addr::new(192, 0, 2, 2),
                    port: 4789,
                }])),
                _ => Ok(Outcome::Done(data)),
            }
        }
        async fn record(&mut self, step: &Step) {
            self.recorded.push(step.id.clone());
        }
        fn summary(&self) -> String {
            "fake".into()
        }
    }

    #[derive(Default)]
    struct Events(Vec<serde_json::Value>);

    impl Sink for Events {
        fn emit(&mut self, e: &Event) {
            // Through the wire form, as a --json reader sees it.
            let line = serde_json::to_string(e).unwrap();
            self.0.push(serde_json::from_str(&line).unwrap());
        }
        fn finish(&mut self, _: &str) {}
    }

    impl Events {
        fn states(&self) -> Vec<String> {
            self.0
                .iter()
                .map(|e| {
                    format!(
                        "{}:{}",
                        e["step"].as_str().unwrap(),
                        e["state"].as_str().unwrap()
                    )
                })
                .collect()
        }
    }

    fn built_in() -> Manifest {
        Manifest::parse(manifest::BUILT_IN).unwrap()
    }

    #[tokio::test]
    async fn steps_run_in_order_each_started_then_ended() {
        let mut fake = Fake::default();
        let mut events = Events::default();
        let r = execute(&built_in(), &mut fake, &mut events).await.unwrap();
        assert_eq!(r, Finished::Built);
        assert_eq!(
            events.states(),
            [
                "online-hosts:start",
                "online-hosts:done",
                "tls:start",
                "tls:done",
                "preflight:start",
                "preflight:done",
                "etcd:start",
                "etcd:done",
                "join:start",
                "join:done",
                "scheduler:start",
                "scheduler:done",
                "controller:start",
                "controller:done",
                "router:start",
                "router:done",
                "logaggregator:start",
                "logaggregator:done",
                "gitreceive:start",
                "gitreceive:done",
                "inception:start",
                "inception:done"
            ]
        );
        assert_eq!(fake.recorded, fake.ran);
        for e in &events.0 {
            for k in ["step", "action", "state", "data", "error", "ts"] {
                assert!(e.get(k).is_some(), "{k} missing: {e}");
            }
        }
        assert_eq!(events.0[1]["data"]["summary"], "online-hosts ok");
    }

    #[tokio::test]
    async fn a_failed_step_stops_the_run_and_says_why() {
        let mut fake = Fake::default();
        fake.outcome.insert("preflight".into(), "fail");
        let mut events = Events::default();
        let e = execute(&built_in(), &mut fake, &mut events)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("nothing was started: UDP 4789 from 192.0.2.1 to 192.0.2.2"),
            "{e}"
        );
        assert_eq!(
            fake.ran,
            ["online-hosts", "tls", "preflight"],
            "nothing after a failure"
        );
        assert_eq!(
            fake.recorded,
            ["online-hosts", "tls"],
            "a failed step is not recorded"
        );
        let last = events.0.last().unwrap();
        assert_eq!(last["state"], "error");
        assert_eq!(last["data"]["failures"][0]["kind"], "udp");
        assert_eq!(last["data"]["failures"][0]["from"], "192.0.2.1");
        assert!(
            last["error"]
                .as_str()
                .unwrap()
                .contains("open UDP port 4789")
        );
    }

    #[tokio::test]
    async fn a_rerun_after_a_kill_resumes_and_a_finished_cluster_starts_nothing() {
        // Killed in join: what was done is found holding, the rest is done.
        let mut fake = Fake::default();
        for s in ["online-hosts", "preflight", "etcd"] {
            fake.outcome.insert(s.into(), "skip");
        }
        let mut events = Events::default();
        let r = execute(&built_in(), &mut fake, &mut events).await.unwrap();
        assert_eq!(r, Finished::Built);
        assert!(events.states().contains(&"etcd:skipped".to_string()));
        assert!(events.states().contains(&"join:done".to_string()));
        // Everything holds: nothing started, and the run says so.
        let mut fake = Fake::default();
        for s in &built_in().steps {
            fake.outcome.insert(s.id.clone(), "skip");
        }
        let r = execute(&built_in(), &mut fake, &mut Events::default())
            .await
            .unwrap();
        assert_eq!(r, Finished::AlreadyUp);
    }

    #[tokio::test]
    async fn a_manifest_file_chooses_the_steps_and_their_order() {
        let m = Manifest::parse(
            r#"{"steps":[{"id":"hosts","action":"online-hosts"},{"id":"store","action":"etcd","members":1}]}"#,
        )
        .unwrap();
        let mut fake = Fake::default();
        let mut events = Events::default();
        execute(&m, &mut fake, &mut events).await.unwrap();
        assert_eq!(fake.ran, ["hosts", "store"]);
        assert_eq!(events.0[2]["action"], "etcd");
        assert_eq!(events.0[2]["step"], "store");
    }

    #[test]
    fn bad_input_says_what_to_do() {
        let args = |peers: Vec<Ipv4Addr>,
                    min: Option<usize>,
                    token: &str,
                    manifest: Option<&str>| BootstrapArgs {
            peers,
            port: 1113,
            token: token.into(),
            min_hosts: min,
            timeout: 1,
            json: false,
            manifest: manifest.map(Into::into),
            no_spinner: false,
        };
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let e = prepare(&args(vec![a], Some(2), "t", None)).err().unwrap();
        assert!(
            e.to_string()
                .contains("--min-hosts must be between 1 and the 1 peers"),
            "{e}"
        );
        let e = prepare(&args(vec![a], None, " ", None)).err().unwrap();
        assert!(matches!(e, InputError::NoToken));
        let e = prepare(&args(vec![], None, "t", None)).err().unwrap();
        assert!(matches!(e, InputError::NoPeers));
        let e = prepare(&args(vec![a], None, "t", Some("/nonexistent/m.json")))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("reading the manifest /nonexistent/m.json"),
            "{e}"
        );
        assert!(prepare(&args(vec![a, a], Some(1), "t", None)).is_ok());
        assert_eq!(parse_peer(" 10.0.0.1"), Ok(a));
        assert!(
            parse_peer("host-1")
                .unwrap_err()
                .contains("not an IPv4 address")
        );
    }
}
