//! Benchmark of a rolling deploy on three test hosts (namespaces on a switch, the
//! cluster bootstrapped, a controller process on the switch; tests/grid/harness.rs),
//! not a test: it reports, it asserts nothing.
//!
//! Measured: `flynn release add` of a new release of an app running web=3 (busybox
//! httpd, TCP-checked) to every job of the new release serving (healthy in the
//! scheduler's view) and none of the old one left. Anchor, in the same run: a fresh
//! formation of 3 of the same jobs started with `flynn-host cluster scale`, to all 3
//! serving. A rolling deploy replaces one job at a time (surge 1) and waits for each
//! to be healthy, so about three anchors is the expected figure.
//!
//! Run as root: `cargo bench -p flynn-host --bench deploy` (ROUNDS=3).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

#[path = "../tests/grid/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, Platform, wait_for};

const TOKEN: &str = "deploy-bench-token-0123456789";
const CMD: &str = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p $PORT -h /www";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// (release, healthy) of the app's jobs, from the scheduler.
fn jobs(c: &Cluster, app: &str) -> Vec<(String, bool, String)> {
    let out = c.host(1).cli(&["cluster", "ps", "--json"]);
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.iter()
        .filter(|j| j["app"] == app)
        .map(|j| {
            (
                j["release"].as_str().unwrap_or("").to_string(),
                j["healthy"] == true,
                j["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let c = Cluster::bare_shared(3, &["--cluster-ttl", "5"], TOKEN);
    for h in &c.hosts {
        h.import_platform_images();
    }
    let out = c
        .on_switch()
        .args(["bootstrap", "--peers", "192.0.2.1,192.0.2.2,192.0.2.3"])
        .env("FLYNN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let p = Platform::start(&c, TOKEN, &[]);
    p.ok(&["create", "bench"]);
    p.ok(&[
        "-a",
        "bench",
        "release",
        "add",
        "busybox",
        "--process",
        &format!("web={CMD}"),
    ]);
    p.ok(&["-a", "bench", "scale", "web=3"]);
    wait_for("3 healthy jobs", Duration::from_secs(120), || {
        let j = jobs(&c, "bench");
        j.len() == 3 && j.iter().all(|j| j.1)
    });

    let (mut anchor, mut deploy, mut complete) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        // Anchor: a fresh formation of 3 of the same jobs, to all serving.
        let app = format!("anchor{round}");
        let started = Instant::now();
        c.host(1).ok(&[
            "cluster",
            "scale",
            "web=3",
            "--app",
            &app,
            "--image",
            "busybox",
            "-s",
            &format!("{app}-web:8080,check=tcp,interval=500"),
            "-e",
            "PORT=8080",
            "--",
            "sh",
            "-c",
            CMD,
        ]);
        wait_for(
            "the anchor's 3 jobs serving",
            Duration::from_secs(120),
            || {
                let j = jobs(&c, &app);
                j.len() == 3 && j.iter().all(|j| j.1)
            },
        );
        anchor.push(started.elapsed().as_secs_f64());
        c.host(1).ok(&[
            "cluster", "scale", "web=0", "--app", &app, "--image", "busybox",
        ]);
        wait_for("the anchor gone", Duration::from_secs(60), || {
            jobs(&c, &app).is_empty()
        });

        // A new release of the running app, to every new job serving.
        let started = Instant::now();
        let out = p.ok(&[
            "-a",
            "bench",
            "release",
            "add",
            "busybox",
            "--no-wait",
            "--env",
            &format!("ROUND={round}"),
            "--process",
            &format!("web={CMD}"),
        ]);
        let rel = out
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string();
        wait_for("every new job serving", Duration::from_secs(180), || {
            let j = jobs(&c, "bench");
            j.len() == 3 && j.iter().all(|j| j.0 == rel && j.1)
        });
        deploy.push(started.elapsed().as_secs_f64());
        wait_for("the deploy complete", Duration::from_secs(60), || {
            p.ok(&["-a", "bench", "release", "deploys"])
                .lines()
                .last()
                .is_some_and(|l| l.contains(&rel) && l.contains("complete"))
        });
        complete.push(started.elapsed().as_secs_f64());
    }
    let (a, d, k) = (median(anchor), median(deploy), median(complete));
    println!("rolling deploy of web=3 (3 netns hosts), medians of {rounds} rounds:");
    println!(
        "  release add to every new job serving: {d:.2} s; to the deploy marked complete: {k:.2} s"
    );
    println!(
        "  anchor (3 fresh jobs to serving, cluster scale): {a:.2} s; ratio {:.2}",
        d / a
    );
}
