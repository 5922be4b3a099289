//! The control socket, signals, and a shim that outlives (or dies before) its agent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use common::{Fixture, wait_until_dead};
use runtime::logs::Stream;
use runtime::shim::{ShimClient, ShimError, Status};

fn shim_pid(f: &Fixture) -> i32 {
    std::fs::read_to_string(f.job_dir.join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// One raw request on a fresh connection; returns the reply line.
fn raw_request(f: &Fixture, request: &[u8], shutdown_write: bool) -> String {
    let mut s = UnixStream::connect(f.job_dir.join("shim.sock")).unwrap();
    s.write_all(request).unwrap();
    if shutdown_write {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[tokio::test]
async fn sigterm_reaches_an_init_that_handles_it() {
    let f = Fixture::new();
    let client = f
        .start(f.container(&[
            "sh",
            "-c",
            "trap 'echo got TERM; exit 143' TERM; echo ready; sleep 1000 & wait",
        ]))
        .await;
    f.wait_for_log("ready");
    client.signal(15).await.unwrap();
    let status = client.wait().await.unwrap();
    assert_eq!((status.code, status.signal), (Some(143), None));
    assert_eq!(status.exit_code(), 143);
    assert!(f.stdout().contains("got TERM"));
    f.assert_gone();
}

#[tokio::test]
async fn an_init_ignoring_sigterm_is_killed_with_sigkill() {
    let f = Fixture::new();
    let client = f
        .start(f.container(&["sh", "-c", "trap '' TERM; echo ready; sleep 1000"]))
        .await;
    f.wait_for_log("ready");
    client.signal(15).await.unwrap();
    assert_eq!(client.state().await.unwrap().status, Status::Running);
    client.signal(9).await.unwrap();
    let status = client.wait().await.unwrap();
    assert_eq!((status.code, status.signal), (None, Some(9)));
    assert_eq!(status.exit_code(), 137);
    f.assert_gone();
}

#[tokio::test]
async fn malformed_requests_get_errors_and_the_shim_carries_on() {
    let f = Fixture::new();
    let client = f.start(f.container(&["sleep", "1000"])).await;
    let pid = client.state().await.unwrap().pid;

    for bad in [
        &b"garbage\n"[..],
        b"{\"op\":\"explode\"}\n",
        b"{\"op\":\"signal\"}\n",
        b"[1,2,3]\n",
    ] {
        let reply = raw_request(&f, bad, false);
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert!(v["error"].is_string(), "{reply}");
    }
    let reply = raw_request(&f, b"{\"op\":\"signal\",\"signal\":999}\n", false);
    assert!(reply.contains("invalid signal number 999"), "{reply}");
    let reply = raw_request(&f, &[b'x'; 5000], false);
    assert!(reply.contains("request longer than"), "{reply}");
    // A request ended by shutting down the write side instead of a newline.
    let reply = raw_request(&f, b"{\"op\":\"state\"}", true);
    assert_eq!(reply, format!("{{\"pid\":{pid},\"status\":\"running\"}}\n"));
    // Connections that say nothing.
    drop(UnixStream::connect(f.job_dir.join("shim.sock")).unwrap());

    // Two waiters at once both hear the exit.
    let second = ShimClient::connect(&f.job_dir).await.unwrap();
    let (a, b, ()) = tokio::join!(client.wait(), second.wait(), async {
        // Let both waits be registered before the kill (best effort, not needed for
        // correctness: a late waiter reads exit.json).
        tokio::task::yield_now().await;
        client.signal(9).await.unwrap();
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert_eq!(a.signal, Some(9));
    f.assert_gone();
}

#[tokio::test]
async fn wait_after_the_shim_has_exited_reads_exit_json() {
    let f = Fixture::new();
    let created = f.create(f.container(&["sh", "-c", "exit 7"])).await;
    let shim = created.shim_pid();
    created.start().await.unwrap();
    wait_until_dead(shim);
    let client = ShimClient::connect(&f.job_dir).await.unwrap();
    let status = client.wait().await.unwrap();
    assert_eq!(status.code, Some(7));
    assert!(matches!(client.signal(15).await, Err(ShimError::Io { .. })));
    f.assert_gone();
}

#[tokio::test]
async fn the_shim_outlives_the_process_that_spawned_it() {
    let f = Fixture::new();
    let cfg = f.shim_config(f.container(&[
        "sh",
        "-c",
        "trap 'echo after-spawner-exit; exit 0' USR1; echo ready; sleep 1000 & wait",
    ]));
    std::fs::write(
        f.job_dir.join("shim.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    // A separate, short-lived "daemon" spawns and starts the shim, then exits.
    let out = std::process::Command::new(common::SHIM_EXE)
        .arg("spawn")
        .arg(&f.job_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("started "));

    let shim = shim_pid(&f);
    assert!(common::is_alive(shim));
    // Detached: its own session, not in ours.
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(shim))).unwrap();
    assert_ne!(sid, nix::unistd::getsid(None).unwrap());

    f.wait_for_log("ready");
    let client = ShimClient::connect(&f.job_dir).await.unwrap();
    client.signal(10).await.unwrap();
    let status = client.wait().await.unwrap();
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    let out = f.stdout();
    assert!(
        out.contains("ready") && out.contains("after-spawner-exit"),
        "{out}"
    );
    f.assert_gone();
}

#[tokio::test]
async fn cleanup_after_the_shim_died() {
    let f = Fixture::new();
    let client = f.start(f.container(&["sleep", "1000"])).await;
    let init = client.state().await.unwrap().pid;
    let shim = shim_pid(&f);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until_dead(shim);
    // The container runs on without its shim...
    assert!(common::is_alive(init));
    assert!(matches!(client.wait().await, Err(ShimError::Gone(_))));

    // ...until the agent cleans up: processes, state and cgroups go.
    runtime::shim::cleanup(&f.state_root, &f.id).unwrap();
    wait_until_dead(init);
    assert!(!f.state_root.join(&f.id).exists());
    assert!(runtime::cgroup::existing_dirs(&f.id).unwrap().is_empty());
    // Idempotent.
    runtime::shim::cleanup(&f.state_root, &f.id).unwrap();
}

#[tokio::test]
async fn descriptors_leaked_by_the_agent_are_not_kept_by_the_shim() {
    use std::os::fd::AsRawFd;
    // A pipe without O_CLOEXEC, as a careless daemon might hold: spawned children inherit it.
    let (_r, w) = nix::unistd::pipe().unwrap();
    let inode = nix::sys::stat::fstat(w.as_raw_fd()).unwrap().st_ino;
    let f = Fixture::new();
    let client = f.start(f.container(&["sleep", "1000"])).await;
    let shim = shim_pid(&f);
    let leaked: Vec<String> = std::fs::read_dir(format!("/proc/{shim}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| *p == format!("pipe:[{inode}]"))
        .collect();
    assert!(leaked.is_empty(), "shim holds the agent's pipe: {leaked:?}");
    // The monitor is the re-executed binary (libcontainer's memory left behind), holding
    // exactly stdio, the control socket, two output pipes, the signalfd, the log and
    // shim.lock.
    // (After a short grace period in which a quickly exiting container is finished
    // without the exec.)
    common::wait_for_monitor_exec(shim);
    // A control connection the shim has just answered may linger for an instant.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let fds = std::fs::read_dir(format!("/proc/{shim}/fd"))
            .unwrap()
            .count();
        if fds == 9 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "monitor holds {fds} descriptors"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    client.signal(9).await.unwrap();
    client.wait().await.unwrap();
    f.assert_gone();
}

#[tokio::test]
async fn a_relative_job_dir_is_resolved_before_the_shim_moves_to_root() {
    let f = Fixture::new();
    let cfg = f.shim_config(f.container(&["sh", "-c", "echo relative"]));
    std::fs::write(
        f.job_dir.join("shim.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(common::SHIM_EXE)
        .arg("spawn")
        .arg(f.job_dir.file_name().unwrap())
        .current_dir(f.job_dir.parent().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = f.wait_exit().await;
    assert_eq!(status.code, Some(0));
    assert_eq!(
        f.stdout(),
        "relative
"
    );
    f.assert_gone();
}

#[tokio::test]
async fn wait_shim_gone_waits_for_the_whole_shim() {
    use runtime::shim::wait_shim_gone;
    use std::time::Duration;
    let f = Fixture::new();
    let client = f.start(f.container(&["sleep", "1000"])).await;
    let shim = shim_pid(&f);
    let err = wait_shim_gone(&f.job_dir, Duration::from_millis(1)).unwrap_err();
    assert!(matches!(err, ShimError::StillRunning { .. }), "{err:?}");
    // The re-executed monitor still holds shim.lock.
    common::wait_for_monitor_exec(shim);
    let err = wait_shim_gone(&f.job_dir, Duration::from_millis(50)).unwrap_err();
    assert!(matches!(err, ShimError::StillRunning { .. }), "{err:?}");
    client.signal(9).await.unwrap();
    let status = client.wait().await.unwrap();
    assert_eq!(status.signal, Some(9));
    let dir = f.job_dir.clone();
    tokio::task::spawn_blocking(move || wait_shim_gone(&dir, Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap();
    assert!(!common::is_alive(shim), "shim {shim} still alive");
    f.assert_gone();
    // Nothing to wait for: a finished job, or one without a shim at all.
    wait_shim_gone(&f.job_dir, Duration::ZERO).unwrap();
    wait_shim_gone(f.tmp.path(), Duration::ZERO).unwrap();
}

#[tokio::test]
async fn a_second_shim_for_the_same_job_dir_is_refused() {
    let f = Fixture::new();
    let client = f.start(f.container(&["sleep", "1000"])).await;
    let err = runtime::shim::spawn(
        std::path::Path::new(common::SHIM_EXE),
        &f.job_dir,
        &f.shim_config(f.container(&["sleep", "1000"])),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("another shim"),
        "{err}\nshim.log: {}",
        f.shim_log()
    );
    // The first one is untouched.
    assert_eq!(client.state().await.unwrap().status, Status::Running);
    client.signal(9).await.unwrap();
    assert_eq!(client.wait().await.unwrap().signal, Some(9));
    f.assert_gone();
}

#[tokio::test]
async fn cleanup_while_the_shim_deletes_is_safe() {
    let f = Fixture::new();
    let client = f.start(f.container(&["sleep", "1000"])).await;
    client.signal(9).await.unwrap();
    // Races the shim's own delete, as an agent that does not wait for the shim would.
    let (root, id) = (f.state_root.clone(), f.id.clone());
    let cleaner = tokio::task::spawn_blocking(move || {
        for _ in 0..20 {
            runtime::shim::cleanup(&root, &id).unwrap();
        }
    });
    assert_eq!(client.wait().await.unwrap().signal, Some(9));
    cleaner.await.unwrap();
    f.assert_gone();
}

#[tokio::test]
async fn a_process_moved_into_the_cgroup_does_not_outlive_the_delete() {
    // The shim deletes an exited container with plain rmdirs; a cgroup that is still busy
    // (a process put there from outside the container) takes the full delete, which kills.
    let f = Fixture::new();
    let client = f.start(f.container(&["sleep", "1000"])).await;
    let mut stray = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    std::fs::write(
        f.cgroup_file("pids", "cgroup.procs"),
        stray.id().to_string(),
    )
    .unwrap();
    client.signal(9).await.unwrap();
    assert_eq!(client.wait().await.unwrap().signal, Some(9));
    f.assert_gone();
    let status = stray.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
}
