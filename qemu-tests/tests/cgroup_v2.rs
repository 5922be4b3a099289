//! Resource limits on a pure cgroup v2 host (the appliance's mode), which this
//! machine (hybrid cgroups) cannot provide: boot the Debian kernel with an
//! initramfs holding our static flynn-host, mount only cgroup2, and run jobs
//! with memory, CPU and pids limits in the VM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::time::Duration;

use qemu_tests::{
    HOST_MODULES, Initramfs, Kernel, Vm, VmConfig, static_flynn_host, workspace_root,
};

/// PID 1 in the VM: move to a tmpfs root (pivot_root cannot leave the initramfs
/// rootfs), then set up a cgroup-v2-only host and run the test script.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
if [ "$$" = 1 ] && [ ! -e /.switched ]; then
    mount -t proc proc /proc
    mkdir -p /newroot && mount -t tmpfs -o mode=0755 root /newroot
    for d in bin lib images test.sh env.sh init; do [ -e /$d ] && cp -a /$d /newroot/; done
    mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/tmp /newroot/run /newroot/var/lib/flynn /newroot/etc
    touch /newroot/.switched
    umount /proc
    exec switch_root /newroot /init
fi
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m || echo "FLYNN-INIT insmod $m failed"; done
echo "+cpu +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
echo "FLYNN-INIT cgroup: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
# Where everything stands, on the console: the daemon's log (each step of a start at
# debug level), every shim's log, and where each of our processes waits in the kernel.
dump() {
    echo "FLYNN-DUMP begin ($1)"
    echo "--- daemon.log"; cat /tmp/daemon.log
    for f in /var/lib/flynn/jobs/*/shim.log; do [ -e "$f" ] && { echo "--- $f"; cat "$f"; }; done
    for p in /proc/[0-9]*; do
        c=$(tr '\0' ' ' <$p/cmdline 2>/dev/null)
        case "$c" in *flynn*|*sleep*)
            echo "--- pid ${p#/proc/} [$c] $(grep State $p/status) wchan=$(cat $p/wchan 2>/dev/null)"
            for t in $p/task/*; do echo "  task ${t##*/}: $(cat $t/stack 2>/dev/null | head -12 | tr '\n' '|')"; done;;
        esac
    done
    echo "FLYNN-DUMP end"
}
export FLYNN_LOG=debug
[ -f /env.sh ] && . /env.sh
flynn-host daemon >/tmp/daemon.log 2>&1 &
i=0
until flynn-host version >/dev/null 2>&1; do
    i=$((i+1)); [ $i -gt 600 ] && { echo "FLYNN-INIT daemon did not start"; dump start; poweroff -f; }
    sleep 0.1
done
# The host gives up at 600 s; the guest tells what it was doing well before.
( sleep ${FLYNN_WATCHDOG:-300}; echo "FLYNN-WATCHDOG the test script is still running after ${FLYNN_WATCHDOG:-300} s"; dump watchdog ) &
sh /test.sh >/tmp/test.out 2>&1
cat /tmp/test.out
grep -q FAIL /tmp/test.out && dump failure
echo "FLYNN-TEST-DONE"
grep -i panic /tmp/daemon.log && echo "FLYNN-DAEMON-PANICKED"
poweroff -f
"#;

const TEST: &str = r#"# Every command is bounded: one that hangs is a FAIL with the logs dumped, not a
# silent console.
B() { timeout 120 flynn-host "$@"; r=$?; [ $r = 143 ] && echo "FAIL timed out: flynn-host $*"; return $r; }
B import /images/busybox-docker.tar >/dev/null || echo "FAIL import"
echo "R-ECHO $(B run --rm busybox echo hello)"
id=$(B run -d -m 64M --cpus 0.5 --pids-limit 20 busybox sleep 60) || echo "FAIL run -d with limits"
echo "R-MEM $(cat /sys/fs/cgroup/flynn/$id/memory.max)"
echo "R-CPU $(cat /sys/fs/cgroup/flynn/$id/cpu.max)"
echo "R-PIDS $(cat /sys/fs/cgroup/flynn/$id/pids.max)"
B rm -f $id >/dev/null
if [ -e /sys/fs/cgroup/flynn/$id ]; then echo "R-GONE no"; else echo "R-GONE yes"; fi
B run --name hog -m 16M busybox dd if=/dev/zero of=/dev/null bs=64M count=1
echo "R-OOM-EXIT $?"
echo "R-OOM-FLAG $(B inspect hog | grep -c '"oom_killed": true')"
echo "R-PIDCOUNT $(B run --rm --pids-limit 10 busybox sh -c '(for i in $(seq 1 30); do sleep 5 & done) 2>/dev/null; set -- /proc/[0-9]*; echo $#')"
"#;

fn marker<'a>(console: &'a str, key: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no {key} line on the console:\n{console}"))
        .trim()
}

/// Boots the test VM with `test` as its script and `env` (shell lines) sourced
/// before the daemon starts; returns the console once the script is done.
fn boot_with(name: &str, test: &str, env: &str) -> String {
    boot_for(name, test, env, Duration::from_secs(600))
}

/// As [`boot_with`], waiting up to `limit` for the script.
fn boot_for(name: &str, test: &str, env: &str, limit: Duration) -> String {
    let bin = static_flynn_host().unwrap_or_else(|e| panic!("{e}"));
    let kernel = Kernel::find().unwrap_or_else(|e| panic!("{e}"));
    let fixtures = std::env::var_os("FLYNN_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/fixtures"));
    let images = fixtures.join("busybox-docker.tar");
    assert!(
        images.is_file(),
        "{} missing: run fixtures/build-images.sh",
        images.display()
    );

    let work = tempfile::tempdir().unwrap();
    let mut fs = Initramfs::new();
    fs.busybox(std::path::Path::new("/bin/busybox")).unwrap();
    fs.file("bin/flynn-host", &bin).unwrap();
    // The lean per-container monitor goes beside the binary, as in the appliance.
    let monitor = bin.with_file_name("flynn-shim-monitor");
    if monitor.is_file() {
        fs.file("bin/flynn-shim-monitor", &monitor).unwrap();
    }
    fs.file("images/busybox-docker.tar", &images).unwrap();
    fs.bytes("init", INIT, 0o755);
    fs.bytes("test.sh", test, 0o644);
    if !env.is_empty() {
        fs.bytes("env.sh", env, 0o644);
    }
    let modules = kernel.modules_with_deps(HOST_MODULES).unwrap();
    let mut order = String::new();
    for module in &modules {
        let name = module.file_name().unwrap().to_str().unwrap();
        fs.file(&format!("lib/modules/{name}"), module).unwrap();
        order.push_str(name);
        order.push('\n');
    }
    fs.bytes("lib/modules/order", order, 0o644);
    let initrd = work.path().join("initrd.gz");
    fs.write(&initrd).unwrap();

    let logs = workspace_root().join("target/qemu-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut vm = Vm::start(&VmConfig {
        kernel: kernel.image.clone(),
        initrd,
        append: "quiet panic=-1 rdinit=/init".to_string(),
        memory_mb: 1024,
        cpus: 2,
        console_log: logs.join(format!("{name}.log")),
        extra: vec!["-nic".into(), "none".into()],
    })
    .unwrap();
    let console = vm
        .wait_for("FLYNN-TEST-DONE", limit)
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = vm.wait_exit(Duration::from_secs(60));
    console
}

#[test]
fn limits_hold_on_a_pure_cgroup_v2_host() {
    let console = boot_with("cgroup_v2", TEST, "");

    assert!(
        console.contains("FLYNN-INIT cgroup: cpu memory pids"),
        "{console}"
    );
    assert_eq!(marker(&console, "R-ECHO"), "hello");
    assert_eq!(marker(&console, "R-MEM"), (64u64 << 20).to_string());
    assert_eq!(marker(&console, "R-CPU"), "50000 100000");
    assert_eq!(marker(&console, "R-PIDS"), "20");
    assert_eq!(marker(&console, "R-GONE"), "yes");
    assert_eq!(marker(&console, "R-OOM-EXIT"), "137");
    assert_eq!(marker(&console, "R-OOM-FLAG"), "1");
    let pids: u32 = marker(&console, "R-PIDCOUNT").parse().unwrap_or(0);
    assert!(
        pids > 0 && pids <= 10,
        "processes under a pids limit of 10: {pids}"
    );
    assert!(!console.contains("FLYNN-DAEMON-PANICKED"), "{console}");
    assert!(!console.contains("FAIL"), "{console}");
}

/// A start whose shim hangs (as one stuck in the kernel would) fails within its
/// bound on the appliance's cgroup mode too, and the guest puts the daemon's
/// step log and the shim's log on the console, so a hang explains itself.
#[test]
fn a_hung_start_fails_in_time_and_the_guest_shows_why() {
    let test = r#"B() { timeout 120 flynn-host "$@"; r=$?; [ $r = 143 ] && echo "FAIL timed out: flynn-host $*"; return $r; }
B import /images/busybox-docker.tar >/dev/null || echo "FAIL import"
t0=$(cut -d. -f1 /proc/uptime)
B run -d --net none busybox sleep 60 >/tmp/run.out 2>&1 && echo "R-UNEXPECTED started"
echo "R-SECONDS $(( $(cut -d. -f1 /proc/uptime) - t0 ))"
echo "R-ERROR $(tr '\n' ' ' </tmp/run.out)"
echo "FAIL (expected) the start was refused"
"#;
    let env = "export FLYNN_SHIM_HANG_AT=settled FLYNN_SHIM_TIMEOUT=5\n";
    let console = boot_with("cgroup_v2_hung", test, env);
    assert!(!console.contains("R-UNEXPECTED"), "{console}");
    assert!(
        marker(&console, "R-ERROR").contains("creating the container"),
        "{console}"
    );
    let secs: u64 = marker(&console, "R-SECONDS").parse().unwrap_or(999);
    assert!(secs < 60, "the failed start took {secs} s");
    // The dump: the daemon's step lines and the shim's own log.
    assert!(console.contains("FLYNN-DUMP begin (failure)"), "{console}");
    assert!(console.contains("start: config written"), "{console}");
    assert!(console.contains("step: settled"), "{console}");
    assert!(!console.contains("FLYNN-DAEMON-PANICKED"), "{console}");
}

/// The sequence that once hung (a start, then a detached start with limits, then its
/// removal), many times in one guest: half the rounds beside two busy loops at the
/// normal policy, which leave the spare shim (`SCHED_IDLE` until it has a job) only
/// the CPU time nothing else wants. Every command is bounded, so a start that waits
/// for ever fails the round with the guest's dump. `FLYNN_STRESS_ROUNDS` (default 8)
/// sets the number of rounds.
#[test]
fn starts_with_limits_in_a_loop_never_hang() {
    let rounds: u32 = std::env::var("FLYNN_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let test = format!(
        r#"B() {{ timeout 60 flynn-host "$@"; r=$?; [ $r = 143 ] && echo "FAIL timed out: flynn-host $*"; return $r; }}
B import /images/busybox-docker.tar >/dev/null || echo "FAIL import"
i=0
while [ $i -lt {rounds} ]; do
    i=$((i+1))
    hogs=""
    if [ $((i % 2)) = 0 ]; then
        sh -c 'while :; do :; done' & hogs="$!"
        sh -c 'while :; do :; done' & hogs="$hogs $!"
    fi
    [ "$(B run --rm busybox echo hello)" = hello ] || echo "FAIL round $i: run --rm"
    id=$(B run -d -m 64M --cpus 0.5 --pids-limit 20 busybox sleep 60) || echo "FAIL round $i: run -d with limits"
    [ "$(cat /sys/fs/cgroup/flynn/$id/pids.max 2>/dev/null)" = 20 ] || echo "FAIL round $i: no pids limit"
    B rm -f $id >/dev/null || echo "FAIL round $i: rm -f"
    [ -n "$hogs" ] && kill $hogs
    [ -e /sys/fs/cgroup/flynn/$id ] && echo "FAIL round $i: cgroup left"
done
echo "R-ROUNDS $i"
"#
    );
    // A round takes a few seconds under TCG; the bound is for a hang, not a figure.
    let limit = Duration::from_secs(600 + 30 * u64::from(rounds));
    let env = format!("export FLYNN_WATCHDOG={}\n", limit.as_secs() - 120);
    let console = boot_for("cgroup_v2_loop", &test, &env, limit);
    assert_eq!(marker(&console, "R-ROUNDS"), rounds.to_string());
    assert!(!console.contains("FLYNN-DAEMON-PANICKED"), "{console}");
    assert!(!console.contains("FAIL"), "{console}");
}
