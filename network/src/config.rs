//! The host network's configuration and the IPv4 prefix type it uses.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network: a network address and a prefix length, e.g. `10.88.0.0/24`.
/// The address is always the network address (host bits zero). Parsing and the
/// arithmetic are `ipnet`'s; this type adds that check and what the bridge needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Net(ipnet::Ipv4Net);

/// Why a CIDR string is not a usable IPv4 network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv4 network {input:?}: {reason}")]
pub struct NetParseError {
    input: String,
    reason: String,
}

impl Ipv4Net {
    /// A network from its address and prefix length; `None` if the prefix is longer than
    /// 32 bits or the address has host bits set.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Net> {
        let net = ipnet::Ipv4Net::new(addr, prefix_len).ok()?;
        (net.network() == addr).then_some(Ipv4Net(net))
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.0.network()
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn netmask(&self) -> Ipv4Addr {
        self.0.netmask()
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        self.0.broadcast()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.0.contains(&ip)
    }

    /// The first host address: the bridge's address and the jobs' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr()) + 1)
    }

    /// The addresses jobs may get: every host address after the gateway, without the
    /// broadcast address. Empty for prefixes longer than /30.
    pub fn job_range(&self) -> std::ops::RangeInclusive<u32> {
        if self.prefix_len() > 30 {
            #[allow(clippy::reversed_empty_ranges)]
            return 1..=0;
        }
        u32::from(self.addr()) + 2..=u32::from(self.broadcast()) - 1
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix_len())
    }
}

impl FromStr for Ipv4Net {
    type Err = NetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| NetParseError {
            input: s.to_string(),
            reason,
        };
        let net: ipnet::Ipv4Net = s.parse().map_err(|_| {
            err(
                "expected an IPv4 ADDRESS/PREFIX with a prefix length of 0-32, e.g. 10.88.0.0/24"
                    .into(),
            )
        })?;
        if net.addr() != net.network() {
            return Err(err(format!(
                "host bits are set; the network is {}",
                net.trunc()
            )));
        }
        Ok(Ipv4Net(net))
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How the host network is set up. [`NetworkConfig::default`] is what the agent uses
/// unless told otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The bridge every job's veth is attached to; created if missing.
    pub bridge: String,
    /// The jobs' subnet. The bridge gets its first host address (the gateway).
    pub subnet: Ipv4Net,
    /// MTU of the bridge and the veths. `None`: the MTU of the interface of the default
    /// route, or 1500 without one.
    pub mtu: Option<u32>,
    /// Where `ipam.json` (addresses and endpoints) is kept.
    pub state_dir: PathBuf,
    /// Where each job's network namespace is bind-mounted as a file named by the job id.
    pub netns_dir: PathBuf,
    /// The cluster (overlay) network `subnet` is part of, if the host is in one: traffic
    /// between it and `subnet` is neither masqueraded nor dropped on its way in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Ipv4Net>,
    /// TCP ports of the control plane on this host (the agent's API, etcd...): jobs on
    /// the bridge, and jobs of other hosts over the overlay, cannot open them on any of
    /// this host's addresses. The host itself (and host-network jobs) still can.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_ports: Vec<u16>,
    /// UDP ports of the control plane, on this host and on every other host of the
    /// cluster (the overlay's VXLAN port: a job that sent to it could put frames on
    /// the overlay as any job of the cluster). Closed to jobs like `control_ports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_udp_ports: Vec<u16>,
}

pub const DEFAULT_BRIDGE: &str = "flynnbr0";

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: DEFAULT_BRIDGE.to_string(),
            subnet: Ipv4Net(ipnet::Ipv4Net::new_assert(Ipv4Addr::new(10, 88, 0, 0), 24)),
            mtu: None,
            state_dir: PathBuf::from("/var/lib/flynn/network"),
            netns_dir: PathBuf::from("/run/flynn/netns"),
            cluster: None,
            control_ports: Vec::new(),
            control_udp_ports: Vec::new(),
        }
    }
}

impl NetworkConfig {
    /// Checks what the kernel would otherwise refuse with a less helpful message.
    pub fn validate(&self) -> Result<(), String> {
        let b = &self.bridge;
        if b.is_empty() || b.len() > 15 || b.contains(['/', ' ', ':']) || b == "." || b == ".." {
            return Err(format!(
                "bridge name {b:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
            ));
        }
        if self.subnet.prefix_len() > 30 || self.subnet.prefix_len() < 8 {
            return Err(format!(
                "subnet {} must have a prefix length between /8 and /30",
                self.subnet
            ));
        }
        if let Some(c) = self.cluster
            && (!c.contains(self.subnet.addr()) || self.subnet.prefix_len() < c.prefix_len())
        {
            return Err(format!(
                "subnet {} is not inside the cluster network {c}",
                self.subnet
            ));
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(format!("MTU {mtu} is out of range (68-65535)"));
        }
        for (what, p) in [
            ("state_dir", &self.state_dir),
            ("netns_dir", &self.netns_dir),
        ] {
            if !p.is_absolute() {
                return Err(format!("{what} {} must be an absolute path", p.display()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_computes() {
        let n: Ipv4Net = "10.88.0.0/24".parse().unwrap();
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 88, 0, 255));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(n.job_range().count(), 253);
        assert!(n.contains(Ipv4Addr::new(10, 88, 0, 77)));
        assert!(!n.contains(Ipv4Addr::new(10, 88, 1, 1)));
        assert_eq!(n.to_string(), "10.88.0.0/24");
        let small: Ipv4Net = "192.0.2.0/30".parse().unwrap();
        assert_eq!(small.job_range().count(), 1);
        let zero: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert_eq!(zero.netmask(), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn rejects_bad_networks() {
        for bad in [
            "10.88.0.0",
            "10.88.0.1/24",
            "10.88.0.0/33",
            "x/24",
            "10.88.0.0/x",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
        let e = "10.88.0.1/24".parse::<Ipv4Net>().unwrap_err().to_string();
        assert!(e.contains("10.88.0.0/24"), "{e}");
        let e = "10.88.0.0".parse::<Ipv4Net>().unwrap_err().to_string();
        assert!(e.contains("ADDRESS/PREFIX"), "{e}");
        assert_eq!(Ipv4Net::new(Ipv4Addr::new(10, 88, 0, 1), 24), None);
        assert_eq!(Ipv4Net::new(Ipv4Addr::new(10, 88, 0, 0), 33), None);
        assert_eq!(NetworkConfig::default().subnet.to_string(), "10.88.0.0/24");
    }

    #[test]
    fn serde_as_string() {
        let n: Ipv4Net = "10.88.0.0/24".parse().unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"10.88.0.0/24\"");
        let back: Ipv4Net = serde_json::from_str("\"10.88.0.0/24\"").unwrap();
        assert_eq!(back, n);
    }
}
