//! From a job request and the image's config to the process the runtime starts.
//! This is where Docker's rules for Entrypoint/Cmd/Env/WorkingDir/User live.

use std::path::Path;

use oci_spec::image::ImageConfiguration;

use super::JobError;
use crate::model::{Job, JobConfig, JobRequest, NetworkMode, Volume};

/// Docker's rule for container names.
pub fn validate_name(name: &str) -> Result<(), JobError> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && name.len() <= 128 {
        Ok(())
    } else {
        Err(JobError::BadRequest(format!(
            "invalid job name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )))
    }
}

/// What the daemon applies when a request leaves it unsaid (`userns`, `pids_limit`
/// in the daemon's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// Jobs run in a user namespace unless they ask for `--userns=host`.
    pub userns: bool,
    /// The pids limit of a job that gives none; 0: unlimited.
    pub pids_limit: i64,
}

/// Podman's default (containers.conf `pids_limit` is 2048); twice that leaves room for
/// thread-heavy servers while a fork bomb still stops long before the host's limit.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            userns: false,
            pids_limit: DEFAULT_PIDS_LIMIT,
        }
    }
}

/// Merges the image config with the request's overrides.
pub fn resolve(
    req: &JobRequest,
    image: &ImageConfiguration,
    id: &str,
    defaults: Defaults,
) -> Result<JobConfig, JobError> {
    let cfg = image.config().as_ref();
    let image_entrypoint = cfg.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let image_cmd = cfg.and_then(|c| c.cmd().clone()).unwrap_or_default();
    // An entrypoint given by the client drops the image's Cmd too (Docker's rule).
    let args: Vec<String> = match &req.entrypoint {
        Some(entrypoint) => entrypoint
            .iter()
            .cloned()
            .chain(req.cmd.clone().unwrap_or_default())
            .collect(),
        None => image_entrypoint
            .into_iter()
            .chain(req.cmd.clone().unwrap_or(image_cmd))
            .collect(),
    };
    if args.is_empty() || args[0].is_empty() {
        return Err(JobError::BadRequest(format!(
            "no command specified: image {} has no Entrypoint or Cmd, give one after the image name",
            req.image
        )));
    }
    let mut env: Vec<String> = cfg.and_then(|c| c.env().clone()).unwrap_or_default();
    for entry in &req.env {
        let key = entry.split('=').next().unwrap_or_default();
        if key.is_empty() || !entry.contains('=') {
            return Err(JobError::BadRequest(format!(
                "invalid environment entry {entry:?}: expected KEY=VALUE"
            )));
        }
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(entry.clone());
    }
    // A job knows its id (platform services name themselves by it).
    env.retain(|e| !e.starts_with("FLYNN_JOB_ID="));
    env.push(format!("FLYNN_JOB_ID={id}"));
    let workdir = req
        .workdir
        .clone()
        .or_else(|| cfg.and_then(|c| c.working_dir().clone()))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_string());
    if !workdir.starts_with('/') {
        return Err(JobError::BadRequest(format!(
            "invalid working directory {workdir:?}: it must be an absolute path"
        )));
    }
    let user = req
        .user
        .clone()
        .or_else(|| cfg.and_then(|c| c.user().clone()))
        .unwrap_or_default();
    let hostname = match (&req.hostname, req.network) {
        (Some(h), _) => h.clone(),
        // Sharing the host's network, a job is the host by name too (as in Docker).
        (None, NetworkMode::Host) => nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| id[..12].to_string()),
        (None, _) => id[..12].to_string(),
    };
    validate_ports(req)?;
    if !req.ports.is_empty() && req.network != NetworkMode::Bridge {
        return Err(JobError::BadRequest(
            "published ports need the bridge network (not --net host or none)".to_string(),
        ));
    }
    validate_resources(req)?;
    crate::model::restart::validate(&req.restart, req.auto_remove).map_err(JobError::BadRequest)?;
    crate::model::services::validate(&req.services, req.network).map_err(JobError::BadRequest)?;
    validate_volumes(&req.volumes)?;
    crate::model::logopts::rotation(&req.log_opts).map_err(JobError::BadRequest)?;
    if !req.log_opts.is_empty() && req.labels.contains_key(SHIPPED_LABEL) {
        return Err(JobError::BadRequest(format!(
            "log options cannot be given to a job labelled {SHIPPED_LABEL}: its log is the log shipper's queue, read by byte offset, and the log aggregator bounds what it keeps"
        )));
    }
    if let Some(k) = req.labels.keys().find(|k| k.is_empty() || k.contains('=')) {
        return Err(JobError::BadRequest(format!(
            "label key {k:?}: give a non-empty key without '='"
        )));
    }
    let mut resources = req.resources.clone();
    if resources.pids_limit.is_none() && defaults.pids_limit > 0 {
        resources.pids_limit = Some(defaults.pids_limit);
    }
    let config = JobConfig {
        args,
        env,
        workdir,
        user,
        hostname,
        resources,
        auto_remove: req.auto_remove,
        restart: req.restart.clone(),
        tty: req.tty,
        stdin: req.stdin,
        network: req.network,
        ports: req.ports.clone(),
        dns: req.dns.clone(),
        services: req.services.clone(),
        volumes: req.volumes.clone(),
        labels: labels(req),
        log_opts: req.log_opts.clone(),
        // The range is the manager's to allocate (see `JobManager::create`).
        userns: None,
        read_only: req.read_only,
        cap_add: req.cap_add.clone(),
        cap_drop: req.cap_drop.clone(),
        security_opt: req.security_opt.iter().map(|o| normalize_opt(o)).collect(),
    };
    // Refuses unknown capabilities, options and bad seccomp profiles now, not at start.
    let security = security(&config)?;
    if let Some(profile) = runtime::spec::seccomp_profile(&security).map_err(bad_security)?
        && matches!(security.seccomp, runtime::SeccompMode::Docker(_))
    {
        runtime::seccomp::compile(&profile).map_err(|e| {
            JobError::BadRequest(format!("the seccomp profile cannot be used: {e}"))
        })?;
    }
    Ok(config)
}

fn bad_security(e: runtime::SpecError) -> JobError {
    JobError::BadRequest(e.to_string())
}

/// `seccomp:x` and `no-new-privileges=x` as Docker also takes them, in one form.
fn normalize_opt(opt: &str) -> String {
    match opt.split_once([':', '=']) {
        Some((key @ ("seccomp" | "no-new-privileges"), value)) => format!("{key}={value}"),
        _ => opt.to_string(),
    }
}

/// The job's confinement as the runtime takes it (the user namespace's range aside).
pub fn security(c: &JobConfig) -> Result<runtime::Security, JobError> {
    let mut out = runtime::Security {
        userns: c.userns.map(|r| runtime::IdRange {
            host: r.host,
            size: r.size,
        }),
        read_only: c.read_only,
        cap_add: c.cap_add.clone(),
        cap_drop: c.cap_drop.clone(),
        ..runtime::Security::default()
    };
    for opt in &c.security_opt {
        match opt.split_once('=').unwrap_or((opt.as_str(), "")) {
            ("seccomp", "unconfined") => out.seccomp = runtime::SeccompMode::Unconfined,
            ("seccomp", "") => {
                return Err(JobError::BadRequest(
                    "security option seccomp: give seccomp=unconfined or seccomp=PROFILE (the \
                     profile's JSON)"
                        .to_string(),
                ));
            }
            ("seccomp", profile) => {
                out.seccomp = runtime::SeccompMode::Docker(profile.to_string());
            }
            ("no-new-privileges", "" | "true") => out.allow_new_privileges = false,
            ("no-new-privileges", "false") => out.allow_new_privileges = true,
            ("label" | "apparmor", _) => {
                return Err(JobError::BadRequest(format!(
                    "security option {opt:?}: this host has no SELinux or AppArmor; use seccomp= \
                     or no-new-privileges"
                )));
            }
            _ => {
                return Err(JobError::BadRequest(format!(
                    "unknown security option {opt:?}: give seccomp=unconfined, \
                     seccomp=PROFILE.json or no-new-privileges[:true|false]"
                )));
            }
        }
    }
    if out.allow_new_privileges && out.seccomp != runtime::SeccompMode::Unconfined {
        // The shim installs the seccomp filter after capabilities are dropped, which the
        // kernel allows only with no_new_privileges.
        return Err(JobError::BadRequest(
            "no-new-privileges:false needs seccomp=unconfined too (this runtime installs \
             the seccomp filter after dropping capabilities, which only no_new_privileges \
             allows)"
                .to_string(),
        ));
    }
    runtime::spec::capabilities_of(&out).map_err(bad_security)?;
    Ok(out)
}

/// A bridge job may not mount the daemon's state (its token, images, other jobs'
/// logs and namespaces, the network's state) or any part of it: that would carry it
/// past the wall around the control plane. The platform's own jobs, on the host
/// network, may (etcd keeps its data in `<state>/etcd`).
pub fn refuse_state_volumes(volumes: &[Volume], state: &Path) -> Result<(), JobError> {
    let state = state.canonicalize().unwrap_or_else(|_| state.to_path_buf());
    for v in volumes {
        let source = Path::new(&v.source);
        let source = source
            .canonicalize()
            .unwrap_or_else(|_| source.to_path_buf());
        if source.starts_with(&state) {
            return Err(JobError::BadRequest(format!(
                "volume source {} is inside the daemon's state directory {}: jobs may not mount it; mount a directory of their own",
                v.source,
                state.display()
            )));
        }
    }
    Ok(())
}

/// Jobs with this label have their log shipped to the log aggregator
/// (`grid/logship.rs`): their log is never rotated.
pub const SHIPPED_LABEL: &str = "flynn.app";

/// The label every host-network job carries: such a job shares the host's network
/// namespace, so the wall between jobs and the control plane (the agent's API, etcd)
/// does not stand around it. The platform's own services (etcd, the scheduler, the
/// router...) are the jobs meant to run so; `ps --filter label=flynn.platform` lists them.
pub const HOST_NETWORK_LABEL: (&str, &str) = ("flynn.platform", "host-network");

fn labels(req: &JobRequest) -> std::collections::BTreeMap<String, String> {
    let mut labels = req.labels.clone();
    if req.network == NetworkMode::Host {
        let (k, v) = HOST_NETWORK_LABEL;
        labels.insert(k.to_string(), v.to_string());
    }
    labels
}

/// A published port goes to a real port of the job (the host side may be 0: the host
/// picks one).
pub fn validate_ports(req: &JobRequest) -> Result<(), JobError> {
    match req.ports.iter().find(|p| p.container_port == 0) {
        Some(p) => Err(JobError::BadRequest(format!(
            "published port {}:0/{:?}: the job's port must be 1 to 65535",
            p.host_port, p.protocol
        ))),
        None => Ok(()),
    }
}

/// Both ends absolute and plain (no `..`, which would let a job's target climb out
/// of its rootfs); not onto `/` itself.
fn validate_volumes(volumes: &[Volume]) -> Result<(), JobError> {
    for v in volumes {
        for (what, path) in [("source", &v.source), ("target", &v.target)] {
            let p = Path::new(path);
            let plain = p.is_absolute()
                && p.components()
                    .all(|c| !matches!(c, std::path::Component::ParentDir));
            if !plain {
                return Err(JobError::BadRequest(format!(
                    "volume {}:{}: the {what} must be an absolute path without '..'",
                    v.source, v.target
                )));
            }
        }
        if Path::new(&v.target) == Path::new("/") {
            return Err(JobError::BadRequest(format!(
                "volume {}:/: a volume cannot replace the job's root; mount it on a directory",
                v.source
            )));
        }
    }
    Ok(())
}

/// The job's volumes as bind mounts, their host directories created if missing (as
/// Docker does for `-v`).
pub fn volume_mounts(volumes: &[Volume]) -> Result<Vec<runtime::BindMount>, JobError> {
    volumes
        .iter()
        .map(|v| {
            std::fs::create_dir_all(&v.source)
                .map_err(|e| JobError::BadRequest(format!("volume source {}: {e}", v.source)))?;
            Ok(runtime::BindMount {
                source: v.source.clone().into(),
                destination: v.target.clone(),
                readonly: v.read_only,
            })
        })
        .collect()
}

fn validate_resources(req: &JobRequest) -> Result<(), JobError> {
    let r = &req.resources;
    if let Some(m) = r.memory
        && m < 6 * 1024 * 1024
    {
        return Err(JobError::BadRequest(format!(
            "memory limit {m} bytes is too small: the minimum is 6 MiB"
        )));
    }
    if let Some(c) = r.cpus
        && (!c.is_finite() || !(0.01..=1024.0).contains(&c))
    {
        // Below 0.01 the CFS quota (cpus x 100 ms) is under the kernel's 1 ms minimum.
        return Err(JobError::BadRequest(format!(
            "invalid cpus {c}: give 0.01 to 1024 CPUs, such as 0.5"
        )));
    }
    // A pids limit of 0 or less means none (Docker's rule); it overrides the default.
    Ok(())
}

/// What the runtime needs to run this job in `rootfs`.
pub fn container_config(
    job: &Job,
    rootfs: &Path,
    network: runtime::NetworkMode,
    mounts: Vec<runtime::BindMount>,
) -> Result<runtime::ContainerConfig, JobError> {
    let c = &job.config;
    Ok(runtime::ContainerConfig {
        id: job.id.clone(),
        rootfs: rootfs.to_path_buf(),
        args: c.args.clone(),
        env: c.env.clone(),
        cwd: c.workdir.clone(),
        user: c.user.clone(),
        hostname: c.hostname.clone(),
        resources: runtime::Resources {
            memory: c.resources.memory,
            cpus: c.resources.cpus,
            pids_limit: c.resources.pids_limit,
        },
        tty: c.tty,
        stdin: c.stdin,
        network,
        mounts,
        security: security(c)?,
    })
}
