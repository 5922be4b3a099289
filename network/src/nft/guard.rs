//! The wall between jobs and the control plane (the agents' APIs, etcd, the platform's
//! own services, the overlay's VXLAN port): rules of our table that drop what jobs
//! send to control ports, TCP or UDP, on this host and on the other hosts of the cluster.
//!
//! ```text
//! chain input { type filter hook input priority 0; policy accept;
//!     iifname "lo" accept                                   # the host and host-network jobs
//!     ct state established,related accept                  # answers to what the host opened
//!     iifname BRIDGE tcp dport PORT drop                    # a job of this host, any address
//!     ip saddr JOBNET tcp dport PORT drop                   # a job of another host (overlay)
//!     (the same two for each UDP port) }
//! chain forward { ...
//!     iifname BRIDGE ip daddr PEER tcp dport PORT drop      # first: another host's control port
//!     iifname BRIDGE ip daddr PEER udp dport UPORT drop     # and its VXLAN port
//!     ... }
//! ```
//!
//! The VXLAN port is closed because the kernel's VXLAN device takes a datagram from any
//! source: a job that sent one to a host could put a frame on the overlay in the name
//! of any job of the cluster. IPv6 is not filtered here: the bridge has it turned off
//! (`host.rs`), so a job has no IPv6 way to the host at all.
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
    /// UDP ports of this host and of every peer (the cluster's VXLAN port).
    pub udp_ports: Vec<u16>,
    /// Other hosts of the cluster: their address and their control ports (TCP).
    pub peers: Vec<(Ipv4Addr, Vec<u16>)>,
}

const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;
const IPPROTO_UDP: u8 = libc::IPPROTO_UDP as u8;

/// The protocols and ports a set of rules closes, with the protocol's name for errors.
fn closed<'a>(tcp: &'a [u16], udp: &'a [u16]) -> Vec<(u8, &'static str, u16)> {
    let mut v: Vec<(u8, &'static str, u16)> = distinct(tcp)
        .into_iter()
        .map(|p| (IPPROTO_TCP, "tcp", p))
        .collect();
    v.extend(distinct(udp).into_iter().map(|p| (IPPROTO_UDP, "udp", p)));
    v
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
    let closed = closed(&control.ports, &control.udp_ports);
    if closed.is_empty() {
        return;
    }
    let mut r = iifname_is("lo").to_vec();
    r.push(verdict(NF_ACCEPT));
    add_rule(b, "input", &r, "the input rule for loopback".into());
    let mut r = ct_has(NFT_CT_STATE, CT_STATE_ESTABLISHED_RELATED).to_vec();
    r.push(verdict(NF_ACCEPT));
    add_rule(b, "input", &r, "the input rule for answers".into());
    for (proto, name, port) in closed {
        let mut r = iifname_is(bridge).to_vec();
        r.extend(l4_dport(proto, port));
        r.push(verdict(NF_DROP));
        add_rule(
            b,
            "input",
            &r,
            format!("the rule closing control port {name}/{port} to this host's jobs"),
        );
        let mut r = ip_in(12, jobs).to_vec();
        r.extend(l4_dport(proto, port));
        r.push(verdict(NF_DROP));
        add_rule(
            b,
            "input",
            &r,
            format!("the rule closing control port {name}/{port} to the cluster's jobs"),
        );
    }
}

/// The first rules of the `forward` chain: the other hosts' control ports, closed to
/// this host's jobs.
pub(super) fn add_forward(b: &mut Batch, bridge: &str, control: &ControlPlane) {
    for (addr, ports) in &control.peers {
        for (proto, name, port) in closed(ports, &control.udp_ports) {
            let mut r = iifname_is(bridge).to_vec();
            r.extend(daddr_is(*addr));
            r.extend(l4_dport(proto, port));
            r.push(verdict(NF_DROP));
            add_rule(
                b,
                "forward",
                &r,
                format!(
                    "the rule closing {addr} {name}/{port} (another host's control port) to jobs"
                ),
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

    #[test]
    fn udp_ports_are_closed_beside_tcp_ones() {
        assert_eq!(
            closed(&[2379, 1113], &[4789, 4789, 0]),
            vec![
                (IPPROTO_TCP, "tcp", 1113),
                (IPPROTO_TCP, "tcp", 2379),
                (IPPROTO_UDP, "udp", 4789)
            ]
        );
    }
}
