//! The VXLAN overlay between hosts (flannel's `vxlan` backend, in rtnetlink): one VXLAN
//! device per host, and for every other host a route to its subnet, a neighbour entry
//! for its VTEP and a forwarding-database entry saying where that VTEP is.
//!
//! For a peer holding subnet `S` (say 100.100.2.0/24) at underlay address `U` whose
//! VXLAN device has MAC `M`:
//!
//! ```text
//! route  S via S.0 dev VX onlink           # S.0 is the peer's VTEP address
//! neigh  S.0 lladdr M dev VX nud permanent # no ARP across the overlay
//! fdb    M dst U dev VX self permanent     # frames for M are sent, in UDP, to U
//! ```
//!
//! The device has learning off (entries come only from [`Overlay::sync`], which reads
//! them from etcd through the agent), our own VTEP address `own.0/32`, and an MTU 50
//! bytes under the underlay's (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
//! VTEP MACs are derived from the subnet ([`vtep_mac`]), so they survive restarts and
//! every host can check what it is told. `sync` makes the kernel's entries equal to the
//! list it is given (adding, replacing, removing), reading what is there first, so it
//! repairs whatever a crash or a hand left behind.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::{Handle, LinkVxlan, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use crate::config::Ipv4Net;
use crate::error::NetworkError;
use crate::link;

/// What the VXLAN encapsulation costs in MTU.
pub const VXLAN_OVERHEAD: u32 = 50;
pub const DEFAULT_DEVICE: &str = "flynn.vx";

/// This host's side of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayConfig {
    /// The VXLAN device's name.
    pub device: String,
    pub vni: u32,
    /// UDP port of VXLAN traffic (4789 is IANA's).
    pub port: u16,
    /// This host's underlay address: the tunnel's source.
    pub local: Ipv4Addr,
    /// The subnet this host holds (its bridge's subnet).
    pub subnet: Ipv4Net,
    /// The whole cluster network.
    pub cluster: Ipv4Net,
}

/// Another host, as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub underlay: Ipv4Addr,
    pub vtep_mac: [u8; 6],
}

/// The VXLAN device and its entries.
pub struct Overlay {
    cfg: OverlayConfig,
    handle: Handle,
    index: u32,
    mtu: u32,
}

/// The MAC of the VTEP of the host holding `subnet`: `02:66:` and its network address
/// (no job has that address, so it cannot collide with a job's MAC).
pub fn vtep_mac(subnet: Ipv4Net) -> [u8; 6] {
    link::mac_for(subnet.addr())
}

pub fn mac_string(mac: [u8; 6]) -> String {
    link::mac_string(mac)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The first IPv4 address of the interface the default route goes through: a host's
/// address in the cluster unless told otherwise.
pub async fn default_address() -> Result<Option<Ipv4Addr>, NetworkError> {
    let (conn, h, _) =
        rtnetlink::new_connection().map_err(NetworkError::io("opening rtnetlink", "netlink"))?;
    let task = tokio::spawn(conn);
    let result = async {
        let mut routes = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut oif = None;
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(NetworkError::netlink("listing routes"))?
        {
            if r.header.destination_prefix_length == 0
                && r.header.table == RouteHeader::RT_TABLE_MAIN
            {
                oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                if oif.is_some() {
                    break;
                }
            }
        }
        let Some(oif) = oif else { return Ok(None) };
        let mut addrs = h.address().get().set_link_index_filter(oif).execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(NetworkError::netlink("listing addresses"))?
        {
            if a.header.index != oif {
                continue;
            }
            if let Some(ip) = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            }) {
                return Ok(Some(ip));
            }
        }
        Ok(None)
    }
    .await;
    task.abort();
    result
}

/// The MTU of the link holding `addr`, the underlay the overlay rides on.
pub async fn underlay_mtu(addr: Ipv4Addr) -> Result<u32, NetworkError> {
    let (conn, h, _) =
        rtnetlink::new_connection().map_err(NetworkError::io("opening rtnetlink", "netlink"))?;
    let task = tokio::spawn(conn);
    let result = async {
        let mut addrs = h.address().get().execute();
        let mut index = None;
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(NetworkError::netlink("listing addresses"))?
        {
            let local = a.attributes.iter().any(|x| {
                matches!(x, AddressAttribute::Local(IpAddr::V4(v)) | AddressAttribute::Address(IpAddr::V4(v)) if *v == addr)
            });
            if local {
                index = Some(a.header.index);
                break;
            }
        }
        let index = index.ok_or_else(|| {
            NetworkError::Config(format!(
                "no interface of this host has the address {addr} (the overlay's underlay address)"
            ))
        })?;
        let mut links = h.link().get().match_index(index).execute();
        let l = links
            .try_next()
            .await
            .map_err(NetworkError::netlink("reading the underlay link"))?;
        Ok(l.as_ref().and_then(link::mtu).unwrap_or(1500))
    }
    .await;
    task.abort();
    result
}

impl Overlay {
    /// Creates the VXLAN device (or keeps the one there if it matches `cfg`, so
    /// cross-host traffic of running jobs is not interrupted by an agent restart), gives
    /// it our VTEP address and MAC, `mtu` and up.
    pub async fn open(cfg: OverlayConfig, mtu: u32) -> Result<Overlay, NetworkError> {
        validate(&cfg)?;
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(NetworkError::io("opening rtnetlink", "netlink"))?;
        tokio::spawn(conn);
        let name = cfg.device.clone();
        let mac = vtep_mac(cfg.subnet);
        let existing = link::by_name(&handle, &name)
            .await
            .map_err(NetworkError::netlink(format!("looking up {name}")))?;
        if let Some(l) = &existing
            && !matches_cfg(l, &cfg, mac)
        {
            tracing::info!(device = %name, "replacing a VXLAN device of another configuration");
            link::delete_by_name(&handle, &name)
                .await
                .map_err(NetworkError::netlink(format!("deleting {name}")))?;
        }
        let l = match existing.filter(|l| matches_cfg(l, &cfg, mac)) {
            Some(l) => l,
            None => {
                let msg = LinkVxlan::new(&name, cfg.vni)
                    .local(cfg.local)
                    .port(cfg.port)
                    .learning(false)
                    .mtu(mtu)
                    .address(mac.to_vec())
                    .build();
                handle
                    .link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(NetworkError::netlink(format!(
                        "creating VXLAN device {name}"
                    )))?;
                link::by_name(&handle, &name)
                    .await
                    .map_err(NetworkError::netlink(format!("looking up {name}")))?
                    .ok_or_else(|| {
                        NetworkError::Config(format!("{name} vanished after it was made"))
                    })?
            }
        };
        let index = l.header.index;
        link::set_up_mtu(&handle, index, mtu)
            .await
            .map_err(NetworkError::netlink(format!("bringing {name} up")))?;
        link::ensure_only_address(&handle, index, cfg.subnet.addr(), 32)
            .await
            .map_err(NetworkError::netlink(format!(
                "setting the address of {name}"
            )))?;
        tracing::info!(device = %name, vni = cfg.vni, local = %cfg.local, subnet = %cfg.subnet, mtu, "overlay device ready");
        Ok(Overlay {
            cfg,
            handle,
            index,
            mtu,
        })
    }

    pub fn config(&self) -> &OverlayConfig {
        &self.cfg
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Makes the routes, neighbour and FDB entries of the device exactly those of
    /// `peers` (our own subnet is skipped if it is among them).
    pub async fn sync(&self, peers: &[Peer]) -> Result<(), NetworkError> {
        let peers: Vec<&Peer> = peers
            .iter()
            .filter(|p| p.subnet != self.cfg.subnet && self.cfg.cluster.contains(p.subnet.addr()))
            .collect();
        let h = &self.handle;
        let (routes, neighs, fdb) =
            futures::try_join!(self.routes(), self.neighbours(), self.fdb())?;

        // Removed first, so a subnet that moved to another host is not reachable both ways.
        let want_routes: HashSet<(Ipv4Addr, u8)> = peers
            .iter()
            .map(|p| (p.subnet.addr(), p.subnet.prefix_len()))
            .collect();
        for ((dst, len), msg) in &routes {
            if !want_routes.contains(&(*dst, *len)) {
                tracing::info!(subnet = %format!("{dst}/{len}"), "removing the overlay route of a departed host");
                h.route()
                    .del(msg.clone())
                    .execute()
                    .await
                    .or_else(ignore(libc::ESRCH))
                    .map_err(NetworkError::netlink(format!("deleting route {dst}/{len}")))?;
            }
        }
        let want_neigh: HashMap<Ipv4Addr, [u8; 6]> = peers
            .iter()
            .map(|p| (p.subnet.addr(), p.vtep_mac))
            .collect();
        for (ip, (mac, msg)) in &neighs {
            if want_neigh.get(ip) != Some(mac) {
                h.neighbours()
                    .del(msg.clone())
                    .execute()
                    .await
                    .or_else(ignore(libc::ENOENT))
                    .map_err(NetworkError::netlink(format!("deleting neighbour {ip}")))?;
            }
        }
        let want_fdb: HashMap<[u8; 6], Ipv4Addr> =
            peers.iter().map(|p| (p.vtep_mac, p.underlay)).collect();
        for (mac, (dst, msg)) in &fdb {
            if want_fdb.get(mac) != Some(dst) {
                h.neighbours()
                    .del(msg.clone())
                    .execute()
                    .await
                    .or_else(ignore(libc::ENOENT))
                    .map_err(NetworkError::netlink(format!(
                        "deleting FDB entry {}",
                        mac_string(*mac)
                    )))?;
            }
        }

        for p in &peers {
            let gw = p.subnet.addr();
            if fdb.get(&p.vtep_mac).map(|(d, _)| d) != Some(&p.underlay) {
                h.neighbours()
                    .add_bridge(self.index, &p.vtep_mac)
                    .destination(IpAddr::V4(p.underlay))
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(NetworkError::netlink(format!(
                        "adding the FDB entry of {}",
                        p.subnet
                    )))?;
            }
            if neighs.get(&gw).map(|(m, _)| m) != Some(&p.vtep_mac) {
                h.neighbours()
                    .add(self.index, IpAddr::V4(gw))
                    .link_layer_address(&p.vtep_mac)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(NetworkError::netlink(format!(
                        "adding the neighbour entry of {}",
                        p.subnet
                    )))?;
            }
            if !routes.contains_key(&(gw, p.subnet.prefix_len())) {
                let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(gw, p.subnet.prefix_len())
                    .gateway(gw)
                    .output_interface(self.index)
                    .onlink()
                    .build();
                h.route()
                    .add(msg)
                    .replace()
                    .execute()
                    .await
                    .map_err(NetworkError::netlink(format!(
                        "adding the route to {}",
                        p.subnet
                    )))?;
            }
        }
        Ok(())
    }

    /// The peers the kernel has now (from the device's routes and FDB entries), for
    /// status and tests.
    pub async fn kernel_peers(&self) -> Result<Vec<Peer>, NetworkError> {
        let (routes, neighs, fdb) =
            futures::try_join!(self.routes(), self.neighbours(), self.fdb())?;
        let mut out = Vec::new();
        for (gw, len) in routes.keys() {
            let Some(subnet) = Ipv4Net::new(*gw, *len) else {
                continue;
            };
            let Some((mac, _)) = neighs.get(gw) else {
                continue;
            };
            let Some((underlay, _)) = fdb.get(mac) else {
                continue;
            };
            out.push(Peer {
                subnet,
                underlay: *underlay,
                vtep_mac: *mac,
            });
        }
        out.sort_by_key(|p| p.subnet.addr());
        Ok(out)
    }

    /// Deletes the device (its routes and entries go with it).
    pub async fn destroy(self) -> Result<(), NetworkError> {
        link::delete_by_name(&self.handle, &self.cfg.device)
            .await
            .map_err(NetworkError::netlink(format!(
                "deleting {}",
                self.cfg.device
            )))?;
        Ok(())
    }

    async fn routes(&self) -> Result<HashMap<(Ipv4Addr, u8), RouteMessage>, NetworkError> {
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = HashMap::new();
        while let Some(r) = s
            .try_next()
            .await
            .map_err(NetworkError::netlink("listing routes"))?
        {
            if r.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                _ => None,
            });
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
                _ => None,
            });
            // Only the routes we make: to a subnet via its own network address.
            if oif == Some(self.index)
                && let (Some(dst), Some(_)) = (dst, gw)
            {
                out.insert((dst, r.header.destination_prefix_length), r);
            }
        }
        Ok(out)
    }

    async fn neighbours(
        &self,
    ) -> Result<HashMap<Ipv4Addr, ([u8; 6], NeighbourMessage)>, NetworkError> {
        let mut s = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        let mut out = HashMap::new();
        while let Some(n) = s
            .try_next()
            .await
            .map_err(NetworkError::netlink("listing neighbours"))?
        {
            if n.header.ifindex != self.index {
                continue;
            }
            let ip = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let mac = lladdr(&n);
            if let Some(ip) = ip {
                out.insert(ip, (mac.unwrap_or_default(), n));
            }
        }
        Ok(out)
    }

    async fn fdb(&self) -> Result<HashMap<[u8; 6], (Ipv4Addr, NeighbourMessage)>, NetworkError> {
        let mut s = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let mut out = HashMap::new();
        while let Some(n) = s
            .try_next()
            .await
            .map_err(NetworkError::netlink("listing FDB entries"))?
        {
            if n.header.ifindex != self.index {
                continue;
            }
            // In AF_BRIDGE messages the parser cannot tell the family of NDA_DST.
            let dst = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                    Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                }
                _ => None,
            });
            // Entries without a destination are the device's own address.
            if let (Some(mac), Some(dst)) = (lladdr(&n), dst) {
                out.insert(mac, (dst, n));
            }
        }
        Ok(out)
    }
}

fn lladdr(n: &NeighbourMessage) -> Option<[u8; 6]> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => {
            let mut out = [0u8; 6];
            out.copy_from_slice(m);
            Some(out)
        }
        _ => None,
    })
}

fn ignore(errno: i32) -> impl Fn(rtnetlink::Error) -> Result<(), rtnetlink::Error> {
    move |e| {
        if link::errno(&e) == Some(errno) {
            Ok(())
        } else {
            Err(e)
        }
    }
}

fn validate(cfg: &OverlayConfig) -> Result<(), NetworkError> {
    let d = &cfg.device;
    if d.is_empty() || d.len() > 15 || d.contains(['/', ' ', ':']) {
        return Err(NetworkError::Config(format!(
            "VXLAN device name {d:?} is not a valid interface name"
        )));
    }
    if cfg.vni == 0 || cfg.vni >= 1 << 24 {
        return Err(NetworkError::Config(format!(
            "VNI {} is not in 1-16777215",
            cfg.vni
        )));
    }
    if !cfg.cluster.contains(cfg.subnet.addr())
        || cfg.subnet.prefix_len() < cfg.cluster.prefix_len()
    {
        return Err(NetworkError::Config(format!(
            "subnet {} is not inside the cluster network {}",
            cfg.subnet, cfg.cluster
        )));
    }
    Ok(())
}

/// Whether an existing device is a VXLAN device made for `cfg`.
fn matches_cfg(l: &LinkMessage, cfg: &OverlayConfig, mac: [u8; 6]) -> bool {
    let info: Vec<&InfoVxlan> = l
        .attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
        .filter_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
            _ => None,
        })
        .flatten()
        .collect();
    let has = |want: &InfoVxlan| info.contains(&want);
    let addr_ok = l
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Address(m) if m[..] == mac[..]));
    has(&InfoVxlan::Id(cfg.vni))
        && has(&InfoVxlan::Local(cfg.local))
        && has(&InfoVxlan::Port(cfg.port))
        && has(&InfoVxlan::Learning(false))
        && addr_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        let s: Ipv4Net = "100.100.7.0/24".parse().unwrap();
        let m = vtep_mac(s);
        assert_eq!(mac_string(m), "02:66:64:64:07:00");
        assert_eq!(parse_mac(&mac_string(m)), Some(m));
        assert_eq!(parse_mac("02:66"), None);
        assert_eq!(parse_mac("02:66:64:64:07:00:01"), None);
    }
}
