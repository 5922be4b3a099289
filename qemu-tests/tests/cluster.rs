//! Three appliances from the ISO on a network of their own (a bridge inside a
//! network namespace this test creates: no route anywhere), configured by NoCloud
//! seeds alone (token, peers, host name, static address). They bootstrap
//! themselves (Layer 0 and Layer 1); the test checks the hosts and the controller
//! through every node's router (port 81), kills one VM's QEMU and checks the
//! others keep serving, boots it again on the same state disk (same host id and
//! subnet), then powers all three off and boots them again: the cluster serves
//! with no command typed.
//!
//! Ignored in the fast tier (they need root, QEMU and the ISO, and take minutes
//! under TCG); `scripts/test.sh` runs them (`--include-ignored`): the
//! three appliances unless `FLYNN_QEMU_CLUSTER=0` (about 6 minutes on two shared
//! cores) and the one-appliance baseline (about 2). Memory per VM:
//! `FLYNN_CLUSTER_MEMORY` (MiB, default 768).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use qemu_tests::{Cluster, appliance_out, static_flynn_host};

const BOOT: Duration = Duration::from_secs(600);
const BOOTSTRAP: Duration = Duration::from_secs(1500);
const SERVE: Duration = Duration::from_secs(600);
const STOP: Duration = Duration::from_secs(120);
const TOKEN: &str = "cluster-test-token-0123456789abcdef";

/// One scenario at a time: the harness runs tests in parallel, and four VMs at
/// once under TCG would starve each other on a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn memory_mb() -> u32 {
    std::env::var("FLYNN_CLUSTER_MEMORY")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(768)
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Retries `f` every 2 s until it succeeds or `timeout` passes.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: not after {timeout:?}; last: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

struct Env {
    c: Cluster,
    cli: PathBuf,
    /// `flynn` (a symlink to the static flynn-host) and its `FLYNNRC`.
    flynn: PathBuf,
    flynnrc: PathBuf,
}

impl Env {
    fn new(n: usize, work: &std::path::Path) -> Env {
        let out = appliance_out().unwrap_or_else(|e| panic!("{e}"));
        let cli = static_flynn_host().unwrap_or_else(|e| panic!("{e}"));
        let flynn = work.join("flynn");
        std::os::unix::fs::symlink(&cli, &flynn).unwrap();
        let c = Cluster::new(
            if n == 1 { "fc1" } else { "fc" },
            n,
            &out.join("flynn-x86_64.iso"),
            work,
            TOKEN,
            memory_mb(),
        )
        .unwrap();
        Env {
            c,
            cli,
            flynn,
            flynnrc: work.join("flynnrc"),
        }
    }

    /// Every node's router as a cluster of the CLI, over HTTPS verified by the
    /// cluster's pin (the one the bootstrap's line gives).
    fn add_clusters(&self, key: &str, pin: &str) {
        for (i, node) in self.c.nodes.iter().enumerate() {
            let url = format!("https://{}:81", node.address);
            let name = format!("node{}", i + 1);
            let out = self.flynn(&["cluster", "add", "-p", pin, &name, &url, key]);
            assert!(out.status.success(), "{}", text(&out));
        }
    }

    fn host_cli(&self, node: usize, args: &[&str]) -> Output {
        self.c
            .command_for(node, &self.cli)
            .args(args)
            .output()
            .unwrap()
    }

    fn flynn(&self, args: &[&str]) -> Output {
        self.c
            .netns
            .command(&self.flynn)
            .env("FLYNNRC", &self.flynnrc)
            .args(args)
            .output()
            .unwrap()
    }

    /// The cluster's hosts as node `via` sees them: id → (address, subnet).
    fn hosts(&self, via: usize) -> Result<BTreeMap<String, (String, String)>, String> {
        let out = self.host_cli(via, &["cluster", "hosts", "--json"]);
        if !out.status.success() {
            return Err(text(&out));
        }
        let hosts: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))?;
        Ok(hosts
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                (
                    h["id"].as_str().unwrap_or_default().to_string(),
                    (
                        h["address"].as_str().unwrap_or_default().to_string(),
                        h["subnet"].as_str().unwrap_or_default().to_string(),
                    ),
                )
            })
            .collect())
    }

    /// `flynn -c nodeN apps` (the controller through node N's router on port 81).
    fn apps(&self, node: usize) -> Result<String, String> {
        let out = self.flynn(&["-c", &format!("node{}", node + 1), "apps"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && stdout.contains("controller") {
            Ok(stdout)
        } else {
            Err(text(&out))
        }
    }

    fn wait_ready(&mut self, nodes: &[usize]) {
        for &i in nodes {
            let vm = self.c.vm(i).unwrap();
            let ready = vm
                .wait_ready(BOOT)
                .unwrap_or_else(|e| panic!("node{}: {e}", i + 1));
            eprintln!(
                "node{} ready after {:.1} s at {}",
                i + 1,
                ready.after.as_secs_f64(),
                ready.address
            );
            assert!(
                ready
                    .console
                    .contains("network: ip= from the NoCloud seed's user-data"),
                "node{}: the static address did not come from the seed",
                i + 1
            );
        }
    }

    fn all_serve(&self, nodes: &[usize], timeout: Duration) {
        for &i in nodes {
            let apps = eventually(
                &format!("flynn apps through node{}", i + 1),
                timeout,
                || self.apps(i),
            );
            eprintln!("node{}'s router serves the controller:\n{apps}", i + 1);
        }
    }
}

/// The `flynn cluster add -p PIN default URL KEY` line's key and pin, from a
/// console.
fn controller_key(console: &str) -> (String, String) {
    let at = console
        .rfind("flynn cluster add -p ")
        .unwrap_or_else(|| panic!("no `flynn cluster add` line on the console:\n{console}"));
    let words: Vec<&str> = console[at..]
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(words.len() >= 8, "not the line expected: {words:?}");
    (words[7].to_string(), words[4].to_string())
}

#[test]
#[ignore = "boots three appliances from the ISO under QEMU (root, minutes): scripts/test.sh runs it"]
fn three_appliances_bootstrap_survive_a_killed_vm_and_a_full_restart() {
    // Runs by default: about 6 minutes on the test machine's two shared cores
    // (load 7-9; 12 before the bootstrap's etcd requests waited 10 s rather than
    // 2 s). FLYNN_QEMU_CLUSTER=0 leaves it out of a run.
    if std::env::var_os("FLYNN_QEMU_CLUSTER").is_some_and(|v| v == "0") {
        eprintln!("skipped: FLYNN_QEMU_CLUSTER=0");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let mut env = Env::new(3, work.path());
    let all = [0, 1, 2];

    // 1. Three appliances boot from the seeds alone and bootstrap themselves.
    let t0 = Instant::now();
    for i in all {
        env.c.start(i).unwrap();
    }
    env.wait_ready(&all);
    let console = env
        .c
        .vm(0)
        .unwrap()
        .vm
        .wait_for("flynn.peers: the cluster is up", BOOTSTRAP)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "BENCH cluster bootstrapped (Layer 0 + Layer 1) {:.1} s after the VMs started",
        t0.elapsed().as_secs_f64()
    );
    let (key, pin) = controller_key(&console);
    let hosts = eventually("3 hosts in the cluster", SERVE, || {
        let h = env.hosts(1)?;
        if h.len() == 3 {
            Ok(h)
        } else {
            Err(format!("{h:?}"))
        }
    });
    eprintln!("hosts: {hosts:?}");
    env.add_clusters(&key, &pin);
    env.all_serve(&all, SERVE);

    // 2. SIGKILL node3's QEMU: the others keep serving.
    let victim = 2;
    let address = env.c.nodes[victim].address.to_string();
    let (victim_id, victim_subnet) = hosts
        .iter()
        .find(|(_, (a, _))| *a == address)
        .map(|(id, (_, s))| (id.clone(), s.clone()))
        .unwrap_or_else(|| panic!("node3 ({address}) is not in {hosts:?}"));
    env.c.kill(victim).unwrap();
    let t_kill = Instant::now();
    env.all_serve(&[0, 1], SERVE);
    eventually("node3's lease to lapse", SERVE, || {
        let h = env.hosts(0)?;
        if h.len() == 2 {
            Ok(())
        } else {
            Err(format!("{h:?}"))
        }
    });
    env.all_serve(&[0, 1], SERVE);
    eprintln!(
        "BENCH after the kill: node3 gone from the hosts and nodes 1-2 serving {:.1} s after the SIGKILL",
        t_kill.elapsed().as_secs_f64()
    );

    // 3. Boot it again on the same state disk: same host id, same subnet.
    let t_back = Instant::now();
    env.c.start(victim).unwrap();
    env.wait_ready(&[victim]);
    let back = eventually("node3 back in the cluster", SERVE, || {
        let h = env.hosts(0)?;
        if h.len() == 3 {
            Ok(h)
        } else {
            Err(format!("{h:?}"))
        }
    });
    assert_eq!(
        back.get(&victim_id),
        Some(&(address.clone(), victim_subnet.clone())),
        "node3 came back with another id or subnet: {back:?} (was {victim_id} {victim_subnet})"
    );
    env.all_serve(&all, SERVE);
    eprintln!(
        "BENCH node3 rejoined (same id {victim_id}, subnet {victim_subnet}) and serves {:.1} s after its boot",
        t_back.elapsed().as_secs_f64()
    );

    // 4. Power all three off (ACPI button), boot all three: it serves again.
    for i in all {
        env.c.vm(i).unwrap().power_button().unwrap();
    }
    for i in all {
        let vm = env.c.vm(i).unwrap();
        vm.vm
            .wait_exit(STOP)
            .unwrap_or_else(|e| panic!("node{} did not power off: {e}", i + 1));
        let console = vm.vm.console();
        assert!(
            console.contains("flynn-init: unmounted /var/lib/flynn cleanly"),
            "node{}: {}",
            i + 1,
            qemu_tests::console_tail(&console)
        );
        env.c.nodes[i].vm = None;
    }
    let t_restart = Instant::now();
    for i in all {
        env.c.start(i).unwrap();
    }
    env.wait_ready(&all);
    env.all_serve(&all, SERVE);
    eprintln!(
        "BENCH after a full power-off: all three routers serve the controller {:.1} s after the VMs started",
        t_restart.elapsed().as_secs_f64()
    );
    let again = env.hosts(1).unwrap();
    assert_eq!(
        again.keys().collect::<Vec<_>>(),
        hosts.keys().collect::<Vec<_>>(),
        "{again:?}"
    );
    assert_eq!(again, hosts, "the hosts' addresses and subnets changed");
    for i in all {
        let vm = env.c.vm(i).unwrap();
        for bad in ["FATAL", "Kernel panic", "panicked"] {
            assert!(
                !vm.vm.console().contains(bad),
                "node{}: {bad:?} on the console",
                i + 1
            );
        }
    }
}

/// The baseline for the benchmark: one appliance whose seed names itself as the
/// only peer (a cluster of one: it bootstraps itself, as the three do), then
/// killed and booted again, then powered off and booted again.
#[test]
#[ignore = "boots an appliance from the ISO under QEMU (root, minutes): scripts/test.sh runs it"]
fn one_appliance_baseline_bootstrap_kill_and_restart() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let mut env = Env::new(1, work.path());
    let t0 = Instant::now();
    env.c.start(0).unwrap();
    env.wait_ready(&[0]);
    let console = env
        .c
        .vm(0)
        .unwrap()
        .vm
        .wait_for("flynn.peers: the cluster is up", BOOTSTRAP)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "BENCH 1 VM bootstrapped (Layer 0 + Layer 1) {:.1} s after the VM started",
        t0.elapsed().as_secs_f64()
    );
    let (key, pin) = controller_key(&console);
    env.add_clusters(&key, &pin);
    env.all_serve(&[0], SERVE);

    env.c.kill(0).unwrap();
    let t_kill = Instant::now();
    env.c.start(0).unwrap();
    env.wait_ready(&[0]);
    env.all_serve(&[0], SERVE);
    eprintln!(
        "BENCH 1 VM killed and booted again: serving {:.1} s after the SIGKILL",
        t_kill.elapsed().as_secs_f64()
    );

    env.c.power_off(0, STOP).unwrap();
    let t_restart = Instant::now();
    env.c.start(0).unwrap();
    env.wait_ready(&[0]);
    env.all_serve(&[0], SERVE);
    eprintln!(
        "BENCH 1 VM after a power-off: serving {:.1} s after the VM started",
        t_restart.elapsed().as_secs_f64()
    );
}
