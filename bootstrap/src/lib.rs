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

pub mod events;
pub mod manifest;
mod steps;

use std::net::Ipv4Addr;
use std::time::Duration;

use events::{Event, Reporter, State};
use manifest::Manifest;

#[derive(clap::Args, Debug, Clone)]
pub struct BootstrapArgs {
    /// The hosts' addresses (comma-separated), each running flynn-host with the same token.
    #[arg(long, value_delimiter = ',', required = true)]
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
}

/// Runs the bootstrap; the process's exit code (0: the cluster is up).
pub async fn run(args: BootstrapArgs) -> i32 {
    let mut reporter = Reporter::new(args.json);
    let text = match &args.manifest {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "flynn-host bootstrap: reading the manifest {}: {e}",
                    p.display()
                );
                return 2;
            }
        },
        None => manifest::BUILT_IN.to_string(),
    };
    let manifest = match Manifest::parse(&text) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("flynn-host bootstrap: {e}");
            return 2;
        }
    };
    let mut peers = args.peers.clone();
    peers.sort();
    peers.dedup();
    if args.min_hosts.is_some_and(|n| n == 0 || n > peers.len()) {
        eprintln!(
            "flynn-host bootstrap: --min-hosts must be between 1 and the {} peers",
            peers.len()
        );
        return 2;
    }
    let mut run = steps::Run::new(
        peers,
        args.port,
        args.token.trim().to_string(),
        args.min_hosts,
        Duration::from_secs(args.timeout.max(1)),
    );
    let mut skipped_all = true;
    for step in &manifest.steps {
        let event = |state, data, error| Event {
            step: step.id.clone(),
            action: step.action.clone(),
            state,
            data,
            error,
            ts: chrono::Utc::now(),
        };
        reporter.emit(&event(State::Start, serde_json::Value::Null, None));
        match run.step(step).await {
            Ok(steps::Outcome::Done(data)) => {
                skipped_all = false;
                reporter.emit(&event(State::Done, data, None));
                run.record(&step.id).await;
            }
            Ok(steps::Outcome::Skipped(data)) => {
                reporter.emit(&event(State::Skipped, data, None));
                run.record(&step.id).await;
            }
            Err(e) => {
                reporter.emit(&event(State::Error, serde_json::Value::Null, Some(e)));
                return 1;
            }
        }
    }
    if !args.json {
        if skipped_all {
            println!("the cluster was already up: nothing was started");
        } else {
            println!("the cluster is up: {}", run.summary());
        }
    }
    0
}
