//! A host's membership through its API, as the bootstrap drives it: preflight and the
//! probes between hosts, an etcd member as a job with its data in a volume, joining the
//! grid without a restart (the bridge moves to the cluster's subnet), one cluster per
//! host, and a restarted agent that rejoins by itself.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Cluster, wait_for};

#[test]
fn preflight_and_probes_between_hosts() {
    let c = Cluster::bare(2, &[]);
    let (h1, h2) = (c.host(1), c.host(2));
    let (code, pre) = h1.api("GET", "/host/preflight", None);
    assert_eq!(code, 200, "{pre}");
    let checks = pre["checks"].as_array().unwrap();
    for name in [
        "kernel:vxlan",
        "cgroup:memory",
        "port:tcp/2379",
        "port:udp/4789",
        "port:udp/53",
    ] {
        let check = checks.iter().find(|c| c["name"] == name).unwrap();
        assert_eq!(check["ok"], true, "{check}");
    }
    assert!(pre["time_ms"].as_i64().unwrap() > 0);

    // Host 2 listens on the overlay's port; host 1 reaches it over TCP 1113 and UDP 4789.
    let nonce = "probe-0123456789";
    let listen = json!({"port": 4789, "nonce": nonce, "timeout_ms": 5000});
    assert_eq!(h2.api("POST", "/host/probe/listen", Some(&listen)).0, 204);
    let send = json!({"address": h2.ip, "tcp_port": 1113, "udp_port": 4789, "nonce": nonce});
    let (code, sent) = h1.api("POST", "/host/probe/send", Some(&send));
    assert_eq!(code, 200, "{sent}");
    assert_eq!(sent["tcp_ok"], true, "{sent}");
    wait_for("the probe to arrive", Duration::from_secs(5), || {
        h2.api("GET", &format!("/host/probe/listen/{nonce}"), None)
            .1["received"]
            == true
    });
    let (_, heard) = h2.api("GET", &format!("/host/probe/listen/{nonce}"), None);
    assert!(
        heard["from"].as_str().unwrap().starts_with(&h1.ip),
        "{heard}"
    );

    // Nothing listens on host 1's port 9: the TCP probe fails and says so.
    let send =
        json!({"address": h1.ip, "tcp_port": 9, "udp_port": 4789, "nonce": "other-0123456789"});
    let (_, sent) = h2.api("POST", "/host/probe/send", Some(&send));
    assert_eq!(sent["tcp_ok"], false, "{sent}");
    assert!(
        sent["tcp_error"].as_str().unwrap().contains("refused"),
        "{sent}"
    );
    // Bad input is refused with a reason.
    let (code, err) = h1.api(
        "POST",
        "/host/probe/listen",
        Some(&json!({"port": 4789, "nonce": "x", "timeout_ms": 10})),
    );
    assert_eq!(code, 400, "{err}");
    assert!(err["error"].as_str().unwrap().contains("nonce"), "{err}");
}

#[test]
fn a_standalone_host_joins_a_cluster_through_its_api_and_rejoins_after_a_restart() {
    let mut c = Cluster::bare(2, &["--cluster-ttl", "3"]);
    for h in &c.hosts {
        h.import("etcd-docker.tar");
        h.import("busybox-docker.tar");
    }
    let (h1, h2) = (c.host(1), c.host(2));
    let (code, m) = h1.api("GET", "/cluster", None);
    assert_eq!(code, 200);
    assert_eq!(m["joined"], false, "{m}");

    // A bridge job on the standalone network blocks the join (its bridge must move).
    let sleeper = h2.ok(&["run", "-d", "busybox", "sleep", "300"]);
    let sleeper = sleeper.trim();
    let client = format!("http://{}:2379", h1.ip);
    let join = json!({"cluster_id": "c-test", "etcd": [client]});
    let (code, err) = h2.api("PUT", "/cluster/join", Some(&join));
    assert_eq!(code, 409, "{err}");
    assert!(err["error"].as_str().unwrap().contains(sleeper), "{err}");
    h2.ok(&["rm", "-f", sleeper]);

    // Host 1 runs the cluster's etcd (one member), data in a volume on the state dir.
    let member = json!({
        "cluster_id": "c-test",
        "name": "m1",
        "members": [{"name": "m1", "peer_url": format!("http://{}:2380", h1.ip), "client_url": client}],
    });
    let (code, r) = h1.api("PUT", "/cluster/etcd", Some(&member));
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["changed"], true);
    assert_eq!(
        h1.api("PUT", "/cluster/etcd", Some(&member)).1["changed"],
        false
    );
    let etcd_job = h1.json(&["inspect", "flynn-etcd"]);
    assert_eq!(
        etcd_job[0]["config"]["volumes"][0]["target"], "/var/lib/etcd",
        "{etcd_job}"
    );

    for h in [h1, h2] {
        let (code, r) = h.api("PUT", "/cluster/join", Some(&join));
        assert_eq!(code, 200, "{r}");
        assert_eq!(r["changed"], true);
    }
    c.wait_joined(2);
    assert!(
        h1.state.path().join("etcd/member").is_dir(),
        "etcd's data is in <state>/etcd"
    );
    // The API is announced at the cluster address, for other hosts and the
    // scheduler, as HTTPS.
    let hosts = h1.hosts();
    assert!(
        hosts
            .iter()
            .any(|r| r["api"] == format!("https://{}:1113", h2.ip)),
        "{hosts:?}"
    );
    // Bridge jobs now get addresses from the cluster's subnets, and reach each other.
    let id = h2.ok(&["run", "-d", "busybox", "sleep", "300"]);
    let ip = h2.ip_of(id.trim());
    assert!(ip.starts_with("100.100."), "{ip}");
    h1.ok(&["run", "--rm", "busybox", "ping", "-c", "1", "-W", "5", &ip]);

    // Idempotent; one cluster per host.
    assert_eq!(
        h2.api("PUT", "/cluster/join", Some(&join)).1["changed"],
        false
    );
    let other = json!({"cluster_id": "c-other", "etcd": [client]});
    let (code, err) = h2.api("PUT", "/cluster/join", Some(&other));
    assert_eq!(code, 409, "{err}");
    assert!(err["error"].as_str().unwrap().contains("c-test"), "{err}");
    // Member m1's addresses are host 1's: host 2 refuses to be it.
    let (code, err) = h2.api("PUT", "/cluster/etcd", Some(&member));
    assert_eq!(code, 400, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("not an address of this host"),
        "{err}"
    );

    // A restarted agent rejoins by itself (cluster.json), with its etcd member.
    for i in [1, 2] {
        let h = c.host_mut(i);
        h.kill9();
        h.spawn();
    }
    c.wait_joined(2);
    let (_, m) = c.host(2).api("GET", "/cluster", None);
    assert_eq!(m["cluster_id"], "c-test", "{m}");
    assert_eq!(m["joined"], true, "{m}");
}

#[test]
fn a_stopping_job_leaves_discovery_before_it_is_signalled() {
    let c = crate::harness::Cluster::start(1, &["--cluster-ttl", "3"]);
    c.wait_joined(1);
    let h = c.host(1);
    h.import("busybox-docker.tar");
    let watch = h.watch("drained");
    watch.until(
        "current",
        Duration::from_secs(10),
        crate::harness::is_event("current", None),
    );
    // The job writes the time it got SIGTERM; it keeps serving until then.
    let id = h.ok(&[
        "run",
        "-d",
        "-s",
        "drained:8080",
        "busybox",
        "sh",
        "-c",
        "trap 'date +%s%N > /tmp/term; exit 0' TERM; httpd -p 8080; while :; do sleep 0.05; done",
    ]);
    let id = id.trim();
    watch.until(
        "up",
        Duration::from_secs(15),
        crate::harness::is_event("up", None),
    );
    let stopper = {
        let mut cmd = h.command();
        cmd.args(["stop", id]).stdout(std::process::Stdio::null());
        cmd.spawn().unwrap()
    };
    let (down_at, _) = watch.until(
        "down",
        Duration::from_secs(10),
        crate::harness::is_event("down", None),
    );
    // When the watcher hears of it, the job is still running: it was not signalled yet.
    let state = h.json(&["inspect", id])[0]["state"].clone();
    assert_eq!(
        state, "running",
        "the job was stopped before it left discovery"
    );
    let out = stopper.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        down_at.elapsed() >= Duration::from_millis(100),
        "the stop waited for watchers"
    );
}
