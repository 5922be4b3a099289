//! Keeps the other hosts' control ports closed to this host's jobs: every few seconds
//! the hosts in discovery become the network's control peers (their address, the
//! port of their API, and the control ports every host of the platform has). A job
//! that could reach another host's API or etcd would be past the wall `network`
//! builds on its own host (see `network/src/nft/guard.rs`).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use discovery::{Etcd, HostRecord};
use network::HostNetwork;

/// How often the list of hosts is read again. A host that joins is reachable by
/// jobs for at most this long, and only once it has announced itself.
pub const PERIOD: Duration = Duration::from_secs(5);

/// The control peers for `hosts`, leaving out `me`: each host's address (and its
/// API's, if that differs) with `ports` and its API's port.
pub fn peers(hosts: &[HostRecord], me: &str, ports: &[u16]) -> Vec<(Ipv4Addr, Vec<u16>)> {
    let mut out = Vec::new();
    for h in hosts.iter().filter(|h| h.id != me) {
        let (api_ip, api_port) = h.api.as_deref().map_or((None, None), api_address);
        let mut list = ports.to_vec();
        list.extend(api_port);
        list.sort_unstable();
        list.dedup();
        out.push((h.address, list.clone()));
        if let Some(ip) = api_ip.filter(|ip| *ip != h.address) {
            out.push((ip, list));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The IPv4 address and port of an API URL such as `http://10.0.0.2:1113`.
fn api_address(url: &str) -> (Option<Ipv4Addr>, Option<u16>) {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    match hostport.rsplit_once(':') {
        Some((host, port)) => (host.parse().ok(), port.parse().ok()),
        None => (hostport.parse().ok(), None),
    }
}

/// The etcd members this host was given (`--etcd URL,...`), wherever they run: their
/// address with the client port of the URL and `ports`.
pub fn etcd_peers(endpoints: &[String], ports: &[u16]) -> Vec<(Ipv4Addr, Vec<u16>)> {
    endpoints
        .iter()
        .filter_map(|url| {
            let (ip, port) = api_address(url);
            let ip = ip.filter(|ip| !ip.is_loopback())?;
            let mut list = ports.to_vec();
            list.extend(port);
            list.sort_unstable();
            list.dedup();
            Some((ip, list))
        })
        .collect()
}

/// Runs until the grid stops.
pub async fn run(etcd: Etcd, net: Arc<HostNetwork>, me: String, endpoints: Vec<String>) {
    let ports = net.config().control_ports.clone();
    loop {
        match discovery::hosts::list(&etcd).await {
            Ok(hosts) => {
                let mut peers = peers(&hosts, &me, &ports);
                peers.extend(etcd_peers(&endpoints, &ports));
                if let Err(e) = net.set_control_peers(peers).await {
                    tracing::error!(error = %e, "closing other hosts' control ports to jobs");
                }
            }
            Err(e) => tracing::debug!(error = %e, "listing hosts for the control-port rules"),
        }
        tokio::time::sleep(PERIOD).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, address: &str, api: Option<&str>) -> HostRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "address": address, "api": api,
            "resources": {"cpus": 1, "memory_total": 0, "memory_free": 0, "disk_total": 0,
                          "disk_free": 0, "jobs_running": 0},
            "version": "0", "started_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn etcd_members_are_peers_too() {
        let p = etcd_peers(
            &[
                "http://192.0.2.254:2379".into(),
                "http://127.0.0.1:2379".into(),
            ],
            &[2380],
        );
        assert_eq!(p, vec![("192.0.2.254".parse().unwrap(), vec![2379, 2380])]);
    }

    #[test]
    fn peers_are_the_other_hosts_with_their_api_port() {
        let hosts = [
            host("a", "10.0.0.1", Some("http://10.0.0.1:1113")),
            host("b", "10.0.0.2", Some("http://10.0.0.2:7000")),
            host("c", "10.0.0.3", Some("http://192.0.2.3:1113")),
            host("d", "10.0.0.4", None),
        ];
        let p = peers(&hosts, "a", &[2379, 2380]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            p,
            vec![
                (ip("10.0.0.2"), vec![2379, 2380, 7000]),
                (ip("10.0.0.3"), vec![1113, 2379, 2380]),
                (ip("10.0.0.4"), vec![2379, 2380]),
                (ip("192.0.2.3"), vec![1113, 2379, 2380]),
            ]
        );
    }
}
