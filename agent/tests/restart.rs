//! Restart policies: jobs that exit come back with their identity and log,
//! after a delay that doubles while they keep failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::time::Duration;

use common::{Daemon, Events};

fn time_of(event: &serde_json::Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(event["time"].as_str().unwrap()).unwrap()
}

#[test]
fn always_restarts_with_doubling_back_off_keeping_id_and_log() {
    let d = Daemon::start();
    d.import_busybox();
    let events = Events::subscribe(&d);
    let id = d.run_detached(&[
        "--restart",
        "always",
        "busybox",
        "sh",
        "-c",
        "echo run; exit 1",
    ]);
    let starts = events.wait_for(&id, "start", 5, Duration::from_secs(30));
    let exits = events.of(&id, "exit");
    // The delay between an exit and the next start: 100, 200, 400, 800 ms (at least).
    for (i, want_ms) in [100i64, 200, 400, 800].iter().enumerate() {
        let gap = (time_of(&starts[i + 1]) - time_of(&exits[i])).num_milliseconds();
        assert!(
            gap >= want_ms - 5,
            "restart {} came after {gap} ms, before the {want_ms} ms back-off",
            i + 1
        );
    }
    let job = d.inspect(&id);
    assert!(job["restart_count"].as_u64().unwrap() >= 4, "{job}");
    // Same job, one log growing across runs.
    assert!(d.ok(&["logs", &id]).matches("run\n").count() >= 5);
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), &id[..12]);
    // A running or restarting job goes away with rm -f.
    d.ok(&["rm", "-f", &id]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        d.ok(&["ps", "-aq"]).trim(),
        "",
        "nothing came back after rm"
    );
}

#[test]
fn on_failure_stops_after_max_retries_and_ignores_success() {
    let d = Daemon::start();
    d.import_busybox();
    let events = Events::subscribe(&d);
    let failing = d
        .ok(&[
            "run",
            "-d",
            "--restart",
            "on-failure:2",
            "busybox",
            "sh",
            "-c",
            "exit 3",
        ])
        .trim()
        .to_string();
    let fine = d
        .ok(&["run", "-d", "--restart", "on-failure", "busybox", "true"])
        .trim()
        .to_string();
    events.wait_for(&failing, "exit", 3, Duration::from_secs(30));
    d.wait_until(&failing, "the last exit", |j| {
        j["state"] == "exited" && j.get("restart_at").is_none()
    });
    std::thread::sleep(Duration::from_millis(800));
    let job = d.inspect(&failing);
    assert_eq!(job["restart_count"], 2, "{job}");
    assert_eq!(
        events.of(&failing, "start").len(),
        3,
        "one run and two restarts"
    );
    assert_eq!(job["exit"]["exit_code"], 3);

    d.wait_until(&fine, "its exit", |j| j["state"] == "exited");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        events.of(&fine, "start").len(),
        1,
        "exit 0 is not a failure"
    );
}

#[test]
fn stop_keeps_a_job_down_and_rm_with_restart_is_refused() {
    let d = Daemon::start();
    d.import_busybox();
    let id = d.run_detached(&["--restart", "unless-stopped", "busybox", "sleep", "1000"]);
    d.ok(&["stop", "-t", "1", &id]);
    std::thread::sleep(Duration::from_millis(700));
    let job = d.inspect(&id);
    assert_eq!(job["state"], "exited", "{job}");
    assert_eq!(job["manually_stopped"], true);
    assert!(job.get("restart_at").is_none());
    // A start by hand brings it back and clears the stop.
    d.ok(&["start", &id]);
    assert_eq!(d.inspect(&id)["state"], "running");
    assert!(d.inspect(&id).get("manually_stopped").is_none());

    let out = d.cli(&["run", "--rm", "--restart", "always", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("conflicting"));
    let out = d.cli(&["run", "--restart", "sometimes", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(2), "the CLI refuses a bad policy");
}
