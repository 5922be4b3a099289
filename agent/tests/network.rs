//! Jobs on the host network, end to end: a real daemon in a network namespace of the
//! test's own (its "host"), a second namespace joined to it by a veth pair as "another
//! host", real containers, real netlink and nftables. Nothing here touches the
//! machine's own networking. Needs root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;
#[path = "support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, new_netns, tail};
use netns::ip;

/// The daemon's host address on the link to the other host, and the other host's.
const HOST_IP: &str = "10.200.0.1";
const PEER_IP: &str = "10.200.0.2";

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Another host: a namespace linked to the daemon's by a veth pair, 10.200.0.0/24.
/// It has no route to the jobs' subnet, so anything it sees from a job came
/// through NAT.
struct Peer {
    netns: String,
}

impl Peer {
    fn new(d: &Daemon) -> Peer {
        let netns = new_netns();
        // Made inside the daemon's namespace, so names never clash between tests.
        ip(&[
            "-n", &d.netns, "link", "add", "uplink", "type", "veth", "peer", "name", "uplink",
            "netns", &netns,
        ]);
        ip(&[
            "-n",
            &d.netns,
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            "uplink",
        ]);
        ip(&["-n", &d.netns, "link", "set", "uplink", "up"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{PEER_IP}/24"),
            "dev",
            "uplink",
        ]);
        ip(&["-n", &netns, "link", "set", "uplink", "up"]);
        Peer { netns }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Runs `f` on a thread inside network namespace `netns`; sockets it makes stay there.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("opening the namespace");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// `GET /` from inside `netns`; the body, or why it failed.
fn http_get(netns: &str, addr: &str) -> Result<String, String> {
    let addr = addr.to_string();
    in_netns(netns, move || {
        let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read {addr}: {e}"))?;
        Ok(out)
    })
}

// Debian's busybox-static wget crashes with `-T` (a timeout): the tests do without.

/// `http_get` until it answers (a server in a job that just started may not listen yet).
fn http_get_soon(netns: &str, addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match http_get(netns, addr) {
            Ok(body) => return body,
            Err(e) if Instant::now() > deadline => panic!("no answer from {addr} in {netns}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

const PAGE: &str = "hello from flynn";

fn web(d: &Daemon, extra: &[&str]) -> String {
    let mut args = vec!["run", "-d"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["busybox", "httpd", "-f", "-p", "80", "-h", "/var/www"]);
    d.ok(&args).trim().to_string()
}

fn job_ip(d: &Daemon, id: &str) -> String {
    d.inspect(id)["network"]["ip"]
        .as_str()
        .unwrap_or_else(|| panic!("job {id} has no address: {}", d.inspect(id)))
        .to_string()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn jobs_reach_each_other_by_ip_and_the_world_through_nat() {
    let d = Daemon::start();
    let peer = Peer::new(&d);
    d.import_busybox();

    let id = web(&d, &["--name", "web"]);
    let job = d.inspect(&id);
    let net = &job["network"];
    let ip = net["ip"].as_str().expect("an address");
    let addr: Ipv4Addr = ip.parse().unwrap();
    assert_eq!(
        addr.octets()[..3],
        [10, 88, 0],
        "from the default subnet: {net}"
    );
    assert_eq!(net["gateway"], "10.88.0.1");
    assert_eq!(net["prefix_len"], 24);
    assert_eq!(net["bridge"], "flynnbr0");
    let o = addr.octets();
    assert_eq!(
        net["mac"],
        format!("02:66:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    );

    // Job to job, by address.
    let out = d.cli(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-qO-",
        &format!("http://{ip}/"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(PAGE), "{}", stdout(&out));

    // The host reaches a job by its address.
    assert!(http_get_soon(&d.netns, &format!("{ip}:80")).contains(PAGE));

    // Egress: a server on the other host sees the job's traffic from the host's
    // address (it has no route back to the jobs' subnet).
    let server = in_netns(&peer.netns, || {
        TcpListener::bind(format!("{PEER_IP}:9000")).expect("binding on the peer")
    });
    let seen = std::thread::spawn(move || {
        let (mut conn, from) = server.accept().expect("accept");
        let mut buf = [0u8; 512];
        let _ = conn.read(&mut buf);
        let body = format!("peer saw {}", from.ip());
        let _ = write!(
            conn,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        from.ip().to_string()
    });
    let out = d.cli(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-qO-",
        &format!("http://{PEER_IP}:9000/"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("peer saw {HOST_IP}"));
    assert_eq!(
        seen.join().unwrap(),
        HOST_IP,
        "masqueraded to the host's address"
    );
}

#[test]
fn published_ports_answer_from_the_host_other_hosts_and_jobs() {
    let d = Daemon::start();
    let peer = Peer::new(&d);
    d.import_busybox();

    let all = web(&d, &["--name", "all", "-p", "8080:80"]);
    let local = web(&d, &["--name", "local", "-p", "127.0.0.1:8081:80/tcp"]);
    let ports = &d.inspect(&all)["network"]["ports"];
    assert_eq!(ports[0]["host_port"], 8080, "{ports}");
    assert_eq!(ports[0]["container_port"], 80);
    assert_eq!(ports[0]["protocol"], "tcp");
    assert_eq!(
        d.inspect(&local)["network"]["ports"][0]["host_ip"],
        "127.0.0.1"
    );

    // From the host itself: loopback and its own address.
    assert!(http_get_soon(&d.netns, "127.0.0.1:8080").contains(PAGE));
    assert!(http_get_soon(&d.netns, &format!("{HOST_IP}:8080")).contains(PAGE));
    // From the other host.
    assert!(http_get_soon(&peer.netns, &format!("{HOST_IP}:8080")).contains(PAGE));
    // From a job, through the host's address (hairpin).
    let out = d.cli(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-qO-",
        &format!("http://{HOST_IP}:8080/"),
    ]);
    assert!(stdout(&out).contains(PAGE), "hairpin: {}", stderr(&out));

    // Bound to 127.0.0.1: the host has it, the other host does not.
    assert!(http_get_soon(&d.netns, "127.0.0.1:8081").contains(PAGE));
    assert!(
        http_get(&peer.netns, &format!("{HOST_IP}:8081")).is_err(),
        "a port published on 127.0.0.1 must not answer other hosts"
    );

    // UDP: iperf3 from the other host to a job publishing 5201 for tcp (iperf3's
    // control connection) and udp (the measured stream); busybox has no UDP tools.
    d.ok(&[
        "import",
        common::fixtures()
            .join("iperf3-docker.tar")
            .to_str()
            .unwrap(),
    ]);
    let udp = d.ok(&[
        "run",
        "-d",
        "-p",
        "5201:5201",
        "-p",
        "5201:5201/udp",
        "flynn-test/iperf3",
        "iperf3",
        "-s",
    ]);
    let udp = udp.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &peer.netns,
                "iperf3",
                "-c",
                HOST_IP,
                "-u",
                "-t",
                "1",
            ])
            .args(["-b", "2M", "-J"])
            .output()
            .expect("running iperf3");
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("iperf3 JSON");
        }
        assert!(
            Instant::now() < deadline,
            "iperf3 over udp: {}",
            stdout(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let sum = &report["end"]["sum"];
    assert!(sum["packets"].as_u64().unwrap_or(0) > 0, "{sum}");
    assert!(
        sum["lost_percent"].as_f64().unwrap_or(100.0) < 50.0,
        "the datagrams reached the job: {sum}"
    );
    d.ok(&["rm", "-f", &udp]);

    // `ps` shows the ports.
    let ps = d.ok(&["ps"]);
    assert!(ps.contains("0.0.0.0:8080->80/tcp"), "{ps}");

    // A port in use on the host is refused before anything is made.
    let holder = in_netns(&d.netns, || TcpListener::bind("0.0.0.0:8090").unwrap());
    let before = d.ok(&["ps", "-aq"]);
    let out = d.cli(&["run", "-d", "-p", "8090:80", "busybox", "sleep", "60"]);
    assert_eq!(out.status.code(), Some(125), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("8090"),
        "the error names the port: {}",
        stderr(&out)
    );
    // A port another job publishes, likewise.
    let out = d.cli(&["run", "-d", "-p", "8080:80", "busybox", "sleep", "60"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("8080"), "{}", stderr(&out));
    assert_eq!(d.ok(&["ps", "-aq"]), before, "no job was created");
    drop(holder);

    // Once the job is gone, its port is free again.
    d.ok(&["rm", "-f", "all"]);
    assert!(http_get(&d.netns, "127.0.0.1:8080").is_err());
    let again = web(&d, &["-p", "8080:80"]);
    assert!(http_get_soon(&d.netns, "127.0.0.1:8080").contains(PAGE));
    d.ok(&["rm", "-f", &again]);
}

#[test]
fn host_and_none_networks_names_and_dns_files() {
    let d = Daemon::start();
    let _peer = Peer::new(&d);
    d.import_busybox();

    // --net host: the host's interfaces, the host's name.
    let out = d.ok(&[
        "run", "--rm", "--net", "host", "busybox", "ip", "-o", "addr",
    ]);
    assert!(out.contains(HOST_IP), "{out}");
    // --net none: loopback only.
    let out = d.ok(&[
        "run", "--rm", "--net", "none", "busybox", "ip", "-o", "link",
    ]);
    let links: Vec<&str> = out.lines().collect();
    assert_eq!(links.len(), 1, "{out}");
    assert!(links[0].contains(": lo:"), "{out}");
    let none = d.ok(&["run", "-d", "--net", "none", "busybox", "sleep", "60"]);
    assert!(d.inspect(none.trim())["network"].is_null());
    // Ports need the bridge.
    let out = d.cli(&[
        "run", "--rm", "--net", "none", "-p", "80:80", "busybox", "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("bridge"), "{}", stderr(&out));
    let out = d.cli(&["run", "--rm", "--net", "bogus", "busybox", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("bogus"), "{}", stderr(&out));

    // --hostname, /etc/hosts with the job's address, --dns.
    let out = d.ok(&[
        "run",
        "--rm",
        "--hostname",
        "box",
        "--dns",
        "192.0.2.53",
        "busybox",
        "sh",
        "-c",
        "hostname; cat /etc/hostname; grep box /etc/hosts; cat /etc/resolv.conf; ip -o -4 addr show eth0",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "box", "{out}");
    assert_eq!(lines[1], "box", "{out}");
    let hosts_ip = lines[2].split('\t').next().unwrap();
    assert!(lines[2].ends_with("\tbox"), "{out}");
    assert!(out.contains("nameserver 192.0.2.53"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("inet {hosts_ip}/24"))),
        "/etc/hosts names the job's own address: {out}"
    );
}

/// Veths on the daemon's bridge, addresses in its namespace, rules in our table,
/// and endpoint records: what jobs leave behind if they leave anything.
fn leftovers(d: &Daemon) -> (usize, String, usize, String) {
    let veths = ip_out(&["-n", &d.netns, "-o", "link", "show", "master", "flynnbr0"])
        .lines()
        .count();
    let addrs = ip_out(&[
        "-n", &d.netns, "-o", "-4", "addr", "show", "dev", "flynnbr0",
    ]);
    let published = in_netns(&d.netns, || {
        network::nft::rule_counts()
            .unwrap()
            .get("published")
            .copied()
            .unwrap_or(0)
    });
    let ipam = std::fs::read_to_string(d.state_dir().join("network/ipam.json")).unwrap_or_default();
    (veths, addrs, published, ipam)
}

/// `leftovers` once the networks of removed jobs are torn down: `rm` returns when
/// the job is gone, and its network follows in the background (a veth's deletion
/// waits for the kernel's RCU grace period), within moments.
fn leftovers_settled(d: &Daemon) -> (usize, String, usize, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = leftovers(d);
        let ipam: serde_json::Value = serde_json::from_str(&now.3).unwrap_or_default();
        let clean = now.0 == 0 && now.2 == 0 && ipam["endpoints"] == serde_json::json!({});
        if clean || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fifty_jobs_created_and_removed_leave_nothing_behind() {
    let d = Daemon::start();
    d.import_busybox();
    let (_, bridge_addrs, _, _) = leftovers(&d);

    let mut ids = Vec::new();
    let mut ips = std::collections::HashSet::new();
    for i in 0..50 {
        let port = format!("{}:80", 9000 + i);
        let mut args = vec!["run", "-d"];
        if i % 5 == 0 {
            args.extend_from_slice(&["-p", &port]);
        }
        args.extend_from_slice(&["busybox", "sleep", "600"]);
        let id = d.ok(&args).trim().to_string();
        ips.insert(job_ip(&d, &id));
        ids.push(id);
    }
    assert_eq!(ips.len(), 50, "every job has its own address");
    let (veths, _, published, _) = leftovers(&d);
    assert_eq!(veths, 50, "one veth per job on the bridge");
    assert!(
        published >= 10,
        "rules for the ten jobs with ports: {published}"
    );

    let mut rm = vec!["rm", "-f"];
    rm.extend(ids.iter().map(String::as_str));
    d.ok(&rm);

    let (veths, addrs, published, ipam) = leftovers_settled(&d);
    assert_eq!(veths, 0, "no veth left on the bridge");
    assert_eq!(addrs, bridge_addrs, "only the bridge's own address");
    assert_eq!(published, 0, "no published-port rule left");
    let ipam: serde_json::Value = serde_json::from_str(&ipam).expect("ipam.json");
    assert_eq!(
        ipam["endpoints"],
        serde_json::json!({}),
        "every address is free"
    );
    let netns_files = std::fs::read_dir(d.state_dir().join("netns"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(netns_files, 0, "no namespace file left");
}

#[test]
fn networked_jobs_survive_a_daemon_restart() {
    let mut d = Daemon::start();
    let peer = Peer::new(&d);
    d.import_busybox();
    let id = web(&d, &["--name", "web", "-p", "8080:80"]);
    let ip = job_ip(&d, &id);
    assert!(http_get_soon(&peer.netns, &format!("{HOST_IP}:8080")).contains(PAGE));

    d.kill9();
    d.wait_dead();
    // While the daemon is down the job still answers, on its port and its address.
    assert!(http_get_soon(&peer.netns, &format!("{HOST_IP}:8080")).contains(PAGE));
    d.spawn();
    assert!(
        http_get_soon(&peer.netns, &format!("{HOST_IP}:8080")).contains(PAGE),
        "daemon log:\n{}",
        tail(&d.log_text(), 30)
    );
    assert!(http_get_soon(&d.netns, &format!("{ip}:80")).contains(PAGE));
    assert_eq!(job_ip(&d, &id), ip);

    // The restarted daemon knows the port and the address are taken.
    let out = d.cli(&["run", "-d", "-p", "8080:80", "busybox", "sleep", "60"]);
    assert_eq!(out.status.code(), Some(125), "{}", stdout(&out));
    let other = d.ok(&["run", "-d", "busybox", "sleep", "60"]);
    assert_ne!(job_ip(&d, other.trim()), ip);

    d.ok(&["rm", "-f", &id, other.trim()]);
    let (veths, _, published, _) = leftovers_settled(&d);
    assert_eq!((veths, published), (0, 0));
}
