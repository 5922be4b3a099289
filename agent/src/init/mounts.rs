//! The file systems PID 1 sets up, and the move out of the initramfs.
//!
//! The kernel unpacks the initramfs into `rootfs`, the one mount that has no
//! parent: `pivot_root(2)` refuses to move away from it, and every container
//! start needs `pivot_root`. So the init first copies the initramfs into a tmpfs,
//! frees the original files, makes the tmpfs the root (`MS_MOVE` + `chroot`, as
//! `switch_root` does) and executes itself again there.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt, symlink};
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
    #[error("copying the initramfs into the new root ({path}): {source}")]
    Copy { path: PathBuf, source: io::Error },
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

/// Copies the initramfs into a tmpfs, deletes the originals (freeing their
/// memory), moves the tmpfs onto `/` and chroots into it.
pub fn switch_to_tmpfs() -> Result<(), MountError> {
    let new = "/.flynn-root";
    mount_fs(
        "root",
        new,
        "tmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755,size=90%"),
    )?;
    let root_dev = fs::metadata("/")
        .map_err(|e| MountError::Copy {
            path: "/".into(),
            source: e,
        })?
        .dev();
    for entry in read_dir(Path::new("/"))? {
        let name = entry.file_name();
        if name == ".flynn-root" || name == "proc" {
            continue;
        }
        move_tree(&entry.path(), &Path::new(new).join(&name), root_dev)?;
    }
    for dir in ["proc", "sys", "dev", "run", "tmp"] {
        let _ = fs::create_dir_all(Path::new(new).join(dir));
    }
    let _ = umount2("/proc", MntFlags::MNT_DETACH);
    std::env::set_current_dir(new).map_err(|e| MountError::Switch(format!("chdir: {e}")))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| MountError::Switch(format!("moving the tmpfs onto /: {e}")))?;
    nix::unistd::chroot(".").map_err(|e| MountError::Switch(format!("chroot: {e}")))?;
    std::env::set_current_dir("/").map_err(|e| MountError::Switch(format!("chdir /: {e}")))?;
    Ok(())
}

fn read_dir(path: &Path) -> Result<Vec<fs::DirEntry>, MountError> {
    let copy_err = |e| MountError::Copy {
        path: path.to_path_buf(),
        source: e,
    };
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(path)
        .map_err(copy_err)?
        .collect::<Result<_, _>>()
        .map_err(copy_err)?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Copies `from` to `to` (modes and ownership kept) and removes `from`, without
/// crossing into other file systems (the kernel may have mounted devtmpfs).
fn move_tree(from: &Path, to: &Path, root_dev: u64) -> Result<(), MountError> {
    let err = |e| MountError::Copy {
        path: from.to_path_buf(),
        source: e,
    };
    let meta = fs::symlink_metadata(from).map_err(err)?;
    if meta.dev() != root_dev {
        return Ok(());
    }
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir_all(to).map_err(err)?;
        for entry in read_dir(from)? {
            move_tree(&entry.path(), &to.join(entry.file_name()), root_dev)?;
        }
        let _ = fs::remove_dir(from);
    } else if kind.is_symlink() {
        symlink(fs::read_link(from).map_err(err)?, to).map_err(err)?;
        let _ = fs::remove_file(from);
    } else if kind.is_file() {
        fs::copy(from, to).map_err(err)?;
        let _ = fs::remove_file(from);
    } else {
        // Device nodes and fifos: the kernel's own /dev/console, recreated below.
        return Ok(());
    }
    if !kind.is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(err)?;
        let _ = nix::unistd::chown(
            to,
            Some(nix::unistd::Uid::from_raw(meta.uid())),
            Some(nix::unistd::Gid::from_raw(meta.gid())),
        );
    }
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

/// Executes the init again in the new root, by the path the kernel started it
/// with (`/init`, or `/sbin/init`), with the same arguments.
pub fn reexec() -> MountError {
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.into_encoded_bytes()).ok())
        .collect();
    let path = args
        .first()
        .filter(|a| a.as_bytes().starts_with(b"/"))
        .cloned()
        .unwrap_or_else(|| c"/init".to_owned());
    match nix::unistd::execv(&path, &args) {
        Err(e) => MountError::Switch(format!("re-executing {path:?}: {e}")),
    }
}
