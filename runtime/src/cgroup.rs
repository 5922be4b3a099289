//! Where a container's cgroups live, and what the runtime reads from them itself.
//!
//! libcontainer (through youki's libcgroups) creates, configures and removes the cgroups;
//! this module only locates them to read the OOM-kill counter before they are deleted and
//! to check that nothing is left afterwards. It finds the hierarchies with one read of
//! `/proc/self/mountinfo` and decides v1/v2 the way libcgroups does (the file system type
//! of `/sys/fs/cgroup`); libcgroups' own helpers parse the mount table once per call (per
//! controller, for a manager), which costs milliseconds on the exit path.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

/// Every container cgroup sits under this parent, in every hierarchy.
pub const PARENT: &str = "/flynn";

/// Where libcgroups looks to tell cgroup v1 from v2.
const ROOT: &str = "/sys/fs/cgroup";

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

/// The cgroup file systems mounted in this mount namespace.
#[derive(Debug, Default)]
struct Hierarchies {
    /// v1 hierarchies: mount point and super-block options (the controllers, `name=`).
    v1: Vec<(PathBuf, Vec<String>)>,
    /// The first cgroup2 mount.
    unified: Option<PathBuf>,
}

impl Hierarchies {
    fn read() -> Result<Hierarchies, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let data = std::fs::read(path).map_err(|source| CgroupError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Hierarchies::parse(&data))
    }

    /// mountinfo lines: `id parent maj:min root mount-point options [optional...] - type
    /// source super-options`, with space, tab, newline and backslash octal-escaped.
    fn parse(data: &[u8]) -> Hierarchies {
        let mut found = Hierarchies::default();
        for line in data.split(|&b| b == b'\n') {
            let mut fields = line.split(|&b| b == b' ');
            let Some(mount_point) = fields.nth(4) else {
                continue;
            };
            let mut rest = fields.skip_while(|&f| f != b"-").skip(1);
            let (Some(fs_type), Some(_source), Some(options)) =
                (rest.next(), rest.next(), rest.next())
            else {
                continue;
            };
            let mount_point = PathBuf::from(OsString::from_vec(unescape(mount_point)));
            match fs_type {
                b"cgroup" => {
                    let options = String::from_utf8_lossy(options)
                        .split(',')
                        .map(str::to_owned)
                        .collect();
                    found.v1.push((mount_point, options));
                }
                b"cgroup2" if found.unified.is_none() => found.unified = Some(mount_point),
                _ => {}
            }
        }
        found
    }

    fn v1_controller(&self, name: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(_, options)| options.iter().any(|o| o == name))
            .map(|(mount, _)| mount.as_path())
    }
}

fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Whether the host runs cgroup v2 only (libcgroups' "unified" setup: `/sys/fs/cgroup`
/// is itself a cgroup2 mount). Hybrid and legacy hosts use the v1 hierarchies.
fn is_unified() -> Result<bool, CgroupError> {
    statfs(ROOT)
        .map(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
        .map_err(|e| CgroupError::Setup(format!("statfs {ROOT}: {e}")))
}

/// The file that counts container `id`'s OOM kills: `memory.oom_control` (v1) or
/// `memory.events` (v2), both with an "oom_kill N" line.
fn oom_file(id: &str) -> Result<PathBuf, CgroupError> {
    if is_unified()? {
        return Ok(under(Path::new(ROOT), id).join("memory.events"));
    }
    let mounts = Hierarchies::read()?;
    let memory = mounts.v1_controller("memory").ok_or(CgroupError::Mount {
        what: "v1 memory",
        detail: "no cgroup mount with the memory controller in /proc/self/mountinfo".into(),
    })?;
    Ok(under(memory, id).join("memory.oom_control"))
}

/// How many processes of container `id` the kernel OOM killer has killed so far.
/// Must be read before the cgroup is deleted.
pub fn oom_kill_count(id: &str) -> Result<u64, CgroupError> {
    let file = oom_file(id)?;
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
    let mounts = Hierarchies::read()?;
    Ok(mounts
        .v1
        .iter()
        .map(|(mount, _)| mount)
        .chain(mounts.unified.as_ref())
        .map(|m| under(m, id))
        .filter(|p| p.is_dir())
        .collect())
}

/// Whether the memory controller can limit swap (v1 `memory.memsw.*` needs
/// `swapaccount=1`; cgroup2 accounts swap unless booted with cgroup.memory=noswap).
pub fn swap_limit_supported() -> bool {
    match is_unified() {
        Ok(false) => Hierarchies::read()
            .ok()
            .and_then(|h| {
                h.v1_controller("memory")
                    .map(|m| m.join("memory.memsw.limit_in_bytes").exists())
            })
            .unwrap_or(false),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let data = b"24 1 0:22 / /sys rw,nosuid - sysfs sysfs rw\n\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
35 31 0:32 / /sys/fs/cgroup/mem\\040ory rw,relatime - cgroup cgroup rw,memory\n\
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
42 31 0:39 / /other/unified rw,relatime - cgroup2 cgroup2 rw\n\
truncated line\n";
        let h = Hierarchies::parse(data);
        let mounts: Vec<&Path> = h.v1.iter().map(|(m, _)| m.as_path()).collect();
        assert_eq!(
            mounts,
            [
                Path::new("/sys/fs/cgroup/cpu,cpuacct"),
                Path::new("/sys/fs/cgroup/mem ory"),
                Path::new("/sys/fs/cgroup/systemd"),
            ]
        );
        assert_eq!(
            h.v1_controller("memory"),
            Some(Path::new("/sys/fs/cgroup/mem ory"))
        );
        assert_eq!(
            h.v1_controller("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(h.v1_controller("pids"), None);
        assert_eq!(
            h.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(unescape(br"a\134b\011c\9"), b"a\\b\tc\\9");
    }

    #[test]
    fn agrees_with_libcgroups_on_this_host() {
        use libcgroups::v1::util::list_subsystem_mount_points;
        let ours: Vec<PathBuf> = Hierarchies::read()
            .unwrap()
            .v1
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        assert_eq!(ours, list_subsystem_mount_points().unwrap());
        let memory = libcgroups::v1::util::get_subsystem_mount_point(
            &libcgroups::v1::ControllerType::Memory,
        )
        .ok();
        assert_eq!(
            Hierarchies::read()
                .unwrap()
                .v1_controller("memory")
                .map(Path::to_owned),
            memory
        );
    }
}
