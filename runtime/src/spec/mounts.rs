//! Docker's default filesystem view: kernel filesystems, masked and read-only paths.

use oci_spec::OciSpecError;
use oci_spec::runtime::{Mount, MountBuilder};

/// Paths that leak host information or offer host-wide knobs: hidden (an empty tmpfs or
/// /dev/null is mounted over them).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Host-wide kernel settings the container may read but not change.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// /dev/shm size, as Docker's default `--shm-size`.
const SHM_SIZE: &str = "size=67108864";

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
}

/// The default mounts followed by the job's bind mounts (later mounts cover earlier ones).
pub fn with_binds(
    mut mounts: Vec<Mount>,
    binds: &[crate::config::BindMount],
) -> Result<Vec<Mount>, OciSpecError> {
    for bind in binds {
        let mut options = vec!["rbind", "rprivate"];
        if bind.readonly {
            options.push("ro");
        }
        mounts.push(mount(
            &bind.destination,
            "bind",
            &bind.source.to_string_lossy(),
            &options,
        )?);
    }
    Ok(mounts)
}

/// Replaces the sysfs mount by a read-only recursive bind of the host's /sys (for a
/// user namespace that does not own the job's network namespace).
pub fn bind_host_sysfs(mounts: &mut [Mount]) -> Result<(), OciSpecError> {
    for m in mounts.iter_mut() {
        if m.typ().as_deref() == Some("sysfs") {
            *m = mount(
                "/sys",
                "bind",
                "/sys",
                &["rbind", "rprivate", "nosuid", "noexec", "nodev", "ro"],
            )?;
        }
    }
    Ok(())
}

pub fn default_mounts() -> Result<Vec<Mount>, OciSpecError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", SHM_SIZE],
        )?,
    ])
}

#[cfg(test)]
mod bind_tests {
    use super::*;
    use crate::config::BindMount;

    #[test]
    fn binds_come_after_the_defaults_with_their_options() {
        let binds = [
            BindMount {
                source: "/var/lib/flynn/jobs/x/hosts".into(),
                destination: "/etc/hosts".into(),
                readonly: false,
            },
            BindMount {
                source: "/srv/config".into(),
                destination: "/config".into(),
                readonly: true,
            },
        ];
        let defaults = default_mounts().unwrap().len();
        let mounts = with_binds(default_mounts().unwrap(), &binds).unwrap();
        assert_eq!(mounts.len(), defaults + 2);
        let hosts = &mounts[defaults];
        assert_eq!(hosts.destination().to_str(), Some("/etc/hosts"));
        assert_eq!(hosts.typ().as_deref(), Some("bind"));
        assert_eq!(
            hosts.options().as_deref(),
            Some(&["rbind".to_string(), "rprivate".to_string()][..])
        );
        let config = &mounts[defaults + 1];
        assert!(
            config
                .options()
                .as_ref()
                .unwrap()
                .contains(&"ro".to_string())
        );
    }
}
