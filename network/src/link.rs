//! Host-side links and addresses through the shared rtnetlink handle: the bridge, the
//! jobs' veth pairs, and what `open` needs to know about the host (default route MTU,
//! the bridge's ports).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAttribute, RouteHeader};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

/// The errno of a netlink error answer (positive), if that is what `e` is.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// A MAC address from an IPv4 address: `02:66` (locally administered, unicast; 0x66 is
/// 'f') then the address's four bytes. Deterministic, so an address that is reused keeps
/// its MAC and neighbours' ARP caches stay right; unique because addresses are.
pub(crate) fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x66, o[0], o[1], o[2], o[3]]
}

pub(crate) fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The link named `name`, if it exists.
pub(crate) async fn by_name(
    h: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut s = h.link().get().match_name(name).execute();
    match s.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

pub(crate) fn mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

fn name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(c) => Some(*c),
        _ => None,
    })
}

/// The MTU of the interface the IPv4 default route goes through, if there is one.
pub(crate) async fn default_route_mtu(h: &Handle) -> Result<Option<u32>, rtnetlink::Error> {
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut oif = None;
    while let Some(r) = routes.try_next().await? {
        if r.header.destination_prefix_length != 0 || r.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif.is_some() {
            break;
        }
    }
    let Some(oif) = oif else { return Ok(None) };
    let mut links = h.link().get().match_index(oif).execute();
    Ok(links.try_next().await?.as_ref().and_then(mtu))
}

/// Creates the bridge (MTU, MAC, up). The MAC is set explicitly because a bridge without
/// one takes the lowest MAC of its ports, which changes as jobs come and go and leaves
/// every job with a stale ARP entry for its gateway.
pub(crate) async fn create_bridge(
    h: &Handle,
    name: &str,
    mtu: u32,
    mac: [u8; 6],
) -> Result<(), rtnetlink::Error> {
    h.link()
        .add(LinkBridge::new(name).mtu(mtu).address(mac.to_vec()).build())
        .execute()
        .await
}

/// Sets MTU and up on an existing link.
pub(crate) async fn set_up_mtu(h: &Handle, index: u32, mtu: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
}

/// Makes `ip/prefix_len` the only IPv4 address of link `index` (the bridge's gateway).
pub(crate) async fn ensure_only_address(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), rtnetlink::Error> {
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    let mut present = false;
    let mut stale = Vec::new();
    while let Some(a) = addrs.try_next().await? {
        if a.header.family != AddressFamily::Inet || a.header.index != index {
            continue;
        }
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        if local == Some(ip) && a.header.prefix_len == prefix_len {
            present = true;
        } else {
            stale.push(a);
        }
    }
    for a in stale {
        tracing::info!(?a, "removing a stale address from the bridge");
        h.address().del(a).execute().await?;
    }
    if !present {
        h.address()
            .add(index, IpAddr::V4(ip), prefix_len)
            .execute()
            .await?;
    }
    Ok(())
}

/// Creates a job's veth pair in one request: `host` on the host, attached to the bridge
/// and up; its peer created directly inside the job's namespace (`netns`) as `eth0`,
/// with the job's MAC. Both ends get `mtu`. The peer cannot be brought up in the same
/// request (the kernel opens it before the pair is linked: ENOTCONN), so the namespace
/// thread does that.
pub(crate) async fn create_veth(
    h: &Handle,
    host: &str,
    bridge_index: u32,
    mtu: u32,
    netns: BorrowedFd<'_>,
    mac: [u8; 6],
) -> Result<(), rtnetlink::Error> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name("eth0".to_string())
        .mtu(mtu)
        .address(mac.to_vec())
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(host, "eth0")
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .controller(bridge_index)
        .up()
        .build();
    h.link().add(msg).execute().await
}

/// Turns on hairpin mode on bridge port `name`: the bridge may send a frame back out of
/// the port it came in on. A job reaching its own published port (through a host
/// address) needs it where bridge netfilter is active (`bridge-nf-call-iptables`, built
/// in on many kernels, loaded by Docker and Kubernetes): the DNAT'd frame is then bridged
/// back to the port it came from rather than routed. Slave options cannot be given in the
/// request that creates and enslaves the link, hence a second one.
pub(crate) async fn set_hairpin(h: &Handle, name: &str) -> Result<(), rtnetlink::Error> {
    let msg = LinkUnspec::new_with_name(name)
        .set_port_kind(InfoPortKind::Bridge)
        .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
            true,
        )]))
        .build();
    h.link().set_port(msg).execute().await
}

/// Deletes the link named `name` (for a veth, both ends go). `false` if there was none.
pub(crate) async fn delete_by_name(h: &Handle, name: &str) -> Result<bool, rtnetlink::Error> {
    // RTM_DELLINK by name: one round trip instead of a lookup and a delete.
    let msg = LinkUnspec::new_with_name(name).build();
    match h.link().del_with_message(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Names of the links attached to the bridge with index `bridge_index`.
pub(crate) async fn ports_of(
    h: &Handle,
    bridge_index: u32,
) -> Result<Vec<String>, rtnetlink::Error> {
    let mut links = h.link().get().execute();
    let mut out = Vec::new();
    while let Some(l) = links.try_next().await? {
        if controller(&l) == Some(bridge_index)
            && let Some(n) = name(&l)
        {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

/// Whether a link is a bridge.
pub(crate) fn is_bridge(link: &LinkMessage) -> bool {
    matches!(kind(link), Some(InfoKind::Bridge))
}
