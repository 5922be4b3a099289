//! Turning a [`ContainerConfig`] into an OCI runtime spec with Docker's defaults.

pub mod caps;
pub mod mounts;
pub mod seccomp;
pub mod seccomp_file;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder, LinuxSeccomp, PosixRlimitBuilder,
    PosixRlimitType, Process, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::cgroup;
use crate::config::{
    self, ConfigError, ContainerConfig, ExecConfig, NetworkMode, Resources, SeccompMode, Security,
};
use crate::rootfs::{RootDir, RootfsError};
use crate::user::{self, UserError};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// RLIMIT_NOFILE as Docker 25+ leaves it (systemd's defaults): a soft limit old programs
/// that loop over every possible fd survive, a hard limit servers can raise to.
const NOFILE_SOFT: u64 = 1024;
const NOFILE_HARD: u64 = 524_288;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid container config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("internal error assembling the OCI spec (a bug in flynn-runtime): {0}")]
    Oci(#[from] OciSpecError),
    #[error(transparent)]
    Capability(#[from] caps::UnknownCapability),
    #[error(transparent)]
    SeccompProfile(#[from] seccomp_file::ProfileError),
}

/// The capabilities `security` leaves the container (Docker's rules for add and drop).
pub fn capabilities_of(security: &Security) -> Result<Vec<Capability>, SpecError> {
    Ok(caps::effective(&security.cap_add, &security.cap_drop)?)
}

/// The seccomp profile the container runs under (`None`: unconfined), rendered
/// against its capabilities. The agent calls it to refuse a bad profile at create.
pub fn seccomp_profile(security: &Security) -> Result<Option<LinuxSeccomp>, SpecError> {
    let caps = capabilities_of(security)?;
    Ok(match &security.seccomp {
        SeccompMode::Default => Some(seccomp::default_profile(&caps)?),
        SeccompMode::Unconfined => None,
        SeccompMode::Docker(json) => Some(seccomp_file::render(json, &caps)?),
    })
}

/// Builds the OCI spec for `cfg`. Reads the rootfs's /etc/passwd and /etc/group (safely,
/// inside the rootfs) but writes nothing; see [`prepare_rootfs`].
pub fn build_spec(cfg: &ContainerConfig) -> Result<Spec, SpecError> {
    cfg.validate()?;
    let root = RootDir::open(&cfg.rootfs)?;
    let exec_user = user::resolve(&root, &cfg.user)?;
    let hostname = cfg.effective_hostname();

    let process = ProcessBuilder::default()
        .terminal(cfg.tty)
        .user(
            UserBuilder::default()
                .uid(exec_user.uid)
                .gid(exec_user.gid)
                .additional_gids(exec_user.additional_gids.clone())
                .build()?,
        )
        .args(cfg.args.clone())
        .env(env_with_defaults(
            &cfg.env,
            &hostname,
            &exec_user.home,
            cfg.tty,
        ))
        .cwd(cwd(cfg))
        .capabilities(caps::capabilities(&capabilities_of(&cfg.security)?))
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(NOFILE_SOFT)
                .hard(NOFILE_HARD)
                .build()?,
        ])
        .no_new_privileges(!cfg.security.allow_new_privileges)
        // Explicit, as Docker does: otherwise init inherits the agent's adjustment (an
        // agent that protects itself from the OOM killer would protect its containers).
        .oom_score_adj(0)
        .build()?;

    let userns = cfg.security.userns;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces(&cfg.network, userns.is_some())?)
        .cgroups_path(cgroup::cgroup_path(&cfg.id))
        .resources(resources(&cfg.resources)?)
        .devices(Vec::new())
        .masked_paths(to_strings(mounts::MASKED_PATHS))
        .readonly_paths(to_strings(mounts::READONLY_PATHS))
        .build()?;
    linux.set_seccomp(seccomp_profile(&cfg.security)?);
    if let Some(range) = userns {
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(range.host)
            .size(range.size)
            .build()?;
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    }
    let mut default_mounts = mounts::default_mounts()?;
    if userns.is_some() && cfg.network != NetworkMode::New {
        // sysfs can only be mounted by the user namespace that owns the network
        // namespace; the job's was made by the host (or is the host's): the host's
        // /sys is bound instead, read-only, as runc does in that case.
        mounts::bind_host_sysfs(&mut default_mounts)?;
    }

    Ok(SpecBuilder::default()
        .version("1.2.0")
        .root(
            RootBuilder::default()
                .path(&cfg.rootfs)
                .readonly(cfg.security.read_only)
                .build()?,
        )
        .hostname(hostname)
        .mounts(mounts::with_binds(default_mounts, &cfg.mounts)?)
        .process(process)
        .linux(linux)
        .build()?)
}

/// Makes the rootfs ready for the spec: creates the working directory (owned by root, as
/// Docker does) when the image lacks it.
pub fn prepare_rootfs(cfg: &ContainerConfig) -> Result<(), SpecError> {
    cfg.validate()?;
    let root = RootDir::open(&cfg.rootfs)?;
    root.mkdir_all(&cwd(cfg))?;
    Ok(())
}

fn cwd(cfg: &ContainerConfig) -> String {
    if cfg.cwd.is_empty() {
        "/".to_owned()
    } else {
        cfg.cwd.clone()
    }
}

fn to_strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Docker's defaults, added only where the image and the job left them unset.
fn env_with_defaults(env: &[String], hostname: &str, home: &str, tty: bool) -> Vec<String> {
    let mut out = env.to_vec();
    let mut defaults = vec![
        ("PATH", DEFAULT_PATH),
        ("HOSTNAME", hostname),
        ("HOME", home),
    ];
    if tty {
        defaults.push(("TERM", "xterm"));
    }
    for (key, value) in defaults {
        if !has_key(env, key) {
            out.push(format!("{key}={value}"));
        }
    }
    out
}

fn has_key(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
}

/// Replaces the entry with the same key as `entry`, or appends it.
fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = entry.split_once('=').map_or(entry, |(k, _)| k);
    match env
        .iter_mut()
        .find(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
    {
        Some(existing) => *existing = entry.to_owned(),
        None => env.push(entry.to_owned()),
    }
}

/// The process of an exec into a running container: the container's own process
/// (`base`, from the spec it runs with: capabilities, rlimits, no_new_privileges,
/// oom_score_adj, user, working directory, environment) with the exec's command, added
/// environment, and optional working directory and user. A `user` is resolved in the
/// container's rootfs as the container's is; it also brings its home as `HOME` unless
/// the container's configuration or the exec sets `HOME` explicitly. With `tty`, `TERM`
/// defaults to `xterm`, as for a container.
pub fn exec_process(
    container: &ContainerConfig,
    base: &Process,
    exec: &ExecConfig,
) -> Result<Process, SpecError> {
    exec.validate()?;
    let mut process = base.clone();
    let mut env = base.env().clone().unwrap_or_default();
    for entry in &exec.env {
        set_env(&mut env, entry);
    }
    if let Some(spec) = &exec.user {
        let root = RootDir::open(&container.rootfs)?;
        let user = user::resolve(&root, spec)?;
        process.set_user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()?,
        );
        if !has_key(&container.env, "HOME") && !has_key(&exec.env, "HOME") {
            set_env(&mut env, &format!("HOME={}", user.home));
        }
    }
    if exec.tty && !has_key(&env, "TERM") {
        env.push("TERM=xterm".to_owned());
    }
    process.set_env(Some(env));
    process.set_args(Some(exec.args.clone()));
    if let Some(cwd) = &exec.cwd {
        process.set_cwd(cwd.into());
    }
    process.set_terminal(Some(exec.tty));
    process.set_console_size(None);
    Ok(process)
}

fn namespaces(network: &NetworkMode, userns: bool) -> Result<Vec<LinuxNamespace>, OciSpecError> {
    let mut list = Vec::new();
    if userns {
        list.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()?,
        );
    }
    for typ in [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
    ] {
        list.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
    }
    match network {
        NetworkMode::Host => {}
        NetworkMode::New => list.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .build()?,
        ),
        NetworkMode::Path(path) => list.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path)
                .build()?,
        ),
    }
    Ok(list)
}

fn resources(r: &Resources) -> Result<LinuxResources, OciSpecError> {
    // Deny every device first; libcontainer then allows its defaults (null, zero, full,
    // random, urandom, tty, ptmx, pts) on both cgroup versions.
    let mut b = LinuxResourcesBuilder::default().devices(vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ]);
    if let Some(limit) = r.memory {
        // swap is memory+swap in OCI terms: equal values mean no swap on top of the limit.
        b = b.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()?,
        );
    }
    if let Some(quota) = r.cpus.and_then(config::cpu_quota) {
        b = b.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(config::CPU_PERIOD_US)
                .build()?,
        );
    }
    if let Some(limit) = r.pids_limit.filter(|l| *l > 0) {
        b = b.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::Path;

    use oci_spec::runtime::Capability;

    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
        )
        .unwrap();
        dir
    }

    fn config(rootfs: &Path) -> ContainerConfig {
        ContainerConfig {
            id: "0123456789abcdef0123456789abcdef".into(),
            rootfs: rootfs.to_owned(),
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
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
    fn tty_sets_terminal_and_term() {
        let dir = rootfs();
        let mut cfg = config(dir.path());
        cfg.tty = true;
        let spec = build_spec(&cfg).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.terminal(), Some(true));
        assert!(
            process
                .env()
                .as_ref()
                .unwrap()
                .contains(&"TERM=xterm".to_string())
        );
        cfg.env = vec!["TERM=dumb".into()];
        let spec = build_spec(&cfg).unwrap();
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env.iter().filter(|e| e.starts_with("TERM=")).count(), 1);
        assert!(env.contains(&"TERM=dumb".to_string()));
    }

    #[test]
    fn exec_process_from_the_container_process() {
        let dir = rootfs();
        let mut cfg = config(dir.path());
        cfg.env = vec!["FOO=1".into(), "KEEP=yes".into()];
        let spec = build_spec(&cfg).unwrap();
        let base = spec.process().as_ref().unwrap();
        let mut exec = ExecConfig {
            exec_id: "0123456789ab".into(),
            args: vec!["ls".into(), "-l".into()],
            env: vec!["FOO=2".into(), "NEW=x".into()],
            cwd: None,
            user: None,
            tty: false,
            stdin: false,
        };
        let p = exec_process(&cfg, base, &exec).unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["ls", "-l"]);
        let env = p.env().clone().unwrap();
        assert_eq!(&env[..2], &["FOO=2".to_string(), "KEEP=yes".into()]);
        assert!(env.contains(&"NEW=x".to_string()));
        assert!(env.contains(&"HOME=/root".to_string()));
        assert_eq!(p.cwd(), Path::new("/"));
        assert_eq!(p.user().uid(), 0);
        assert_eq!(p.terminal(), Some(false));
        // The confinement is the container's.
        assert_eq!(p.capabilities(), base.capabilities());
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.rlimits(), base.rlimits());
        assert_eq!(p.oom_score_adj(), Some(0));

        exec.user = Some("app".into());
        exec.cwd = Some("/tmp".into());
        exec.tty = true;
        let p = exec_process(&cfg, base, &exec).unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        assert_eq!(p.user().additional_gids().as_ref(), Some(&vec![10]));
        let env = p.env().clone().unwrap();
        assert!(env.contains(&"HOME=/home/app".to_string()), "{env:?}");
        assert!(!env.contains(&"HOME=/root".to_string()), "{env:?}");
        assert!(env.contains(&"TERM=xterm".to_string()));
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!(p.terminal(), Some(true));

        exec.user = Some("ghost".into());
        assert!(matches!(
            exec_process(&cfg, base, &exec),
            Err(SpecError::User(_))
        ));
    }

    #[test]
    fn namespaces_follow_network_mode() {
        let dir = rootfs();
        let mut cfg = config(dir.path());
        let types = |spec: &Spec| -> Vec<(LinuxNamespaceType, Option<String>)> {
            spec.linux()
                .as_ref()
                .unwrap()
                .namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .map(|n| (n.typ(), n.path().as_ref().map(|p| p.display().to_string())))
                .collect()
        };
        use LinuxNamespaceType::*;
        let base = vec![(Mount, None), (Pid, None), (Uts, None), (Ipc, None)];

        let mut want = base.clone();
        want.push((Network, None));
        assert_eq!(types(&build_spec(&cfg).unwrap()), want);

        cfg.network = NetworkMode::Host;
        assert_eq!(types(&build_spec(&cfg).unwrap()), base);

        cfg.network = NetworkMode::Path("/run/netns/x".into());
        let mut want = base.clone();
        want.push((Network, Some("/run/netns/x".into())));
        assert_eq!(types(&build_spec(&cfg).unwrap()), want);
    }

    #[test]
    fn docker_security_defaults() {
        let dir = rootfs();
        let spec = build_spec(&config(dir.path())).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.oom_score_adj(), Some(0));

        let caps = process.capabilities().as_ref().unwrap();
        let want: HashSet<Capability> = caps::DEFAULT_CAPABILITIES.iter().copied().collect();
        assert_eq!(want.len(), 14);
        assert_eq!(caps.bounding().as_ref(), Some(&want));
        assert_eq!(caps.effective().as_ref(), Some(&want));
        assert_eq!(caps.permitted().as_ref(), Some(&want));
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        assert!(!want.contains(&Capability::SysAdmin));

        let linux = spec.linux().as_ref().unwrap();
        let masked = linux.masked_paths().as_ref().unwrap();
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/sys/firmware",
            "/sys/devices/virtual/powercap",
        ] {
            assert!(masked.iter().any(|m| m == p), "{p} masked");
        }
        assert_eq!(masked.len(), 11);
        let ro = linux.readonly_paths().as_ref().unwrap();
        assert!(ro.iter().any(|m| m == "/proc/sys"));
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/flynn/0123456789abcdef0123456789abcdef"))
        );
        assert!(linux.seccomp().is_some());

        let mounts: Vec<String> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        for m in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
        ] {
            assert!(mounts.iter().any(|d| d == m), "{m} mounted");
        }
        let shm = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/dev/shm"))
            .unwrap();
        assert!(
            shm.options()
                .as_ref()
                .unwrap()
                .iter()
                .any(|o| o == "size=67108864")
        );

        let nofile = &process.rlimits().as_ref().unwrap()[0];
        assert_eq!(nofile.typ(), PosixRlimitType::RlimitNofile);
        assert_eq!((nofile.soft(), nofile.hard()), (1024, 524_288));
        assert_eq!(spec.hostname().as_deref(), Some("0123456789ab"));
    }

    #[test]
    fn env_defaults_and_user() {
        let dir = rootfs();
        let mut cfg = config(dir.path());
        cfg.user = "app".into();
        cfg.env = vec!["FOO=bar".into(), "PATH=/custom".into()];
        cfg.hostname = "web".into();
        let spec = build_spec(&cfg).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(
            process.env().as_ref().unwrap(),
            &vec![
                "FOO=bar".to_string(),
                "PATH=/custom".into(),
                "HOSTNAME=web".into(),
                "HOME=/home/app".into()
            ]
        );
        assert_eq!(process.user().uid(), 1000);
        assert_eq!(process.user().gid(), 1000);
        assert_eq!(process.user().additional_gids().as_ref(), Some(&vec![10]));
        assert_eq!(process.cwd(), Path::new("/"));

        cfg.user = String::new();
        cfg.env = vec!["HOME=/elsewhere".into()];
        let spec = build_spec(&cfg).unwrap();
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(
            env,
            vec![
                "HOME=/elsewhere".to_string(),
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=web".into()
            ]
        );

        cfg.user = "ghost".into();
        let err = build_spec(&cfg).unwrap_err();
        assert!(
            err.to_string()
                .contains("unable to find user ghost: no matching entries in passwd file"),
            "{err}"
        );
    }

    #[test]
    fn resources_map_to_cgroup_settings() {
        let dir = rootfs();
        let mut cfg = config(dir.path());
        cfg.resources = Resources {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids_limit: Some(100),
        };
        let spec = build_spec(&cfg).unwrap();
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        let mem = r.memory().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(64 << 20)));
        let cpu = r.cpu().clone().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(50_000), Some(100_000)));
        assert_eq!(r.pids().unwrap().limit(), 100);
        let deny = &r.devices().as_ref().unwrap()[0];
        assert!(!deny.allow());

        cfg.resources = Resources {
            pids_limit: Some(0),
            ..Resources::default()
        };
        let r = build_spec(&cfg)
            .unwrap()
            .linux()
            .clone()
            .unwrap()
            .resources()
            .clone()
            .unwrap();
        assert!(r.pids().is_none() && r.memory().is_none() && r.cpu().is_none());
    }

    #[test]
    fn prepare_creates_cwd() {
        let dir = rootfs();
        let mut cfg = config(dir.path());
        cfg.cwd = "/srv/app/data".into();
        prepare_rootfs(&cfg).unwrap();
        assert!(dir.path().join("srv/app/data").is_dir());
        let spec = build_spec(&cfg).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().cwd(),
            Path::new("/srv/app/data")
        );
    }
}
