//! End to end: a real daemon, real images, real containers (root, namespaces,
//! overlayfs, cgroups). Each test starts its own daemon on its own state dir.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::path::Path;

use common::{Daemon, fixtures, mounts_under};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_echo_prints_and_exits_with_the_containers_code() {
    let d = Daemon::start();
    d.import_busybox();
    let out = d.cli(&["run", "--rm", "busybox", "echo", "hello"]);
    assert_eq!(stdout(&out), "hello\n", "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0));

    let out = d.cli(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo to-err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stderr(&out), "to-err\n");
    assert_eq!(stdout(&out), "");

    // Killed by a signal: 128 + N, like docker run. (The job's main process is
    // PID 1 of its namespace, which ignores signals it has no handler for, so the
    // signal that kills it here is SIGKILL, from outside.)
    let child = d
        .command()
        .args(["run", "--rm", "--name", "victim", "busybox", "sleep", "30"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    d.wait_until("victim", "the job to run", |j| j["state"] == "running");
    d.ok(&["kill", "-s", "KILL", "victim"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 9));

    // --rm removed every job.
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");
}

#[test]
fn image_config_env_workdir_and_user_apply_and_can_be_overridden() {
    let d = Daemon::start();
    let archive = fixtures().join("layered-docker.tar");
    d.ok(&["import", archive.to_str().unwrap()]);
    // Entrypoint /app/hello.sh, User app, WorkingDir /app, Env FOO=bar.
    let out = d.ok(&["run", "--rm", "flynn-test/layered"]);
    assert_eq!(out, "hello from app in /app with FOO=bar\n");

    let out = d.ok(&[
        "run",
        "--rm",
        "-e",
        "FOO=baz",
        "-w",
        "/tmp",
        "-u",
        "root",
        "flynn-test/layered",
    ]);
    assert_eq!(out, "hello from root in /tmp with FOO=baz\n");

    // User by name gets the supplementary groups of /etc/group; uid:gid works too.
    let out = d.ok(&[
        "run",
        "--rm",
        "-u",
        "app",
        "--entrypoint",
        "id",
        "flynn-test/layered",
    ]);
    assert!(out.starts_with("uid=1000(app) gid=1000(app)"), "{out}");
    assert!(
        out.contains("29(audio)") && out.contains("50(staff)"),
        "{out}"
    );
    let out = d.ok(&[
        "run",
        "--rm",
        "-u",
        "1234:50",
        "--entrypoint",
        "id",
        "flynn-test/layered",
    ]);
    assert!(out.starts_with("uid=1234 gid=50(staff)"), "{out}");

    // Docker's default environment: PATH, HOSTNAME, HOME.
    let out = d.ok(&[
        "run",
        "--rm",
        "--hostname",
        "box1",
        "--entrypoint",
        "env",
        "flynn-test/layered",
    ]);
    assert!(out.contains("HOSTNAME=box1\n"), "{out}");
    assert!(out.contains("HOME=/home/app\n"), "{out}");
    assert!(out.contains("PATH=/usr/local/sbin:"), "{out}");

    // The second layer's whiteout and opaque directory hide the first layer's files.
    let out = d.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        "flynn-test/layered",
        "-c",
        "ls /var/www; test -e /etc/motd && echo motd-present || echo motd-gone",
    ]);
    assert_eq!(out, "only.txt\nmotd-gone\n");

    let out = d.cli(&["run", "--rm", "-u", "nosuchuser", "flynn-test/layered"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("nosuchuser"), "{}", stderr(&out));
}

#[test]
fn a_memory_limit_ooms_and_is_reported_as_oom() {
    let d = Daemon::start();
    d.import_busybox();
    let out = d.cli(&[
        "run",
        "--name",
        "hog",
        "-m",
        "16M",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    assert_eq!(out.status.code(), Some(137), "stderr: {}", stderr(&out));
    let job = d.inspect("hog");
    assert_eq!(job["exit"]["oom_killed"], true, "{job}");
    assert_eq!(job["exit"]["exit_code"], 137);
    assert!(d.ok(&["ps", "-a"]).contains("OOM"));
}

#[test]
fn limits_are_written_to_the_jobs_cgroup() {
    let d = Daemon::start();
    d.import_busybox();
    let id = d.run_detached(&[
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
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let read = |v1_ctrl: &str, v1_file: &str, v2_file: &str| -> String {
        let path = if v2 {
            format!("/sys/fs/cgroup/flynn/{id}/{v2_file}")
        } else {
            format!("/sys/fs/cgroup/{v1_ctrl}/flynn/{id}/{v1_file}")
        };
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes", "memory.max"),
        (64u64 << 20).to_string()
    );
    if v2 {
        assert_eq!(read("", "", "cpu.max"), "50000 100000");
    } else {
        assert_eq!(read("cpu", "cpu.cfs_quota_us", ""), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us", ""), "100000");
    }
    assert_eq!(read("pids", "pids.max", "pids.max"), "20");

    // The pids limit holds: the 21st process cannot be forked.
    let out = d.cli(&[
        "run",
        "--rm",
        "--pids-limit",
        "10",
        "busybox",
        "sh",
        "-c",
        // Counted with a glob (no fork needed once the limit is reached).
        "(for i in $(seq 1 30); do sleep 5 & done) 2>/dev/null; set -- /proc/[0-9]*; echo $#",
    ]);
    let count: u32 = stdout(&out).trim().parse().unwrap_or(0);
    assert!(count > 0 && count <= 10, "processes seen: {}", stdout(&out));
    d.ok(&["rm", "-f", &id]);
}

#[test]
fn stop_sends_sigterm_then_sigkill_after_the_grace_period() {
    let d = Daemon::start();
    d.import_busybox();
    // Exits on SIGTERM: stopped gracefully.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        "busybox",
        "sh",
        "-c",
        "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    // A SIGTERM before the trap is set would be ignored (the shell is the
    // namespace's PID 1): wait until the shell says it is ready.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.ok(&["logs", "polite"]).contains("ready") {
        assert!(
            std::time::Instant::now() < deadline,
            "the job never got ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    d.ok(&["stop", "-t", "5", "polite"]);
    let job = d.inspect("polite");
    assert_eq!(job["state"], "exited");
    assert_eq!(job["exit"]["exit_code"], 0, "{job}");
    assert_eq!(d.ok(&["logs", "polite"]), "ready\ngot-term\n");

    // Ignores SIGTERM: killed after the grace period.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "busybox",
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 0.1; done",
    ]);
    d.ok(&["stop", "-t", "1", "stubborn"]);
    let job = d.inspect("stubborn");
    assert_eq!(job["exit"]["signal"], 9, "{job}");
    assert_eq!(job["exit"]["exit_code"], 137);
    assert_eq!(job["exit"]["oom_killed"], false);

    // kill -s sends the signal asked for.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "k",
        "busybox",
        "sh",
        "-c",
        "trap 'exit 42' HUP; while true; do sleep 0.1; done",
    ]);
    d.ok(&["kill", "-s", "HUP", "k"]);
    d.wait_until("k", "exit after SIGHUP", |j| j["state"] == "exited");
    assert_eq!(d.inspect("k")["exit"]["exit_code"], 42);
}

#[test]
fn logs_keep_streams_apart_and_follow_until_exit() {
    let d = Daemon::start();
    d.import_busybox();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "chatty",
        "busybox",
        "sh",
        "-c",
        "echo one; echo two >&2; sleep 1; echo three",
    ]);
    // -f returns once the job has exited, with everything it wrote.
    let out = d.cli(&["logs", "-f", "chatty"]);
    assert_eq!(stdout(&out), "one\nthree\n");
    assert_eq!(stderr(&out), "two\n");
    let out = d.ok(&["logs", "--tail", "1", "chatty"]);
    assert_eq!(out, "three\n");
    let out = d.ok(&["logs", "-t", "chatty"]);
    let first = out.lines().next().unwrap_or_default();
    let (time, text) = first.split_once(' ').expect("timestamped line");
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "{first}"
    );
    assert_eq!(text, "one");
}

#[test]
fn rm_leaves_no_mount_cgroup_or_directory_behind() {
    let d = Daemon::start();
    d.import_busybox();
    let id = d
        .ok(&["run", "-d", "busybox", "sleep", "60"])
        .trim()
        .to_string();
    let job_dir = d.state_dir().join("jobs").join(&id);
    assert!(
        mounts_under(&job_dir).len() == 1,
        "rootfs is mounted while running"
    );
    let cgroup_dirs = || -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            for candidate in [entry.path().join("flynn").join(&id), entry.path().join(&id)] {
                if candidate.exists() {
                    found.push(candidate.display().to_string());
                }
            }
        }
        found
    };
    assert!(
        !cgroup_dirs().is_empty(),
        "the job has a cgroup while running"
    );

    let out = d.cli(&["rm", &id]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "rm without -f refuses a running job"
    );
    assert!(stderr(&out).contains("running"), "{}", stderr(&out));

    d.ok(&["rm", "-f", &id]);
    assert!(mounts_under(&job_dir).is_empty(), "no mount left");
    assert!(
        cgroup_dirs().is_empty(),
        "no cgroup left: {:?}",
        cgroup_dirs()
    );
    assert!(!job_dir.exists(), "no job directory left");
    assert!(
        !d.state_dir().join("containers").join(&id).exists(),
        "no container state left"
    );
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");

    // An exited job keeps its directory until rm, but not its mount.
    let out = d.cli(&["run", "--name", "done", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(0));
    let id = d.inspect("done")["id"].as_str().unwrap().to_string();
    let job_dir = d.state_dir().join("jobs").join(&id);
    assert!(job_dir.exists());
    assert!(mounts_under(&job_dir).is_empty());
    d.ok(&["rm", "done"]);
    assert!(!job_dir.exists());
}

#[test]
fn bad_input_gets_clear_errors_and_the_store_stays_usable() {
    let d = Daemon::start();

    // Unknown image.
    let out = d.cli(&["run", "--rm", "nosuchimage", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("nosuchimage"), "{}", stderr(&out));

    // A corrupt archive.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.tar");
    std::fs::write(
        &garbage,
        b"this is not a tar archive at all, not even close".repeat(40),
    )
    .unwrap();
    let out = d.cli(&["import", garbage.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!stderr(&out).is_empty());

    // A truncated archive.
    let good = std::fs::read(fixtures().join("busybox-docker.tar")).unwrap();
    let truncated = dir.path().join("truncated.tar");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let out = d.cli(&["import", truncated.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));

    // A layer whose bytes do not match its digest.
    let tampered = dir.path().join("tampered");
    copy_dir(&fixtures().join("tool-oci"), &tampered);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tampered.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tampered.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let layer_path = tampered.join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&layer_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&layer_path, bytes).unwrap();
    let out = d.cli(&["import", tampered.to_str().unwrap(), "--tag", "tampered:1"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("sha256:"),
        "names the digest: {}",
        stderr(&out)
    );

    // Nothing half-imported is visible.
    assert_eq!(d.ok(&["images", "-q"]).trim(), "");

    // Malformed JSON and unknown fields on the API.
    let (status, body) = d.http("POST", "/jobs", Some("{\"image\": "));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid JSON"), "{body}");
    let (status, body) = d.http(
        "POST",
        "/jobs",
        Some("{\"image\": \"busybox\", \"bogus\": 1}"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bogus"), "{body}");
    let (status, _) = d.http("GET", "/no/such/endpoint", None);
    assert_eq!(status, 404);
    let (status, _) = d.http("PUT", "/jobs", None);
    assert_eq!(status, 405);
    let (status, body) = d.http("POST", "/jobs/x/kill?signal=SIGNOPE", None);
    assert!(status == 400 || status == 404, "{status} {body}");

    // A command missing from the image.
    d.import_busybox();
    let out = d.cli(&["run", "--rm", "busybox", "/no/such/command"]);
    assert_eq!(out.status.code(), Some(127), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("/no/such/command"),
        "{}",
        stderr(&out)
    );

    // An unknown CLI flag is refused by the CLI itself.
    let out = d.cli(&["run", "--no-such-flag", "busybox"]);
    assert_eq!(out.status.code(), Some(2));

    // After all that, the store still works.
    let out = d.cli(&["run", "--rm", "busybox", "echo", "still fine"]);
    assert_eq!(stdout(&out), "still fine\n");
    assert!(
        !d.log_text().contains("panicked"),
        "the daemon never panics"
    );
}

#[test]
fn rmi_is_refused_while_a_job_uses_the_image() {
    let d = Daemon::start();
    d.import_busybox();
    d.ok(&["run", "--name", "user", "busybox", "true"]);
    let out = d.cli(&["rmi", "busybox"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("use"), "{}", stderr(&out));
    d.ok(&["rm", "user"]);
    let out = d.ok(&["rmi", "busybox"]);
    assert!(out.contains("Untagged: busybox:latest"), "{out}");
    assert!(out.contains("Deleted:"), "{out}");
    assert_eq!(d.ok(&["images", "-q"]).trim(), "");
    // Layers went with the image.
    let layers = d.state_dir().join("images");
    let leftover = walk_count(&layers.join("layers"));
    assert_eq!(
        leftover,
        0,
        "no unpacked layer left under {}",
        layers.display()
    );
}

#[test]
fn names_and_ids_resolve_like_docker() {
    let d = Daemon::start();
    d.import_busybox();
    let id = d
        .ok(&["run", "-d", "--name", "web-1", "busybox", "sleep", "60"])
        .trim()
        .to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(d.inspect("web-1")["id"], id);
    assert_eq!(d.inspect(&id[..8])["id"], id);
    let out = d.cli(&["run", "-d", "--name", "web-1", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("already used"), "{}", stderr(&out));
    let ps = d.ok(&["ps"]);
    assert!(ps.starts_with("JOB ID"), "{ps}");
    assert!(ps.contains("web-1") && ps.contains("Up "), "{ps}");
    let json: Vec<serde_json::Value> = serde_json::from_str(&d.ok(&["ps", "--json"])).unwrap();
    assert_eq!(json.len(), 1);
    assert_eq!(
        json[0]["config"]["args"],
        serde_json::json!(["sleep", "60"])
    );
    d.ok(&["rm", "-f", "web-1"]);
    let out = d.cli(&["inspect", "web-1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no such job"), "{}", stderr(&out));
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn an_auto_removed_jobs_log_stays_readable_a_while_by_its_id() {
    // A `run --rm` whose log stream a daemon handover cut reads the rest from the
    // successor, which may already have removed the job.
    let d = Daemon::start();
    d.import_busybox();
    let id = d.run_detached(&[
        "--rm",
        "--name",
        "brief",
        "busybox",
        "sh",
        "-c",
        "echo one; echo two",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while d.http("GET", &format!("/jobs/{id}"), None).0 != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} was never removed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (status, body) = d.http("GET", &format!("/jobs/{id}/logs?follow=true"), None);
    assert_eq!(status, 200, "{body}");
    let entries: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<&str> = entries.iter().map(|e| e["log"].as_str().unwrap()).collect();
    assert_eq!(lines, ["one\n", "two\n"]);
    // `since` is inclusive, as Docker's: resuming at the last entry's time gives
    // it again, and every entry of that time (the client skips those it has).
    let last = entries[1]["time"].as_str().unwrap();
    let (status, body) = d.http(
        "GET",
        &format!("/jobs/{id}/logs?since={}", last.replace('+', "%2B")),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let same_time = entries.iter().filter(|e| e["time"] == last).count();
    assert_eq!(body.lines().count(), same_time, "{body}");
    assert!(body.contains("\"two\\n\""), "{body}");
    // Only by its full id: the name is free for a new job.
    assert_eq!(d.http("GET", "/jobs/brief/logs", None).0, 404);
    // The exit is kept too.
    let (status, body) = d.http("GET", &format!("/jobs/{id}/wait"), None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"exit_code\":0"), "{body}");
}

#[test]
fn volumes_bind_host_directories_read_write_and_read_only() {
    let d = Daemon::start();
    d.import_busybox();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rw = format!("{}:/data", data.display());
    // The host directory is created if missing, and the job's writes land in it.
    let out = d.cli(&[
        "run",
        "--rm",
        "-v",
        &rw,
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(data.join("f")).unwrap(), "kept\n");
    // A later job finds them; read-only refuses writes.
    let ro = format!("{rw}:ro");
    let out = d.cli(&[
        "run",
        "--rm",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /data/f; echo x > /data/g",
    ]);
    assert_eq!(stdout(&out), "kept\n");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert!(!data.join("g").exists());
    // Bad volumes are refused with what to type.
    for (bad, says) in [
        ("data:/data", "absolute"),
        ("/tmp/x:/", "cannot replace the job's root"),
        ("/tmp/x:/a/../../etc", "without '..'"),
        ("/tmp/x:/data:rx", "HOST_PATH:JOB_PATH"),
    ] {
        let out = d.cli(&["run", "--rm", "-v", bad, "busybox", "true"]);
        assert_ne!(out.status.code(), Some(0), "{bad}");
        assert!(stderr(&out).contains(says), "{bad}: {}", stderr(&out));
    }
}

/// A `run --rm` whose job cannot be removed (here a file in its upper directory
/// made immutable) still returns the job's exit code, and says why the job
/// stayed; the daemon removes it on a later attempt once it can.
#[test]
fn run_rm_returns_when_the_removal_fails_and_the_daemon_removes_it_later() {
    let d = Daemon::start();
    d.import_busybox();
    let child = d
        .command()
        .args([
            "run",
            "--rm",
            "--name",
            "stuck",
            "busybox",
            "sh",
            "-c",
            "trap 'exit 7' USR1; touch /pinned; while true; do sleep 0.05; done",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    d.wait_until("stuck", "the job to run", |j| j["state"] == "running");
    let id = d.inspect("stuck")["id"].as_str().unwrap().to_string();
    let upper = d.state_dir().join("jobs").join(&id).join("upper");
    let pinned = upper.join("pinned");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !pinned.exists() {
        assert!(std::time::Instant::now() < deadline, "no {pinned:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let chattr = |flag: &str| {
        let status = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&pinned)
            .status()
            .unwrap();
        assert!(status.success(), "chattr {flag} {pinned:?}");
    };
    chattr("+i");
    d.ok(&["kill", "-s", "USR1", "stuck"]);

    let out = child.wait_with_output().unwrap();
    chattr("-i");
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("could not be removed"),
        "no word of the failed removal: {}",
        stderr(&out)
    );
    // Retried (1 s, then 2 s, ...) until it goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = d.ok(&["ps", "-aq"]);
        if left.trim().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job was never removed: {left}\n{}",
            common::tail(&d.log_text(), 30)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!d.state_dir().join("jobs").join(&id).exists());
}
