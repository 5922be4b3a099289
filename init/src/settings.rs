//! The appliance's settings and where they come from. Sources, highest first: the
//! kernel command line (`flynn.KEY=VALUE`), user data (a NoCloud seed's
//! `user-data` or EC2's, with the same keys one per line, `flynn.` optional), the
//! seed's or EC2's meta-data (hostname only), DHCP (hostname only).

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SettingsError {
    #[error(
        "{from}: unknown key {key:?} (known: token, hostname, ip, debug, log, datasource, state, peers)"
    )]
    UnknownKey { from: Source, key: String },
    #[error("{from}: {key}={value:?}: {reason}")]
    BadValue {
        from: Source,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{from} line {line}: expected KEY=VALUE, got {text:?}")]
    BadLine {
        from: Source,
        line: usize,
        text: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cmdline,
    Seed,
    Ec2,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Cmdline => "the kernel command line",
            Source::Seed => "the NoCloud seed's user-data",
            Source::Ec2 => "EC2 user data",
        })
    }
}

/// Where configuration is looked for besides the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Datasource {
    /// A `cidata` seed if there is one, else EC2's metadata service when the
    /// firmware says this is EC2.
    #[default]
    Auto,
    NoCloud,
    Ec2,
    None,
}

/// Where the daemon's state goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateChoice {
    /// A `FLYNN_STATE` ext4 file system, else a blank `flynn-state` partition or
    /// blank disk (formatted), else tmpfs.
    #[default]
    Auto,
    Tmpfs,
    /// This block device (formatted if blank).
    Device(String),
}

#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub token: Option<(String, Source)>,
    pub hostname: Option<(String, Source)>,
    pub debug: bool,
    /// The daemon's `FLYNN_LOG` filter.
    pub log: Option<String>,
    pub datasource: Datasource,
    pub state: StateChoice,
    /// `flynn.peers=IP,IP,...`: the hosts of the cluster this host is one of; the
    /// lowest address bootstraps it once all of them answer.
    pub peers: Option<Vec<std::net::Ipv4Addr>>,
    /// `ip=` in user data (the kernel's `ip=` syntax, [`crate::cmdline::parse_ip`]):
    /// a NoCloud seed can give each host its static address. The kernel command
    /// line's own `ip=` wins over it.
    pub ip: Option<(crate::cmdline::IpConfig, Source)>,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "" | "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// A valid hostname label sequence (RFC 1123), at most 64 bytes as the kernel allows.
pub fn valid_hostname(name: &str) -> bool {
    valid_labels(name, 64, false)
}

/// A DNS domain a resolver may search (RFC 1123 labels, at most 253 bytes, an optional
/// final dot). What a DHCP server sends as its domain goes into resolv.conf only if it is
/// one: a newline in it would add lines of the server's choosing (another nameserver).
pub fn valid_domain(name: &str) -> bool {
    valid_labels(name.strip_suffix('.').unwrap_or(name), 253, true)
}

/// Dot-separated labels of 1 to 63 letters, digits and hyphens (and underscores when
/// `underscore`), none starting or ending with a hyphen, `max` bytes in all.
fn valid_labels(name: &str, max: usize, underscore: bool) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (underscore && b == b'_'))
        })
}

impl Settings {
    /// Applies one key unless a higher source already set it.
    pub fn apply(&mut self, source: Source, key: &str, value: &str) -> Result<(), SettingsError> {
        let bad = |reason: &str| SettingsError::BadValue {
            from: source,
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let only_cmdline = |what: &str| {
            if source == Source::Cmdline {
                Ok(())
            } else {
                Err(bad(&format!(
                    "{what} can only be set on the kernel command line"
                )))
            }
        };
        match key {
            "token" => {
                flynn_client::validate_token(value).map_err(|e| bad(&e.to_string()))?;
                if self.token.is_none() {
                    self.token = Some((value.to_string(), source));
                }
            }
            "peers" => {
                let mut peers = value
                    .split(',')
                    .map(|p| p.trim().parse::<std::net::Ipv4Addr>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| bad("expected IPv4 addresses separated by commas"))?;
                peers.sort();
                peers.dedup();
                // One peer is a cluster of one: the host bootstraps itself (its
                // own etcd, scheduler and Layer 1), as a larger cluster's first host.
                if !(1..=64).contains(&peers.len()) {
                    return Err(bad("a cluster has 1 to 64 peers"));
                }
                self.peers.get_or_insert(peers);
            }
            "ip" => {
                let config = crate::cmdline::parse_ip(Some(value)).map_err(|e| match e {
                    crate::cmdline::CmdlineError::Ip(_, reason) => bad(&reason),
                })?;
                if self.ip.is_none() {
                    self.ip = Some((config, source));
                }
            }
            "hostname" => {
                if !valid_hostname(value) {
                    return Err(bad(
                        "not a valid host name (letters, digits, '-' and '.', at most 64)",
                    ));
                }
                if self.hostname.is_none() {
                    self.hostname = Some((value.to_string(), source));
                }
            }
            "debug" => {
                self.debug |= parse_bool(value).ok_or_else(|| bad("expected 1/0, yes/no"))?;
            }
            "log" => {
                if value.is_empty() {
                    return Err(bad("expected a filter such as debug or info"));
                }
                self.log.get_or_insert_with(|| value.to_string());
            }
            "datasource" => {
                only_cmdline("the datasource")?;
                self.datasource = match value {
                    "auto" => Datasource::Auto,
                    "nocloud" => Datasource::NoCloud,
                    "ec2" => Datasource::Ec2,
                    "none" => Datasource::None,
                    _ => return Err(bad("expected auto, nocloud, ec2 or none")),
                };
            }
            "state" => {
                only_cmdline("the state disk")?;
                self.state = match value {
                    "auto" => StateChoice::Auto,
                    "tmpfs" => StateChoice::Tmpfs,
                    dev if dev.starts_with("/dev/") && dev.len() > 5 => {
                        StateChoice::Device(dev.to_string())
                    }
                    _ => return Err(bad("expected auto, tmpfs or /dev/NAME")),
                };
            }
            _ => {
                return Err(SettingsError::UnknownKey {
                    from: source,
                    key: key.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Applies user data: `KEY=VALUE` lines (`flynn.` prefix optional), blank
    /// lines and `#` comments skipped. Every bad line is reported; good ones apply.
    pub fn apply_user_data(&mut self, source: Source, text: &str) -> Vec<SettingsError> {
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                errors.push(SettingsError::BadLine {
                    from: source,
                    line: i + 1,
                    text: line.to_string(),
                });
                continue;
            };
            let key = key.trim();
            let key = key.strip_prefix("flynn.").unwrap_or(key);
            if let Err(e) = self.apply(source, key, value.trim()) {
                errors.push(e);
            }
        }
        errors
    }
}

/// `local-hostname` from NoCloud meta-data (`key: value` lines, YAML's simplest form).
pub fn meta_data_hostname(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "local-hostname")
            .then(|| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
            .filter(|h| valid_hostname(h))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn cmdline_wins_over_user_data() {
        let mut s = Settings::default();
        s.apply(Source::Cmdline, "token", TOKEN).unwrap();
        let errs = s.apply_user_data(
            Source::Seed,
            "#cloud-config\nflynn.token=ffffffffffffffffffff\nhostname=node-7\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(s.token, Some((TOKEN.to_string(), Source::Cmdline)));
        assert_eq!(s.hostname, Some(("node-7".to_string(), Source::Seed)));
    }

    #[test]
    fn bad_input_is_reported_and_good_lines_still_apply() {
        let mut s = Settings::default();
        let errs = s.apply_user_data(
            Source::Ec2,
            "users: [a]\ntoken=short\ncolour=blue\nstate=tmpfs\ndebug=1\n",
        );
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].to_string().contains("line 1"));
        assert!(errs[1].to_string().contains("at least 16"));
        assert!(errs[2].to_string().contains("unknown key \"colour\""));
        assert!(errs[3].to_string().contains("kernel command line"));
        assert!(s.debug);
        assert_eq!(s.token, None);
        let mut p = Settings::default();
        p.apply(Source::Cmdline, "peers", "10.0.0.12,10.0.0.11,10.0.0.11")
            .unwrap();
        assert_eq!(
            p.peers,
            Some(vec![
                "10.0.0.11".parse().unwrap(),
                "10.0.0.12".parse().unwrap()
            ])
        );
        assert!(p.apply(Source::Cmdline, "peers", "10.0.0.1,x").is_err());
        let mut one = Settings::default();
        one.apply(Source::Cmdline, "peers", "10.0.0.1").unwrap();
        assert_eq!(one.peers, Some(vec!["10.0.0.1".parse().unwrap()]));
        assert!(
            Settings::default()
                .apply(Source::Cmdline, "peers", "")
                .is_err()
        );
    }

    #[test]
    fn values() {
        let mut s = Settings::default();
        s.apply(Source::Cmdline, "debug", "").unwrap();
        s.apply(Source::Cmdline, "state", "/dev/vdb").unwrap();
        s.apply(Source::Cmdline, "datasource", "ec2").unwrap();
        assert!(s.debug);
        assert_eq!(s.state, StateChoice::Device("/dev/vdb".into()));
        assert_eq!(s.datasource, Datasource::Ec2);
        assert!(s.apply(Source::Cmdline, "hostname", "-bad").is_err());
        assert!(s.apply(Source::Cmdline, "state", "/tmp").is_err());
        assert!(s.apply(Source::Cmdline, "debug", "maybe").is_err());
    }

    #[test]
    fn ip_from_user_data() {
        use crate::cmdline::IpConfig;
        let mut s = Settings::default();
        let errs = s.apply_user_data(
            Source::Seed,
            "flynn.ip=10.90.0.11/24:::::eth0:off\nip=10.90.0.99\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        let Some((IpConfig::Static(ip), Source::Seed)) = &s.ip else {
            panic!("{:?}", s.ip)
        };
        assert_eq!(ip.address.to_string(), "10.90.0.11");
        assert_eq!(ip.prefix_len, 24);
        assert_eq!(ip.device.as_deref(), Some("eth0"));
        let mut d = Settings::default();
        assert!(d.apply_user_data(Source::Seed, "ip=dhcp").is_empty());
        assert_eq!(d.ip, Some((IpConfig::Dhcp, Source::Seed)));
        let errs = Settings::default().apply_user_data(Source::Seed, "ip=10.90.0.300/24\n");
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "the NoCloud seed's user-data: ip=\"10.90.0.300/24\": client address \"10.90.0.300\" is not an IPv4 address"
        );
        let errs = Settings::default().apply_user_data(Source::Seed, "ip=10.0.0.1:::255.0.255.0\n");
        assert!(
            errs[0].to_string().contains("netmask is not contiguous"),
            "{errs:?}"
        );
    }

    #[test]
    fn meta_data() {
        assert_eq!(
            meta_data_hostname("instance-id: i-1\nlocal-hostname: \"web-1\"\n"),
            Some("web-1".into())
        );
        assert_eq!(meta_data_hostname("local-hostname: a b\n"), None);
    }
}
