//! Benchmark of Layer 0 on three test hosts (namespaces on a switch, standalone agents
//! sharing a token; tests/grid/harness.rs), not a test: it reports, it asserts nothing.
//!
//! 1. `flynn-host bootstrap` to Layer 0 ready (etcd of three members, every host in the
//!    grid, the schedulers leading), and on to the first scheduled job running, against
//!    the anchor measured in the same run: one bare etcd process started to healthy
//!    on the same switch (the floor of any cluster's start).
//! 2. Host loss to the formation whole again: a power cut of a host with web jobs
//!    (its agent, its containers and its network gone at once; neither the etcd
//!    leader's host nor the leading scheduler's, whose loss adds an election) with 5
//!    web jobs spread over three hosts, until 5 run on the other two as their agents
//!    say. Its anchor, measured in the same round: the lost host's lease ending (the
//!    host gone from `cluster hosts`), the floor of any heal. Target: the lease TTL
//!    + 2 s, printed as the ratio to it.
//!
//! Run as root: `cargo bench -p flynn-host --bench cluster` (ROUNDS=3 rounds, each a
//! fresh cluster; TTL=3, the hosts' lease in seconds). `--profile dev` reuses the
//! test build (the figures are I/O and timers, not code speed).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

#[path = "../tests/grid/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, EtcdProc, new_netns, sh, wait_for};

const TOKEN: &str = "cluster-bench-token-0123456789";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The bench's web jobs running on hosts `on`, as their agents say (the platform's
/// controllers are of type web too).
fn running_web(c: &Cluster, on: &[u8]) -> usize {
    on.iter()
        .map(|n| {
            c.host(*n)
                .jobs_labelled("flynn.formation=bench/web")
                .iter()
                .filter(|j| j["state"] == "running")
                .count()
        })
        .sum()
}

/// The host (1..=3) whose etcd member leads, asked with the host's client certificate.
fn etcd_leader(c: &Cluster) -> Option<u8> {
    (1..=3u8).find(|n| {
        let h = c.host(*n);
        let dir = h.state.path().join("tls/platform");
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", h.netns))
            .args(["--", "curl", "-sS", "-m", "3", "-X", "POST", "-d", "{}"])
            .arg("--cacert")
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"))
            .arg(format!("https://{}:2379/v3/maintenance/status", h.ip))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["leader"].is_string() && v["leader"] == v["header"]["member_id"]
    })
}

/// The host running the leading scheduler.
fn scheduler_host(c: &Cluster) -> Option<u8> {
    let l: serde_json::Value = serde_json::from_slice(
        &c.host(1)
            .cli(&["discover", "list", "flynn-scheduler", "--json"])
            .stdout,
    )
    .unwrap_or_default();
    let leader = l[0]["leader"].as_str()?;
    let inst = l[0]["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == leader)?;
    let addr = inst["addr"].as_str()?;
    c.hosts
        .iter()
        .find(|h| addr.starts_with(&format!("{}:", h.ip)))
        .map(|h| h.n)
}

fn web_jobs(c: &Cluster, lost: Option<&str>) -> usize {
    let out = c.host(1).cli(&["cluster", "ps", "--json"]);
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    // The bench's own: the platform's controllers are web jobs too (app controller).
    jobs.iter()
        .filter(|j| {
            j["app"] == "bench" && j["process_type"] == "web" && lost.is_none_or(|l| j["host"] != l)
        })
        .count()
}

fn main() {
    let rounds = env("ROUNDS", 3) as usize;
    let ttl = env("TTL", 3);
    let (mut anchor, mut layer0, mut first_job, mut heal) = (vec![], vec![], vec![], vec![]);
    let (mut lease_gone, mut whole_bootstrap) = (vec![], vec![]);
    // Each step's time (from its events' timestamps), to show where the time goes.
    let mut per_step: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..rounds {
        // Anchor: a bare etcd on its own switch, started to healthy.
        let sw = new_netns("flynn-bsw-");
        sh(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            &sw,
            "addr",
            "add",
            "192.0.2.254/24",
            "dev",
            "br0",
        ]);
        sh(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        let started = Instant::now();
        let mut etcd = EtcdProc::start(&sw);
        wait_for("the anchor etcd", Duration::from_secs(30), || {
            std::process::Command::new("nsenter")
                .arg(format!("--net=/run/netns/{sw}"))
                .args(["--", "curl", "-sf", "http://192.0.2.254:2379/health"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        anchor.push(started.elapsed().as_secs_f64());
        etcd.kill();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &sw])
            .status();

        let c = Cluster::bare_shared(3, &["--cluster-ttl", &ttl.to_string()], TOKEN);
        for h in &c.hosts {
            h.import_platform_images();
        }
        let started = Instant::now();
        let started_wall = chrono::Utc::now();
        let out = c
            .on_switch()
            .args([
                "bootstrap",
                "--json",
                "--peers",
                "192.0.2.1,192.0.2.2,192.0.2.3",
            ])
            .env("FLYNN_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The run goes on to Layer 1 (controller, router, aggregators...): Layer 0 is
        // ready when its last step, the schedulers, has ended.
        whole_bootstrap.push(started.elapsed().as_secs_f64());
        let mut start_ts = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let e: serde_json::Value = serde_json::from_str(line).unwrap();
            let ts = chrono::DateTime::parse_from_rfc3339(e["ts"].as_str().unwrap()).unwrap();
            if e["state"] == "start" {
                start_ts = Some(ts);
                continue;
            }
            let step = e["step"].as_str().unwrap().to_string();
            if step == "scheduler" {
                let at = ts.with_timezone(&chrono::Utc) - started_wall;
                layer0.push(at.num_milliseconds() as f64 / 1000.0);
            }
            let secs = (ts - start_ts.unwrap()).num_milliseconds() as f64 / 1000.0;
            match per_step.iter_mut().find(|(s, _)| *s == step) {
                Some((_, v)) => v.push(secs),
                None => per_step.push((step, vec![secs])),
            }
        }
        c.host(1).ok(&[
            "cluster", "scale", "web=5", "--app", "bench", "--image", "busybox", "--", "sleep",
            "1d",
        ]);
        wait_for("the first job", Duration::from_secs(60), || {
            web_jobs(&c, None) >= 1
        });
        first_job.push(started.elapsed().as_secs_f64());
        wait_for("5 jobs", Duration::from_secs(60), || {
            web_jobs(&c, None) == 5
        });

        let mut c = c;
        let (etcd, sched) = (etcd_leader(&c), scheduler_host(&c));
        let with_web: Vec<u8> = (1..=3u8).filter(|n| running_web(&c, &[*n]) > 0).collect();
        let lost_n = with_web
            .iter()
            .copied()
            .find(|n| Some(*n) != etcd && Some(*n) != sched)
            .unwrap_or(with_web[0]);
        let live: Vec<u8> = (1..=3u8).filter(|n| *n != lost_n).collect();
        let lost = c.host(lost_n).id();
        c.host_mut(lost_n).power_cut();
        let cut = Instant::now();
        let (mut gone, mut whole) = (None, None);
        while gone.is_none() || whole.is_none() {
            assert!(cut.elapsed() < Duration::from_secs(60), "no heal in 60 s");
            if gone.is_none() && !c.host(live[0]).ok(&["cluster", "hosts"]).contains(&lost) {
                gone = Some(cut.elapsed().as_secs_f64());
            }
            if whole.is_none() && running_web(&c, &live) == 5 {
                whole = Some(cut.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        lease_gone.extend(gone);
        heal.extend(whole);
    }
    let (a, l, f, h, g, w) = (
        median(anchor),
        median(layer0),
        median(first_job),
        median(heal),
        median(lease_gone),
        median(whole_bootstrap),
    );
    println!(
        "bootstrap of 3 hosts to Layer 0 ready: {l:.2} s; the whole run (Layer 1 too): {w:.2} s; \
         to the first scheduled job: {f:.2} s"
    );
    println!(
        "anchor (one bare etcd to healthy): {a:.2} s; ratio {:.1} (Layer 0) / {:.1} (first job)",
        l / a,
        f / a
    );
    println!(
        "  per step (medians): {}",
        per_step
            .into_iter()
            .map(|(s, v)| format!("{s} {:.2} s", median(v)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "host loss to the formation whole: {h:.2} s; anchor (the host's lease gone): {g:.2} s, \
         ratio {:.2}; target TTL {ttl} s + 2 s: ratio {:.2}",
        h / g,
        h / (ttl as f64 + 2.0)
    );
}
