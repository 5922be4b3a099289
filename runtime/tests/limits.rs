//! Resource limits reach the cgroups and are enforced; OOM kills are reported.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::path::Path;

use common::Fixture;
use runtime::Resources;
use runtime::logs::Stream;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {path:?}: {e}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn limits_are_written_to_the_cgroups() {
    let f = Fixture::new();
    let mut c = f.container(&["sleep", "1000"]);
    c.resources = Resources {
        memory: Some(64 << 20),
        cpus: Some(0.5),
        pids_limit: Some(20),
    };
    let client = f.start(c).await;
    let state = client.state().await.unwrap();

    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if unified {
        let dir = Path::new("/sys/fs/cgroup/flynn").join(&f.id);
        assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
        assert_eq!(read(&dir.join("pids.max")), "20");
        assert_eq!(read(&dir.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&dir.join("memory.swap.max")), "0");
        assert!(read(&dir.join("cgroup.procs")).contains(&state.pid.to_string()));
    } else {
        assert_eq!(read(&f.cgroup_file("cpu", "cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&f.cgroup_file("cpu", "cpu.cfs_period_us")), "100000");
        assert_eq!(read(&f.cgroup_file("pids", "pids.max")), "20");
        let limit = (64u64 << 20).to_string();
        assert_eq!(
            read(&f.cgroup_file("memory", "memory.limit_in_bytes")),
            limit
        );
        assert_eq!(
            read(&f.cgroup_file("memory", "memory.memsw.limit_in_bytes")),
            limit,
            "swap must not add to the memory limit"
        );
        for controller in ["cpu", "pids", "memory", "devices", "freezer"] {
            let procs = read(&f.cgroup_file(controller, "cgroup.procs"));
            assert!(
                procs.lines().any(|p| p == state.pid.to_string()),
                "init not in {controller}: {procs}"
            );
        }
    }

    client.signal(9).await.unwrap();
    let status = client.wait().await.unwrap();
    assert_eq!((status.code, status.signal), (None, Some(9)));
    assert_eq!(status.exit_code(), 137);
    assert!(!status.oom_killed);
    f.assert_gone();
}

#[tokio::test]
async fn memory_limit_triggers_the_oom_killer() {
    let f = Fixture::new();
    let mut c = f.container(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    c.resources.memory = Some(16 << 20);
    let status = f.run(c).await;
    assert!(status.oom_killed, "{status:?} {}", f.output(Stream::Stderr));
    assert_eq!(status.signal, Some(9));
    assert_eq!(status.exit_code(), 137);
}

#[tokio::test]
async fn a_fork_bomb_hits_the_pids_limit() {
    let f = Fixture::new();
    let mut c = f.container(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 50 ]; do sleep 1000 & i=$((i+1)); echo $i; done",
    ]);
    c.resources.pids_limit = Some(10);
    let status = f.run(c).await;
    let err = f.output(Stream::Stderr);
    assert!(err.contains("can't fork"), "{err}");
    assert_ne!(status.code, Some(0));
    let started: u32 = f
        .stdout()
        .lines()
        .last()
        .map(|l| l.parse().unwrap())
        .unwrap_or(0);
    // sh itself is one of the 10.
    assert!(started <= 9, "{started} background processes started");
    assert!(!status.oom_killed);
}
