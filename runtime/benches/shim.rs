//! Container start-to-exit latency through the shim, against `runc run` of the same
//! OCI spec in the same run, plus the resident memory of a shim supervising `sleep`.
//!
//! `cargo bench -p flynn-runtime --bench shim` (root; runc on PATH). Informal numbers:
//! no assertion is made on them.

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
        network: NetworkMode::New,
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rootfs = tmp.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let exe = Path::new(SHIM_EXE);

    let (mut created, mut started, mut exited) = (vec![], vec![], vec![]);
    let mut spec_path = None;
    for _ in 0..ROUNDS {
        let j = job(tmp.path(), &rootfs, &["true"]);
        let t0 = Instant::now();
        let c = shim::spawn(exe, &j.dir, &j.cfg).await.expect("spawn");
        created.push(t0.elapsed());
        c.start().await.expect("start");
        started.push(t0.elapsed());
        let client = ShimClient::connect(&j.dir).await.expect("connect");
        client.wait().await.expect("wait");
        exited.push(t0.elapsed());
        spec_path = Some(j.dir.join("config.json"));
    }

    // runc runs the very spec the shim wrote (seccomp, mounts, namespaces included).
    let mut runc = vec![];
    if let Some(spec_path) = spec_path {
        let spec = std::fs::read_to_string(&spec_path).expect("spec");
        for i in 0..ROUNDS {
            let id = format!("flynn-bench-{i}-{}", std::process::id());
            let bundle = tmp.path().join(&id);
            std::fs::create_dir_all(&bundle).expect("bundle");
            let mut v: serde_json::Value = serde_json::from_str(&spec).expect("json");
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
                Ok(s) if s.success() => runc.push(t0.elapsed()),
                other => {
                    eprintln!("runc run failed: {other:?}");
                    break;
                }
            }
        }
    }

    println!("`true` through the shim, mean of {ROUNDS}:");
    println!("  spawn -> created  {:7.2} ms", mean_ms(&created));
    println!("  spawn -> started  {:7.2} ms", mean_ms(&started));
    println!("  spawn -> exited   {:7.2} ms", mean_ms(&exited));
    if !runc.is_empty() {
        let r = mean_ms(&runc);
        println!("  runc run (anchor) {r:7.2} ms");
        println!("  ratio shim/runc   {:7.2}", mean_ms(&exited) / r);
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
    let after = [
        status_kb(shim_pid, "VmRSS:"),
        status_kb(shim_pid, "RssAnon:"),
        status_kb(shim_pid, "RssFile:"),
    ];
    println!(
        "shim RSS while the container waits for start: {} kB ({} kB anon)",
        before.0, before.1
    );
    println!(
        "shim RSS monitoring `sleep`: {} kB ({} kB anon, {} kB file-backed, shared)",
        after[0], after[1], after[2]
    );
    client.signal(9).await.expect("kill");
    client.wait().await.expect("wait");
}
