//! A DHCPv4 client (RFC 2131) for the appliance's interfaces: DISCOVER, OFFER,
//! REQUEST, ACK, and renewal at T1. The wire format is `dhcproto`'s.
//!
//! It talks through an ordinary UDP socket bound to port 68 on one interface
//! (`SO_BINDTODEVICE`), not a packet socket: Linux sends a limited broadcast
//! from 0.0.0.0 out of an interface that has no address yet, and delivers
//! broadcasts to it. Replies must then be broadcast, so every request sets the
//! BROADCAST flag, which RFC 2131 §4.1 defines for clients that cannot receive
//! unicast before they are configured. The init's own reaper owns SIGCHLD, which
//! rules out running `udhcpc` and its script under it without a second
//! supervisor; this keeps addresses and their renewal in the one process.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};
use tokio::net::UdpSocket;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP socket on {iface}: {source}")]
    Socket {
        iface: String,
        source: std::io::Error,
    },
    #[error("no DHCP {what} on {iface} within {secs} s")]
    Timeout {
        iface: String,
        what: &'static str,
        secs: u64,
    },
    #[error("the DHCP server refused our request on {0} (NAK)")]
    Nak(String),
    #[error("encoding a DHCP message: {0}")]
    Encode(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub hostname: Option<String>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
    pub renew_secs: u32,
}

fn open(iface: &str) -> Result<UdpSocket, DhcpError> {
    let err = |e: std::io::Error| DhcpError::Socket {
        iface: iface.to_string(),
        source: e,
    };
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| err(e.into()))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| err(e.into()))?;
    socket::setsockopt(&fd, sockopt::Broadcast, &true).map_err(|e| err(e.into()))?;
    socket::setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(iface))
        .map_err(|e| err(e.into()))?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(0, 0, 0, 0, 68),
    )
    .map_err(|e| err(e.into()))?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd)).map_err(err)
}

fn xid(mac: &[u8; 6]) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ now
}

/// An empty BOOTREQUEST: every field zero, the magic cookie, no options.
///
/// Built by decoding rather than with dhcproto's constructors: they all go through
/// `Message::default()`, which draws a transaction id from `rand`, whose seed waits
/// for the kernel's random pool. On a machine without a hardware RNG (QEMU's default
/// CPU model has no RDRAND) that wait took minutes in our static binary, where the
/// `getrandom` crate falls back to polling /dev/random. A DHCP exchange needs no
/// secret: its xid comes from the MAC and the clock ([`xid`]).
fn blank_request() -> v4::Message {
    let mut bytes = [0u8; 241];
    bytes[0] = 1; // BOOTREQUEST
    bytes[236..240].copy_from_slice(&[99, 130, 83, 99]); // the magic cookie
    bytes[240] = 255; // end of options
    // The bytes above are a constant, valid message: the default is never taken.
    v4::Message::decode(&mut Decoder::new(&bytes)).unwrap_or_default()
}

fn request_message(mac: &[u8; 6], xid: u32, kind: MessageType) -> v4::Message {
    let mut msg = blank_request();
    msg.set_opcode(v4::Opcode::BootRequest)
        .set_htype(v4::HType::Eth)
        .set_xid(xid)
        .set_chaddr(mac);
    msg.set_flags(v4::Flags::default().set_broadcast());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(mac);
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::DomainName,
        OptionCode::Hostname,
        OptionCode::AddressLeaseTime,
        OptionCode::Renewal,
    ]));
    msg
}

fn encode(msg: &v4::Message) -> Result<Vec<u8>, DhcpError> {
    let mut buf = Vec::with_capacity(576);
    msg.encode(&mut Encoder::new(&mut buf))
        .map_err(|e| DhcpError::Encode(e.to_string()))?;
    Ok(buf)
}

/// Sends `msg` (again, with doubling waits) until a reply of one of `kinds`
/// with our xid comes, or `deadline`.
async fn exchange(
    sock: &UdpSocket,
    iface: &str,
    msg: &v4::Message,
    kinds: &[MessageType],
    what: &'static str,
    deadline: Instant,
    total: Duration,
) -> Result<v4::Message, DhcpError> {
    let packet = encode(msg)?;
    let mut wait = Duration::from_millis(500);
    let mut buf = vec![0u8; 1500];
    loop {
        sock.send_to(&packet, "255.255.255.255:67")
            .await
            .map_err(|e| DhcpError::Socket {
                iface: iface.to_string(),
                source: e,
            })?;
        let resend_at = (Instant::now() + wait).min(deadline);
        loop {
            match tokio::time::timeout_at(resend_at, sock.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    return Err(DhcpError::Socket {
                        iface: iface.to_string(),
                        source: e,
                    });
                }
                Ok(Ok((n, _))) => {
                    let Some(reply) = decode(&buf[..n]) else {
                        continue;
                    };
                    if reply.xid() != msg.xid() || reply.opcode() != v4::Opcode::BootReply {
                        continue;
                    }
                    match reply.opts().msg_type() {
                        Some(MessageType::Nak) => return Err(DhcpError::Nak(iface.to_string())),
                        Some(t) if kinds.contains(&t) => return Ok(reply),
                        _ => continue,
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(DhcpError::Timeout {
                iface: iface.to_string(),
                what,
                secs: total.as_secs(),
            });
        }
        wait = (wait * 2).min(Duration::from_secs(8));
    }
}

/// Decodes a datagram from the network; None when it is not a DHCP message.
///
/// Anyone on the link can send one, and this runs in PID 1, whose panic is the kernel's.
/// `dhcproto` asserts on some option lengths it does not check (found by `fuzz.rs`:
/// option 80 with data, 94 not 3 bytes long, 81 under 3, 151 empty, 152 to 155 not 4),
/// subtracting past zero where it does not assert; such options are refused here, and
/// any other panic in the decoder is caught and the datagram dropped.
pub(crate) fn decode(bytes: &[u8]) -> Option<v4::Message> {
    if !options_are_sane(bytes.get(240..)?) {
        return None;
    }
    std::panic::catch_unwind(|| v4::Message::decode(&mut Decoder::new(bytes)).ok())
        .ok()
        .flatten()
}

/// Walks the options (code, length, data) and checks the lengths `dhcproto` takes on
/// trust. Options that overrun the datagram are left to the decoder, which refuses them.
fn options_are_sane(mut opts: &[u8]) -> bool {
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            0 => {
                opts = rest;
                continue;
            }
            255 => return true,
            _ => {}
        }
        let Some((&len, rest)) = rest.split_first() else {
            return true;
        };
        let len = usize::from(len);
        let fits = match code {
            80 => len == 0,
            94 => len == 3,
            81 => len >= 3,
            151 => len >= 1,
            152..=155 => len == 4,
            _ => true,
        };
        if !fits {
            return false;
        }
        opts = rest.get(len..).unwrap_or_default();
    }
    true
}

pub(crate) fn lease_from(ack: &v4::Message, server_hint: Ipv4Addr) -> Lease {
    let opts = ack.opts();
    let prefix_len = match opts.get(OptionCode::SubnetMask) {
        // A mask with holes (255.0.255.0) is no prefix: take the common /24.
        Some(DhcpOption::SubnetMask(m)) => crate::cmdline::mask_to_prefix(*m).unwrap_or(24),
        _ => 24,
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    // Both come from whoever answers on the network and end up in files (resolv.conf,
    // /etc/hosts) and the kernel's host name: only well-formed names are kept.
    let domain = match opts.get(OptionCode::DomainName) {
        Some(DhcpOption::DomainName(d)) => Some(d.clone()),
        _ => None,
    }
    .filter(|d| crate::settings::valid_domain(d));
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.clone()),
        _ => None,
    }
    .filter(|h| crate::settings::valid_hostname(h));
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => server_hint,
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => 3600,
    };
    let renew_secs = match opts.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(t)) => *t,
        _ => lease_secs / 2,
    };
    Lease {
        address: ack.yiaddr(),
        prefix_len,
        router,
        dns,
        domain,
        hostname,
        server,
        lease_secs,
        renew_secs,
    }
}

/// Gets a lease on `iface` (whose hardware address is `mac`).
pub async fn acquire(iface: &str, mac: [u8; 6], timeout: Duration) -> Result<Lease, DhcpError> {
    let sock = open(iface)?;
    let deadline = Instant::now() + timeout;
    let id = xid(&mac);
    let discover = request_message(&mac, id, MessageType::Discover);
    let offer = exchange(
        &sock,
        iface,
        &discover,
        &[MessageType::Offer],
        "offer",
        deadline,
        timeout,
    )
    .await?;
    let server = match offer.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => offer.siaddr(),
    };
    let mut request = request_message(&mac, id, MessageType::Request);
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    request
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(server));
    let ack = exchange(
        &sock,
        iface,
        &request,
        &[MessageType::Ack],
        "acknowledgement",
        deadline,
        timeout,
    )
    .await?;
    Ok(lease_from(&ack, server))
}

/// Renews `lease` (RFC 2131's RENEWING state, broadcast like the rest).
pub async fn renew(
    iface: &str,
    mac: [u8; 6],
    lease: &Lease,
    timeout: Duration,
) -> Result<Lease, DhcpError> {
    let sock = open(iface)?;
    let mut request = request_message(&mac, xid(&mac), MessageType::Request);
    request.set_ciaddr(lease.address);
    let ack = exchange(
        &sock,
        iface,
        &request,
        &[MessageType::Ack],
        "acknowledgement of a renewal",
        Instant::now() + timeout,
        timeout,
    )
    .await?;
    Ok(lease_from(&ack, lease.server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_ask_for_broadcast_and_round_trip() {
        let mac = [2, 0, 0, 0, 0, 9];
        let msg = request_message(&mac, 42, MessageType::Discover);
        let bytes = encode(&msg).unwrap();
        let back = v4::Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert!(back.flags().broadcast());
        assert_eq!(back.xid(), 42);
        assert_eq!(&back.chaddr()[..6], &mac);
        assert_eq!(back.opts().msg_type(), Some(MessageType::Discover));
    }

    #[test]
    fn lease_reads_options() {
        let mac = [2, 0, 0, 0, 0, 9];
        let mut ack = request_message(&mac, 1, MessageType::Ack);
        ack.set_opcode(v4::Opcode::BootReply)
            .set_yiaddr(Ipv4Addr::new(10, 0, 2, 15));
        let o = ack.opts_mut();
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]));
        o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 0, 2, 3,
        )]));
        o.insert(DhcpOption::AddressLeaseTime(86400));
        let lease = lease_from(&ack, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.renew_secs, 43200);
    }

    #[test]
    fn malformed_options_are_dropped_not_panicked_on() {
        let mut ack = request_message(&[2, 0, 0, 0, 0, 9], 1, MessageType::Ack);
        ack.set_opcode(v4::Opcode::BootReply);
        let good = encode(&ack).unwrap();
        assert!(decode(&good).is_some());
        // Each of these options made dhcproto's decoder panic (assert or overflow).
        for option in [
            &[80u8, 1, 0][..],
            &[94, 2, 1, 2],
            &[81, 0],
            &[81, 2, 0, 0],
            &[151, 0],
            &[152, 1, 0],
        ] {
            let mut bad = good[..240].to_vec();
            bad.extend_from_slice(option);
            bad.push(255);
            assert!(decode(&bad).is_none(), "{option:?}");
        }
    }

    #[test]
    fn names_from_the_network_are_checked() {
        let mut ack = request_message(&[2, 0, 0, 0, 0, 9], 1, MessageType::Ack);
        ack.set_opcode(v4::Opcode::BootReply);
        let o = ack.opts_mut();
        o.insert(DhcpOption::DomainName("lan\nnameserver 6.6.6.6".into()));
        o.insert(DhcpOption::Hostname("evil host".into()));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)));
        let lease = lease_from(&ack, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!((lease.domain, lease.hostname), (None, None));
        assert_eq!(lease.prefix_len, 24);
        ack.opts_mut()
            .insert(DhcpOption::DomainName("corp.example.".into()));
        ack.opts_mut().insert(DhcpOption::Hostname("node-1".into()));
        let lease = lease_from(&ack, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(lease.domain.as_deref(), Some("corp.example."));
        assert_eq!(lease.hostname.as_deref(), Some("node-1"));
    }
}
