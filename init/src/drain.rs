//! Before a clean power-off or reboot, a host of a cluster moves its jobs to the
//! other hosts (`flynn-host cluster drain --until-restart`), so that its apps keep
//! serving while it stops; its agent ends that drain when it starts again. A
//! SIGKILLed or crashed host cannot do this: the scheduler replaces its jobs once
//! its lease lapses.
//!
//! The drain is the CLI's, run as a child process against the daemon's socket, so
//! that init and `flynn-host cluster drain` share one implementation (the
//! scheduler's leader, its TLS, the wait until the host is empty).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::say;

/// How long the jobs get to start elsewhere. A power-off should not wait for a
/// cluster that has no room: past this the host stops with its jobs.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45);

/// Drains this host when it is in a cluster and another host can take its jobs.
/// Best effort: whatever goes wrong is said, and the stop goes on.
pub fn before_stop(state_dir: &Path, socket: &str, token: Option<&str>) {
    // `cluster.json`: the grid this host joined (written by the daemon's join).
    if !state_dir.join("cluster.json").exists() {
        return;
    }
    say(format!(
        "draining: moving this host's jobs to the other hosts first (up to {} s)",
        DRAIN_TIMEOUT.as_secs()
    ));
    let exe = std::env::current_exe().unwrap_or_else(|_| "/usr/bin/flynn-host".into());
    let mut cmd = Command::new(exe);
    // The scheduler wants the cluster's token (the daemon's socket does not).
    if let Some(t) = token {
        cmd.env("FLYNN_TOKEN", t);
    }
    let child = cmd
        .args(["--host", &format!("unix://{socket}"), "cluster", "drain"])
        .args(["--until-restart", "--timeout"])
        .arg(DRAIN_TIMEOUT.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            say(format!("not drained: cannot run the drain: {e}"));
            return;
        }
    };
    // The CLI's own timeout covers the wait for the host to empty; this one covers
    // a scheduler or etcd that does not answer at all.
    let deadline = Instant::now() + DRAIN_TIMEOUT + Duration::from_secs(15);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                say(format!("not drained: waiting for the drain: {e}"));
                return;
            }
        }
    };
    let mut out = String::new();
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let _ = pipe.take(4096).read_to_string(&mut out);
    }
    let said = out.trim().lines().last().unwrap_or("").to_string();
    match status {
        Some(s) if s.success() => say(format!("drained: {said}")),
        Some(_) => say(format!("not drained ({said}); stopping with the jobs here")),
        None => say(format!(
            "not drained: the drain did not end within {} s; stopping with the jobs here",
            (DRAIN_TIMEOUT + Duration::from_secs(15)).as_secs()
        )),
    }
}
