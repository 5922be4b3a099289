//! What a container can see and do: seccomp, capabilities, no-new-privileges, masked and
//! read-only paths, namespaces.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use common::{Fixture, status_field};
use runtime::NetworkMode;
use runtime::logs::Stream;

/// Docker's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
/// NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
const DOCKER_CAPS: &str = "00000000a80425fb";

const STATUS_SCRIPT: &str =
    "grep -E '^(Seccomp|NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status";

#[tokio::test]
async fn root_gets_docker_caps_seccomp_and_no_new_privs() {
    let f = Fixture::new();
    let script = format!(
        "{STATUS_SCRIPT}; \
         unshare -U true; echo unshare-exit=$?; \
         echo x > /tmp/f && chown 1000 /tmp/f && echo chown-ok; \
         linux32 uname -m"
    );
    let status = f.run(f.container(&["sh", "-c", &script])).await;
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    let out = f.stdout();
    assert_eq!(status_field(&out, "Seccomp"), "2", "seccomp filter mode");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert_eq!(status_field(&out, "CapEff"), DOCKER_CAPS);
    assert_eq!(status_field(&out, "CapPrm"), DOCKER_CAPS);
    assert_eq!(status_field(&out, "CapBnd"), DOCKER_CAPS);
    assert_eq!(status_field(&out, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&out, "CapAmb"), "0000000000000000");
    // Creating a user namespace needs no capability, so only seccomp can refuse it.
    assert!(out.contains("unshare-exit=1"), "{out}");
    assert!(
        f.output(Stream::Stderr).contains("Operation not permitted"),
        "{}",
        f.output(Stream::Stderr)
    );
    // CAP_CHOWN is granted; personality(PER_LINUX32) is one of the allowed values.
    assert!(out.contains("chown-ok"), "{out}");
    assert!(out.contains("i686") || out.contains("i386"), "{out}");
}

#[tokio::test]
async fn non_root_user_has_no_capabilities() {
    let f = Fixture::new();
    let mut c = f.container(&["sh", "-c", STATUS_SCRIPT]);
    c.user = "app".into();
    let status = f.run(c).await;
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    let out = f.stdout();
    assert_eq!(status_field(&out, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&out, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(&out, "CapBnd"), DOCKER_CAPS);
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert_eq!(status_field(&out, "Seccomp"), "2");
}

#[tokio::test]
async fn mount_is_refused_and_host_paths_are_masked() {
    let f = Fixture::new();
    let script = "mkdir -p /mnt; mount -t tmpfs none /mnt; echo mount-exit=$?; \
                  echo timer-list-bytes=$(head -c 16 /proc/timer_list | wc -c); \
                  echo firmware-entries=$(ls /sys/firmware | wc -l); \
                  echo 1 > /proc/sys/kernel/panic; echo sysctl-exit=$?; \
                  echo shm=$(df -k /dev/shm | tail -1 | awk '{print $2}')";
    let status = f.run(f.container(&["sh", "-c", script])).await;
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    let out = f.stdout();
    for want in [
        "mount-exit=1",
        "timer-list-bytes=0",
        "firmware-entries=0",
        "sysctl-exit=1",
        "shm=65536",
    ] {
        assert!(out.contains(want), "{want} not in {out}");
    }
    // Meaningful only because the host shows them.
    assert!(!std::fs::read("/proc/timer_list").unwrap().is_empty());
    assert!(std::fs::read_dir("/sys/firmware").unwrap().count() > 0);
    let err = f.output(Stream::Stderr);
    assert!(err.contains("mount: permission denied"), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
}

#[tokio::test]
async fn pid_uts_and_fresh_network_namespaces() {
    let f = Fixture::new();
    let script = "echo pid=$$; ls /sys/class/net; cat /sys/class/net/lo/flags; \
                  readlink /proc/self/ns/net";
    let status = f.run(f.container(&["sh", "-c", script])).await;
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    let out = f.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pid=1");
    // Only a loopback interface, brought up (IFF_UP | IFF_LOOPBACK).
    assert_eq!(lines[1], "lo");
    assert_eq!(lines[2], "0x9");
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(lines[3], host_ns.to_str().unwrap());
}

#[tokio::test]
async fn host_network_mode_shares_the_host_namespace() {
    let f = Fixture::new();
    let mut c = f.container(&["readlink", "/proc/self/ns/net"]);
    c.network = NetworkMode::Host;
    let status = f.run(c).await;
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(f.stdout().trim(), host_ns.to_str().unwrap());
}

#[tokio::test]
async fn path_network_mode_joins_that_namespace() {
    // A network namespace held by a host process, as the network crate will hold one.
    let mut holder = std::process::Command::new("unshare")
        .args(["--net", "sleep", "1000"])
        .spawn()
        .unwrap();
    let ns_path = format!("/proc/{}/ns/net", holder.id());
    // unshare execs sleep once the namespace exists.
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let mut target = std::fs::read_link(&ns_path).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while target == host_ns {
        assert!(
            std::time::Instant::now() < deadline,
            "unshare never unshared"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        target = std::fs::read_link(&ns_path).unwrap();
    }

    let f = Fixture::new();
    let mut c = f.container(&["readlink", "/proc/self/ns/net"]);
    c.network = NetworkMode::Path(ns_path.into());
    let status = f.run(c).await;
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    assert_eq!(f.stdout().trim(), target.to_str().unwrap());
}

#[tokio::test]
async fn init_starts_with_default_signal_dispositions_and_mask() {
    // The shim, a Rust program, ignores SIGPIPE; the container must not inherit that
    // (`yes | head -1` would never end) nor any blocked signal.
    let f = Fixture::new();
    let status = f
        .run(f.container(&["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"]))
        .await;
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    let out = f.stdout();
    assert_eq!(status_field(&out, "SigIgn"), "0000000000000000");
    assert_eq!(status_field(&out, "SigBlk"), "0000000000000000");
}
