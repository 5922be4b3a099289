//! The file systems PID 1 sets up, and the move out of the initramfs.
//!
//! The kernel unpacks the initramfs into `rootfs`, the one mount that has no
//! parent: `pivot_root(2)` refuses to move away from it, and every container
//! start needs `pivot_root`. So the init first makes a bind mount of it the root
//! (`MS_MOVE` + `chroot`) and goes on there.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mounting {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("switching to the new root: {0}")]
    Switch(String),
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    let _ = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(target);
    mount(Some(source), target, Some(fstype), flags, data).map_err(|e| MountError::Mount {
        what: format!("{fstype} ({source})"),
        target: target.into(),
        source: e,
    })
}

/// Whether `/` is the kernel's `rootfs` (we are still in the initramfs).
pub fn root_is_rootfs() -> bool {
    // /proc may not be mounted yet: mount it to look.
    if !Path::new("/proc/self").exists() {
        let _ = mount_fs("proc", "/proc", "proc", MsFlags::empty(), None);
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // The root's line: field 5 is the mount point, after " - " come the type and source.
    mounts.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let point = fields.get(4).copied();
        let tail = l.split(" - ").nth(1).unwrap_or("");
        point == Some("/") && tail.starts_with("rootfs ")
    })
}

/// Makes the initramfs a mount of its own, with a parent: binds `/` onto
/// `/.flynn-root`, moves that bind onto `/` and chroots into it (what
/// `switch_root` does, without copying a byte: a copy of the initramfs, baked
/// images included, took ~0.7 s under TCG). `pivot_root` then works in every
/// container, since the root it leaves is no longer the namespace's own.
pub fn leave_rootfs() -> Result<(), MountError> {
    let new = "/.flynn-root";
    let _ = fs::DirBuilder::new().mode(0o755).create(new);
    // /proc was mounted to look at the mounts; it would stay behind, hidden.
    let _ = umount2("/proc", MntFlags::MNT_DETACH);
    mount(Some("/"), new, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
        MountError::Mount {
            what: "a bind of the initramfs".into(),
            target: new.into(),
            source: e,
        }
    })?;
    std::env::set_current_dir(new).map_err(|e| MountError::Switch(format!("chdir: {e}")))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| MountError::Switch(format!("moving the bind onto /: {e}")))?;
    nix::unistd::chroot(".").map_err(|e| MountError::Switch(format!("chroot: {e}")))?;
    std::env::set_current_dir("/").map_err(|e| MountError::Switch(format!("chdir /: {e}")))?;
    Ok(())
}

/// The API file systems every later step and the daemon need.
pub fn mount_basics() -> Result<(), MountError> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !Path::new("/proc/self").exists() {
        mount_fs("proc", "/proc", "proc", nosuid_nodev_noexec, None)?;
    }
    mount_fs("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None)?;
    if !Path::new("/dev/null").exists() {
        mount_fs(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        )?;
    }
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=0620,ptmxmode=0666"),
    )?;
    mount_fs(
        "shm",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs(
        "run",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount_fs(
        "tmp",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    // Every container start moves a process into a new cgroup, and by default
    // that move waits for an RCU grace period (5-14 ms measured on a 2-vCPU
    // host, the largest single cost of a start). favordynmods makes moves cheap
    // at a small cost to fork and exit: the right trade for a container host.
    mount_fs(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid_nodev_noexec,
        Some("nsdelegate,favordynmods"),
    )
    // favordynmods (Linux 6.0) is a tuning, not a need: older kernels refuse it.
    .or_else(|_| {
        mount_fs(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev_noexec,
            Some("nsdelegate"),
        )
    })?;
    // The root tmpfs is shared, so mounts the daemon makes under the state dir
    // (network namespaces) propagate the way the network crate expects.
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    );
    let _ = symlink("/proc/self/fd", "/dev/fd");
    let _ = symlink("/proc/self/fd/0", "/dev/stdin");
    let _ = symlink("/proc/self/fd/1", "/dev/stdout");
    let _ = symlink("/proc/self/fd/2", "/dev/stderr");
    Ok(())
}

/// Points stdin/stdout/stderr at /dev/console (the kernel may have started us
/// without them when the initramfs had no console node).
pub fn console_stdio() {
    use std::os::fd::AsRawFd;
    let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; the source stays open until
        // the end of this function and nothing else holds these numbers' meaning.
        unsafe {
            libc::dup2(console.as_raw_fd(), fd);
        }
    }
}

/// Mounts the file systems that enable controllers for the jobs: every
/// controller the kernel offers, delegated to the root's children.
pub fn enable_cgroup_controllers() -> io::Result<String> {
    let available = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")?;
    let wanted: Vec<String> = available
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    fs::write("/sys/fs/cgroup/cgroup.subtree_control", wanted.join(" "))?;
    fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control").map(|s| s.trim().to_string())
}
