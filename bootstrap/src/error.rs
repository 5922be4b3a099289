//! What can stop a bootstrap, each saying where (which host, which pair of hosts)
//! and what to do. A step's error also carries data for `--json` users
//! ([`StepError::data`]): scripts should not have to parse messages.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::manifest::ManifestError;

/// Why a call to an agent's API failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(
        "it refused the token: give every host the same token (flynn.token=, or the daemon's config) and pass it here"
    )]
    Token,
    #[error("no answer within {0}s")]
    Timeout(u64),
    /// A route the contract names is missing: the agent predates it.
    #[error("{0} (is its flynn-host older than this one?)")]
    Old(String),
    /// The agent answered with an error status.
    #[error("{message}")]
    Status { status: u16, message: String },
    /// Connection refused, reset, or an answer that is not the JSON expected.
    #[error("{0}")]
    Transport(String),
}

impl CallError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, CallError::Status { status: 404, .. })
    }
}

/// One reason preflight refuses to start anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreflightFailure {
    /// A check of `GET /host/preflight` failed on that host.
    Check {
        host: Ipv4Addr,
        name: String,
        detail: String,
        fix: Option<String>,
    },
    /// A host's clock is this far from the median of the hosts' clocks, and some
    /// two hosts' clocks are further apart than `max_ms`.
    Skew {
        host: Ipv4Addr,
        off_ms: i64,
        max_ms: i64,
    },
    /// `from` cannot open a TCP connection to `to`'s API port.
    Tcp {
        from: Ipv4Addr,
        to: Ipv4Addr,
        port: u16,
        error: String,
    },
    /// Datagrams from `from` to `to`'s overlay port do not arrive.
    Udp {
        from: Ipv4Addr,
        to: Ipv4Addr,
        port: u16,
    },
    /// A host could not take part in a probe (e.g. its port is held).
    Probe { host: Ipv4Addr, reason: String },
}

impl std::fmt::Display for PreflightFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PreflightFailure::Check {
                host,
                name,
                detail,
                fix,
            } => {
                write!(f, "host {host}: {name}: {detail}")?;
                if let Some(fix) = fix {
                    write!(f, " (fix: {fix})")?;
                }
                Ok(())
            }
            PreflightFailure::Skew {
                host,
                off_ms,
                max_ms,
            } => write!(
                f,
                "host {host}: its clock is {off_ms} ms off the other hosts' (their median; no two may be more than {max_ms} ms apart): set it right (an appliance reads its clock from the machine's: the BIOS or UEFI clock, or the hypervisor's), and keep every host's in time (NTP)"
            ),
            PreflightFailure::Tcp {
                from,
                to,
                port,
                error,
            } => write!(
                f,
                "TCP {port} from {from} to {to} fails ({error}): open TCP port {port} between the hosts"
            ),
            PreflightFailure::Udp { from, to, port } => write!(
                f,
                "UDP {port} from {from} to {to} does not arrive: open UDP port {port} between the hosts (firewall, security group); the overlay needs it"
            ),
            PreflightFailure::Probe { host, reason } => write!(f, "host {host}: {reason}"),
        }
    }
}

impl PreflightFailure {
    fn data(&self) -> Value {
        match self {
            PreflightFailure::Check {
                host,
                name,
                detail,
                fix,
            } => {
                json!({"kind": "check", "host": host, "check": name, "detail": detail, "fix": fix})
            }
            PreflightFailure::Skew {
                host,
                off_ms,
                max_ms,
            } => json!({"kind": "clock", "host": host, "off_ms": off_ms, "max_ms": max_ms}),
            PreflightFailure::Tcp {
                from,
                to,
                port,
                error,
            } => json!({"kind": "tcp", "from": from, "to": to, "port": port, "error": error}),
            PreflightFailure::Udp { from, to, port } => {
                json!({"kind": "udp", "from": from, "to": to, "port": port})
            }
            PreflightFailure::Probe { host, reason } => {
                json!({"kind": "probe", "host": host, "reason": reason})
            }
        }
    }
}

/// A host that did not answer in time, and the last thing it said.
#[derive(Debug, Clone)]
pub struct MissingHost {
    pub host: Ipv4Addr,
    pub last_error: Option<String>,
}

fn join<T: std::fmt::Display>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

fn missing_list(m: &[MissingHost]) -> String {
    m.iter()
        .map(|h| {
            format!(
                "{} ({})",
                h.host,
                h.last_error.as_deref().unwrap_or("no answer")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("host {host}: {doing}: {source}")]
    Call {
        host: Ipv4Addr,
        doing: &'static str,
        #[source]
        source: CallError,
    },
    #[error("host {host}: {source}")]
    Token {
        host: Ipv4Addr,
        #[source]
        source: CallError,
    },
    #[error(
        "{answered} of {total} hosts answered within {secs}s; still missing: {}",
        missing_list(missing)
    )]
    Missing {
        answered: usize,
        total: usize,
        secs: u64,
        missing: Vec<MissingHost>,
    },
    #[error(
        "the hosts belong to different clusters ({}): a host answers to one cluster; bootstrap hosts of one cluster, or wipe the others' state",
        .0.iter().map(|(a, id)| format!("{a}: {id}")).collect::<Vec<_>>().join(", ")
    )]
    Clusters(Vec<(Ipv4Addr, String)>),
    #[error("nothing was started: {}", join(.0, "; "))]
    Preflight(Vec<PreflightFailure>),
    #[error(
        "etcd is not healthy after {secs}s; members not answering: {} (see `flynn-host logs flynn-etcd` on those hosts)",
        if silent.is_empty() { "none, but there is no quorum yet".to_string() } else { silent.join(", ") }
    )]
    EtcdUnhealthy { secs: u64, silent: Vec<String> },
    #[error(
        "the etcd at {urls} belongs to cluster {found}, not {ours}: these hosts were bootstrapped with other hosts"
    )]
    OtherCluster {
        urls: String,
        found: String,
        ours: String,
    },
    #[error("the cluster's etcd: {0}")]
    Discovery(#[from] discovery::DiscoveryError),
    #[error("no cluster to join: the etcd step must come first")]
    NoCluster,
    #[error("hosts not in the cluster after {secs}s: {} ({reason})", missing.join(", "))]
    NotJoined {
        secs: u64,
        missing: Vec<String>,
        reason: String,
    },
    #[error(
        "no scheduler leads after {secs}s ({reason}): see `flynn-host logs flynn-scheduler` on {}",
        join(hosts, ", ")
    )]
    NoLeader {
        secs: u64,
        reason: String,
        hosts: Vec<Ipv4Addr>,
    },
    #[error(
        "{service} has {} of {wanted} instances after {secs}s{}: see `flynn-host cluster formations` (why a job is blocked) and `flynn-host logs` of the {app} jobs on the hosts",
        found.len(),
        if found.is_empty() { String::new() } else { format!(" ({})", found.join(", ")) }
    )]
    PlatformNotUp {
        service: &'static str,
        app: &'static str,
        wanted: usize,
        found: Vec<String>,
        secs: u64,
    },
    #[error(
        "the hosts hold different cluster CAs ({}): they were bootstrapped into different clusters; bootstrap hosts of one cluster, or wipe the others' state",
        .0.iter().map(|(a, pin)| format!("{a}: {pin}")).collect::<Vec<_>>().join(", ")
    )]
    TwoCas(Vec<(Ipv4Addr, String)>),
    #[error(
        "host {host}: its TLS is not trusted: {reason}. Give every host the same token; a host whose answer cannot be verified is not contacted with it"
    )]
    Untrusted { host: Ipv4Addr, reason: String },
    #[error("random bytes for an id: {0}")]
    Random(String),
    #[error("the cluster's TLS: {0}")]
    Tls(String),
    #[error("the git receiver needs the controller's formation (run the controller step first)")]
    NoController,
    #[error("the agent's address {0}: {1}")]
    Address(String, String),
}

impl StepError {
    /// What a `--json` user gets beside the message: the hosts involved.
    pub fn data(&self) -> Value {
        match self {
            StepError::Call { host, .. }
            | StepError::Token { host, .. }
            | StepError::Untrusted { host, .. } => json!({"host": host}),
            StepError::Missing { missing, .. } => json!({
                "missing": missing.iter().map(|m| json!({"host": m.host, "error": m.last_error})).collect::<Vec<_>>(),
            }),
            StepError::Clusters(ids) => json!({
                "clusters": ids.iter().map(|(a, id)| json!({"host": a, "cluster_id": id})).collect::<Vec<_>>(),
            }),
            StepError::Preflight(f) => {
                json!({"failures": f.iter().map(PreflightFailure::data).collect::<Vec<_>>()})
            }
            StepError::EtcdUnhealthy { silent, .. } => json!({"silent": silent}),
            StepError::NotJoined { missing, .. } => json!({"missing": missing}),
            _ => Value::Null,
        }
    }
}

/// Why `flynn-host bootstrap` could not even start: the user's input.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "reading the manifest {path}: {source} (give the path of a JSON manifest, or leave --manifest out for the built-in one)"
    )]
    ReadManifest {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("--min-hosts must be between 1 and the {0} peers")]
    MinHosts(usize),
    #[error(
        "--peers names no host: give the hosts' addresses, e.g. --peers 10.0.0.11,10.0.0.12,10.0.0.13"
    )]
    NoPeers,
    #[error("--token is empty: pass the hosts' shared API token (--token or FLYNN_TOKEN)")]
    NoToken,
}
