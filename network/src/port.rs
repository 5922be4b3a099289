//! Published ports: Docker's `-p` syntax, and the sockets that hold a published host port
//! so no other process can take it while a job publishes it.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::str::FromStr;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A published port: `host_ip:host_port/protocol` on the host goes to `container_port`
/// of the job. `host_ip: None` means every local address; `host_port: 0` asks the host to
/// choose a free port (the endpoint then records the chosen one).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    /// The address the host side binds: `host_ip`, or 0.0.0.0.
    pub fn bind_ip(&self) -> Ipv4Addr {
        self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// Whether two mappings want the same host port: same protocol and port, and the
    /// same address or either one on every address.
    pub fn overlaps(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && self.host_port != 0
            && (self.bind_ip() == other.bind_ip()
                || self.bind_ip().is_unspecified()
                || other.bind_ip().is_unspecified())
    }

    /// `host_ip:host_port/proto`, how error messages name the host side.
    pub fn host_side(&self) -> String {
        format!("{}:{}/{}", self.bind_ip(), self.host_port, self.protocol)
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.host_ip, self.host_port) {
            (None, 0) => write!(f, "{}/{}", self.container_port, self.protocol),
            (None, h) => write!(f, "{h}:{}/{}", self.container_port, self.protocol),
            (Some(ip), 0) => write!(f, "{ip}::{}/{}", self.container_port, self.protocol),
            (Some(ip), h) => write!(f, "{ip}:{h}:{}/{}", self.container_port, self.protocol),
        }
    }
}

/// Why a `-p` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid published port {input:?}: {reason}")]
pub struct PortParseError {
    pub input: String,
    pub reason: String,
}

impl FromStr for PortMapping {
    type Err = PortParseError;

    /// Docker's `-p` syntax: `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp]`, e.g.
    /// `8080:80`, `8080:80/udp`, `127.0.0.1:8080:80`, `127.0.0.1::80` or `80` (the last
    /// two let the host choose the host port).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| PortParseError {
            input: s.to_string(),
            reason,
        };
        if s.starts_with('[') {
            return Err(err("IPv6 host addresses are not supported".into()));
        }
        let (spec, protocol) = match s.rsplit_once('/') {
            None => (s, Protocol::Tcp),
            Some((spec, "tcp")) => (spec, Protocol::Tcp),
            Some((spec, "udp")) => (spec, Protocol::Udp),
            Some((_, other)) => {
                return Err(err(format!(
                    "protocol {other:?} is not supported (use tcp or udp)"
                )));
            }
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (ip, host, container) = match parts.as_slice() {
            [c] => (None, None, *c),
            [h, c] => (None, Some(*h), *c),
            [ip, h, c] => (Some(*ip), Some(*h), *c),
            _ => {
                return Err(err(
                    "expected [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL] (IPv6 addresses are not supported)"
                        .into(),
                ));
            }
        };
        let port = |what: &str, v: &str, zero_ok: bool| -> Result<u16, PortParseError> {
            if v.contains('-') {
                return Err(err(format!("{what} {v:?}: port ranges are not supported")));
            }
            match v.parse::<u16>() {
                Ok(0) if !zero_ok => Err(err(format!("{what} must be 1-65535, not 0"))),
                Ok(p) => Ok(p),
                Err(_) if v.is_empty() => Err(err(format!("{what} is missing"))),
                Err(_) => Err(err(format!("{what} {v:?} is not a port number (1-65535)"))),
            }
        };
        let host_ip = match ip {
            None => None,
            Some(v) => {
                let a: Ipv4Addr = v
                    .parse()
                    .map_err(|_| err(format!("host address {v:?} is not an IPv4 address")))?;
                // 0.0.0.0 is what "no address" means: every local address.
                (!a.is_unspecified()).then_some(a)
            }
        };
        let host_port = match host {
            None | Some("") => 0,
            Some(v) => port("host port", v, true)?,
        };
        let container_port = port("container port", container, false)?;
        Ok(PortMapping {
            host_ip,
            host_port,
            container_port,
            protocol,
        })
    }
}

/// A socket bound (TCP: bound, never listening; UDP: bound) to a published host port, so
/// that no other process can bind it. Packets never reach it: DNAT happens first.
#[derive(Debug)]
pub(crate) struct HeldPort {
    _socket: OwnedFd,
}

/// Binds `host_ip:host_port` for `protocol` and returns the socket and the port actually
/// bound (the kernel's choice when `host_port` is 0). No `SO_REUSEADDR`: with it, Linux
/// lets two non-listening TCP sockets share a port, which is what we must prevent.
pub(crate) fn hold(p: &PortMapping) -> io::Result<(HeldPort, u16)> {
    let kind = match p.protocol {
        Protocol::Tcp => SockType::Stream,
        Protocol::Udp => SockType::Datagram,
    };
    // CLOEXEC: shims and anything else the agent executes must not inherit it.
    let fd = socket::socket(AddressFamily::Inet, kind, SockFlag::SOCK_CLOEXEC, None)?;
    let addr = SockaddrIn::from(SocketAddrV4::new(p.bind_ip(), p.host_port));
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    let bound: SockaddrIn = socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
    Ok((HeldPort { _socket: fd }, bound.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(ip: Option<[u8; 4]>, h: u16, c: u16, p: Protocol) -> PortMapping {
        PortMapping {
            host_ip: ip.map(Ipv4Addr::from),
            host_port: h,
            container_port: c,
            protocol: p,
        }
    }

    #[test]
    fn parses_docker_syntax() {
        use Protocol::*;
        let cases = [
            ("8080:80", pm(None, 8080, 80, Tcp)),
            ("8080:80/udp", pm(None, 8080, 80, Udp)),
            ("8080:80/tcp", pm(None, 8080, 80, Tcp)),
            ("127.0.0.1:8080:80", pm(Some([127, 0, 0, 1]), 8080, 80, Tcp)),
            ("127.0.0.1::80", pm(Some([127, 0, 0, 1]), 0, 80, Tcp)),
            ("127.0.0.1::53/udp", pm(Some([127, 0, 0, 1]), 0, 53, Udp)),
            ("0.0.0.0:8080:80", pm(None, 8080, 80, Tcp)),
            ("80", pm(None, 0, 80, Tcp)),
            ("53/udp", pm(None, 0, 53, Udp)),
            ("0:80", pm(None, 0, 80, Tcp)),
            (":80", pm(None, 0, 80, Tcp)),
            ("65535:1", pm(None, 65535, 1, Tcp)),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<PortMapping>().unwrap(), want, "{s}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "8080:80/tcp",
            "8080:80/udp",
            "127.0.0.1:8080:80/tcp",
            "127.0.0.1::80/tcp",
            "80/tcp",
        ] {
            let p: PortMapping = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            assert_eq!(p.to_string().parse::<PortMapping>().unwrap(), p);
        }
    }

    #[test]
    fn refuses_bad_input_clearly() {
        let cases = [
            ("", "container port is missing"),
            ("8080:", "container port is missing"),
            ("8080:0", "must be 1-65535"),
            ("0", "must be 1-65535"),
            ("70000:80", "\"70000\" is not a port number"),
            ("8080:http", "\"http\" is not a port number"),
            ("8080:80/sctp", "protocol \"sctp\" is not supported"),
            ("8080:80/", "protocol \"\" is not supported"),
            ("8000-8010:80-90", "port ranges are not supported"),
            ("localhost:8080:80", "not an IPv4 address"),
            ("300.0.0.1:8080:80", "not an IPv4 address"),
            ("[::1]:8080:80", "IPv6"),
            ("::1:8080:80", "IPv6 addresses are not supported"),
            ("1.2.3.4:1:2:3", "expected [HOST_IP:]"),
        ];
        for (s, want) in cases {
            let e = s.parse::<PortMapping>().unwrap_err().to_string();
            assert!(e.contains(want), "{s:?}: {e}");
            assert!(
                e.contains(&format!("{s:?}")),
                "{s:?}: the error names the input: {e}"
            );
        }
    }

    #[test]
    fn serde_shape() {
        let p: PortMapping = "127.0.0.1:8080:80/udp".parse().unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"host_ip":"127.0.0.1","host_port":8080,"container_port":80,"protocol":"udp"})
        );
        assert_eq!(serde_json::from_value::<PortMapping>(v).unwrap(), p);
    }

    #[test]
    fn overlap_rules() {
        use Protocol::*;
        let any = pm(None, 8080, 80, Tcp);
        let lo = pm(Some([127, 0, 0, 1]), 8080, 81, Tcp);
        let other = pm(Some([127, 0, 0, 2]), 8080, 81, Tcp);
        let udp = pm(None, 8080, 80, Udp);
        assert!(any.overlaps(&lo) && lo.overlaps(&any));
        assert!(!lo.overlaps(&other));
        assert!(!any.overlaps(&udp));
        assert!(!pm(None, 0, 80, Tcp).overlaps(&pm(None, 0, 80, Tcp)));
    }
}
