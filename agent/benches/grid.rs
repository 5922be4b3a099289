//! Benchmark of the grid on two test hosts (namespaces on a switch, agents, Debian's
//! etcd; see tests/grid/harness.rs), not a test: it reports, it asserts nothing.
//!
//! 1. TCP throughput container → container across the VXLAN overlay (iperf3 in
//!    containers on two hosts) against the anchor measured in the same run: iperf3
//!    between the two bare host namespaces over the same switch. Target ratio ≥ 0.8.
//!    And the floor: iperf3 between the same bare namespaces through a VXLAN device
//!    of their own (the overlay's encapsulation, port and MTU, nothing else: no
//!    bridge, no veth, no container), the part of the gap that VXLAN itself costs.
//! 2. Time from a job's start (its `started_at`) to its service instance arriving at
//!    a watcher (`flynn-host discover watch`) on the other host. Target: median < 100 ms.
//!
//! Run as root: `cargo bench -p flynn-host --bench grid` (ROUNDS=3 SECS=5 JOBS=20).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

#[path = "../tests/grid/harness.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use harness::{Cluster, is_event};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn gbits(json: &str) -> f64 {
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("iperf3 JSON: {e}: {json}"));
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no throughput in {json}"))
        / 1e9
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// iperf3 from namespace `client` to `addr` served in namespace `server`.
fn bare_iperf(client: &str, server: &str, addr: &str, secs: &str) -> f64 {
    let mut srv = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{server}"))
        .args(["--", "iperf3", "-s", "-1", "-p", "5298"])
        .stdout(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{client}"))
        .args(["--", "iperf3", "-c", addr, "-p", "5298", "-J", "-t", secs])
        .output()
        .expect("iperf3 client");
    let _ = srv.wait();
    gbits(&String::from_utf8_lossy(&out.stdout))
}

/// The MTU the agent gave its overlay device (`flynn.vx`) on host `h`.
fn overlay_mtu(h: &harness::Host) -> String {
    let out = Command::new("ip")
        .args(["-n", &h.netns, "-o", "link", "show", "flynn.vx"])
        .output()
        .expect("ip link show flynn.vx");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap_or("1450")
        .to_string()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds = env("ROUNDS", 3);
    let secs = env("SECS", 5).to_string();
    let jobs = env("JOBS", 20);
    let c = Cluster::start(2, &["--cluster-ttl", "10"]);
    c.wait_joined(2);
    let (h1, h2) = (c.host(1), c.host(2));
    // Diagnosis: NO_BR_NETFILTER=1 turns off bridge netfilter (bridge-nf-call-iptables,
    // per namespace) in the test hosts, to see what it costs bridged job traffic.
    if std::env::var_os("NO_BR_NETFILTER").is_some() {
        for h in [h1, h2] {
            let net = format!("--net=/run/netns/{}", h.netns);
            harness::sh(&[
                "nsenter",
                &net,
                "--",
                "sh",
                "-c",
                "echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables",
            ]);
        }
        println!("bridge-nf-call-iptables = 0 in the test hosts");
    }
    for h in [h1, h2] {
        h.import("iperf3-docker.tar");
        h.import("busybox-docker.tar");
    }
    let srv = h2.ok(&[
        "run",
        "-d",
        "--name",
        "iperf-srv",
        "flynn-test/iperf3",
        "iperf3",
        "-s",
    ]);
    let srv_ip = h2.ip_of(srv.trim());
    // For the report: the same between two containers of one host (its bridge only).
    let local = h1.ok(&[
        "run",
        "-d",
        "--name",
        "iperf-local",
        "flynn-test/iperf3",
        "iperf3",
        "-s",
    ]);
    let local_ip = h1.ip_of(local.trim());
    // Warm up both paths (ARP, conntrack, page cache).
    h1.ok(&[
        "run",
        "--rm",
        "flynn-test/iperf3",
        "iperf3",
        "-c",
        &srv_ip,
        "-t",
        "1",
    ]);

    let floor_ip = |h: usize| format!("10.254.77.{h}");
    for (n, (h, other)) in [(h1, h2), (h2, h1)].into_iter().enumerate() {
        // The overlay's VNI is 1 on port 4789: the floor uses its own on 4790.
        let ns = h.netns.as_str();
        let mtu = overlay_mtu(h);
        let ip = floor_ip(n + 1);
        let cidr = format!("{ip}/24");
        for cmd in [
            vec![
                "ip",
                "-n",
                ns,
                "link",
                "add",
                "vxfloor",
                "type",
                "vxlan",
                "id",
                "77",
                "dstport",
                "4790",
                "remote",
                &other.ip,
                "local",
                &h.ip,
                "nolearning",
            ],
            vec!["ip", "-n", ns, "link", "set", "vxfloor", "mtu", &mtu, "up"],
            vec!["ip", "-n", ns, "addr", "add", &cidr, "dev", "vxfloor"],
        ] {
            harness::sh(&cmd);
        }
    }
    let (mut bare, mut overlay, mut same_host, mut floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        floor.push(bare_iperf(&h1.netns, &h2.netns, &floor_ip(2), &secs));
        bare.push(bare_iperf(&h1.netns, &h2.netns, &h2.ip, &secs));
        let out = h1.ok(&[
            "run",
            "--rm",
            "flynn-test/iperf3",
            "iperf3",
            "-c",
            &srv_ip,
            "-J",
            "-t",
            &secs,
        ]);
        overlay.push(gbits(&out));
        let out = h1.ok(&[
            "run",
            "--rm",
            "flynn-test/iperf3",
            "iperf3",
            "-c",
            &local_ip,
            "-J",
            "-t",
            &secs,
        ]);
        same_host.push(gbits(&out));
    }
    let (b, o) = (median(&mut bare), median(&mut overlay));
    println!(
        "throughput, bare namespaces (anchor): {b:.2} Gbit/s (median of {rounds}: {bare:.2?})"
    );
    println!(
        "throughput, containers over the overlay: {o:.2} Gbit/s (median of {rounds}: {overlay:.2?})"
    );
    let f = median(&mut floor);
    println!(
        "throughput, floor (bare namespaces over a VXLAN device, same MTU): {f:.2} Gbit/s \
         (median of {rounds}: {floor:.2?}); floor / anchor: {:.2}",
        f / b
    );
    println!("overlay / anchor: {:.2} (target >= 0.80)", o / b);
    println!("overlay / floor: {:.2}", o / f);
    let l = median(&mut same_host);
    println!(
        "(for reference) containers on one host, over its bridge: {l:.2} Gbit/s (median of {rounds}: {same_host:.2?}); overlay / that: {:.2}",
        o / l
    );

    let watch = h2.watch("bench");
    watch.until(
        "current",
        Duration::from_secs(10),
        is_event("current", None),
    );
    let mut lat = Vec::new();
    for _ in 0..jobs {
        let id = h1.ok(&["run", "-d", "-s", "bench:80", "busybox", "sleep", "600"]);
        let id = id.trim();
        let (seen, ev) = watch.until(
            "the instance",
            Duration::from_secs(10),
            is_event("up", None),
        );
        assert_eq!(ev["instance"]["job_id"], id);
        // The watcher's arrival time on the wall clock, to compare with started_at.
        let seen_wall = SystemTime::now() - Instant::now().saturating_duration_since(seen);
        let job: serde_json::Value = h1.json(&["inspect", id]);
        let started = chrono::DateTime::parse_from_rfc3339(
            job[0]["started_at"].as_str().expect("started_at"),
        )
        .expect("started_at is RFC 3339");
        let seen_wall: chrono::DateTime<chrono::Utc> = seen_wall.into();
        lat.push(
            (seen_wall - started.with_timezone(&chrono::Utc))
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1000.0,
        );
        h1.ok(&["rm", "-f", id]);
        watch.until(
            "its departure",
            Duration::from_secs(10),
            is_event("down", None),
        );
    }
    let m = median(&mut lat);
    let p90 = lat[(lat.len() * 9 / 10).min(lat.len() - 1)];
    println!(
        "job start -> instance seen by a watcher on the other host: median {m:.1} ms, p90 {p90:.1} ms, max {:.1} ms over {jobs} jobs (target median < 100 ms)",
        lat[lat.len() - 1]
    );
}
