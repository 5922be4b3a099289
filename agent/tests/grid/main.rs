//! The grid across three test hosts (network namespaces on one switch, each with its
//! own agent) and a real etcd (Debian's): the overlay between containers of different
//! hosts, discovery (watch, health checks, leaders, DNS), membership under leases,
//! partitions, killed agents, an etcd that restarts empty, and etcd run as a container.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod bootstrap;
mod deploy;
mod gitpush;
mod harness;
mod isolation;
mod logs;
mod membership;
#[path = "../support/netns.rs"]
mod netns;
mod platform;
mod scheduler;

use std::time::{Duration, Instant};

use harness::{Cluster, fake_upstream, is_event, sh, wait_for};

const WEB: &str = "mkdir -p /tmp/w && echo ok > /tmp/w/health && hostname > /tmp/w/name && exec httpd -f -p 8080 -h /tmp/w";

#[test]
fn overlay_and_discovery_across_three_hosts() {
    let c = Cluster::start(
        3,
        &["--cluster-ttl", "3", "--dns-upstream", "127.0.0.1:5353"],
    );
    c.wait_joined(3);
    let subnets: Vec<String> = c.hosts.iter().map(|h| h.subnet().unwrap()).collect();
    assert!(
        subnets
            .iter()
            .all(|s| s.starts_with("100.100.") && s.ends_with("/24")),
        "{subnets:?}"
    );
    assert_ne!(subnets[0], subnets[1]);
    assert_ne!(subnets[1], subnets[2]);
    // Every host has a route to each other host's subnet, none to its own.
    wait_for("overlay routes", Duration::from_secs(10), || {
        c.hosts.iter().all(|h| h.overlay_routes().len() == 2)
    });
    for h in &c.hosts {
        assert!(!h.overlay_routes().contains(&h.subnet().unwrap()));
    }
    let st = c.host(1).status();
    harness::check_schema("HostStatus", &st);
    for h in c.host(1).hosts() {
        harness::check_schema("HostRecord", &h);
    }
    assert_eq!(
        st["cluster"]["overlay"]["peers"].as_array().unwrap().len(),
        2,
        "{st}"
    );
    assert_eq!(st["cluster"]["overlay"]["mtu"], 1450);
    assert_eq!(st["cluster"]["connected"], true);
    for h in &c.hosts {
        h.import("busybox-docker.tar");
        fake_upstream(&h.netns);
    }

    // A watcher on host 3; the web service starts on host 2 with an HTTP check.
    let watch = c.host(3).watch("web");
    watch.until(
        "current",
        Duration::from_secs(10),
        is_event("current", None),
    );
    let web1 = c.host(2).ok(&[
        "run",
        "-d",
        "--name",
        "web1",
        "-s",
        "web:8080,check=http:/health,interval=200,fall=1",
        "busybox",
        "sh",
        "-c",
        WEB,
    ]);
    let web1 = web1.trim();
    let (_, up) = watch.until("web1 up", Duration::from_secs(15), is_event("up", None));
    let web1_ip = c.host(2).ip_of(web1);
    assert_eq!(up["instance"]["addr"], format!("{web1_ip}:8080"));
    assert_eq!(up["instance"]["host_id"], c.host(2).id());
    let web1_inst = up["instance"]["id"].as_str().unwrap().to_string();
    harness::check_schema("ServiceEvent", &up);
    let inspect: serde_json::Value = c.host(2).json(&["inspect", web1]);
    harness::check_schema("Job", &inspect[0]);
    harness::check_schema("HostStatus", &c.host(2).status());
    assert_eq!(inspect[0]["services"][0]["registered"], true, "{inspect}");
    assert_eq!(inspect[0]["config"]["services"][0]["name"], "web");

    // Host 1's containers reach it across the overlay: ping and TCP, by IP and by name.
    c.host(1).ok(&[
        "run", "--rm", "busybox", "ping", "-c", "1", "-W", "3", &web1_ip,
    ]);
    let name = c.host(1).ok(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-qO-",
        &format!("http://{web1_ip}:8080/name"),
    ]);
    let web1_hostname = name.trim().to_string();
    assert!(!web1_hostname.is_empty());
    let by_name = c.host(1).ok(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-qO-",
        "http://web.discoverd:8080/name",
    ]);
    assert_eq!(by_name.trim(), web1_hostname);
    // Other names go to the upstream (here the test's own server in host 1's namespace).
    let out = c
        .host(1)
        .ok(&["run", "--rm", "busybox", "nslookup", "example.test"]);
    assert!(out.contains("192.0.2.99"), "{out}");
    // A second instance on host 3 (no check): up, and the leader stays web1.
    let web2 = c.host(3).ok(&[
        "run", "-d", "--name", "web2", "-s", "web:8080", "busybox", "sh", "-c", WEB,
    ]);
    let web2 = web2.trim();
    let (_, up2) = watch.until("web2 up", Duration::from_secs(15), is_event("up", None));
    let web2_inst = up2["instance"]["id"].as_str().unwrap().to_string();
    let leader = c.host(1).json(&["discover", "list", "web", "--json"]);
    assert_eq!(leader[0]["leader"], web1_inst.as_str(), "{leader}");
    assert_eq!(leader[0]["instances"].as_array().unwrap().len(), 2);
    harness::check_schema("ServiceState", &leader[0]);
    let l = c.host(1).ok(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-qO-",
        "http://leader.web.discoverd:8080/name",
    ]);
    assert_eq!(l.trim(), web1_hostname);

    // web1 fails its check: out of discovery (down), web2 leads; healthy again: back.
    c.host(2).ok(&["exec", web1, "rm", "/tmp/w/health"]);
    watch.until(
        "web1 down",
        Duration::from_secs(10),
        is_event("down", Some(&web1_inst)),
    );
    let (_, lead) = watch.until(
        "web2 leads",
        Duration::from_secs(10),
        is_event("leader", None),
    );
    assert_eq!(lead["instance"]["id"], web2_inst.as_str());
    let inspect: serde_json::Value = c.host(2).json(&["inspect", web1]);
    assert_eq!(inspect[0]["services"][0]["healthy"], false, "{inspect}");
    c.host(2)
        .ok(&["exec", web1, "sh", "-c", "echo ok > /tmp/w/health"]);
    watch.until(
        "web1 up again",
        Duration::from_secs(10),
        is_event("up", Some(&web1_inst)),
    );

    // Jobs stopping take their instances with them.
    c.host(3).ok(&["rm", "-f", web2]);
    watch.until(
        "web2 down",
        Duration::from_secs(10),
        is_event("down", Some(&web2_inst)),
    );
    c.host(2).ok(&["stop", "-t", "1", web1]);
    watch.until(
        "web1 down",
        Duration::from_secs(10),
        is_event("down", Some(&web1_inst)),
    );
    let list = c.host(1).json(&["discover", "list", "web", "--json"]);
    assert!(
        list[0]["instances"].as_array().unwrap().is_empty(),
        "{list}"
    );
    // A name with no instances does not resolve.
    let out = c
        .host(1)
        .cli(&["run", "--rm", "busybox", "nslookup", "web.discoverd"]);
    assert!(!out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("100.100."));
    // Bad declarations are refused with the reason, before anything runs.
    let out = c
        .host(1)
        .cli(&["run", "-d", "-s", "Bad_Name:80", "busybox", "true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("service name"),
        "{out:?}"
    );
}

#[test]
fn membership_leases_partitions_and_etcd_restarts() {
    let mut c = Cluster::start(3, &["--cluster-ttl", "3"]);
    c.wait_joined(3);
    let before: Vec<String> = c.hosts.iter().map(|h| h.subnet().unwrap()).collect();
    let h3_subnet = before[2].clone();
    c.host(3).import("busybox-docker.tar");
    c.host(3).ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "-s",
        "db:5432,check=tcp,interval=200,role=primary",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "5432",
    ]);
    wait_for("db registered", Duration::from_secs(10), || {
        c.host(1).json(&["discover", "list", "db", "--json"])[0]["instances"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    });
    let hosts = c.host(1).hosts();
    let h2 = hosts.iter().find(|h| h["address"] == "192.0.2.2").unwrap();
    assert_eq!(h2["subnet"], before[1].as_str());
    assert!(h2["resources"]["cpus"].as_u64().unwrap() >= 1);

    // A partitioned host is not forgotten before its lease runs out (3 s, renewed every
    // second: at least 2 s), and is forgotten soon after.
    sh(&["ip", "-n", &c.host(2).netns, "link", "set", "eth0", "down"]);
    let cut = Instant::now();
    let gone = wait_for("host 2 to leave", Duration::from_secs(15), || {
        c.host(1).hosts().len() == 2
    });
    assert!(
        cut.elapsed() >= Duration::from_millis(1900),
        "forgotten after {:?}",
        cut.elapsed()
    );
    println!("a partitioned host was forgotten after {gone:?} (lease 3 s)");
    wait_for("host 2's routes removed", Duration::from_secs(5), || {
        !c.host(1).overlay_routes().contains(&before[1])
    });
    // The partition heals: it comes back with its subnet.
    sh(&["ip", "-n", &c.host(2).netns, "link", "set", "eth0", "up"]);
    sh(&[
        "ip",
        "-n",
        &c.host(2).netns,
        "route",
        "replace",
        "default",
        "via",
        harness::ETCD_IP,
    ]);
    c.wait_joined(3);
    assert_eq!(c.host(2).subnet().unwrap(), before[1]);
    wait_for("host 2's routes back", Duration::from_secs(10), || {
        c.host(1).overlay_routes().contains(&before[1])
    });

    // A killed agent: its host leaves after the lease, with its instances and routes.
    c.host_mut(3).kill9();
    let killed = Instant::now();
    wait_for("host 3 to leave", Duration::from_secs(15), || {
        c.host(1).hosts().len() == 2
    });
    assert!(
        killed.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        killed.elapsed()
    );
    let db = c.host(1).json(&["discover", "list", "db", "--json"]);
    assert!(db[0]["instances"].as_array().unwrap().is_empty(), "{db}");
    wait_for("host 3's routes removed", Duration::from_secs(5), || {
        c.hosts[..2]
            .iter()
            .all(|h| !h.overlay_routes().contains(&h3_subnet))
    });
    // It re-joins (even without its local cache) with its old subnet, and its running
    // job's instance is registered again.
    std::fs::remove_file(c.host(3).state.path().join("grid.json")).unwrap();
    c.host_mut(3).spawn();
    c.wait_joined(3);
    assert_eq!(c.host(3).subnet().unwrap(), h3_subnet);
    wait_for("db back", Duration::from_secs(10), || {
        c.host(1).json(&["discover", "list", "db", "--json"])[0]["instances"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    });
    wait_for("host 3's routes back", Duration::from_secs(10), || {
        c.hosts[..2]
            .iter()
            .all(|h| h.overlay_routes().contains(&h3_subnet))
    });

    // etcd restarts with nothing: every live registration comes back.
    c.etcd.restart(true);
    wait_for("etcd to be empty and back", Duration::from_secs(30), || {
        let h = c.host(1).hosts();
        h.len() == 3
    });
    c.wait_joined(3);
    let after: Vec<String> = c.hosts.iter().map(|h| h.subnet().unwrap()).collect();
    assert_eq!(after, before);
    wait_for("db after the etcd restart", Duration::from_secs(15), || {
        let v = c.host(2).json(&["discover", "list", "db", "--json"]);
        v[0]["instances"].as_array().is_some_and(|a| a.len() == 1)
            && v[0]["instances"][0]["meta"]["role"] == "primary"
    });
    wait_for(
        "routes after the etcd restart",
        Duration::from_secs(10),
        || c.hosts.iter().all(|h| h.overlay_routes().len() == 2),
    );
}

#[test]
fn etcd_runs_as_a_container_and_the_agent_joins_it() {
    // One host, no etcd of the test's: the agent runs it from the etcd image.
    let mut c = Cluster::start(0, &[]);
    c.etcd.kill();
    let mut extra = vec!["--run-etcd".to_string(), "--cluster-ttl".into(), "3".into()];
    let netns = harness::new_netns("flynn-h-");
    sh(&[
        "ip", "-n", &c.switch, "link", "add", "p1", "type", "veth", "peer", "name", "eth0",
        "netns", &netns,
    ]);
    sh(&[
        "ip", "-n", &c.switch, "link", "set", "p1", "master", "br0", "up",
    ]);
    sh(&[
        "ip",
        "-n",
        &netns,
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "eth0",
    ]);
    sh(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
    let state = tempfile::Builder::new()
        .prefix("flynn-grid-")
        .tempdir_in("/var/tmp")
        .unwrap();
    extra.extend(["--etcd".into(), "http://127.0.0.1:2379".into()]);
    let mut h = harness::Host {
        n: 1,
        netns,
        ip: "192.0.2.1".into(),
        api: "127.0.0.1:1113".into(),
        listen: "127.0.0.1:1113".into(),
        token: String::new(),
        child: None,
        extra,
        log: std::path::PathBuf::new(),
        state,
    };
    h.log = h.state.path().join("daemon.log");
    h.spawn();
    h.import("etcd-docker.tar");
    h.import("busybox-docker.tar");
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.hosts().len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the host did not join its own etcd:\n{}\n{}",
            h.log_text()
                .lines()
                .filter(|l| !l.contains("flynn_host::api"))
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&h.cli(&["logs", "flynn-etcd"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let ps = h.ok(&["ps"]);
    assert!(ps.contains("flynn-etcd"), "{ps}");
    let etcd_job: serde_json::Value = h.json(&["inspect", "flynn-etcd"]);
    assert_eq!(etcd_job[0]["config"]["network"], "host");
    // Off loopback it is HTTPS and wants a client certificate of the host's CA: plain
    // HTTP and a client without a certificate are refused, the host's platform
    // certificate gets in.
    let platform = h.state.path().join("tls/platform");
    let file = |name: &str| platform.join(name).to_string_lossy().into_owned();
    let curl = |extra: &[&str], url: &str| {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", h.netns))
            .args(["--", "curl", "-sS", "--max-time", "5"])
            .args(extra)
            .arg(url)
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
    let (ok, text) = curl(&[], "http://192.0.2.1:2379/version");
    assert!(!ok || !text.contains("etcdserver"), "plain HTTP: {text}");
    let ca = file("ca.pem");
    let (ok, text) = curl(&["--cacert", &ca], "https://192.0.2.1:2379/version");
    assert!(
        !ok || !text.contains("etcdserver"),
        "no client certificate: {text}"
    );
    let (cert, key) = (file("cert.pem"), file("key.pem"));
    let (ok, text) = curl(
        &["--cacert", &ca, "--cert", &cert, "--key", &key],
        "https://192.0.2.1:2379/version",
    );
    assert!(
        ok && text.contains("etcdserver"),
        "with the certificate: {text}"
    );
    let (ok, text) = curl(&[], "http://127.0.0.1:2379/version");
    assert!(ok && text.contains("etcdserver"), "loopback: {text}");
    // Bridge jobs get addresses from the cluster subnet.
    let id = h.ok(&["run", "-d", "busybox", "sleep", "100"]);
    let ip = h.ip_of(id.trim());
    assert!(ip.starts_with("100.100."), "{ip}");
    c.hosts.push(h);
}
