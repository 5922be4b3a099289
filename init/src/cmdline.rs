//! The kernel command line: `flynn.*` keys for the appliance and the kernel's own
//! `ip=` syntax for static addressing (which the kernel itself ignores here: the
//! Debian kernel is built without `CONFIG_IP_PNP`, so the init implements it).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CmdlineError {
    #[error("ip={0:?}: {1}")]
    Ip(String, String),
}

/// Splits a command line into words, keeping double-quoted spans together (the
/// kernel's rule: `key="a b"` is one parameter).
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// What the command line says: every `key=value` (a bare `key` is `key=""`),
/// the last one winning, as the kernel does for its own parameters.
#[derive(Debug, Default, Clone)]
pub struct Cmdline {
    pub params: BTreeMap<String, String>,
}

impl Cmdline {
    pub fn parse(line: &str) -> Cmdline {
        let mut params = BTreeMap::new();
        for word in words(line) {
            let (k, v) = word.split_once('=').unwrap_or((&word, ""));
            params.insert(k.to_string(), v.to_string());
        }
        Cmdline { params }
    }

    pub fn read() -> Cmdline {
        Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// The `flynn.*` keys without their prefix.
    pub fn flynn(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("flynn.").map(|k| (k, v.as_str())))
    }
}

/// How to bring up the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpConfig {
    /// DHCP on every interface (the default, and `ip=dhcp`).
    Dhcp,
    /// `ip=off` / `ip=none`: only loopback.
    Off,
    Static(StaticIp),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticIp {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    /// The interface; the first one found when empty.
    pub device: Option<String>,
    pub dns: Vec<Ipv4Addr>,
}

pub(crate) fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// What the kernel accepts as a network interface name (`dev_valid_name`).
fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// The kernel's `ip=` (Documentation/admin-guide/nfs/nfsroot.rst):
/// `<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>`,
/// or just `dhcp`, `on`, `any`, `off`, `none`. A netmask may also be a prefix
/// length, and `<client-ip>/<len>` is accepted.
pub fn parse_ip(value: Option<&str>) -> Result<IpConfig, CmdlineError> {
    let Some(value) = value else {
        return Ok(IpConfig::Dhcp);
    };
    let err = |msg: &str| CmdlineError::Ip(value.to_string(), msg.to_string());
    match value {
        "" | "dhcp" | "on" | "any" | "both" => return Ok(IpConfig::Dhcp),
        "off" | "none" => return Ok(IpConfig::Off),
        _ => {}
    }
    let fields: Vec<&str> = value.split(':').collect();
    let field = |i: usize| fields.get(i).copied().filter(|f| !f.is_empty());
    let autoconf = field(6).unwrap_or("");
    let Some(client) = field(0) else {
        if matches!(autoconf, "dhcp" | "on" | "any" | "both" | "") {
            return Ok(IpConfig::Dhcp);
        }
        if matches!(autoconf, "off" | "none") {
            return Ok(IpConfig::Off);
        }
        return Err(err("no client address and no dhcp"));
    };
    let parse_addr = |s: &str, what: &str| {
        s.parse::<Ipv4Addr>()
            .map_err(|_| err(&format!("{what} {s:?} is not an IPv4 address")))
    };
    let (address, mut prefix_len) = match client.split_once('/') {
        Some((a, len)) => (
            parse_addr(a, "client address")?,
            Some(
                len.parse::<u8>()
                    .ok()
                    .filter(|l| *l <= 32)
                    .ok_or_else(|| err("prefix length must be 0..32"))?,
            ),
        ),
        None => (parse_addr(client, "client address")?, None),
    };
    if let Some(mask) = field(3) {
        let len = match mask.parse::<u8>() {
            Ok(len) if len <= 32 => len,
            _ => mask_to_prefix(parse_addr(mask, "netmask")?)
                .ok_or_else(|| err("the netmask is not contiguous"))?,
        };
        prefix_len = Some(len);
    }
    if address.is_unspecified() || address.is_multicast() || address.is_broadcast() {
        return Err(err("the client address must be a unicast address"));
    }
    if !matches!(autoconf, "" | "off" | "none") {
        // The kernel would run DHCP (or BOOTP, RARP) for a given address too; we do not
        // mix the two: an address given is static.
        return Err(err(
            "a static address takes autoconf off (or empty); use ip=dhcp for DHCP",
        ));
    }
    let gateway = field(2).map(|g| parse_addr(g, "gateway")).transpose()?;
    if let Some(h) = field(4)
        && !crate::settings::valid_hostname(h)
    {
        return Err(err(&format!(
            "host name {h:?} is not valid (letters, digits, '-' and '.', at most 64)"
        )));
    }
    if let Some(d) = field(5)
        && !valid_interface_name(d)
    {
        return Err(err(&format!(
            "device {d:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
        )));
    }
    let mut dns = Vec::new();
    for i in [7, 8] {
        if let Some(d) = field(i) {
            dns.push(parse_addr(d, "DNS server")?);
        }
    }
    Ok(IpConfig::Static(StaticIp {
        address,
        // The kernel's default: the class's mask; /24 is what anyone means today.
        prefix_len: prefix_len.unwrap_or(24),
        gateway,
        hostname: field(4).map(str::to_string),
        device: field(5).map(str::to_string),
        dns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quoted_spans() {
        assert_eq!(
            words(r#"console=ttyS0 flynn.x="a b" quiet"#),
            vec!["console=ttyS0", "flynn.x=a b", "quiet"]
        );
        assert_eq!(words("  "), Vec::<String>::new());
    }

    #[test]
    fn flynn_keys_last_wins() {
        let c = Cmdline::parse("flynn.token=aaa flynn.debug root=x flynn.token=bbb");
        let keys: Vec<_> = c.flynn().collect();
        assert_eq!(keys, vec![("debug", ""), ("token", "bbb")]);
    }

    #[test]
    fn ip_forms() {
        assert_eq!(parse_ip(None), Ok(IpConfig::Dhcp));
        assert_eq!(parse_ip(Some("dhcp")), Ok(IpConfig::Dhcp));
        assert_eq!(parse_ip(Some("off")), Ok(IpConfig::Off));
        assert_eq!(parse_ip(Some(":::::eth0:dhcp")), Ok(IpConfig::Dhcp));
        let s = parse_ip(Some(
            "10.0.2.50::10.0.2.2:255.255.255.0:node1:eth0:off:10.0.2.3",
        ))
        .unwrap();
        assert_eq!(
            s,
            IpConfig::Static(StaticIp {
                address: "10.0.2.50".parse().unwrap(),
                prefix_len: 24,
                gateway: Some("10.0.2.2".parse().unwrap()),
                hostname: Some("node1".into()),
                device: Some("eth0".into()),
                dns: vec!["10.0.2.3".parse().unwrap()],
            })
        );
        let IpConfig::Static(s) = parse_ip(Some("192.168.7.9/20")).unwrap() else {
            panic!()
        };
        assert_eq!(s.prefix_len, 20);
        assert!(parse_ip(Some("10.0.0.300")).is_err());
        assert!(parse_ip(Some("10.0.0.3:::255.0.255.0")).is_err());
        assert!(parse_ip(Some(":::::eth0:bogus")).is_err());
    }

    #[test]
    fn ip_fields_are_validated() {
        // Each of these was accepted, and reached sethostname, /etc/hosts or rtnetlink.
        for bad in [
            "10.0.0.5::::bad_host!:eth0:off",
            "10.0.0.5::::node1:eth0/x:off",
            "10.0.0.5::::node1:averyveryverylongname:off",
            "10.0.0.5::::node1:eth0:bogus",
            "10.0.0.5::::node1:eth0:dhcp",
            "0.0.0.0::::node1:eth0:off",
            "255.255.255.255/24",
            "224.0.0.1",
        ] {
            assert!(parse_ip(Some(bad)).is_err(), "{bad} was accepted");
        }
        assert!(parse_ip(Some("10.0.0.5::::node-1.lan:eth0:none")).is_ok());
    }
}
