//! The host's own interfaces: loopback, addresses and the default route
//! (rtnetlink), the resolver configuration, the host name. The jobs' bridge and
//! veths are the network crate's; this module never touches them.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening rtnetlink: {0}")]
    Open(std::io::Error),
    #[error("{what} on {iface}: {source}")]
    Netlink {
        what: String,
        iface: String,
        source: rtnetlink::Error,
    },
    #[error("no interface named {0}")]
    NoSuchInterface(String),
    #[error("no network interface found (is the driver in the image?)")]
    NoInterface,
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("setting the host name to {name:?}: {source}")]
    Hostname { name: String, source: nix::Error },
}

#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Ethernet interfaces backed by a device (not virtual ones), by name.
pub fn physical_links() -> Vec<Link> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut links: Vec<Link> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            if !path.join("device").exists() {
                return None;
            }
            let kind = std::fs::read_to_string(path.join("type")).ok()?;
            if kind.trim() != "1" {
                return None;
            }
            Some(Link {
                name: e.file_name().to_string_lossy().into_owned(),
                index: std::fs::read_to_string(path.join("ifindex"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?,
                mac: parse_mac(&std::fs::read_to_string(path.join("address")).ok()?)?,
            })
        })
        .collect();
    links.sort_by(|a, b| a.name.cmp(&b.name));
    links
}

/// Waits (at most `timeout`) for a network interface to appear.
pub fn wait_for_links(timeout: Duration) -> Vec<Link> {
    let deadline = Instant::now() + timeout;
    loop {
        let links = physical_links();
        if !links.is_empty() || Instant::now() >= deadline {
            return links;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Net {
    handle: Handle,
}

impl Net {
    /// Must be called inside the tokio runtime (the connection is a task).
    pub fn open() -> Result<Net, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Open)?;
        tokio::spawn(conn);
        Ok(Net { handle })
    }

    fn nl(what: &str, iface: &str) -> impl FnOnce(rtnetlink::Error) -> NetError {
        let (what, iface) = (what.to_string(), iface.to_string());
        move |source| NetError::Netlink {
            what,
            iface,
            source,
        }
    }

    pub async fn up(&self, index: u32, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(Self::nl("bringing the link up", name))
    }

    pub async fn index_of(&self, name: &str) -> Result<u32, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            _ => Err(NetError::NoSuchInterface(name.to_string())),
        }
    }

    /// Sets `address/prefix_len` on the link (replacing the same address).
    pub async fn address(
        &self,
        index: u32,
        name: &str,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(address), prefix_len)
            .replace()
            .execute()
            .await
            .map_err(Self::nl(&format!("adding {address}/{prefix_len}"), name))
    }

    pub async fn default_route(
        &self,
        index: u32,
        name: &str,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        match self.handle.route().add(route).replace().execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(Self::nl(
                &format!("adding the default route via {gateway}"),
                name,
            )(e)),
        }
    }
}

pub fn write_resolv_conf(dns: &[Ipv4Addr], domain: Option<&str>) -> Result<(), NetError> {
    if dns.is_empty() {
        return Ok(());
    }
    std::fs::write("/etc/resolv.conf", resolv_conf(dns, domain)).map_err(|e| NetError::Write {
        path: "/etc/resolv.conf".into(),
        source: e,
    })
}

/// resolv.conf's text: a search domain (only a valid one: it comes from the network, and
/// a newline in it would add a nameserver of the sender's choosing) and up to three
/// nameservers, which is all the C library reads.
pub fn resolv_conf(dns: &[Ipv4Addr], domain: Option<&str>) -> String {
    let mut text = String::new();
    if let Some(d) = domain.filter(|d| crate::settings::valid_domain(d)) {
        text.push_str(&format!("search {d}\n"));
    }
    for s in dns.iter().take(3) {
        text.push_str(&format!("nameserver {s}\n"));
    }
    text
}

/// Sets the kernel's host name and writes /etc/hostname and /etc/hosts.
pub fn set_hostname(name: &str) -> Result<(), NetError> {
    nix::unistd::sethostname(name).map_err(|e| NetError::Hostname {
        name: name.to_string(),
        source: e,
    })?;
    let write = |path: &str, text: String| {
        std::fs::write(path, text).map_err(|e| NetError::Write {
            path: path.to_string(),
            source: e,
        })
    };
    write("/etc/hostname", format!("{name}\n"))?;
    write(
        "/etc/hosts",
        format!("127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost\n"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn resolv_conf_takes_no_lines_from_the_network() {
        let dns = ["10.0.2.3".parse().unwrap()];
        assert_eq!(
            super::resolv_conf(&dns, Some("corp.example")),
            "search corp.example\nnameserver 10.0.2.3\n"
        );
        // A DHCP server's domain with a newline would have added its own nameserver.
        assert_eq!(
            super::resolv_conf(&dns, Some("x\nnameserver 6.6.6.6")),
            "nameserver 10.0.2.3\n"
        );
        assert_eq!(
            super::resolv_conf(&dns, Some("a b")),
            "nameserver 10.0.2.3\n"
        );
    }

    #[test]
    fn macs() {
        assert_eq!(
            super::parse_mac("52:54:00:12:34:56\n"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(super::parse_mac("52:54:00"), None);
    }
}
