//! No job reaches the control plane, on one host: from inside a bridge job, the
//! agent's API (listening on every address), etcd's ports and a port named in the
//! config's `control_ports` are closed on every address of the host (the bridge's
//! gateway, the host's own address), while an ordinary port of the host, a
//! published port of another job and the job next door stay open. Host-network jobs
//! carry the platform's mark. Each listener answers the host itself, so a closed
//! port is the wall, not a missing server. Needs root; the daemon runs in a network
//! namespace of the test's own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;
#[path = "support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::{BIN, Daemon};
use netns::{banner, banner_on, ip, udp_sink};

/// Another address of the host (on loopback in the daemon's namespace).
const HOST_IP: &str = "10.201.0.1";
const GATEWAY: &str = "10.88.0.1";
/// A port the config file closes to jobs.
const EXTRA_CONTROL: u16 = 7777;
/// An ordinary port of the host, which jobs may reach.
const OPEN_PORT: u16 = 8888;
/// An ordinary UDP port of the host, which jobs may send to.
const OPEN_UDP: u16 = 8899;
/// The overlay's VXLAN port (the default), closed to jobs.
const VXLAN: u16 = 4789;
/// A host service on every IPv6 address.
const OPEN6: u16 = 8866;

/// What the host itself gets from `addr` (a banner, or the API's answer).
fn from_host(d: &Daemon, addr: &str) -> String {
    let mut s =
        common::connect_in(&d.netns, addr).unwrap_or_else(|| panic!("the host reaches {addr}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /version HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn bridge_jobs_cannot_reach_the_control_plane_but_reach_what_they_should() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let config = dir.path().join("daemon.json");
    std::fs::write(
        &config,
        format!(r#"{{"control_ports": [{EXTRA_CONTROL}]}}"#),
    )
    .unwrap();
    let d = Daemon::start_listening(
        Path::new(BIN),
        "0.0.0.0",
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let api_port: u16 = d.addr.rsplit(':').next().unwrap().parse().unwrap();
    ip(&[
        "-n",
        &d.netns,
        "addr",
        "add",
        &format!("{HOST_IP}/32"),
        "dev",
        "lo",
    ]);
    // Stand-ins for etcd's client and peer ports, the configured port, and an
    // ordinary service of the host.
    for port in [2379, 2380, EXTRA_CONTROL, OPEN_PORT] {
        banner(&d.netns, port);
    }
    d.import_busybox();
    let web = d.run_detached(&[
        "--name", "web", "-p", "8080:80", "busybox", "httpd", "-f", "-p", "80", "-h", "/",
    ]);
    let web_ip = d.inspect(&web)["network"]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let web_port = 80;

    // The host itself reaches all of them.
    for addr in [GATEWAY, HOST_IP] {
        for port in [2379, 2380, EXTRA_CONTROL, OPEN_PORT] {
            assert!(
                from_host(&d, &format!("{addr}:{port}")).contains(&format!("open {port}")),
                "the host reaches {addr}:{port}"
            );
        }
        assert!(
            from_host(&d, &format!("{addr}:{api_port}")).starts_with("HTTP/1."),
            "the host reaches its API on {addr}"
        );
    }

    // From a job: one connection attempt per target, 2 s each; a line per answer.
    let mut targets = Vec::new();
    for addr in [GATEWAY, HOST_IP] {
        for port in [api_port, 2379, 2380, EXTRA_CONTROL, OPEN_PORT, 8080] {
            targets.push(format!("{addr} {port}"));
        }
    }
    targets.push(format!("{web_ip} {web_port}"));
    let script = targets
        .iter()
        .map(|t| {
            format!(
                "echo \"== {t}\"; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {t} 2>&1 | head -c 40; echo"
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let out = d.cli(&["run", "--rm", "busybox", "sh", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let answers: Vec<(String, String)> = text
        .split("== ")
        .skip(1)
        .map(|chunk| {
            let (target, answer) = chunk.split_once('\n').unwrap_or((chunk, ""));
            (target.trim().to_string(), answer.trim().to_string())
        })
        .collect();
    assert_eq!(answers.len(), targets.len(), "{text}");
    let answer = |t: &str| {
        answers
            .iter()
            .find(|(target, _)| target == t)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no answer for {t}: {text}"))
    };
    for addr in [GATEWAY, HOST_IP] {
        for port in [api_port, 2379, 2380, EXTRA_CONTROL] {
            let a = answer(&format!("{addr} {port}"));
            assert!(
                !a.contains("open") && !a.contains("HTTP/"),
                "a job reached the control port {addr}:{port}: {a:?}"
            );
        }
        assert!(
            answer(&format!("{addr} {OPEN_PORT}")).contains(&format!("open {OPEN_PORT}")),
            "a job reaches an ordinary port of the host at {addr}: {text}"
        );
        assert!(
            answer(&format!("{addr} 8080")).contains("HTTP/1."),
            "a job reaches another job's published port at {addr}: {text}"
        );
    }
    assert!(
        answer(&format!("{web_ip} {web_port}")).contains("HTTP/1."),
        "a job reaches the job next door: {text}"
    );

    // UDP: the overlay's VXLAN port is closed like the TCP control ports (a datagram
    // there could put a frame on the overlay as any job); an ordinary UDP port is not.
    let vxlan = udp_sink(&d.netns, VXLAN);
    let open = udp_sink(&d.netns, OPEN_UDP);
    let mut script = Vec::new();
    for addr in [GATEWAY, HOST_IP] {
        for port in [VXLAN, OPEN_UDP] {
            // busybox's nc has no UDP; its tftp sends a read request that names the
            // file (and gets no answer: bounded by timeout).
            script.push(format!(
                "timeout 1 tftp -g -l /tmp/x -r job-{addr}-{port} {addr} {port}"
            ));
        }
    }
    script.push("true".into());
    d.ok(&["run", "--rm", "busybox", "sh", "-c", &script.join("; ")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = open.lock().unwrap().clone();
    for addr in [GATEWAY, HOST_IP] {
        let name = format!("job-{addr}-{OPEN_UDP}");
        assert!(
            got.iter().any(|d| d.contains(&name)),
            "a job sends to an ordinary UDP port of the host at {addr}: {got:?}"
        );
    }
    assert!(
        vxlan.lock().unwrap().is_empty(),
        "a job reached the VXLAN port: {:?}",
        vxlan.lock().unwrap()
    );

    // IPv6: the bridge has none, so a host service on [::] is out of a job's reach at
    // the link-local address the bridge would otherwise have (EUI-64 of its MAC).
    banner_on(&d.netns, "::", OPEN6);
    let show = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["-n", &d.netns])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let v6 = show(&["-6", "addr", "show", "dev", "flynnbr0"]);
    assert!(!v6.contains("inet6"), "the bridge has IPv6: {v6}");
    let link = show(&["-o", "link", "show", "dev", "flynnbr0"]);
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_string();
    let b: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    let ll = format!(
        "fe80::{:x}:{:x}:{:x}:{:x}",
        u16::from_be_bytes([b[0] ^ 2, b[1]]),
        u16::from_be_bytes([b[2], 0xff]),
        u16::from_be_bytes([0xfe, b[3]]),
        u16::from_be_bytes([b[4], b[5]])
    );
    assert!(
        from_host(&d, &format!("[::1]:{OPEN6}")).contains(&format!("open {OPEN6}")),
        "the host reaches its IPv6 service"
    );
    let out = d.cli(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        &format!("sleep 3; ip -6 addr; nc -w 2 {ll}%eth0 {OPEN6} </dev/null 2>&1; echo done"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("done"), "{text}");
    assert!(
        !text.contains("open"),
        "a job reached the host over IPv6 at {ll}: {text}"
    );

    // The daemon's state is not for bridge jobs to mount.
    let state = d.state_dir().join("images");
    let out = d.cli(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/x", state.display()),
        "busybox",
        "true",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("state directory"), "{err}");

    // Host-network jobs are the platform's, and say so.
    let host_job = d.run_detached(&["--net", "host", "busybox", "sleep", "60"]);
    let labels = &d.inspect(&host_job)["config"]["labels"];
    assert_eq!(labels["flynn.platform"], "host-network", "{labels}");
    // A bridge job does not carry the mark.
    assert!(d.inspect(&web)["config"]["labels"]["flynn.platform"].is_null());
    d.ok(&["rm", "-f", &host_job, &web]);
}
