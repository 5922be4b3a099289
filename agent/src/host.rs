//! The host's own facts for `GET /host/status`: kernel, CPUs, memory, disk, cgroup
//! mode. Read fresh on each request; nothing here is cached or guessed.

use std::path::Path;

use anyhow::{Context, Result};

use crate::model::Capacity;

pub fn kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_string())
}

pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// MemTotal and MemAvailable from /proc/meminfo.
pub fn memory() -> Result<Capacity> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .with_context(|| format!("no {name} in /proc/meminfo"))
    };
    Ok(Capacity {
        total: field("MemTotal:")?,
        free: field("MemAvailable:")?,
    })
}

pub fn disk(path: &Path) -> Result<Capacity> {
    let st =
        nix::sys::statvfs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    let frsize = st.fragment_size();
    Ok(Capacity {
        total: st.blocks() * frsize,
        free: st.blocks_available() * frsize,
    })
}

/// How cgroups are mounted: "v2" when /sys/fs/cgroup is cgroup2, "hybrid" when v1
/// controllers sit beside a cgroup2 mount, "v1" otherwise.
pub fn cgroup_mode() -> String {
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
    let is_cgroup2 = |p: &str| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    if is_cgroup2("/sys/fs/cgroup") {
        "v2".to_string()
    } else if is_cgroup2("/sys/fs/cgroup/unified") {
        "hybrid".to_string()
    } else {
        "v1".to_string()
    }
}
