//! Containers outlive the daemon, and a daemon killed at any moment leaves
//! state that the next one lists, repairs and can remove.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, mounts_under};

/// The cgroup directories of a job, in any hierarchy.
fn cgroups_of(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    let mut candidates = vec![root.join("flynn").join(id)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            candidates.push(entry.path().join("flynn").join(id));
        }
    }
    for c in candidates {
        if c.exists() {
            found.push(c.display().to_string());
        }
    }
    found
}

/// Nothing of job `id` is left: directory, mount, container state, cgroups.
fn assert_gone(d: &Daemon, id: &str) {
    let dir = d.state_dir().join("jobs").join(id);
    assert!(!dir.exists(), "job dir {} is left", dir.display());
    assert!(
        mounts_under(&dir).is_empty(),
        "a mount is left under {}",
        dir.display()
    );
    assert!(
        !d.state_dir().join("containers").join(id).exists(),
        "container state is left"
    );
    assert!(
        cgroups_of(id).is_empty(),
        "cgroups are left: {:?}",
        cgroups_of(id)
    );
}

fn job_ids(d: &Daemon) -> Vec<String> {
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["ps", "-a", "--json"])).expect("ps JSON");
    jobs.iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (20 s at most) until the daemon lists no job: `what` finished a removal.
fn wait_until_no_jobs(d: &Daemon, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !job_ids(d).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the removal was not finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill9_keeps_20_containers_running_and_exits_seen_later_are_true() {
    let mut d = Daemon::start();
    d.import_busybox();
    let counter = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.05; done";
    let mut running = Vec::new();
    for n in 0..20 {
        let name = format!("c{n}");
        d.ok(&["run", "-d", "--name", &name, "busybox", "sh", "-c", counter]);
        running.push(name);
    }
    d.ok(&[
        "run",
        "-d",
        "--name",
        "exits",
        "busybox",
        "sh",
        "-c",
        "sleep 1; exit 7",
    ]);
    d.ok(&["run", "-d", "--name", "killed", "busybox", "sleep", "1000"]);
    let killed_pid = d.inspect("killed")["pid"].as_i64().unwrap() as i32;
    let pids_before: Vec<i64> = running
        .iter()
        .map(|n| d.inspect(n)["pid"].as_i64().unwrap())
        .collect();

    d.kill9();
    // While the daemon is down: one job exits by itself, one is killed by a signal,
    // the others keep writing output.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    d.spawn();

    for (n, name) in running.iter().enumerate() {
        let job = d.inspect(name);
        assert_eq!(job["state"], "running", "{name}: {job}");
        assert_eq!(
            job["pid"].as_i64().unwrap(),
            pids_before[n],
            "{name} is the same process"
        );
    }
    d.wait_until("exits", "its exit", |j| j["state"] == "exited");
    assert_eq!(d.inspect("exits")["exit"]["exit_code"], 7);
    d.wait_until("killed", "its exit", |j| j["state"] == "exited");
    let killed = d.inspect("killed");
    assert_eq!(killed["exit"]["signal"], 9, "{killed}");
    assert_eq!(killed["exit"]["exit_code"], 137);

    // Logs went on while the daemon was down: the counter has no gap, and lines
    // were written during the outage.
    let log = d.ok(&["logs", "c0"]);
    let numbers: Vec<u64> = log.lines().map(|l| l.parse().unwrap()).collect();
    assert!(numbers.len() > 30, "{} lines", numbers.len());
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(*n, i as u64, "log line {i} of c0");
    }

    // stop and rm work on re-adopted jobs.
    d.ok(&["stop", "-t", "1", "c0"]);
    assert_eq!(d.inspect("c0")["state"], "exited");
    for name in &running {
        let id = d.inspect(name)["id"].as_str().unwrap().to_string();
        d.ok(&["rm", "-f", name]);
        assert_gone(&d, &id);
    }
}

/// Runs `setup` with the daemon dying at `point`, then restarts it and returns it.
fn crash_at(point: &str, setup: impl FnOnce(&Daemon)) -> Daemon {
    let mut d = Daemon::start();
    d.import_busybox();
    d.kill9();
    d.spawn_with(&[("FLYNN_FAILPOINTS", point)]);
    setup(&d);
    d.wait_dead();
    d.spawn();
    d
}

#[test]
fn a_crash_while_creating_leaves_nothing_unlistable() {
    // Before the record landed: the half-made directory is removed at restart.
    let d = crash_at("create.dir", |d| {
        let out = d.cli(&["run", "-d", "busybox", "sleep", "60"]);
        assert!(!out.status.success());
    });
    assert!(job_ids(&d).is_empty());
    let leftovers = std::fs::read_dir(d.state_dir().join("jobs"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0, "no half-created job directory");

    // After the record: the job is there, created, and can be started or removed.
    let d = crash_at("create.recorded", |d| {
        let out = d.cli(&["run", "-d", "--name", "half", "busybox", "sleep", "60"]);
        assert!(!out.status.success());
    });
    assert_eq!(d.inspect("half")["state"], "created");
    d.ok(&["start", "half"]);
    assert_eq!(d.inspect("half")["state"], "running");
    let id = d.inspect("half")["id"].as_str().unwrap().to_string();
    d.ok(&["rm", "-f", "half"]);
    assert_gone(&d, &id);
}

#[test]
fn a_crash_while_starting_is_repaired_or_adopted() {
    for point in ["start.mounted", "start.created"] {
        let d = crash_at(point, |d| {
            let out = d.cli(&["run", "-d", "--name", "s", "busybox", "sleep", "60"]);
            assert!(!out.status.success(), "{point}");
        });
        let job = d.inspect("s");
        assert_eq!(job["state"], "created", "{point}: {job}");
        let id = job["id"].as_str().unwrap().to_string();
        let dir = d.state_dir().join("jobs").join(&id);
        assert!(
            mounts_under(&dir).is_empty(),
            "{point}: the rootfs was unmounted at restart"
        );
        assert!(cgroups_of(&id).is_empty(), "{point}: no container was left");
        d.ok(&["start", "s"]);
        d.ok(&["rm", "-f", "s"]);
        assert_gone(&d, &id);
    }

    // Started but not recorded: the running container is adopted.
    let d = crash_at("start.started", |d| {
        let out = d.cli(&["run", "-d", "--name", "s", "busybox", "sleep", "60"]);
        assert!(!out.status.success());
    });
    let job = d.inspect("s");
    assert_eq!(job["state"], "running", "{job}");
    d.ok(&["stop", "-t", "1", "s"]);
    assert_eq!(d.inspect("s")["state"], "exited");
    let id = job["id"].as_str().unwrap().to_string();
    d.ok(&["rm", "s"]);
    assert_gone(&d, &id);
}

#[test]
fn a_crash_when_an_exit_arrives_keeps_the_true_exit() {
    let d = crash_at("exit.received", |d| {
        d.ok(&[
            "run",
            "-d",
            "--name",
            "e",
            "busybox",
            "sh",
            "-c",
            "sleep 0.3; exit 5",
        ]);
    });
    d.wait_until("e", "the exit", |j| j["state"] == "exited");
    assert_eq!(d.inspect("e")["exit"]["exit_code"], 5);
}

#[test]
fn a_crash_after_an_auto_removed_jobs_exit_still_removes_it_and_keeps_its_exit() {
    // Its exit is not saved (the removal's save follows): the next daemon finds the
    // shim gone and its exit file, and removes the job as the first would have.
    let mut id = String::new();
    let d = crash_at("exit.recorded", |d| {
        id = d
            .ok(&[
                "run",
                "-d",
                "--rm",
                "busybox",
                "sh",
                "-c",
                "sleep 0.3; exit 5",
            ])
            .trim()
            .to_string();
    });
    wait_until_no_jobs(&d, "the auto-removal");
    assert_gone(&d, &id);
    assert_eq!(d.ok(&["wait", &id]).trim(), "5");
}

#[test]
fn a_crash_while_removing_is_finished_by_the_next_daemon() {
    for point in ["rm.marked", "rm.unmounted", "rm.cleaned"] {
        let mut id = String::new();
        let d = crash_at(point, |d| {
            id = d
                .ok(&["run", "-d", "busybox", "sleep", "60"])
                .trim()
                .to_string();
            let out = d.cli(&["rm", "-f", &id]);
            assert!(!out.status.success(), "{point}");
        });
        // The removal completes at start-up (it may still be finishing).
        wait_until_no_jobs(&d, point);
        assert_gone(&d, &id);
        assert_eq!(
            d.ok(&["run", "--rm", "busybox", "echo", "ok"]),
            "ok\n",
            "{point}"
        );
    }
}

#[test]
fn a_crash_during_import_never_leaves_a_half_image() {
    let mut d = Daemon::start();
    let archive = common::fixtures().join("layered-docker.tar");
    // Kill the daemon at growing delays into an import, then check the store.
    for delay_ms in [0u64, 2, 5, 10, 20, 40, 80] {
        let child = d
            .command()
            .args(["import", archive.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        d.kill9();
        let _ = child.wait_with_output();
        d.spawn();
        // Either the image is complete and runs, or it is not listed at all.
        let images = d.ok(&["images", "-q"]);
        if !images.trim().is_empty() {
            let out = d.ok(&["run", "--rm", "flynn-test/layered"]);
            assert_eq!(
                out, "hello from app in /app with FOO=bar\n",
                "after a kill at {delay_ms} ms"
            );
            d.ok(&["rmi", "flynn-test/layered"]);
        }
        let tmp = d.state_dir().join("images/tmp");
        let left = std::fs::read_dir(&tmp).map(|r| r.count()).unwrap_or(0);
        assert_eq!(
            left,
            0,
            "leftovers in {} after a kill at {delay_ms} ms",
            tmp.display()
        );
    }
    d.import_busybox();
    assert_eq!(d.ok(&["run", "--rm", "busybox", "echo", "fine"]), "fine\n");
}

/// A shim that stops answering in the middle of a start (as one stuck in the kernel
/// would) does not hang `run`: the start fails within its bound with an error that
/// names the step, the shim is killed, nothing of the container is left, and the
/// next start (with a shim that answers) works.
#[test]
fn a_start_whose_shim_hangs_fails_in_bounded_time_and_names_the_step() {
    let mut d = Daemon::start();
    d.import_busybox();
    for (at, step) in [
        ("settled", "creating the container"),
        ("reported created", "starting the container"),
    ] {
        d.kill9();
        d.spawn_with(&[("FLYNN_SHIM_HANG_AT", at), ("FLYNN_SHIM_TIMEOUT", "3")]);
        let log_before = d.log_text().len();
        let began = std::time::Instant::now();
        let out = d.cli(&["run", "-d", "--name", "stuck", "busybox", "sleep", "60"]);
        let took = began.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{at}: {stderr}");
        assert!(
            took < Duration::from_secs(30),
            "{at}: the failed start took {took:?}"
        );
        assert!(stderr.contains(step), "{at}: {stderr}");
        let job = d.inspect("stuck");
        assert_eq!(job["state"], "created", "{at}: {job}");
        assert!(
            job["error"].as_str().is_some_and(|e| e.contains(step)),
            "{at}: {job}"
        );
        let id = job["id"].as_str().unwrap().to_string();
        let dir = d.state_dir().join("jobs").join(&id);
        let shim = std::fs::read_to_string(dir.join("shim.pid")).unwrap_or_default();
        if let Ok(pid) = shim.trim().parse::<i32>() {
            assert!(
                !common::is_alive(pid),
                "{at}: the stuck shim {pid} lives on"
            );
        }
        assert!(
            mounts_under(&dir).is_empty(),
            "{at}: the rootfs is still mounted"
        );
        assert!(cgroups_of(&id).is_empty(), "{at}: a container was left");
        let log = d.log_text().split_off(log_before);
        assert!(
            log.contains("start: config written") && !log.contains("start: container started"),
            "{at}: the daemon's log shows the steps:\n{}",
            common::tail(&log, 40)
        );

        // The same job starts once its shims answer again.
        d.kill9();
        d.spawn();
        d.ok(&["start", "stuck"]);
        assert_eq!(d.inspect("stuck")["state"], "running", "{at}");
        d.ok(&["rm", "-f", "stuck"]);
        assert_gone(&d, &id);
    }
}

/// The daemon's own step of a start (the root filesystem's mount) is bounded too: a
/// mount stuck past `FLYNN_STEP_TIMEOUT` fails the start naming it, and when the
/// mount finishes later it is undone, so nothing of the job stays mounted.
#[test]
fn a_start_whose_rootfs_mount_hangs_fails_in_bounded_time_and_leaves_nothing() {
    let mut d = Daemon::start();
    d.import_busybox();
    d.kill9();
    d.spawn_with(&[
        ("FLYNN_HANG_AT", "start.mount"),
        ("FLYNN_STEP_TIMEOUT", "2"),
    ]);
    let began = std::time::Instant::now();
    let out = d.cli(&["run", "-d", "--name", "stuck", "busybox", "sleep", "60"]);
    let took = began.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        took < Duration::from_secs(9),
        "the failed start took {took:?}"
    );
    assert!(
        stderr.contains("mounting the root filesystem did not finish within 2s"),
        "{stderr}"
    );
    let job = d.inspect("stuck");
    assert_eq!(job["state"], "created", "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let dir = d.state_dir().join("jobs").join(&id);
    // The hung mount goes on for 10 s, mounts, and is then undone.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        mounts_under(&dir).is_empty(),
        "the late mount was left: {:?}",
        mounts_under(&dir)
    );
    assert!(cgroups_of(&id).is_empty(), "a container was left");

    // The same job starts once mounts answer again.
    d.kill9();
    d.spawn();
    d.ok(&["start", "stuck"]);
    assert_eq!(d.inspect("stuck")["state"], "running");
    d.ok(&["rm", "-f", "stuck"]);
    assert_gone(&d, &id);
}
