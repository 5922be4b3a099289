//! `flynn-host bootstrap` against three standalone hosts that share a token (real
//! agents, etcd as their jobs, the overlay), run from the switch: the cluster builds
//! itself, a re-run starts nothing, a killed run is finished by the next, blocked UDP
//! between two hosts fails preflight naming them with nothing started, and an etcd
//! member's host restarting does not stop the cluster.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Cluster, host_image, sh, wait_for};

const TOKEN: &str = "bootstrap-test-token-0123456789";
const PEERS: &str = "192.0.2.1,192.0.2.2,192.0.2.3";

fn cluster() -> Cluster {
    let c = Cluster::bare_shared(3, &["--cluster-ttl", "3"], TOKEN);
    for h in &c.hosts {
        h.import("etcd-docker.tar");
        h.import("busybox-docker.tar");
        h.ok(&["import", host_image().to_str().unwrap()]);
    }
    c
}

fn bootstrap(c: &Cluster, extra: &[&str]) -> Command {
    let mut cmd = c.on_switch();
    cmd.args(["bootstrap", "--peers", PEERS, "--timeout", "60"])
        .args(extra)
        .env("FLYNN_TOKEN", TOKEN);
    cmd
}

/// Runs a bootstrap with --json to its end: (exit code, events).
fn run_json(c: &Cluster) -> (Option<i32>, Vec<serde_json::Value>) {
    let out = bootstrap(c, &["--json"]).output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event: {l}: {e}")))
        .collect();
    (out.status.code(), events)
}

fn states(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["state"] != "start")
        .map(|e| {
            format!(
                "{}:{}",
                e["step"].as_str().unwrap(),
                e["state"].as_str().unwrap()
            )
        })
        .collect()
}

fn assert_up(c: &Cluster) {
    c.wait_joined(3);
    let ids: Vec<serde_json::Value> = c
        .hosts
        .iter()
        .map(|h| h.api("GET", "/cluster", None).1["cluster_id"].clone())
        .collect();
    assert!(
        ids[0].is_string() && ids.iter().all(|i| *i == ids[0]),
        "{ids:?}"
    );
    for h in &c.hosts {
        let ps = h.ok(&["ps"]);
        assert!(ps.contains("flynn-etcd"), "host {}: {ps}", h.n);
    }
    // Containers on two hosts reach each other over the overlay.
    let id = c.host(2).ok(&["run", "-d", "busybox", "sleep", "300"]);
    let ip = c.host(2).ip_of(id.trim());
    c.host(1)
        .ok(&["run", "--rm", "busybox", "ping", "-c", "1", "-W", "5", &ip]);
}

#[test]
fn bootstrap_builds_the_cluster_and_a_rerun_starts_nothing() {
    let c = cluster();
    let (code, events) = run_json(&c);
    assert_eq!(code, Some(0), "{events:#?}");
    for e in &events {
        for field in ["step", "action", "state", "ts"] {
            assert!(e.get(field).is_some(), "{e}");
        }
    }
    assert_eq!(
        states(&events),
        [
            "online-hosts:done",
            "preflight:done",
            "etcd:done",
            "join:done",
            "scheduler:done"
        ]
    );
    assert_up(&c);
    let (code, events) = run_json(&c);
    assert_eq!(code, Some(0));
    assert_eq!(
        states(&events),
        [
            "online-hosts:skipped",
            "preflight:skipped",
            "etcd:skipped",
            "join:skipped",
            "scheduler:skipped"
        ],
        "a re-run changes nothing"
    );
    let human = bootstrap(&c, &[]).output().unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("already up: nothing was started"));

    // An etcd member's host goes down (its etcd and its agent) and comes back: the
    // cluster keeps serving meanwhile, and the host rejoins with its member.
    let h2 = c.host(2);
    h2.ok(&["kill", "flynn-etcd"]);
    let mut c = c;
    c.host_mut(2).kill9();
    c.host(1).ok(&["run", "--rm", "busybox", "true"]);
    assert!(
        !c.host(1).hosts().is_empty(),
        "two of three members keep the quorum"
    );
    c.host_mut(2).spawn();
    wait_for("host 2's etcd back", Duration::from_secs(60), || {
        c.host(2).ok(&["ps"]).contains("flynn-etcd")
    });
    c.wait_joined(3);
}

#[test]
fn a_killed_bootstrap_is_finished_by_the_next_run() {
    let c = cluster();
    for kill_in in ["etcd", "join", "scheduler"] {
        let mut child = bootstrap(&c, &["--json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let e: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            if e["step"] == kill_in && e["state"] == "start" {
                // Mid-step: some requests made, others not.
                std::thread::sleep(Duration::from_millis(400));
                child.kill().unwrap();
                break;
            }
        }
        let _ = child.wait();
    }
    let (code, events) = run_json(&c);
    assert_eq!(code, Some(0), "{events:#?}");
    assert_up(&c);
}

#[test]
fn udp_dropped_between_two_hosts_fails_preflight_and_starts_nothing() {
    let c = cluster();
    // Host 2 drops the overlay's UDP from host 1.
    let ns = format!("--net=/run/netns/{}", c.host(2).netns);
    sh(&[
        "nsenter", &ns, "--", "nft", "add", "table", "inet", "testdrop",
    ]);
    sh(&[
        "nsenter",
        &ns,
        "--",
        "nft",
        "add chain inet testdrop in { type filter hook input priority -10; }",
    ]);
    sh(&[
        "nsenter",
        &ns,
        "--",
        "nft",
        "add rule inet testdrop in ip saddr 192.0.2.1 udp dport 4789 drop",
    ]);
    let out = bootstrap(&c, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("UDP 4789 from 192.0.2.1 to 192.0.2.2 does not arrive"),
        "{text}"
    );
    assert!(
        !text.contains("192.0.2.2 to 192.0.2.1 does not"),
        "only the blocked direction: {text}"
    );
    for h in &c.hosts {
        assert!(
            !h.ok(&["ps", "-a"]).contains("flynn-etcd"),
            "nothing was started"
        );
        assert!(h.api("GET", "/cluster", None).1["cluster_id"].is_null());
    }
    // Unblocked, the same command builds the cluster.
    sh(&[
        "nsenter", &ns, "--", "nft", "delete", "table", "inet", "testdrop",
    ]);
    let out = bootstrap(&c, &[]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_input_is_refused_with_what_to_do() {
    let c = Cluster::bare_shared(1, &[], TOKEN);
    let out = bootstrap(&c, &["--manifest", "/nonexistent.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading the manifest"));
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.json");
    std::fs::write(&m, r#"{"steps":[{"id":"x","action":"teleport"}]}"#).unwrap();
    let out = bootstrap(&c, &["--manifest", m.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown action \"teleport\""));
    let out = c
        .on_switch()
        .args(["bootstrap", "--peers", "192.0.2.1", "--timeout", "3"])
        .env("FLYNN_TOKEN", "wrong-token-0123456789")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("refused the token"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = c
        .on_switch()
        .args([
            "bootstrap",
            "--peers",
            "192.0.2.1,192.0.2.9",
            "--timeout",
            "2",
        ])
        .env("FLYNN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("still missing: 192.0.2.9"), "{text}");
    let out = c
        .on_switch()
        .args(["bootstrap", "--peers", "not-an-ip"])
        .env("FLYNN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
