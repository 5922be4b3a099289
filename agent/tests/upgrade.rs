//! Zero-downtime upgrade: the daemon's binary is replaced and the daemon told
//! (SIGUSR2) to hand over to it, while clients hammer the API. No request
//! fails, and no container is restarted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{BIN, Daemon};

/// Puts a fresh copy of the flynn-host binary at `path` the way a package
/// manager does: write beside it, then rename over (the old inode lives on in
/// the running process).
fn install(path: &Path) {
    let tmp = path.with_extension("new");
    std::fs::copy(BIN, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn signal_upgrade(d: &Daemon) -> i32 {
    let pid = d.pid().expect("daemon.pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    pid
}

/// Waits until a new daemon process serves (daemon.pid changed and it answers).
fn wait_for_successor(d: &Daemon, old: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = d.pid()
            && pid != old
            && d.http("GET", "/version", None).0 == 200
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no successor took over; log:\n{}",
            common::tail(&d.log_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn upgrading_in_place_under_load_fails_no_request_and_restarts_no_container() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("flynn-host");
    install(&bin);
    let d = Daemon::start_from(&bin);
    d.import_busybox();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "counter",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo $i; i=$((i+1)); sleep 0.05; done",
    ]);
    let counter_pid = d.inspect("counter")["pid"].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut threads = Vec::new();
    for path in ["/version", "/jobs?all=true", "/host/status", "/images"] {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        let (addr, token, netns) = (d.addr.clone(), d.token.clone(), d.netns.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let result = std::panic::catch_unwind(|| {
                    let stream = common::connect_in(&netns, &addr).expect("connecting");
                    common::http_on(stream, "GET", path, None, Some(&token))
                });
                match result {
                    Ok((200, _)) => {}
                    Ok((status, body)) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{path}: {status} {body}")),
                    Err(_) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{path}: connection failed")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // And whole `run`s through the CLI, whose waits and log streams span handovers.
    {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        let mut run = d.command_with(&bin);
        run.args([
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "echo start; sleep 0.2; echo end",
        ]);
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = run.output().unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout);
                if !out.status.success() || stdout != "start\nend\n" {
                    failures.lock().unwrap().push(format!(
                        "run: {:?} stdout {stdout:?} stderr {}",
                        out.status.code(),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    std::thread::sleep(Duration::from_millis(500));
    let mut pids = vec![d.pid().unwrap()];
    for _ in 0..3 {
        install(&bin);
        let old = signal_upgrade(&d);
        let new = wait_for_successor(&d, old);
        pids.push(new);
        std::thread::sleep(Duration::from_millis(700));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        done.load(Ordering::Relaxed) > 200,
        "the hammer ran: {}",
        done.load(Ordering::Relaxed)
    );
    for old in &pids[..pids.len() - 1] {
        assert!(!common::is_alive(*old), "old daemon {old} exited");
    }

    // The container ran through all of it, untouched.
    let counter = d.inspect("counter");
    assert_eq!(counter["state"], "running");
    assert_eq!(counter["pid"], counter_pid, "the same process");
    let numbers: Vec<u64> = d
        .ok(&["logs", "counter"])
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(numbers.iter().enumerate().all(|(i, n)| *n == i as u64));
    d.ok(&["rm", "-f", "counter"]);
}

#[test]
fn a_successor_that_cannot_start_leaves_the_old_daemon_serving() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("flynn-host");
    install(&bin);
    let d = Daemon::start_from(&bin);
    let pid = d.pid().unwrap();
    // A broken "upgrade": the new binary exits at once.
    let tmp = bin.with_extension("new");
    std::fs::copy("/bin/false", &tmp).unwrap();
    std::fs::rename(&tmp, &bin).unwrap();
    signal_upgrade(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("upgrade failed") {
        assert!(Instant::now() < deadline, "log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.pid(), Some(pid));
    assert_eq!(d.http("GET", "/version", None).0, 200);
    install(&bin);
}
