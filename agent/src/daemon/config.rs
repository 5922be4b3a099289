//! The daemon's configuration: command-line flags over an optional JSON file over
//! defaults. The file is where an appliance (kernel command line, cloud user data)
//! puts what it was given, e.g. the API token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/flynn";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1113";
pub use flynn_client::DEFAULT_SOCKET;

#[derive(Args, Debug, Clone, Default)]
pub struct DaemonArgs {
    /// A JSON file with any of: state_dir, listen, socket, token, bridge, subnet, mtu,
    /// control_ports (TCP ports jobs may not open, beside the API's and etcd's),
    /// log_opts (jobs' default json-file options: {"max-size": "10m", "max-file": "3"}),
    /// userns (true: jobs run in user namespaces unless they ask --userns=host or
    /// run on the host network),
    /// pids_limit (jobs' default; 0: none),
    /// registry ({"mirrors": {"docker.io": ["host:port"]}, "insecure": ["host:port", "CIDR"]}),
    /// grid (an object with the grid flags' settings).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where images, jobs and logs are kept [default: /var/lib/flynn].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// TCP address of the HTTP API; requests need the token [default: 127.0.0.1:1113].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Unix socket of the HTTP API, for root only, no token [default: /run/flynn/host.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The bridge jobs are attached to [default: flynnbr0].
    #[arg(long)]
    pub bridge: Option<String>,
    /// The jobs' subnet, CIDR [default: 10.88.0.0/24].
    #[arg(long)]
    pub subnet: Option<String>,
    /// MTU of the bridge and the jobs' interfaces [default: the default route's].
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Serve plain HTTP on every address, not HTTPS off loopback (tests, and a
    /// cluster bootstrapped before its hosts had TLS).
    #[arg(long)]
    pub plain_http: bool,
    /// Run jobs in user namespaces of their own unless they ask --userns=host or run
    /// on the host network (the platform's own jobs) [default: false].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub userns: Option<bool>,
    /// The pids limit of a job that sets none; 0: unlimited [default: 4096].
    #[arg(long)]
    pub default_pids_limit: Option<i64>,
    #[command(flatten)]
    pub grid: crate::grid::config::GridArgs,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    socket: Option<PathBuf>,
    token: Option<String>,
    bridge: Option<String>,
    subnet: Option<String>,
    mtu: Option<u32>,
    /// More TCP ports jobs may not open on this host or on other hosts (see
    /// [`control_ports`]).
    #[serde(default)]
    control_ports: Vec<u16>,
    /// Log options of jobs that give none: `{"max-size": "10m", "max-file": "3"}`.
    #[serde(default)]
    log_opts: std::collections::BTreeMap<String, String>,
    /// false: plain HTTP on every address (as `--plain-http`).
    tls: Option<bool>,
    userns: Option<bool>,
    pids_limit: Option<i64>,
    #[serde(default)]
    registry: image::registry::RegistryConfig,
    grid: Option<crate::grid::config::GridFile>,
}

/// The settled configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub socket: PathBuf,
    /// The API token from the config file; otherwise it is `<state_dir>/token`.
    pub token: Option<String>,
    /// HTTPS for API connections that are not on loopback (`<state>/tls`).
    pub tls: bool,
    pub network: network::NetworkConfig,
    /// Registry mirrors and insecure registries, for pulls.
    pub registry: image::registry::RegistryConfig,
    /// Log options of jobs that give none (Docker's `log-opts` of daemon.json).
    pub log_opts: std::collections::BTreeMap<String, String>,
    /// The grid's settings (with etcd endpoints when the operator put the host in a
    /// cluster; the bootstrap may join it later).
    pub grid: crate::grid::config::GridConfig,
    /// What jobs get when their request leaves it unsaid.
    pub jobs: crate::jobs::Defaults,
}

impl DaemonArgs {
    pub fn resolve(&self) -> Result<DaemonConfig> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        if let Some(token) = &file.token {
            validate_token(token).context("the token in the config file")?;
        }
        file.registry
            .validate()
            .context("the registry settings in the config file")?;
        let listen = match self.listen.or(file.listen) {
            Some(addr) => addr,
            None => DEFAULT_LISTEN
                .parse()
                .context("parsing the default listen address")?,
        };
        let state_dir = self
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let defaults = network::NetworkConfig::default();
        let subnet = match self.subnet.clone().or(file.subnet) {
            Some(text) => text.parse::<network::Ipv4Net>().with_context(|| {
                format!("invalid subnet {text:?}: give a CIDR such as 10.88.0.0/24")
            })?,
            None => defaults.subnet,
        };
        let grid = self.grid.resolve(file.grid, &state_dir)?;
        let network = network::NetworkConfig {
            bridge: self
                .bridge
                .clone()
                .or(file.bridge)
                .unwrap_or(defaults.bridge),
            subnet,
            mtu: self.mtu.or(file.mtu),
            state_dir: state_dir.join("network"),
            netns_dir: state_dir.join("netns"),
            cluster: None,
            control_ports: control_ports(listen, &file.control_ports),
            // Closed whether or not the host is in a grid yet: a bootstrap may join it later.
            control_udp_ports: vec![grid.overlay.port],
        };
        crate::model::logopts::rotation(&file.log_opts)
            .map_err(|e| anyhow::anyhow!("log_opts in the config file: {e}"))?;
        let jobs = crate::jobs::Defaults {
            userns: self.userns.or(file.userns).unwrap_or(false),
            pids_limit: self
                .default_pids_limit
                .or(file.pids_limit)
                .unwrap_or(crate::jobs::DEFAULT_PIDS_LIMIT),
        };
        Ok(DaemonConfig {
            jobs,
            log_opts: file.log_opts,
            grid,
            state_dir,
            listen,
            socket: self
                .socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            token: file.token,
            tls: !self.plain_http && file.tls.unwrap_or(true),
            network,
            registry: file.registry,
        })
    }
}

/// The control plane's TCP ports that jobs on the bridge may not open, on this host
/// or another: etcd's client and peer ports, and the platform's services that run on
/// the host network at fixed ports (the scheduler's API, the log aggregator's syslog
/// and HTTP ports: see `bootstrap/src/layer1.rs` and `steps.rs`).
pub const PLATFORM_CONTROL_PORTS: &[u16] = &[2379, 2380, 1114, 5140, 5141];

/// This host's control ports: the API's, the platform's, and the config file's.
pub fn control_ports(listen: SocketAddr, extra: &[u16]) -> Vec<u16> {
    let mut ports = vec![listen.port()];
    ports.extend_from_slice(PLATFORM_CONTROL_PORTS);
    ports.extend_from_slice(extra);
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("the config file {} is not valid", path.display()))
}

/// Tokens travel in an HTTP header: printable ASCII, no spaces, long enough to guess hard.
pub use flynn_client::validate_token;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("host.json");
        std::fs::write(
            &file,
            r#"{"state_dir": "/srv/flynn", "listen": "0.0.0.0:1113", "token": "0123456789abcdef0123"}"#,
        )
        .unwrap();
        let args = DaemonArgs {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:9".parse().unwrap()),
            ..DaemonArgs::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.state_dir, PathBuf::from("/srv/flynn"));
        assert_eq!(config.listen.to_string(), "127.0.0.1:9");
        assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(config.token.as_deref(), Some("0123456789abcdef0123"));

        let defaults = DaemonArgs::default().resolve().unwrap();
        assert_eq!(defaults.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(defaults.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("host.json");
        std::fs::write(&file, r#"{"tokn": "x"}"#).unwrap();
        let args = DaemonArgs {
            config: Some(file.clone()),
            ..DaemonArgs::default()
        };
        let err = format!("{:#}", args.resolve().unwrap_err());
        assert!(err.contains("tokn"), "{err}");
        std::fs::write(&file, r#"{"token": "short"}"#).unwrap();
        let err = format!("{:#}", args.resolve().unwrap_err());
        assert!(err.contains("16 characters"), "{err}");
    }
}
