//! The grid's settings: `daemon` flags over the config file's `grid` object over
//! defaults. Without etcd endpoints (and without `--run-etcd`) the host is standalone.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;

pub const DEFAULT_TTL_SECS: u64 = 10;
pub const DEFAULT_ETCD_IMAGE: &str = "flynn/etcd:3.4";
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's own bounds on `--election-timeout` (it refuses more than 50 s), and the
/// least that leaves its heartbeat (a tenth of it) above 50 ms.
const ETCD_ELECTION_MS: std::ops::RangeInclusive<u64> = 500..=50_000;

#[derive(Args, Debug, Clone, Default)]
pub struct GridArgs {
    /// etcd endpoints (http://HOST:PORT, comma-separated): join that cluster.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// This host's address in the cluster (the overlay's underlay) [default: the
    /// address of the default route's interface].
    #[arg(long)]
    pub advertise: Option<Ipv4Addr>,
    /// Labels of this host in the membership, KEY=VALUE (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Seconds a host stays in the membership after its agent last renewed its lease
    /// [default: 10].
    #[arg(long)]
    pub cluster_ttl: Option<u64>,
    /// The overlay's cluster network, CIDR [default: 100.100.0.0/16]; the first host
    /// to join sets it for everyone.
    #[arg(long)]
    pub cluster_network: Option<String>,
    /// UDP port of the overlay's VXLAN traffic [default: 4789].
    #[arg(long)]
    pub vxlan_port: Option<u16>,
    /// Nameservers for names outside .discoverd, IP[:PORT] (comma-separated)
    /// [default: the host's resolv.conf].
    #[arg(long, value_delimiter = ',')]
    pub dns_upstream: Vec<String>,
    /// Do not answer DNS for containers (they get the host's nameservers).
    #[arg(long)]
    pub no_discovery_dns: bool,
    /// Run etcd on this host as a container (job `flynn-etcd`, host network, restart
    /// always) and join it.
    #[arg(long)]
    pub run_etcd: bool,
    /// The image `--run-etcd` runs [default: flynn/etcd:3.4].
    #[arg(long)]
    pub etcd_image: Option<String>,
    /// Election timeout of the etcd member this host runs for the cluster, in
    /// milliseconds; its heartbeat is a tenth of it [default: etcd's, 1000]. Raise it
    /// where members can be starved of CPU for seconds (VMs on a busy host).
    #[arg(long)]
    pub etcd_election_ms: Option<u64>,
}

/// The config file's `grid` object: the same settings as the flags.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct GridFile {
    #[serde(default)]
    etcd: Vec<String>,
    advertise: Option<Ipv4Addr>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    cluster_ttl: Option<u64>,
    cluster_network: Option<String>,
    vxlan_port: Option<u16>,
    #[serde(default)]
    dns_upstream: Vec<String>,
    discovery_dns: Option<bool>,
    run_etcd: Option<bool>,
    etcd_image: Option<String>,
    etcd_election_ms: Option<u64>,
}

/// The settled grid configuration.
#[derive(Debug, Clone)]
pub struct GridConfig {
    pub etcd: Vec<String>,
    pub advertise: Option<Ipv4Addr>,
    pub tags: BTreeMap<String, String>,
    pub ttl: Duration,
    pub overlay: discovery::OverlayConfig,
    pub dns_upstream: Vec<SocketAddr>,
    pub discovery_dns: bool,
    pub run_etcd: bool,
    pub etcd_image: String,
    /// The cluster member's election timeout (ms), when not etcd's default.
    pub etcd_election_ms: Option<u64>,
    /// `<state>/grid.json`: the lease and subnet this host held.
    pub cache: PathBuf,
}

impl GridArgs {
    pub fn resolve(
        &self,
        file: Option<GridFile>,
        state_dir: &std::path::Path,
    ) -> Result<GridConfig> {
        let file = file.unwrap_or_default();
        let run_etcd = self.run_etcd || file.run_etcd.unwrap_or(false);
        let mut etcd = if self.etcd.is_empty() {
            file.etcd
        } else {
            self.etcd.clone()
        };
        etcd.retain(|e| !e.trim().is_empty());
        let advertise = self.advertise.or(file.advertise);
        if etcd.is_empty() && run_etcd {
            // Our own etcd listens on loopback too.
            etcd.push(format!("http://127.0.0.1:{ETCD_CLIENT_PORT}"));
        }
        check_endpoints(&etcd)?;
        let mut tags = file.tags;
        for t in &self.tags {
            let (k, v) = t
                .split_once('=')
                .with_context(|| format!("tag {t:?}: give KEY=VALUE"))?;
            if k.is_empty() {
                bail!("tag {t:?}: the key is empty");
            }
            tags.insert(k.to_string(), v.to_string());
        }
        let ttl = self
            .cluster_ttl
            .or(file.cluster_ttl)
            .unwrap_or(DEFAULT_TTL_SECS);
        if !(2..=3600).contains(&ttl) {
            bail!("cluster TTL {ttl}s: give 2-3600 seconds");
        }
        let mut overlay = discovery::OverlayConfig::default();
        if let Some(n) = self.cluster_network.clone().or(file.cluster_network) {
            overlay.network = n;
        }
        if let Some(p) = self.vxlan_port.or(file.vxlan_port) {
            overlay.port = p;
        }
        overlay.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let upstream_text = if self.dns_upstream.is_empty() {
            file.dns_upstream
        } else {
            self.dns_upstream.clone()
        };
        let etcd_election_ms = self.etcd_election_ms.or(file.etcd_election_ms);
        if let Some(ms) = etcd_election_ms
            && !ETCD_ELECTION_MS.contains(&ms)
        {
            bail!(
                "etcd election timeout {ms} ms: give {}-{} ms",
                ETCD_ELECTION_MS.start(),
                ETCD_ELECTION_MS.end()
            );
        }
        let dns_upstream = upstream_text
            .iter()
            .map(|s| parse_upstream(s))
            .collect::<Result<Vec<_>>>()?;
        Ok(GridConfig {
            etcd,
            advertise,
            tags,
            ttl: Duration::from_secs(ttl),
            overlay,
            dns_upstream,
            discovery_dns: !self.no_discovery_dns && file.discovery_dns.unwrap_or(true),
            run_etcd,
            etcd_image: self
                .etcd_image
                .clone()
                .or(file.etcd_image)
                .unwrap_or_else(|| DEFAULT_ETCD_IMAGE.to_string()),
            etcd_election_ms,
            cache: state_dir.join("grid.json"),
        })
    }
}

/// etcd client URLs as the agent accepts them: `http://HOST:PORT`.
pub fn check_endpoints(etcd: &[String]) -> Result<()> {
    for e in etcd {
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .with_context(|| {
                format!("etcd endpoint {e:?}: give http://HOST:PORT or https://HOST:PORT")
            })?;
        if rest.is_empty() || rest.contains('/') {
            bail!("etcd endpoint {e:?}: give http://HOST:PORT or https://HOST:PORT");
        }
    }
    Ok(())
}

impl GridConfig {
    /// Whether the host is in a cluster (it has etcd endpoints to join).
    pub fn joined(&self) -> bool {
        !self.etcd.is_empty()
    }
}

/// `IP` or `IP:PORT` (port 53 by default).
pub fn parse_upstream(s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s
        .parse()
        .with_context(|| format!("DNS upstream {s:?}: give IP or IP:PORT"))?;
    Ok(SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves() {
        let dir = std::path::Path::new("/tmp");
        assert!(!GridArgs::default().resolve(None, dir).unwrap().joined());
        let args = GridArgs {
            etcd: vec!["http://192.0.2.1:2379".into()],
            tags: vec!["zone=a".into()],
            cluster_ttl: Some(3),
            dns_upstream: vec!["127.0.0.1:5353".into(), "192.0.2.53".into()],
            ..GridArgs::default()
        };
        let c = args.resolve(None, dir).unwrap();
        assert_eq!(c.ttl, Duration::from_secs(3));
        assert_eq!(c.tags.get("zone").map(String::as_str), Some("a"));
        assert_eq!(c.dns_upstream[1].port(), 53);
        assert!(c.discovery_dns);
        assert_eq!(c.etcd_election_ms, None);
        let file: GridFile = serde_json::from_str(r#"{"etcd_election_ms": 5000}"#).unwrap();
        assert_eq!(
            GridArgs::default()
                .resolve(Some(file), dir)
                .unwrap()
                .etcd_election_ms,
            Some(5000)
        );
        let run = GridArgs {
            run_etcd: true,
            ..GridArgs::default()
        };
        assert_eq!(
            run.resolve(None, dir).unwrap().etcd,
            ["http://127.0.0.1:2379"]
        );
        for bad in [
            GridArgs {
                etcd: vec!["192.0.2.1:2379".into()],
                ..GridArgs::default()
            },
            GridArgs {
                etcd: vec!["http://x".into()],
                tags: vec!["novalue".into()],
                ..GridArgs::default()
            },
            GridArgs {
                etcd: vec!["http://x".into()],
                cluster_ttl: Some(1),
                ..GridArgs::default()
            },
            GridArgs {
                etcd: vec!["http://x".into()],
                cluster_network: Some("100.100.0.1/16".into()),
                ..GridArgs::default()
            },
            GridArgs {
                etcd_election_ms: Some(100),
                ..GridArgs::default()
            },
            GridArgs {
                etcd_election_ms: Some(60_000),
                ..GridArgs::default()
            },
        ] {
            assert!(bad.resolve(None, dir).is_err(), "{bad:?}");
        }
    }
}
