//! Where a container's cgroups live, and what the runtime reads from them itself.
//!
//! libcontainer (through youki's libcgroups) creates, configures and removes the cgroups;
//! this module only locates them (with libcgroups' mount discovery) to read the OOM-kill
//! counter before they are deleted and to check that nothing is left afterwards.

use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupSetup, get_cgroup_setup};
use libcgroups::v1::ControllerType;
use libcgroups::v1::util::{get_subsystem_mount_point, list_subsystem_mount_points};
use libcgroups::v2::util::get_unified_mount_point;

/// Every container cgroup sits under this parent, in every hierarchy.
pub const PARENT: &str = "/flynn";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot tell which cgroup version this host uses: {0}")]
    Setup(String),
    #[error("cannot find the {what} cgroup mount: {detail}")]
    Mount { what: &'static str, detail: String },
    #[error("cannot read {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cgroup path given to libcontainer (relative to each hierarchy's root).
pub fn cgroup_path(id: &str) -> PathBuf {
    PathBuf::from(format!("{PARENT}/{id}"))
}

fn under(mount: &Path, id: &str) -> PathBuf {
    mount.join(cgroup_path(id).strip_prefix("/").unwrap_or(Path::new(id)))
}

fn setup() -> Result<CgroupSetup, CgroupError> {
    get_cgroup_setup().map_err(|e| CgroupError::Setup(e.to_string()))
}

fn memory_v1_mount() -> Result<PathBuf, CgroupError> {
    get_subsystem_mount_point(&ControllerType::Memory).map_err(|e| CgroupError::Mount {
        what: "v1 memory",
        detail: e.to_string(),
    })
}

fn unified_mount() -> Result<PathBuf, CgroupError> {
    get_unified_mount_point().map_err(|e| CgroupError::Mount {
        what: "cgroup2",
        detail: e.to_string(),
    })
}

/// How many processes of container `id` the kernel OOM killer has killed so far.
/// Must be read before the cgroup is deleted.
pub fn oom_kill_count(id: &str) -> Result<u64, CgroupError> {
    // v1 keeps the counter in memory.oom_control, v2 in memory.events; both as
    // "oom_kill N" lines.
    let file = match setup()? {
        CgroupSetup::Legacy | CgroupSetup::Hybrid => {
            under(&memory_v1_mount()?, id).join("memory.oom_control")
        }
        CgroupSetup::Unified => under(&unified_mount()?, id).join("memory.events"),
    };
    let text = std::fs::read_to_string(&file).map_err(|source| CgroupError::Read {
        path: file.clone(),
        source,
    })?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

/// The cgroup directories of container `id` that exist right now, in any v1 hierarchy
/// (named ones included) and in the cgroup2 tree. Empty once the container is deleted.
pub fn existing_dirs(id: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let mut mounts = list_subsystem_mount_points().map_err(|e| CgroupError::Mount {
        what: "v1",
        detail: e.to_string(),
    })?;
    if let Ok(unified) = get_unified_mount_point() {
        mounts.push(unified);
    }
    Ok(mounts
        .iter()
        .map(|m| under(m, id))
        .filter(|p| p.is_dir())
        .collect())
}

/// Whether the memory controller can limit swap (v1 `memory.memsw.*` needs
/// `swapaccount=1`; cgroup2 accounts swap unless booted with cgroup.memory=noswap).
pub fn swap_limit_supported() -> bool {
    match setup() {
        Ok(CgroupSetup::Legacy | CgroupSetup::Hybrid) => memory_v1_mount()
            .map(|m| m.join("memory.memsw.limit_in_bytes").exists())
            .unwrap_or(false),
        _ => true,
    }
}
