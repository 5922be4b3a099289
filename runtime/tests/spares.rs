//! Spare shims (`runtime::shim::Spares`): a job's start takes the spare that waits
//! for it, and a spare that is gone is replaced by a shim spawned the usual way.
//! In a test binary of its own: it looks for spares among all processes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Fixture, SHIM_EXE};
use runtime::shim::Spares;

/// The pids of the processes running `SHIM_EXE shim --spare`.
fn spare_pids() -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() >= 3
            && args[0] == SHIM_EXE.as_bytes()
            && args[1] == b"shim"
            && args[2] == b"--spare"
        {
            pids.push(pid);
        }
    }
    pids
}

/// A new spare's pid, once the pool holds it (its process runs a moment before:
/// on a loaded machine a start in between would not take it).
async fn wait_for_spare(spares: &Spares, not: &[i32]) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = spare_pids().into_iter().find(|p| !not.contains(p))
            && spares.is_ready().await
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no spare shim appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_echo(spares: &std::sync::Arc<Spares>, word: &str) -> i32 {
    let f = Fixture::new();
    let cfg = f.shim_config(f.container(&["echo", word]));
    let created = match spares.spawn(&f.job_dir, &cfg).await {
        Ok(created) => created,
        Err(e) => panic!("create failed: {e}\nshim.log: {}", f.shim_log()),
    };
    let shim_pid = created.shim_pid();
    created.start().await.unwrap();
    let status = f.wait_exit().await;
    assert_eq!(status.code, Some(0), "{status:?}");
    f.assert_gone();
    assert_eq!(f.output(runtime::logs::Stream::Stdout), format!("{word}\n"));
    shim_pid
}

#[tokio::test]
async fn a_start_takes_the_spare_and_a_spare_that_is_gone_is_replaced() {
    let spares = Spares::new(Path::new(SHIM_EXE));
    let first = wait_for_spare(&spares, &[]).await;
    // The spare is the job's shim, and a new spare takes its place.
    assert_eq!(run_echo(&spares, "one").await, first);
    let second = wait_for_spare(&spares, &[first]).await;

    // A spare killed while it waits: the start spawns a shim instead, and succeeds.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while spare_pids().contains(&second) {
        assert!(Instant::now() < deadline, "the killed spare is still there");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shim = run_echo(&spares, "two").await;
    assert_ne!(shim, second);

    // Dropping the pool (the agent exiting) ends the spare that waits.
    let third = wait_for_spare(&spares, &[first, second]).await;
    drop(spares);
    let deadline = Instant::now() + Duration::from_secs(10);
    while spare_pids().contains(&third) {
        assert!(Instant::now() < deadline, "a spare outlived its pool");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
