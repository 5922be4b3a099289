//! Deploys through the scheduler on a bootstrapped cluster of three netns hosts, with
//! a controller process on the switch and the `flynn` CLI: a release of busybox
//! httpd scaled to 3, an env change rolled out with at least 3 healthy jobs at every
//! poll, a release that never listens rolled back by itself without the old jobs
//! ever stopping, a rollback, `flynn ps`, and `flynn run` with its exit code.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, Platform};
use crate::scheduler::{bootstrap_with, prepare};

const TOKEN: &str = "deploy-test-token-0123456789";
const WEB: &str = "web=mkdir -p /www && echo \"${GREETING:-hello}\" > /www/index.html && exec httpd -f -p $PORT -h /www";

/// Jobs of `rel` that are up (`flynn ps` says running only for a healthy job).
fn up(rows: &[(String, String, String, String)], rel: Option<&str>) -> usize {
    rows.iter()
        .filter(|r| r.2 == "running" && rel.is_none_or(|rel| r.3 == rel))
        .count()
}

fn release_of(p: &Platform, app: &str) -> String {
    let info = p.ok(&["-a", app, "info"]);
    info.lines()
        .find_map(|l| l.strip_prefix("release:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// What the cluster shows, for a failure's message.
fn dump(c: &Cluster, p: &Platform) -> String {
    let mut out = String::new();
    out += &format!(
        "cluster ps:\n{}\n",
        String::from_utf8_lossy(&c.host(1).cli(&["cluster", "ps", "--json"]).stdout)
    );
    out += &format!(
        "cluster formations:\n{}\n",
        String::from_utf8_lossy(&c.host(1).cli(&["cluster", "formations"]).stdout)
    );
    for h in &c.hosts {
        out += &format!(
            "host {} jobs:\n{}\nlog tail:\n{}\n",
            h.n,
            String::from_utf8_lossy(&h.cli(&["ps", "-a"]).stdout),
            crate::harness::tail(&h.log_text(), 15)
        );
    }
    out += &format!(
        "controller log tail:\n{}\n",
        crate::harness::tail(&p.log_text(), 30)
    );
    out
}

/// `wait_for` that shows the cluster when it times out.
fn wait(c: &Cluster, p: &Platform, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                dump(c, p)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn deploys_roll_out_roll_back_and_flynn_runs_jobs() {
    let c = Cluster::bare_shared(3, &["--cluster-ttl", "5"], TOKEN);
    for i in 1..=3 {
        prepare(&c, i);
    }
    bootstrap_with(&c, "192.0.2.1,192.0.2.2,192.0.2.3", TOKEN);
    let p = Platform::start(&c, TOKEN, &[]);

    p.ok(&["create", "demo"]);
    // Nothing is scaled yet: the deploy completes at once.
    let out = p.ok(&["-a", "demo", "release", "add", "busybox", "--process", WEB]);
    assert!(out.contains("Deployed release"), "{out}");
    let r1 = release_of(&p, "demo");
    // The release names busybox by the digest the hosts hold.
    let held: Vec<serde_json::Value> =
        serde_json::from_str(&c.host(1).ok(&["images", "--json"])).unwrap();
    let digest = held
        .iter()
        .find(|i| i["names"].to_string().contains("library/busybox:latest"))
        .and_then(|i| i["manifest_digest"].as_str())
        .unwrap()
        .to_string();
    let info = p.ok(&["-a", "demo", "info"]);
    assert!(
        info.contains(&format!("docker.io/library/busybox:latest@{digest}")),
        "{info}"
    );
    // Hosts that hold different images under one name: the release is refused.
    let fx = crate::harness::fixtures();
    let (etcd, busybox) = (fx.join("etcd-docker.tar"), fx.join("busybox-docker.tar"));
    c.host(1)
        .ok(&["import", etcd.to_str().unwrap(), "--tag", "twin:1"]);
    c.host(2)
        .ok(&["import", busybox.to_str().unwrap(), "--tag", "twin:1"]);
    let out = p.flynn(&["-a", "demo", "release", "add", "twin:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("different images named docker.io/library/twin:1"),
        "{err}"
    );
    let out = p.flynn(&["-a", "demo", "release", "add", "nosuch:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no host has the image"),
        "{err}"
    );
    assert_eq!(
        release_of(&p, "demo"),
        r1,
        "a refused release changes nothing"
    );
    assert_eq!(p.ok(&["-a", "demo", "scale"]).trim(), "web=0");
    assert_eq!(p.ok(&["-a", "demo", "scale", "web=3"]).trim(), "web=3");
    wait(
        &c,
        &p,
        "3 healthy web jobs",
        Duration::from_secs(90),
        || up(&p.ps("demo"), Some(&r1)) == 3,
    );

    // An env change is a new release, rolled out with 3 up at every poll.
    let mut deploy = p
        .command()
        .args([
            "-a",
            "demo",
            "env",
            "set",
            "GREETING=hi",
            "--timeout",
            "120",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut fewest, mut most, mut polls) = (usize::MAX, 0, 0);
    let started = Instant::now();
    let status = loop {
        let rows = p.ps("demo");
        if !rows.is_empty() {
            polls += 1;
            fewest = fewest.min(up(&rows, None));
            // Jobs being stopped serve no more and are out of the surge.
            most = most.max(rows.iter().filter(|r| r.2 != "stopping").count());
        }
        if let Some(s) = deploy.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the deploy ends"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = deploy.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status.success() && text.contains("Deployed release"),
        "{text}"
    );
    let r2 = release_of(&p, "demo");
    assert_ne!(r1, r2);
    assert!(polls > 0);
    assert!(
        fewest >= 3,
        "at least 3 jobs up at every poll, saw {fewest}"
    );
    assert!(
        most <= 4,
        "at most count + surge jobs not being stopped, saw {most}"
    );
    wait(
        &c,
        &p,
        "3 jobs, all of the new release",
        Duration::from_secs(30),
        || {
            let rows = p.ps("demo");
            rows.len() == 3 && up(&rows, Some(&r2)) == 3
        },
    );
    let r2_jobs: BTreeSet<String> = p.ps("demo").into_iter().map(|r| r.0).collect();
    // The new release serves: a one-off job of it reads a web job's page through DNS.
    let page = p.ok(&[
        "-a",
        "demo",
        "run",
        "wget",
        "-qO-",
        "http://demo-web.discoverd:8080/",
    ]);
    assert_eq!(page.trim(), "hi", "{page}");

    // A release whose command never listens: rolled back by itself, the old jobs
    // never stopped.
    let mut bad = p
        .command()
        .args([
            "-a",
            "demo",
            "release",
            "add",
            "busybox",
            "--process",
            "web=sleep 1d",
            "--timeout",
            "15",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        let rows = p.ps("demo");
        if !rows.is_empty() {
            let ids: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
            assert!(
                r2_jobs.is_subset(&ids),
                "the old jobs keep running: {r2_jobs:?} not all in {rows:?}"
            );
            assert!(up(&rows, Some(&r2)) >= 3, "{rows:?}");
        }
        if let Some(s) = bad.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = bad.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("not healthy within 15 s")
            && err.contains(&format!("rolled back to release {r2}")),
        "{err}"
    );
    assert_eq!(release_of(&p, "demo"), r2);
    let deploys = p.ok(&["-a", "demo", "release", "deploys"]);
    assert!(deploys.contains("failed"), "{deploys}");
    // The stuck new job goes; the old ones stay.
    wait(
        &c,
        &p,
        "the 3 old jobs alone",
        Duration::from_secs(30),
        || {
            let ids: BTreeSet<String> = p.ps("demo").into_iter().map(|r| r.0).collect();
            ids == r2_jobs
        },
    );

    // A rollback is a deploy too (back to the first release).
    let out = p.ok(&["-a", "demo", "release", "rollback", "--timeout", "120"]);
    assert!(out.contains("Deployed release"), "{out}");
    assert_eq!(release_of(&p, "demo"), r1);
    wait(
        &c,
        &p,
        "3 jobs of the first release",
        Duration::from_secs(30),
        || {
            let rows = p.ps("demo");
            rows.len() == 3 && up(&rows, Some(&r1)) == 3
        },
    );
    let ps = p.ok(&["-a", "demo", "ps"]);
    assert!(ps.starts_with("ID"), "{ps}");
    let hosts: BTreeSet<&str> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(hosts.len(), 3, "spread over the three hosts: {ps}");

    // One-off jobs: output and exit code, stdin attached.
    assert_eq!(p.ok(&["-a", "demo", "run", "echo", "hello"]), "hello\n");
    let out = p.flynn(&["-a", "demo", "run", "sh", "-c", "echo bye; exit 7"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n");
    assert_eq!(out.status.code(), Some(7));
    let mut child = p
        .command()
        .args(["-a", "demo", "run", "-i", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"through the controller\n",
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through the controller\n"
    );
    // Bad input says what to do.
    let out = p.flynn(&["-a", "demo", "scale", "worker=1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("release add"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
