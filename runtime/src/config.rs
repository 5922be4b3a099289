//! What the agent asks for: one container, as plain values (never an image manifest).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Docker refuses memory limits below 6 MiB: the container's own runtime overhead would
/// trigger the OOM killer before the workload even starts.
pub const MIN_MEMORY_BYTES: i64 = 6 * 1024 * 1024;

/// The CFS period used for `cpus`; quota is `cpus * CPU_PERIOD_US`, as in Docker.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The kernel rejects CFS quotas below 1 ms.
const MIN_CPU_QUOTA_US: i64 = 1_000;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ContainerConfig {
    /// 32 lowercase hex characters; also names the libcontainer state dir and the cgroup.
    pub id: String,
    /// The container's root filesystem, already mounted by the agent.
    pub rootfs: PathBuf,
    /// The final argv (entrypoint and command already merged). Must not be empty.
    pub args: Vec<String>,
    /// `KEY=value` entries. PATH, HOSTNAME and HOME are added when missing.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the container; "" means "/". Created if missing.
    #[serde(default)]
    pub cwd: String,
    /// Docker syntax: "", "name", "uid", "name:group", "uid:gid", ...
    #[serde(default)]
    pub user: String,
    /// "" means the first 12 characters of the id, as Docker does.
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub resources: Resources,
    /// A pseudo-terminal as the container's controlling terminal (stdin, stdout and
    /// stderr all on it; its output is logged as stdout), as Docker's `-t`.
    #[serde(default)]
    pub tty: bool,
    /// Keep the container's stdin open for a client to write to (Docker's `-i`): a pipe
    /// (or the terminal, with `tty`) fed through the shim's `stdin` request. Without it
    /// stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub network: NetworkMode,
    /// Host files or directories bind-mounted into the container, after the default
    /// mounts (the agent's /etc/hosts, /etc/hostname and /etc/resolv.conf).
    #[serde(default)]
    pub mounts: Vec<BindMount>,
    /// What confines the container beyond Docker's defaults, or loosens them.
    #[serde(default)]
    pub security: Security,
}

/// The container's confinement: user namespace, root filesystem, capabilities,
/// seccomp, no_new_privileges. The default is Docker's (no user namespace, a writable
/// root, Docker's 14 capabilities and seccomp profile), but with no_new_privileges on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Security {
    /// Run in a user namespace of its own, its ids mapped to this range of the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<IdRange>,
    /// Mount the root filesystem read-only (Docker's `--read-only`; no tmpfs is added).
    #[serde(default)]
    pub read_only: bool,
    /// Capabilities added to Docker's default set: names as Docker takes them
    /// (`NET_ADMIN`, `CAP_NET_ADMIN`, any case) or `ALL`.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Capabilities removed from the set, after the additions; `ALL` removes every one.
    #[serde(default)]
    pub cap_drop: Vec<String>,
    #[serde(default)]
    pub seccomp: SeccompMode,
    /// Let the process gain privileges on exec (setuid binaries, file capabilities).
    /// Off by default: stricter than Docker, whose default leaves it allowed.
    #[serde(default)]
    pub allow_new_privileges: bool,
}

/// Which seccomp filter the container runs under.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// Docker's default profile, rendered against the container's capabilities.
    #[default]
    Default,
    /// No filter at all (Docker's `seccomp=unconfined`).
    Unconfined,
    /// A profile in Docker's JSON format (the text of the file given to `--security-opt
    /// seccomp=FILE`), rendered against the container's capabilities and architecture.
    Docker(String),
}

/// Container ids `0..size` are host ids `host..host+size` (uids and gids alike).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub host: u32,
    pub size: u32,
}

/// A host path bind-mounted into the container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BindMount {
    /// Absolute path on the host.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// Memory limit in bytes; swap is limited to the same value (no extra swap).
    #[serde(default)]
    pub memory: Option<i64>,
    /// CPU bandwidth in CPUs, e.g. 0.5 for half a CPU.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Maximum number of processes; zero or negative means unlimited, as in Docker.
    #[serde(default)]
    pub pids_limit: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A fresh network namespace with only a loopback interface.
    #[default]
    New,
    /// Share the host's network namespace.
    Host,
    /// Join the network namespace bound at this path (e.g. /run/netns/x).
    Path(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("invalid container id {0:?}: it must be 32 lowercase hex characters")]
    Id(String),
    #[error("the container has no command: give a non-empty args list (entrypoint and/or cmd)")]
    NoArgs,
    #[error("rootfs {0:?} must be an absolute path to the mounted root filesystem")]
    Rootfs(PathBuf),
    #[error("invalid environment entry {0:?}: entries must look like KEY=value")]
    Env(String),
    #[error("working directory {0:?} must be absolute (or empty for /)")]
    Cwd(String),
    #[error("memory limit {0} bytes is too small: the minimum is 6 MiB (6291456 bytes)")]
    Memory(i64),
    #[error("invalid cpus value {0}: give a number of CPUs of at least 0.01")]
    Cpus(f64),
    #[error("invalid exec id {0:?}: it must be 12 lowercase hex characters")]
    ExecId(String),
    #[error("bind mount {0}: both paths must be absolute, without '..'")]
    Mount(String),
    #[error("network namespace path {0:?} must be absolute")]
    NetnsPath(PathBuf),
    #[error("invalid hostname {0:?}: use at most 64 characters, without '/' or NUL")]
    Hostname(String),
}

impl ContainerConfig {
    /// Checks everything that can be checked without touching the rootfs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_valid_id(&self.id) {
            return Err(ConfigError::Id(self.id.clone()));
        }
        if self.args.is_empty() {
            return Err(ConfigError::NoArgs);
        }
        if !self.rootfs.is_absolute() {
            return Err(ConfigError::Rootfs(self.rootfs.clone()));
        }
        if let Some(bad) = self.env.iter().find(|e| !is_valid_env(e)) {
            return Err(ConfigError::Env(bad.clone()));
        }
        if !self.cwd.is_empty() && !self.cwd.starts_with('/') {
            return Err(ConfigError::Cwd(self.cwd.clone()));
        }
        if let NetworkMode::Path(p) = &self.network
            && !p.is_absolute()
        {
            return Err(ConfigError::NetnsPath(p.clone()));
        }
        if self.hostname.len() > 64 || self.hostname.contains(['/', '\0']) {
            return Err(ConfigError::Hostname(self.hostname.clone()));
        }
        if let Some(bad) = self.mounts.iter().find(|m| {
            !m.source.is_absolute()
                || !m.destination.starts_with('/')
                || m.destination.split('/').any(|c| c == "..")
        }) {
            return Err(ConfigError::Mount(format!(
                "{} -> {}",
                bad.source.display(),
                bad.destination
            )));
        }
        self.resources.validate()
    }

    /// The hostname the container will see.
    pub fn effective_hostname(&self) -> String {
        if self.hostname.is_empty() {
            self.id.chars().take(12).collect()
        } else {
            self.hostname.clone()
        }
    }
}

impl Resources {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(m) = self.memory
            && m < MIN_MEMORY_BYTES
        {
            return Err(ConfigError::Memory(m));
        }
        if let Some(c) = self.cpus
            && cpu_quota(c).is_none()
        {
            return Err(ConfigError::Cpus(c));
        }
        Ok(())
    }
}

/// CFS quota in microseconds for `cpus` CPUs over [`CPU_PERIOD_US`], if valid.
pub fn cpu_quota(cpus: f64) -> Option<i64> {
    if !cpus.is_finite() || cpus <= 0.0 {
        return None;
    }
    let quota = (cpus * CPU_PERIOD_US as f64).round();
    // Beyond i64 the float-to-int cast would saturate silently.
    if !(MIN_CPU_QUOTA_US as f64..=i64::MAX as f64 / 2.0).contains(&quota) {
        return None;
    }
    Some(quota as i64)
}

/// A process to run inside a running container (`exec`), as the agent asks for it. It
/// gets the container's confinement (namespaces, cgroups, capabilities,
/// no_new_privileges, seccomp filter, rlimits); the rest defaults to the container's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExecConfig {
    /// 12 lowercase hex characters: names the exec directory, `<job>/exec/<exec_id>/`
    /// (short, so that its control socket path stays within the unix socket limit).
    pub exec_id: String,
    /// The argv; `args[0]` is looked up in the PATH of the process's environment.
    pub args: Vec<String>,
    /// `KEY=value` entries added to the container's environment (replacing entries with
    /// the same key), as `docker exec -e`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory; default: the container's.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Docker syntax, resolved in the container's rootfs; default: the container's user.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
}

impl ExecConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_valid_exec_id(&self.exec_id) {
            return Err(ConfigError::ExecId(self.exec_id.clone()));
        }
        if self.args.is_empty() || self.args[0].is_empty() {
            return Err(ConfigError::NoArgs);
        }
        if let Some(bad) = self.env.iter().find(|e| !is_valid_env(e)) {
            return Err(ConfigError::Env(bad.clone()));
        }
        if let Some(cwd) = &self.cwd
            && !cwd.starts_with('/')
        {
            return Err(ConfigError::Cwd(cwd.clone()));
        }
        Ok(())
    }
}

pub fn is_valid_id(id: &str) -> bool {
    id.len() == 32 && is_lower_hex(id)
}

pub fn is_valid_exec_id(id: &str) -> bool {
    id.len() == 12 && is_lower_hex(id)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_valid_env(entry: &str) -> bool {
    match entry.split_once('=') {
        Some((key, _)) => !key.is_empty() && !entry.contains('\0'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ContainerConfig {
        ContainerConfig {
            id: "0123456789abcdef0123456789abcdef".into(),
            rootfs: "/tmp/rootfs".into(),
            args: vec!["true".into()],
            env: vec![],
            cwd: String::new(),
            user: String::new(),
            hostname: String::new(),
            resources: Resources::default(),
            tty: false,
            stdin: false,
            network: NetworkMode::New,
            mounts: Vec::new(),
            security: Default::default(),
        }
    }

    #[test]
    fn validates_exec_config() {
        let mut e = ExecConfig {
            exec_id: "0123456789ab".into(),
            args: vec!["sh".into()],
            env: vec!["A=b".into()],
            cwd: None,
            user: None,
            tty: false,
            stdin: false,
        };
        assert_eq!(e.validate(), Ok(()));
        e.exec_id = "0123456789AB".into();
        assert_eq!(
            e.validate(),
            Err(ConfigError::ExecId("0123456789AB".into()))
        );
        e.exec_id = "0123456789ab".into();
        e.cwd = Some("rel".into());
        assert_eq!(e.validate(), Err(ConfigError::Cwd("rel".into())));
        e.cwd = Some("/srv".into());
        e.args = vec![String::new()];
        assert_eq!(e.validate(), Err(ConfigError::NoArgs));
        let back: ExecConfig =
            serde_json::from_str(r#"{"exec_id":"0123456789ab","args":["ls"]}"#).unwrap();
        assert_eq!(
            (back.cwd, back.user, back.tty, back.stdin),
            (None, None, false, false)
        );
    }

    #[test]
    fn validates_fields() {
        assert_eq!(config().validate(), Ok(()));
        type Mutation = Box<dyn Fn(&mut ContainerConfig)>;
        let cases: Vec<(Mutation, ConfigError)> = vec![
            (
                Box::new(|c| c.id = "ABC".into()),
                ConfigError::Id("ABC".into()),
            ),
            (Box::new(|c| c.args.clear()), ConfigError::NoArgs),
            (
                Box::new(|c| c.env = vec!["NOEQUALS".into()]),
                ConfigError::Env("NOEQUALS".into()),
            ),
            (
                Box::new(|c| c.cwd = "relative".into()),
                ConfigError::Cwd("relative".into()),
            ),
            (
                Box::new(|c| c.resources.memory = Some(1024)),
                ConfigError::Memory(1024),
            ),
            (
                Box::new(|c| c.resources.cpus = Some(0.0)),
                ConfigError::Cpus(0.0),
            ),
        ];
        for (mutate, want) in cases {
            let mut c = config();
            mutate(&mut c);
            assert_eq!(c.validate(), Err(want));
        }
    }

    #[test]
    fn cpus_to_quota() {
        assert_eq!(cpu_quota(0.5), Some(50_000));
        assert_eq!(cpu_quota(2.0), Some(200_000));
        assert_eq!(cpu_quota(0.01), Some(1_000));
        assert_eq!(cpu_quota(0.001), None);
        assert_eq!(cpu_quota(f64::NAN), None);
        assert_eq!(cpu_quota(-1.0), None);
    }

    #[test]
    fn network_mode_serde() {
        let json = serde_json::to_string(&NetworkMode::Path("/run/netns/a".into())).unwrap();
        assert_eq!(json, r#"{"path":"/run/netns/a"}"#);
        assert_eq!(
            serde_json::to_string(&NetworkMode::New).unwrap(),
            r#""new""#
        );
        let c: ContainerConfig = serde_json::from_str(
            r#"{"id":"0123456789abcdef0123456789abcdef","rootfs":"/r","args":["sh"]}"#,
        )
        .unwrap();
        assert_eq!(c.network, NetworkMode::New);
        assert_eq!(c.effective_hostname(), "0123456789ab");
    }
}
