//! The files a job sees as /etc/hostname, /etc/hosts and /etc/resolv.conf,
//! written into the job's directory and bind-mounted over the image's.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use super::JobError;
use crate::model::NetworkMode;

/// Nameservers used when the host has none a job can reach (Docker's fallback).
const FALLBACK_DNS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// Writes the files into `<dir>/etc/` and returns the bind mounts for them.
pub fn write(
    dir: &Path,
    mode: NetworkMode,
    hostname: &str,
    ip: Option<Ipv4Addr>,
    dns: &[IpAddr],
) -> Result<Vec<runtime::BindMount>, JobError> {
    let etc = dir.join("etc");
    fs::create_dir_all(&etc).map_err(|e| JobError::io(&etc, e))?;
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let files = [
        ("hostname", format!("{hostname}\n")),
        ("hosts", hosts(hostname, ip, mode)),
        ("resolv.conf", resolv_conf(&host_resolv, dns, mode)),
    ];
    let mut mounts = Vec::new();
    for (name, content) in files {
        let path = etc.join(name);
        fs::write(&path, content).map_err(|e| JobError::io(&path, e))?;
        mounts.push(runtime::BindMount {
            source: path,
            destination: format!("/etc/{name}"),
            readonly: false,
        });
    }
    Ok(mounts)
}

fn hosts(hostname: &str, ip: Option<Ipv4Addr>, mode: NetworkMode) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    match (ip, mode) {
        (Some(ip), _) => out.push_str(&format!("{ip}\t{hostname}\n")),
        // Without an address of its own, the name still resolves (as on Debian).
        (None, _) => out.push_str(&format!("127.0.1.1\t{hostname}\n")),
    }
    out
}

/// The host's resolv.conf for the job: nameservers given with --dns replace the
/// host's; loopback nameservers (a local resolver) are unreachable from a job's
/// own network namespace and are dropped, falling back to public ones.
fn resolv_conf(host: &str, dns: &[IpAddr], mode: NetworkMode) -> String {
    let own_netns = mode != NetworkMode::Host;
    let mut others = Vec::new();
    let mut servers: Vec<String> = Vec::new();
    for line in host.lines() {
        let trimmed = line.trim();
        if let Some(server) = trimmed.strip_prefix("nameserver") {
            let server = server.trim();
            let loopback = server
                .parse::<IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false);
            if !(own_netns && loopback) {
                servers.push(server.to_string());
            }
        } else if !trimmed.is_empty() {
            others.push(trimmed.to_string());
        }
    }
    if !dns.is_empty() {
        servers = dns.iter().map(|d| d.to_string()).collect();
    } else if servers.is_empty() {
        servers = FALLBACK_DNS.iter().map(|s| s.to_string()).collect();
    }
    let mut out = String::new();
    for line in others {
        out.push_str(&line);
        out.push('\n');
    }
    for server in servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_drops_loopback_servers_for_own_namespaces_and_honours_dns() {
        let host =
            "search example.com\nnameserver 127.0.0.53\nnameserver 10.0.0.2\noptions edns0\n";
        assert_eq!(
            resolv_conf(host, &[], NetworkMode::Bridge),
            "search example.com\noptions edns0\nnameserver 10.0.0.2\n"
        );
        assert_eq!(
            resolv_conf(host, &[], NetworkMode::Host),
            "search example.com\noptions edns0\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n"
        );
        assert_eq!(
            resolv_conf("nameserver 127.0.0.1\n", &[], NetworkMode::Bridge),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        let dns = ["1.1.1.1".parse().unwrap()];
        assert_eq!(
            resolv_conf(host, &dns, NetworkMode::Bridge),
            "search example.com\noptions edns0\nnameserver 1.1.1.1\n"
        );
    }

    #[test]
    fn hosts_names_the_job() {
        let h = hosts(
            "web",
            Some(Ipv4Addr::new(10, 88, 0, 5)),
            NetworkMode::Bridge,
        );
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.0.5\tweb\n"));
        assert!(hosts("web", None, NetworkMode::None).ends_with("127.0.1.1\tweb\n"));
    }
}
