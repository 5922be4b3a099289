//! `flynn-host bootstrap` against three standalone hosts that share a token (real
//! agents, etcd as their jobs, the overlay), run from the switch: the cluster builds
//! itself, a re-run starts nothing, a killed run is finished by the next, blocked UDP
//! between two hosts fails preflight naming them with nothing started, and an etcd
//! member's host restarting does not stop the cluster.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, Flynn, sh, wait_for};

const TOKEN: &str = "bootstrap-test-token-0123456789";
const PEERS: &str = "192.0.2.1,192.0.2.2,192.0.2.3";

fn cluster() -> Cluster {
    let c = Cluster::bare_shared(3, &["--cluster-ttl", "3"], TOKEN);
    for h in &c.hosts {
        h.import_platform_images();
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

/// `GET /health` of host `n`'s etcd member from the switch, over HTTPS verified
/// against the cluster's CA, with `cert_of`'s certificate (the platform files of
/// that host's TLS) or with none: the body, or curl's error.
fn etcd_health(
    c: &Cluster,
    n: u8,
    cert_of: Option<&crate::harness::Host>,
) -> Result<String, String> {
    let ca = c.host(1).state.path().join("tls/platform/ca.pem");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", c.switch))
        .args(["--", "curl", "-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(&ca);
    if let Some(h) = cert_of {
        let dir = h.state.path().join("tls/platform");
        cmd.arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"));
    }
    let out = cmd
        .arg(format!("https://192.0.2.{n}:2379/health"))
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn assert_up(c: &Cluster) {
    c.wait_joined(3);
    // One CA for the cluster: every host's API presents a certificate of it.
    let pins: Vec<String> = c
        .hosts
        .iter()
        .map(|h| h.ok(&["tls", "pin"]).trim().to_string())
        .collect();
    assert!(pins.iter().all(|p| *p == pins[0]), "{pins:?}");
    // etcd speaks TLS and wants a client certificate of the cluster's CA: a
    // client with none is refused, one with a host's certificate is served.
    let refused = etcd_health(c, 1, None);
    assert!(
        refused.is_err(),
        "etcd served a client without a certificate: {refused:?}"
    );
    let served = etcd_health(c, 1, Some(c.host(3)));
    assert!(
        served.as_ref().is_ok_and(|b| b.contains("true")),
        "etcd with the cluster's certificate: {served:?}"
    );
    let plain = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.switch))
        .args([
            "--",
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://192.0.2.1:2379/health",
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("true"),
        "etcd answered plain HTTP: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
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
            "tls:done",
            "preflight:done",
            "etcd:done",
            "join:done",
            "scheduler:done",
            "controller:done",
            "router:done",
            "logaggregator:done",
            // The hosts have no flynn/slugbuilder image: no git receivers (gitpush.rs).
            "gitreceive:skipped",
            "inception:done"
        ]
    );
    assert_up(&c);
    // The scheduler's API is HTTPS too (the host's certificate), and says so.
    let (_, leader) = c
        .host(1)
        .api("GET", "/discovery/services/flynn-scheduler/leader", None);
    assert_eq!(leader["meta"]["tls"], "1", "{leader}");
    let controller = events
        .iter()
        .find(|e| e["step"] == "controller" && e["state"] == "done")
        .expect("a controller event");
    let key = controller["data"]["key"].as_str().unwrap().to_string();
    let pin = c.host(2).ok(&["tls", "pin"]).trim().to_string();
    assert_eq!(
        controller["data"]["cluster_add"],
        format!("flynn cluster add -p {pin} default https://192.0.2.1:81 {key}")
    );
    assert_layer1(&c, &key);
    let (code, events) = run_json(&c);
    assert_eq!(code, Some(0));
    assert_eq!(
        states(&events),
        [
            "online-hosts:skipped",
            "tls:skipped",
            "preflight:skipped",
            "etcd:skipped",
            "join:skipped",
            "scheduler:skipped",
            "controller:skipped",
            "router:skipped",
            "logaggregator:skipped",
            "gitreceive:skipped",
            "inception:skipped"
        ],
        "a re-run changes nothing"
    );
    let human = bootstrap(&c, &[]).output().unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("already up: nothing was started"), "{human}");
    // The summary names the cluster CA's pin, for the hosts' APIs, and ends
    // with the line that gives the CLI the controller, pin included.
    assert!(human.contains(&format!("--tls-pin {pin}")), "{human}");
    assert_eq!(
        human.trim_end().lines().last(),
        Some(format!("  flynn cluster add -p {pin} default https://192.0.2.1:81 {key}").as_str()),
        "{human}"
    );
}

/// Layer 1 after a bootstrap: the controller answers the CLI through every host's
/// router (TCP route on 81), the platform's services are apps, the routers serve
/// HTTP on every host, and the aggregators are in discovery.
fn assert_layer1(c: &Cluster, key: &str) {
    let f = Flynn::new(c);
    for n in 1..=3 {
        f.add_cluster(c, &format!("h{n}"), n, key);
        let apps = f.ok(&["-c", &format!("h{n}"), "apps"]);
        for app in ["controller", "router", "logaggregator"] {
            assert!(apps.contains(app), "through host {n}: {apps}");
        }
        // No route for this name: the router itself answers, naming it.
        let out = sh(&[
            "nsenter",
            &format!("--net=/run/netns/{}", c.switch),
            "--",
            "curl",
            "-sS",
            "-H",
            "Host: nothing.cluster.local",
            &format!("http://192.0.2.{n}/"),
        ]);
        assert!(
            out.contains("nothing.cluster.local"),
            "router on host {n}: {out}"
        );
        // HTTPS on 443 with the cluster's certificate (`*.cluster.local`, of the
        // cluster's CA), verified by curl against that CA for the name asked.
        let ca = c.host(1).state.path().join("tls/platform/ca.pem");
        let out = sh(&[
            "nsenter",
            &format!("--net=/run/netns/{}", c.switch),
            "--",
            "curl",
            "-sS",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("nothing.cluster.local:443:192.0.2.{n}"),
            "https://nothing.cluster.local/",
        ]);
        assert!(
            out.contains("nothing.cluster.local"),
            "router on host {n} over HTTPS: {out}"
        );
    }
    let aggs = c
        .host(1)
        .api("GET", "/discovery/services/flynn-logaggregator", None)
        .1;
    assert_eq!(
        aggs["instances"].as_array().map(Vec::len),
        Some(2),
        "{aggs}"
    );
    // A wrong key is refused with what to do.
    f.add_cluster(c, "bad", 2, "not-the-key");
    let out = f.run(&["-c", "bad", "apps"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_controller_tls(c, &f, key);
}

/// The controller behind port 81 is HTTPS only, under the cluster's CA: another
/// CA's pin is refused before the key is sent, with what to do; plain HTTP gets
/// a 400 saying to use HTTPS; curl verifies it by name (`controller.<domain>`,
/// and the name any address verifies) against the cluster's CA, and refuses it
/// without that CA.
fn assert_controller_tls(c: &Cluster, f: &Flynn, key: &str) {
    // A well-formed pin of no certificate of this cluster (32 zero bytes).
    let wrong = format!("{}=", "A".repeat(43));
    let out = f.run(&[
        "cluster",
        "add",
        "-p",
        &wrong,
        "wrong",
        "https://192.0.2.1:81",
        key,
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = f.run(&["-c", "wrong", "apps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("a wrong pin: {err}");
    assert!(!out.status.success());
    assert!(
        err.contains("not from the CA pinned") && err.contains("cluster add -p"),
        "{err}"
    );
    // An https:// URL without a pin is refused at once, saying to give it.
    let out = f.run(&["cluster", "add", "nopin", "https://192.0.2.1:81", key]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-p PIN"),
        "{out:?}"
    );
    let curl = |args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", c.switch))
            .args(["--", "curl", "-sS", "-m", "15"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (_, plain) = curl(&["http://192.0.2.3:81/apps"]);
    assert!(plain.contains("HTTPS"), "plain HTTP to 81: {plain}");
    let ca = c.host(1).state.path().join("tls/platform/ca.pem");
    let auth = format!("Authorization: Bearer {key}");
    for name in ["controller.cluster.local", "flynn-controller.discoverd"] {
        let (ok, body) = curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("{name}:81:192.0.2.3"),
            "-H",
            &auth,
            &format!("https://{name}:81/apps"),
        ]);
        assert!(ok && body.contains("controller"), "{name}: {body}");
    }
    let (ok, body) = curl(&[
        "--resolve",
        "controller.cluster.local:81:192.0.2.3",
        "https://controller.cluster.local:81/apps",
    ]);
    assert!(!ok, "verified without the cluster's CA: {body}");
    println!("curl without the cluster's CA: {body}");
}

/// Every process in a test host's namespace, killed at once: the agent, its shims
/// and its containers on the host network (etcd, the scheduler), as a power cut.
fn power_cut(h: &mut crate::harness::Host) {
    h.kill9();
    for pid in sh(&["ip", "netns", "pids", &h.netns]).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
}

#[test]
fn an_etcd_members_host_restarting_keeps_the_cluster_serving() {
    let mut c = cluster();
    let out = bootstrap(&c, &[]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    c.wait_joined(3);
    // Host 2 (an etcd member, a scheduler) goes down with everything on it.
    power_cut(c.host_mut(2));
    // The two other members keep the quorum: reads through etcd (linearizable) and
    // writes (a job's service registered) keep working on the other hosts.
    // The agents notice the dead member within a second (a TCP check every 0.5 s)
    // and stop sending it requests; until then a request may land on it.
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut checks, mut early) = (0, 0);
    while started.elapsed() < Duration::from_secs(8) {
        for n in [1, 3] {
            let at = started.elapsed();
            let out = c.host(n).cli(&["cluster", "hosts", "--json"]);
            if at < Duration::from_millis(1500) {
                early += 1;
                continue;
            }
            checks += 1;
            if !out.status.success() {
                failures.push(format!(
                    "{at:?} host {n}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        failures.is_empty(),
        "{} of {checks} reads failed while a member was down ({early} in the first 1.5 s not counted): {failures:#?}",
        failures.len()
    );
    let web = c.host(3).ok(&[
        "run",
        "-d",
        "-s",
        "bweb:8080",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    wait_for("the service registered", Duration::from_secs(20), || {
        c.host(1)
            .cli(&["discover", "list", "bweb"])
            .stdout
            .windows(4)
            .any(|w| w == b"8080")
    });
    c.host(3).ok(&["rm", "-f", web.trim()]);
    // The host comes back: its agent restarts its etcd member (same data, same
    // member) and rejoins by itself; the cluster has its three members again.
    c.host_mut(2).spawn();
    wait_for(
        "host 2's etcd member healthy",
        Duration::from_secs(60),
        || etcd_health(&c, 2, Some(c.host(1))).is_ok_and(|body| body.contains("true")),
    );
    c.wait_joined(3);
    // And a re-run of the bootstrap finds everything in place.
    let (code, events) = run_json(&c);
    assert_eq!(code, Some(0), "{events:#?}");
    assert!(
        states(&events).iter().all(|s| s.ends_with(":skipped")),
        "{events:#?}"
    );
}

#[test]
fn a_killed_bootstrap_is_finished_by_the_next_run() {
    let c = cluster();
    // Killed in each step in turn; each run must get past the step the run before
    // it was killed in (a killed preflight leaves a probe listener holding UDP 4789
    // for its time-out; a killed etcd step leaves members half asked; ...).
    let steps = [
        "online-hosts",
        "tls",
        "preflight",
        "etcd",
        "join",
        "scheduler",
        "controller",
        "router",
        "inception",
    ];
    let mut previous: Option<&str> = None;
    for kill_in in steps {
        let mut child = bootstrap(&c, &["--json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let e: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            seen.push(format!(
                "{}:{}",
                e["step"].as_str().unwrap(),
                e["state"].as_str().unwrap()
            ));
            assert_ne!(
                e["state"], "error",
                "killed in {previous:?}, then: {seen:?} {e}"
            );
            if e["step"] == kill_in && e["state"] == "start" {
                // Mid-step: some requests made, others not.
                let pause = if kill_in == "online-hosts" { 30 } else { 400 };
                std::thread::sleep(Duration::from_millis(pause));
                child.kill().unwrap();
                break;
            }
        }
        let _ = child.wait();
        if let Some(p) = previous {
            assert!(
                seen.contains(&format!("{p}:done")) || seen.contains(&format!("{p}:skipped")),
                "the run after one killed in {p} did not finish {p}: {seen:?}"
            );
        }
        previous = Some(kill_in);
    }
    let (code, events) = run_json(&c);
    assert_eq!(code, Some(0), "{events:#?}");
    assert_up(&c);
    // Finished: the next run starts nothing.
    let (code, events) = run_json(&c);
    assert_eq!(code, Some(0));
    assert!(
        states(&events).iter().all(|s| s.ends_with(":skipped")),
        "{events:#?}"
    );
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
    // Scripts get the pair and the port as data.
    let (code, events) = run_json(&c);
    assert_eq!(code, Some(1));
    let last = events.last().unwrap();
    assert_eq!(last["step"], "preflight");
    assert_eq!(last["state"], "error");
    let failures = last["data"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["kind"], "udp");
    assert_eq!(failures[0]["from"], "192.0.2.1");
    assert_eq!(failures[0]["to"], "192.0.2.2");
    assert_eq!(failures[0]["port"], 4789);
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
        .args(["bootstrap", "--peers", "192.0.2.1,not-an-ip"])
        .env("FLYNN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"not-an-ip\" is not an IPv4 address"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A manifest step with a misspelt parameter is refused, not ignored.
    std::fs::write(&m, r#"{"steps":[{"id":"e","action":"etcd","member":3}]}"#).unwrap();
    let out = bootstrap(&c, &["--manifest", m.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcd takes no parameter \"member\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
