//! The host's identity and status, and who may use the API: a token on TCP,
//! root only on the unix socket, nothing at all from inside a container.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{BIN, Daemon};

#[test]
fn tcp_needs_the_token_and_the_unix_socket_admits_root_only() {
    let d = Daemon::start();
    let mode = std::fs::metadata(d.state_dir().join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");

    // No token, or a wrong one: 401, and the CLI says what to do.
    let (status, body) = d.http_with("GET", "/version", None, None);
    assert_eq!(status, 401, "{body}");
    let (status, _) = d.http_with("GET", "/jobs", None, Some("not-the-token-at-all"));
    assert_eq!(status, 401);
    let out = d
        .command()
        .args([
            "--host",
            &d.url(),
            "--token",
            "wrong-token-0123456789",
            "ps",
        ])
        .env_remove("FLYNN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");

    // Root on the unix socket needs no token.
    let sock = format!("unix://{}", d.socket().display());
    let out = Command::new(BIN)
        .args(["--host", &sock, "version"])
        .env_remove("FLYNN_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Anyone else is turned away, even with the right token.
    let out = Command::new(BIN)
        .args(["--host", &sock, "--token", &d.token, "version"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success(), "nobody must not use the root socket");
}

#[test]
fn containers_reach_neither_the_socket_nor_the_state_dir_nor_the_api() {
    let d = Daemon::start();
    d.import_busybox();
    let state = d.state_dir().display().to_string();
    let sock = d.socket().display().to_string();
    let port = d.addr.rsplit(':').next().unwrap().to_string();
    let script = format!(
        "test -e {state} && echo state-visible; test -S {sock} && echo socket-visible; \
         ls /run/flynn 2>/dev/null && echo run-visible; \
         if nc -w 1 127.0.0.1 {port} </dev/null 2>/dev/null; then echo api-reachable; fi; echo checked"
    );
    let out = d.ok(&["run", "--rm", "busybox", "sh", "-c", &script]);
    assert_eq!(out, "checked\n");
}

#[test]
fn status_reports_the_host_and_what_jobs_were_promised() {
    let mut d = Daemon::start();
    d.import_busybox();
    let status = |d: &Daemon| -> serde_json::Value {
        serde_json::from_str(&d.ok(&["status", "--json"])).expect("status JSON")
    };
    let before = status(&d);
    assert_eq!(before["id"].as_str().unwrap().len(), 32);
    assert!(before["cpus"].as_u64().unwrap() >= 1);
    assert!(
        before["memory"]["total"].as_u64().unwrap()
            > before["memory"]["free"].as_u64().unwrap() / 2
    );
    assert!(before["disk"]["free"].as_u64().unwrap() > 0);
    let expected_mode = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "hybrid"
    };
    assert_eq!(before["cgroup"], expected_mode);
    assert_eq!(before["jobs"]["running"], 0);

    d.ok(&[
        "run",
        "-d",
        "-m",
        "64M",
        "--cpus",
        "0.5",
        "--pids-limit",
        "20",
        "busybox",
        "sleep",
        "60",
    ]);
    d.ok(&["run", "-d", "busybox", "sleep", "60"]);
    d.ok(&["run", "busybox", "true"]);
    let after = status(&d);
    assert_eq!(after["jobs"]["running"], 2);
    assert_eq!(after["jobs"]["total"], 3);
    assert_eq!(after["promised"]["memory"], 64u64 << 20);
    assert_eq!(after["promised"]["cpus"], 0.5);
    // The second job has the daemon's default limit (4096).
    assert_eq!(after["promised"]["pids"], 20 + 4096);
    assert_eq!(after["promised"]["unlimited_memory_jobs"], 1);
    let text = d.ok(&["status"]);
    assert!(text.contains("Jobs:      2 running, 3 total"), "{text}");

    // The id survives a restart.
    let id = after["id"].clone();
    d.kill9();
    d.spawn();
    assert_eq!(status(&d)["id"], id);
}

/// `daemon-log` shows the end of the daemon's own log (its standard error, a
/// file here as on the appliance), within the lines asked for; a bad count is
/// refused with the range, and a token is needed as for any call.
#[test]
fn daemon_log_shows_the_end_of_the_daemons_own_log() {
    let d = Daemon::start();
    d.import_busybox();
    d.ok(&["run", "--rm", "busybox", "true"]);
    let whole = d.log_text();
    let last: Vec<&str> = whole.lines().collect();
    assert!(last.len() > 5, "the daemon logged too little: {whole}");

    let shown = d.ok(&["daemon-log", "-n", "3"]);
    let shown: Vec<&str> = shown.lines().collect();
    assert_eq!(shown.len(), 3, "{shown:?}");
    // The lines shown are lines of the file (the daemon may log more meanwhile).
    let now = d.log_text();
    for line in &shown {
        assert!(
            now.lines().any(|l| l == *line),
            "{line:?} is not in the log"
        );
    }
    let default = d.ok(&["daemon-log"]);
    assert!(default.lines().count() <= 200);
    assert!(default.contains(shown[0]) || now.lines().count() > 200);

    let out = d.cli(&["daemon-log", "-n", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give 1 to 10000 lines"), "{err}");
    let (status, _) = d.http_with("GET", "/host/log", None, None);
    assert_eq!(status, 401);
}
