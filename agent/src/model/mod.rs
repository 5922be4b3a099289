//! Wire types of the HTTP API, shared by the daemon and the CLI.
//!
//! Every type here appears in `agent/openapi.json`; the OpenAPI test holds the
//! daemon's responses to those schemas, so a field added here must be added there.
//! `services` and `restart` parse the CLI's forms of some of them and check them
//! (the CLI and the daemon both need that).

pub mod logopts;
pub mod restart;
pub mod services;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a client asks for when it creates a job (`POST /jobs`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Image reference or id.
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Replaces the image's Cmd (Docker's `docker run IMAGE ARGS...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Replaces the image's Entrypoint (and drops its Cmd, as Docker does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries added to (or replacing those of) the image's Env.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// bridge (the default: own address on the host bridge), host, or none (loopback only).
    #[serde(default, skip_serializing_if = "NetworkMode::is_bridge")]
    pub network: NetworkMode,
    /// Host ports published to the job (bridge mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<network::PortMapping>,
    /// Nameservers for the job's /etc/resolv.conf (default: the host's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<std::net::IpAddr>,
    /// Services the job provides (`-s name:port`): registered in discovery while it
    /// runs (and, with a health check, while it passes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceDecl>,
    /// Give the job a terminal (Docker's `-t`).
    #[serde(default)]
    pub tty: bool,
    /// Keep the job's stdin open for `attach` (Docker's `-i`).
    #[serde(default)]
    pub stdin: bool,
    /// Remove the job once it has exited (and its exit has been reported to waiters).
    #[serde(default)]
    pub auto_remove: bool,
    /// Restart the job when it exits (not with auto_remove).
    #[serde(default, skip_serializing_if = "RestartPolicy::is_no")]
    pub restart: RestartPolicy,
    /// Start at once (the default); `false` only records the job, for `POST /jobs/{id}/start`.
    #[serde(default = "default_true")]
    pub start: bool,
    /// Host directories bind-mounted into the job (Docker's `-v SRC:DST[:ro]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Docker's labels: the scheduler marks its jobs' app, type and formation.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Docker's json-file log options (`--log-opt max-size=10m --log-opt max-file=3`);
    /// none: the daemon's `log_opts`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub log_opts: std::collections::BTreeMap<String, String>,
    /// A user namespace (`--userns`): true maps the job's ids to a range of the host's
    /// of its own (its root is no one on the host), false shares the host's
    /// (`--userns=host`); absent, the daemon's default (`userns` in its config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<bool>,
    /// Mount the job's root filesystem read-only (Docker's `--read-only`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Capabilities added to Docker's default set (`NET_ADMIN`, `CAP_NET_ADMIN`, `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities removed from it (`ALL` removes every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Docker's `--security-opt` entries: `seccomp=unconfined`, `seccomp=PROFILE` (the
    /// profile's JSON text, in Docker's format: the CLI reads the file),
    /// `no-new-privileges[:true|false]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
}

/// `HOST_PATH:JOB_PATH[:ro|:rw]`, the `-v` syntax (the daemon checks the paths).
pub fn parse_volume(text: &str) -> Result<Volume, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [s, t] => (s, t, false),
        [s, t, "ro"] => (s, t, true),
        [s, t, "rw"] => (s, t, false),
        _ => {
            return Err(format!(
                "volume {text:?}: give HOST_PATH:JOB_PATH or HOST_PATH:JOB_PATH:ro"
            ));
        }
    };
    if !source.starts_with('/') || !target.starts_with('/') {
        return Err(format!(
            "volume {text:?}: both paths must be absolute (named volumes are not supported)"
        ));
    }
    Ok(Volume {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
    })
}

/// A host directory mounted into a job; it outlives the job (data that a re-created
/// job finds again, such as etcd's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Absolute path on the host (a directory, created if missing).
    pub source: String,
    /// Absolute path inside the job.
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    /// CPU limit in CPUs (0.5 = half of one CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }
}

/// When a job that exited is started again, with the same id, rootfs and log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    pub policy: RestartPolicyName,
    /// With on-failure: give up after this many restarts (0: never give up).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_retries: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl RestartPolicy {
    pub fn is_no(&self) -> bool {
        self.policy == RestartPolicyName::No
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicyName {
    #[default]
    No,
    /// When the exit code is not 0.
    OnFailure,
    /// Whenever it exits; a job stopped by `stop` stays stopped until the daemon restarts.
    Always,
    /// Whenever it exits, unless it was stopped by `stop` (also across daemon restarts).
    UnlessStopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Recorded, not started.
    Created,
    Running,
    Exited,
    /// Being removed; a restart finishes the removal.
    Removing,
    /// Gone: only subscribers (waiters, log followers) ever see this, as the last value.
    Removed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Created => "created",
            JobState::Running => "running",
            JobState::Exited => "exited",
            JobState::Removing => "removing",
            JobState::Removed => "removed",
        }
    }
}

/// How a job's process ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Docker's exit code: the process's code, 128+N for signal N, 137 for an OOM kill.
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: DateTime<Utc>,
    /// Set when the exit status could not be read (the shim died with the container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ExitInfo {
    pub fn from_status(status: &runtime::ExitStatus) -> Self {
        ExitInfo {
            exit_code: status.exit_code(),
            code: status.code,
            signal: status.signal,
            oom_killed: status.oom_killed,
            finished_at: status.finished_at,
            error: None,
        }
    }
}

/// A job as the API shows it (`GET /jobs/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The reference the job was created from, as given.
    pub image: String,
    pub image_id: String,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// Why the last start failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the last attempt to remove the job failed (state `removing`): the daemon
    /// tries again for an auto-removed job; `rm -f` does for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal_error: Option<String>,
    /// How many times the restart policy has started the job again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restart_count: u32,
    /// When the restart policy will start the exited job again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_at: Option<DateTime<Utc>>,
    /// Stopped by `stop`: the restart policy leaves it alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manually_stopped: bool,
    /// While running in bridge mode: its address and published ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStatus>,
    pub config: JobConfig,
    /// The discovery instances of its declared services, when the host is in a cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<InstanceStatus>,
}

/// The resolved process configuration of a job (image config merged with the request).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    pub auto_remove: bool,
    #[serde(default, skip_serializing_if = "RestartPolicy::is_no")]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    #[serde(default, skip_serializing_if = "NetworkMode::is_bridge")]
    pub network: NetworkMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<network::PortMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceDecl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The log options in force (the request's, or the daemon's default).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub log_opts: std::collections::BTreeMap<String, String>,
    /// The host ids the job's ids are mapped to, when it runs in a user namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<IdRange>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
}

/// Ids `0..size` inside a job are the host's `host..host+size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub host: u32,
    pub size: u32,
}

/// How a job is networked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own network namespace with an address on the host's bridge, NAT for egress.
    #[default]
    Bridge,
    /// The host's network namespace.
    Host,
    /// Its own network namespace with only loopback.
    None,
}

impl NetworkMode {
    pub fn is_bridge(&self) -> bool {
        *self == NetworkMode::Bridge
    }
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bridge" | "default" => Ok(NetworkMode::Bridge),
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            other => Err(format!(
                "invalid network {other:?}: use bridge, host or none"
            )),
        }
    }
}

/// A running job's place on the network (bridge mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub ip: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: std::net::Ipv4Addr,
    pub mac: String,
    pub bridge: String,
    /// Published ports, with the host ports actually chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<network::PortMapping>,
}

impl NetworkStatus {
    pub fn of(endpoint: &network::Endpoint) -> NetworkStatus {
        NetworkStatus {
            ip: endpoint.ip,
            prefix_len: endpoint.prefix_len,
            gateway: endpoint.gateway,
            mac: endpoint.mac.clone(),
            bridge: endpoint.bridge.clone(),
            ports: endpoint.ports.clone(),
        }
    }
}

/// `POST /images/import` with a JSON body imports from a path on the daemon's host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `POST /images/fetch`: an image from another host of the cluster, with its digests
/// (an imported image is in no registry; a release pins its manifest digest).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// What to fetch: `name@sha256:<manifest digest>` (as a release pins it), a name
    /// or an image id, as the holding host's store resolves it.
    pub image: String,
    /// The hosts to ask, by host id, in this order; empty or absent: every other host
    /// of the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

/// `POST /images/pull`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// `busybox`, `me/tool:1.0`, `host:5000/x@sha256:...`.
    pub reference: String,
    /// `os/arch[/variant]` of the image to choose from an index [default: the host's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Credentials for the registry; without them, the daemon's Docker config is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<image::registry::Credentials>,
}

/// One line of the `POST /images/pull` stream.
pub use image::PullEvent;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRemoved {
    pub untagged: Vec<String>,
    pub deleted: Vec<String>,
}

/// One line of a job's log, in Docker's json-file shape.
pub use runtime::logs::LogEntry;

/// An event on `GET /events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// "job" or "image".
    pub kind: String,
    /// job: create, start, exit, remove; image: import, untag, delete.
    pub action: String,
    pub id: String,
    pub time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
}

pub use flynn_client::ErrorBody;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    pub version: String,
    pub api_version: String,
}

/// `GET /host/status`: what this host is and what it has, for operators and for
/// the scheduler (capacity and what is already promised to jobs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    /// Stable across daemon restarts (kept in the state dir).
    pub id: String,
    pub version: String,
    pub kernel: String,
    pub cpus: u32,
    pub memory: Capacity,
    /// Space in the state dir's filesystem.
    pub disk: Capacity,
    /// "v2" (unified), "hybrid" (v1 controllers + a v2 mount) or "v1".
    pub cgroup: String,
    pub jobs: JobCounts,
    /// Sum of the limits of running jobs (what the host has promised).
    pub promised: Promised,
    pub started_at: DateTime<Utc>,
    /// The grid (etcd, membership, overlay, discovery DNS), when the host is in a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capacity {
    pub total: u64,
    /// Memory: MemAvailable; disk: space available to the daemon.
    pub free: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobCounts {
    pub running: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Promised {
    /// Bytes of memory limits.
    pub memory: u64,
    pub cpus: f64,
    pub pids: u64,
    /// Running jobs that have no memory limit (so the promise is open-ended).
    pub unlimited_memory_jobs: u64,
}

/// `POST /jobs/{id}/exec`: run another process in a running job's container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries added to the job's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Default: the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Default: the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
}

/// A process started in a job by `exec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exec {
    pub id: String,
    pub job_id: String,
    pub config: ExecRequest,
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
}

pub use discovery::{HostRecord, HostResources, Instance, ServiceEvent, ServiceState};

/// A service a job provides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDecl {
    /// A DNS label: lowercase letters, digits and '-'.
    pub name: String,
    /// The port the job listens on (on its own address; on the host's with --net host).
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub meta: std::collections::BTreeMap<String, String>,
}

/// A health check: while it fails, the instance is out of discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// HTTP: the path to GET (a 2xx or 3xx answer is healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Failures in a row that make a healthy instance unhealthy (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    /// Successes in a row that make an unhealthy instance healthy (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP GET answers 2xx or 3xx.
    Http,
}

/// A declared service of a job, as discovery has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub service: String,
    pub id: String,
    pub addr: String,
    /// Passing its health check (always true without one).
    pub healthy: bool,
    /// In etcd now.
    pub registered: bool,
}

/// `GET /host/status`'s `cluster`: this host's place in the grid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub etcd: Vec<String>,
    /// etcd answered the last lease renewal.
    pub connected: bool,
    /// The host's address in the cluster (the overlay's underlay).
    pub address: std::net::Ipv4Addr,
    /// The host's lease in etcd, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    pub lease_ttl_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayStatus>,
    /// Where containers' DNS is answered (the bridge address, port 53).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    pub instances: Vec<InstanceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverlayStatus {
    pub network: String,
    pub subnet: String,
    pub device: String,
    pub vni: u32,
    pub port: u16,
    pub mtu: u32,
    /// Other hosts' subnets, as the kernel has them now.
    pub peers: Vec<OverlayPeer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverlayPeer {
    pub subnet: String,
    pub address: std::net::Ipv4Addr,
    pub vtep_mac: String,
}

/// `GET /cluster`: which cluster this host is in, as the bootstrap set it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterMembership {
    /// Set by the bootstrap (`PUT /cluster/etcd` or `PUT /cluster/join`); a host
    /// answers to one cluster only.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// The etcd client URLs the agent joins (empty: standalone).
    #[serde(default)]
    pub etcd: Vec<String>,
    /// Whether the agent is in the grid (it has endpoints; see `/host/status` for
    /// whether it is connected).
    #[serde(default)]
    pub joined: bool,
    /// The etcd member this host runs, if any.
    #[serde(default)]
    pub etcd_member: Option<EtcdMemberRequest>,
}

/// `PUT /cluster/etcd`: run this host's member of a static etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdMemberRequest {
    pub cluster_id: String,
    /// This host's member (one of `members`).
    pub name: String,
    /// Every member of the initial cluster.
    pub members: Vec<EtcdMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdMember {
    pub name: String,
    /// `http://IP:2380`
    pub peer_url: String,
    /// `http://IP:2379`
    pub client_url: String,
}

/// `PUT /cluster/join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub cluster_id: String,
    /// etcd client URLs, `http://HOST:PORT`.
    pub etcd: Vec<String>,
}

/// The answer of an idempotent `PUT`: whether anything was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub changed: bool,
}

/// `GET /host/preflight`: whether this host can take part in a cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preflight {
    pub host_id: String,
    pub checks: Vec<PreflightCheck>,
    /// The host's clock (ms since the epoch), for the bootstrap's skew check.
    pub time_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreflightCheck {
    /// e.g. `kernel:vxlan`, `cgroup:memory`, `port:udp/4789`.
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do when it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// `POST /host/probe/listen`: wait for a UDP datagram carrying `nonce`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeListen {
    pub port: u16,
    pub nonce: String,
    /// How long to listen (at most 60 s).
    pub timeout_ms: u64,
}

/// `GET /host/probe/listen/{nonce}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeHeard {
    pub received: bool,
    #[serde(default)]
    pub from: Option<String>,
    /// Still listening (the time-out has not passed and nothing came yet).
    pub listening: bool,
}

/// `POST /host/probe/send`: reach another host over TCP and UDP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSend {
    pub address: std::net::IpAddr,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub nonce: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeSent {
    pub tcp_ok: bool,
    #[serde(default)]
    pub tcp_error: Option<String>,
    pub udp_sent: u32,
}

/// `GET /cluster/tls/ca` (public) and `PUT /cluster/tls`: the CA this host's API
/// certificate is signed by, and that certificate's names and expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// The CA certificate, PEM (what `--tls-ca FILE` takes).
    pub ca: String,
    /// Its pin: base64 of the SHA-256 of its DER (what `--tls-pin` takes).
    pub pin: String,
    /// The names (host name, addresses) the host's certificate carries.
    pub names: Vec<String>,
    /// When the host's certificate expires (it is renewed after 2/3 of its life).
    pub not_after: chrono::DateTime<chrono::Utc>,
    /// Whether the CA is the cluster's (installed by the bootstrap), not the one
    /// the host made at its first start.
    #[serde(default)]
    pub cluster: bool,
    /// With `?proof=NONCE`: HMAC-SHA256 keyed by the API token over the pin and
    /// the nonce (hex), by which a client that shares the token verifies the pin
    /// before it sends the token (`flynn_tls::check_first_contact`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// `POST /cluster/tls/issue`: a certificate from the host's CA (the cluster's,
/// once the bootstrap installed it) for a platform service that renews its own
/// (the routers' `*.<domain>`, the controller's): good for servers and clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsIssue {
    /// DNS names (a `*.` wildcard allowed) and IP addresses: 1 to 32.
    pub names: Vec<String>,
    /// Its life in seconds: 60 to 31 536 000 (a year).
    pub lifetime_secs: u64,
    /// The certificate's common name (default: its first name).
    #[serde(default)]
    pub common_name: Option<String>,
}

/// What `POST /cluster/tls/issue` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsIssued {
    /// The certificate, then the CA's, PEM.
    pub chain: String,
    /// Its private key, PEM (made by the host for this certificate, kept nowhere).
    pub key: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// `PUT /cluster/tls`: the cluster CA, handed to every host by the bootstrap;
/// the host keeps it on its state disk and re-issues its certificate under it.
/// `GET /cluster/tls` answers the host's CA in the same form (the bootstrap
/// adopts the cluster's CA from a host that has it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsInstall {
    /// The CA certificate, PEM.
    pub ca_cert: String,
    /// Its private key, PEM.
    pub ca_key: String,
}
