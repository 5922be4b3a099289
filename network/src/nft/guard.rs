//! The wall between jobs and the control plane (the agents' APIs, etcd, the platform's
//! own services): rules of our table that drop TCP connections jobs open to control
//! ports, on this host and on the other hosts of the cluster.
//!
//! ```text
//! chain input { type filter hook input priority 0; policy accept;
//!     iifname "lo" accept                                   # the host and host-network jobs
//!     ct state established,related accept                  # answers to what the host opened
//!     iifname BRIDGE tcp dport PORT drop                    # a job of this host, any address
//!     ip saddr JOBNET tcp dport PORT drop }                 # a job of another host (overlay)
//! chain forward { ...
//!     iifname BRIDGE ip daddr PEER tcp dport PORT drop      # first: another host's control port
//!     ... }
//! ```
//!
//! Matching the input interface as well as the source catches a job that forges its
//! source address (it has `CAP_NET_RAW`) or sends to 127.0.0.1 through the bridge
//! (`route_localnet` is on there for the published ports). A peer's control ports are
//! dropped here, on the job's own host, because past the egress masquerade the peer
//! sees this host's address and cannot tell the job from this host's agent.

use std::net::Ipv4Addr;

use super::*;

/// What jobs must not reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlPlane {
    /// TCP ports of this host, on any of its addresses.
    pub ports: Vec<u16>,
    /// Other hosts of the cluster: their address and their control ports.
    pub peers: Vec<(Ipv4Addr, Vec<u16>)>,
}

const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;

fn tcp_dport(port: u16) -> [Expr; 4] {
    l4_dport(IPPROTO_TCP, port)
}

/// Sorted, without duplicates, without port 0 (which no listener has).
fn distinct(ports: &[u16]) -> Vec<u16> {
    let mut v: Vec<u16> = ports.iter().copied().filter(|p| *p != 0).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The `input` chain: this host's control ports, closed to jobs (`jobs`: the network
/// every job of the cluster, or of this host, has its address in).
pub(super) fn add_input(b: &mut Batch, bridge: &str, jobs: Ipv4Net, control: &ControlPlane) {
    add_chain(
        b,
        "input",
        Some(("filter", NF_INET_LOCAL_IN, NF_IP_PRI_FILTER)),
    );
    let ports = distinct(&control.ports);
    if ports.is_empty() {
        return;
    }
    let mut r = iifname_is("lo").to_vec();
    r.push(verdict(NF_ACCEPT));
    add_rule(b, "input", &r, "the input rule for loopback".into());
    let mut r = ct_has(NFT_CT_STATE, CT_STATE_ESTABLISHED_RELATED).to_vec();
    r.push(verdict(NF_ACCEPT));
    add_rule(b, "input", &r, "the input rule for answers".into());
    for port in ports {
        let mut r = iifname_is(bridge).to_vec();
        r.extend(tcp_dport(port));
        r.push(verdict(NF_DROP));
        add_rule(
            b,
            "input",
            &r,
            format!("the rule closing control port {port} to this host's jobs"),
        );
        let mut r = ip_in(12, jobs).to_vec();
        r.extend(tcp_dport(port));
        r.push(verdict(NF_DROP));
        add_rule(
            b,
            "input",
            &r,
            format!("the rule closing control port {port} to the cluster's jobs"),
        );
    }
}

/// The first rules of the `forward` chain: the other hosts' control ports, closed to
/// this host's jobs.
pub(super) fn add_forward(b: &mut Batch, bridge: &str, control: &ControlPlane) {
    for (addr, ports) in &control.peers {
        for port in distinct(ports) {
            let mut r = iifname_is(bridge).to_vec();
            r.extend(daddr_is(*addr));
            r.extend(tcp_dport(port));
            r.push(verdict(NF_DROP));
            add_rule(
                b,
                "forward",
                &r,
                format!("the rule closing {addr}:{port} (another host's control port) to jobs"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_deduplicated_and_zero_is_dropped() {
        assert_eq!(
            distinct(&[2380, 0, 1113, 2379, 1113]),
            vec![1113, 2379, 2380]
        );
    }
}
