//! No job reaches the control plane of another host: two hosts whose APIs listen on
//! every address, and the test's etcd on the switch. A job on host 1 cannot open host
//! 2's API (at its address, or at its bridge's address over the overlay) nor etcd's
//! ports; it still reaches a job of host 2 over the overlay, an ordinary port of host
//! 2, and the DNS service on its own bridge address.

use std::time::Duration;

use crate::harness::{Cluster, ETCD_IP, fake_upstream, wait_for};
use crate::netns::banner;

/// An ordinary port of host 2, which jobs may reach.
const OPEN_PORT: u16 = 8888;

fn gateway(subnet: &str) -> String {
    let base = subnet.split('/').next().unwrap();
    let mut o: Vec<u8> = base.split('.').map(|p| p.parse().unwrap()).collect();
    o[3] += 1;
    format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
}

#[test]
fn a_job_cannot_reach_another_hosts_api_or_etcd() {
    let mut c = Cluster::start(2, &["--dns-upstream", "127.0.0.1:5353"]);
    // The APIs on every address, as on the appliance.
    for i in 1..=2 {
        let h = c.host_mut(i);
        h.kill9();
        let port = h.api.rsplit(':').next().unwrap().to_string();
        h.listen = format!("0.0.0.0:{port}");
        h.spawn();
    }
    c.wait_joined(2);
    let h1 = c.host(1);
    let h2 = c.host(2);
    for h in [h1, h2] {
        h.import("busybox-docker.tar");
        fake_upstream(&h.netns);
    }
    let api2: u16 = h2.api.rsplit(':').next().unwrap().parse().unwrap();
    let gw2 = gateway(&h2.subnet().unwrap());
    let gw1 = gateway(&h1.subnet().unwrap());
    banner(&h2.netns, OPEN_PORT);
    let web = h2.ok(&[
        "run", "-d", "busybox", "httpd", "-f", "-p", "8080", "-h", "/",
    ]);
    let web = web.trim();
    let web_ip = h2.ip_of(web);
    // Host 1 has learned host 2's API from discovery (a pass every 5 s).
    let peers_closed = wait_for("host 1's rules for host 2", Duration::from_secs(15), || {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", h1.netns))
            .args(["--", "nft", "list", "chain", "ip", "flynn", "forward"])
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&out.stdout).into_owned();
        rules.lines().any(|l| {
            l.contains(&h2.ip) && l.contains(&format!("dport {api2}")) && l.contains("drop")
        })
    });
    println!("isolation: host 1 closed host 2's API to jobs {peers_closed:?} after the test asked");

    let closed = [
        format!("{} {api2}", h2.ip),
        format!("{gw2} {api2}"),
        format!("{ETCD_IP} 2379"),
        format!("{ETCD_IP} 2380"),
        format!("{} 2379", h2.ip),
    ];
    let open = [
        (
            format!("{} {OPEN_PORT}", h2.ip),
            format!("open {OPEN_PORT}"),
        ),
        (format!("{web_ip} 8080"), "HTTP/1.".to_string()),
    ];
    let mut script: Vec<String> = closed
        .iter()
        .chain(open.iter().map(|(t, _)| t))
        .map(|t| {
            format!(
                "echo \"== {t}\"; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {t} 2>&1 | head -c 40; echo"
            )
        })
        .collect();
    script.push(format!(
        "echo \"== dns\"; nslookup example.com {gw1} 2>&1 | head -c 200"
    ));
    let out = h1.cli(&["run", "--rm", "busybox", "sh", "-c", &script.join("; ")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let answer = |t: &str| {
        text.split("== ")
            .find_map(|chunk| {
                let (target, rest) = chunk.split_once('\n')?;
                (target.trim() == t).then(|| rest.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no answer for {t}: {text}"))
    };
    for t in &closed {
        let a = answer(t);
        assert!(
            !a.contains("open") && !a.contains("HTTP/") && !a.contains("404"),
            "a job of host 1 reached {t}: {a:?}\n{text}"
        );
    }
    for (t, want) in &open {
        assert!(answer(t).contains(want.as_str()), "{t}: {text}");
    }
    let dns = answer("dns");
    assert!(
        dns.contains("Server:") && !dns.contains("timed out"),
        "DNS on the bridge answers: {dns}"
    );
    // The host itself still reaches host 2's API and etcd.
    let st = h1.status();
    assert_eq!(st["cluster"]["connected"], true, "{st}");
    h2.ok(&["rm", "-f", web]);
}
