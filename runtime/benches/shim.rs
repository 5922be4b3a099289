//! Container start-to-exit latency through the shim, against `runc run` of the same
//! OCI spec (seccomp profile included) in the same run, rounds alternating; plus the
//! resident memory of a shim supervising `sleep`.
//!
//! `cargo bench -p flynn-runtime --bench shim` (root; runc on PATH). Informal numbers:
//! no assertion is made on them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runtime::shim::{self, ShimClient, ShimConfig};
use runtime::{ContainerConfig, NetworkMode, Resources};

const SHIM_EXE: &str = env!("CARGO_BIN_EXE_flynn-shim-test");
const ROUNDS: usize = 20;

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn busybox_rootfs(root: &Path) {
    for dir in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for applet in ["true", "sleep", "sh"] {
        symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
}

fn container(rootfs: &Path, args: &[&str]) -> ContainerConfig {
    ContainerConfig {
        id: random_id(),
        rootfs: rootfs.to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![],
        cwd: String::new(),
        user: String::new(),
        hostname: String::new(),
        resources: Resources::default(),
        tty: false,
        stdin: false,
        network: NetworkMode::New,
        mounts: Vec::new(),
        security: Default::default(),
    }
}

struct Job {
    dir: PathBuf,
    cfg: ShimConfig,
}

fn job(base: &Path, rootfs: &Path, args: &[&str]) -> Job {
    let c = container(rootfs, args);
    let dir = base.join(&c.id[..8]);
    std::fs::create_dir_all(&dir).expect("job dir");
    Job {
        cfg: ShimConfig {
            log_path: dir.join("log.json"),
            log_rotation: None,
            state_root: base.join("containers"),
            container: c,
        },
        dir,
    }
}

fn mean_ms(samples: &[Duration]) -> f64 {
    samples.iter().map(|d| d.as_secs_f64()).sum::<f64>() * 1000.0 / samples.len() as f64
}

fn status_kb(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median_ms(samples: &[Duration]) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Default)]
struct Rounds {
    created: Vec<Duration>,
    started: Vec<Duration>,
    exited: Vec<Duration>,
    gone: Vec<Duration>,
}

/// One `true` through the shim, as the agent runs it: spawn, start, wait; then wait for
/// the shim to finish deleting the container. Returns the spec it ran.
async fn shim_round(base: &Path, rootfs: &Path, exe: &Path, r: &mut Rounds) -> PathBuf {
    let j = job(base, rootfs, &["true"]);
    let t0 = Instant::now();
    let c = shim::spawn(exe, &j.dir, &j.cfg).await.expect("spawn");
    r.created.push(t0.elapsed());
    c.start().await.expect("start");
    r.started.push(t0.elapsed());
    let client = ShimClient::connect(&j.dir).await.expect("connect");
    client.wait().await.expect("wait");
    r.exited.push(t0.elapsed());
    let dir = j.dir.clone();
    tokio::task::spawn_blocking(move || shim::wait_shim_gone(&dir, Duration::from_secs(60)))
        .await
        .expect("join")
        .expect("shim gone");
    r.gone.push(t0.elapsed());
    j.dir.join("config.json")
}

/// `runc run` of the spec the shim wrote (seccomp profile, mounts, namespaces included):
/// create, start, wait, delete.
fn runc_round(base: &Path, spec: &str, i: usize) -> Option<Duration> {
    let id = format!("flynn-bench-{i}-{}", std::process::id());
    let bundle = base.join(&id);
    std::fs::create_dir_all(&bundle).expect("bundle");
    let mut v: serde_json::Value = serde_json::from_str(spec).expect("json");
    v["linux"]["cgroupsPath"] = serde_json::Value::String(format!("/flynn-bench/{id}"));
    std::fs::write(bundle.join("config.json"), v.to_string()).expect("write spec");
    let t0 = Instant::now();
    let status = std::process::Command::new("runc")
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Some(t0.elapsed()),
        other => {
            eprintln!("runc run failed: {other:?}");
            None
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rootfs = tmp.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let exe = Path::new(SHIM_EXE);

    // The host's first container compiles the seccomp profile; later ones load it.
    let mut first = Rounds::default();
    let spec_path = shim_round(tmp.path(), &rootfs, exe, &mut first).await;
    let spec = std::fs::read_to_string(&spec_path).expect("spec");
    assert!(
        spec.contains("\"seccomp\""),
        "the spec has no seccomp profile"
    );

    // Alternating, so that both see the same background load.
    let mut r = Rounds::default();
    let mut runc = vec![];
    let mut runc_ok = true;
    for i in 0..ROUNDS {
        shim_round(tmp.path(), &rootfs, exe, &mut r).await;
        if runc_ok {
            match runc_round(tmp.path(), &spec, i) {
                Some(d) => runc.push(d),
                None => runc_ok = false,
            }
        }
    }

    println!("`true` through the shim (seccomp on), {ROUNDS} rounds, median (mean):");
    for (what, samples) in [
        ("spawn -> created", &r.created),
        ("spawn -> started", &r.started),
        ("spawn -> exit known to waiter", &r.exited),
        ("spawn -> shim gone (deleted)", &r.gone),
    ] {
        println!(
            "  {what:30} {:7.2} ms ({:7.2})",
            median_ms(samples),
            mean_ms(samples)
        );
    }
    println!(
        "  first container, compiling seccomp: exit known after {:.2} ms",
        mean_ms(&first.exited)
    );
    if !runc.is_empty() {
        let (m, a) = (median_ms(&runc), mean_ms(&runc));
        println!("  runc run, same spec (anchor)   {m:7.2} ms ({a:7.2})");
        println!(
            "  ratio exit known / runc        {:7.2}    ({:7.2})",
            median_ms(&r.exited) / m,
            mean_ms(&r.exited) / a
        );
    }

    let j = job(tmp.path(), &rootfs, &["sleep", "1000"]);
    let c = shim::spawn(exe, &j.dir, &j.cfg).await.expect("spawn");
    let shim_pid = c.shim_pid();
    let before = (
        status_kb(shim_pid, "VmRSS:"),
        status_kb(shim_pid, "RssAnon:"),
    );
    c.start().await.expect("start");
    let client = ShimClient::connect(&j.dir).await.expect("connect");
    // The monitor re-executes itself after a short grace period.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !std::fs::read(format!("/proc/{shim_pid}/environ"))
            .unwrap_or_default()
            .split(|&b| b == 0)
            .any(|kv| kv.starts_with(shim::MONITOR_ENV.as_bytes()))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The monitor settles (drops the pages its start-up touched) once it runs its loop.
    std::thread::sleep(Duration::from_millis(200));
    let after = [
        status_kb(shim_pid, "VmRSS:"),
        status_kb(shim_pid, "RssAnon:"),
        status_kb(shim_pid, "RssFile:"),
    ];
    let pss = std::fs::read_to_string(format!("/proc/{shim_pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    let monitor = std::fs::read_link(format!("/proc/{shim_pid}/exe")).unwrap_or_default();
    println!(
        "shim RSS while the container waits for start: {} kB ({} kB anon)",
        before.0, before.1
    );
    println!(
        "shim RSS monitoring `sleep`: {} kB ({} kB anon, {} kB file-backed, shared), PSS {pss}; \
         monitor binary {monitor:?}",
        after[0], after[1], after[2]
    );
    client.signal(9).await.expect("kill");
    client.wait().await.expect("wait");
}
