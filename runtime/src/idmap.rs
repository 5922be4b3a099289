//! Making a directory tree usable by a container whose root is an unprivileged range of
//! the host's ids (`Security::userns`).
//!
//! Two ways: an idmapped mount (Linux 5.12+; overlayfs accepts idmapped lower layers
//! from 5.19), which shows the tree's files owned by `id + range.host` without touching
//! them; or, where the kernel cannot, a copy of the tree whose files are chowned by that
//! offset ([`copy_shifted`]), paid once per job in time and disk.
//!
//! An idmapped mount takes the mapping from a user namespace: [`userns_fd`] makes one
//! with a child process that only waits (a thread cannot unshare a user namespace in a
//! multi-threaded process), writes its maps, keeps a descriptor and kills it.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::IdRange;

#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("making a user namespace for the job's id mapping: {0}")]
    Userns(#[source] io::Error),
    #[error(
        "this kernel cannot make an idmapped mount of {path} ({source}); a daemon started with \
         FLYNN_USERNS_NO_IDMAP=1 copies the image per job instead"
    )]
    Unsupported {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("idmapped mount of {path} failed: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("copying {path} for the job's user namespace failed: {source}")]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl IdmapError {
    /// The kernel (or the file system) lacks idmapped mounts: a copy will do.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, IdmapError::Unsupported { .. })
    }
}

/// A user namespace whose ids 0..size are the host's `range.host..`: the mapping an
/// idmapped mount applies. Nothing runs in it; the descriptor keeps it alive.
pub fn userns_fd(range: IdRange) -> Result<OwnedFd, IdmapError> {
    let err = IdmapError::Userns;
    // A raw clone: unshare(CLONE_NEWUSER) is refused in a multithreaded process (the
    // daemon), and nix's clone wants a stack and a callback for a child that only
    // has to exist.
    // SAFETY: a raw clone without CLONE_VM and with no stack is a fork into a new user
    // namespace. The child runs only async-signal-safe syscalls (prctl, pause, _exit)
    // and never returns into code that could take a lock another thread held.
    let pid = unsafe { crate::rawfork::fork_with(libc::CLONE_NEWUSER) };
    if pid == 0 {
        // SAFETY: async-signal-safe calls only, in the child (see above).
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            loop {
                libc::pause();
            }
        }
    }
    if pid < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let pid = pid as libc::pid_t;
    let result = (|| {
        let map = format!("0 {} {}\n", range.host, range.size);
        fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        let ns = fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    // SAFETY: pid is our child, not yet waited for: it cannot have been reused.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    result.map_err(err)
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Mounts `src` on `dst` (an existing directory) with the mapping of `userns`: a file
/// of `src` owned by uid N shows as owned by the namespace's mapping of N.
pub fn idmapped_mount(src: &Path, dst: &Path, userns: &OwnedFd) -> Result<(), IdmapError> {
    let mount_err = |source: io::Error| IdmapError::Mount {
        path: src.to_owned(),
        source,
    };
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        src,
        rustix::mount::OpenTreeFlags::OPEN_TREE_CLONE
            | rustix::mount::OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| mount_err(e.into()))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // By hand: neither nix nor rustix (the versions in the lockfile) wraps
    // mount_setattr(2).
    // SAFETY: tree is an open detached mount; attr is a valid mount_attr of the size
    // passed; the path is an empty C string (AT_EMPTY_PATH).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH as libc::c_uint) | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EPERM) => {
                IdmapError::Unsupported {
                    path: src.to_owned(),
                    source: e,
                }
            }
            _ => mount_err(e),
        });
    }
    let target = CString::new(dst.as_os_str().as_bytes()).map_err(|_| {
        mount_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path has a NUL byte",
        ))
    })?;
    rustix::mount::move_mount(
        &tree,
        c"",
        rustix::fs::CWD,
        target.as_c_str(),
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| mount_err(e.into()))
}

/// Copies the tree at `src` to `dst` (which must not exist), every file's owner and
/// group shifted into `range`; modes (setuid and setgid bits too), symlinks, device
/// nodes, fifos, hard links and times are kept. Extended attributes are not (file
/// capabilities of the host's namespace would mean nothing in the job's). Files of ids
/// beyond the range are refused, as the kernel would refuse to map them.
pub fn copy_shifted(src: &Path, dst: &Path, range: IdRange) -> Result<(), IdmapError> {
    let mut links = HashMap::new();
    copy_entry(src, dst, range, &mut links)
        .map_err(|(path, source)| IdmapError::Copy { path, source })
}

type CopyResult = Result<(), (PathBuf, io::Error)>;

fn shift(id: u32, range: IdRange, path: &Path) -> Result<u32, (PathBuf, io::Error)> {
    if id >= range.size {
        return Err((
            path.to_owned(),
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("owned by id {id}, beyond the job's {} ids", range.size),
            ),
        ));
    }
    Ok(range.host + id)
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    range: IdRange,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> CopyResult {
    let at = |p: &Path| {
        let p = p.to_owned();
        move |e: io::Error| (p, e)
    };
    let meta = fs::symlink_metadata(src).map_err(at(src))?;
    let (uid, gid) = (
        shift(meta.uid(), range, src)?,
        shift(meta.gid(), range, src)?,
    );
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir(dst).map_err(at(dst))?;
        for entry in fs::read_dir(src).map_err(at(src))? {
            let entry = entry.map_err(at(src))?;
            copy_entry(&entry.path(), &dst.join(entry.file_name()), range, links)?;
        }
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(at(src))?;
        std::os::unix::fs::symlink(target, dst).map_err(at(dst))?;
    } else {
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = links.get(&key) {
                return fs::hard_link(first, dst).map_err(at(dst));
            }
            links.insert(key, dst.to_owned());
        }
        if ft.is_file() {
            fs::copy(src, dst).map_err(at(dst))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
            nix::sys::stat::mknod(
                dst,
                nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT),
                nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(|e| (dst.to_owned(), io::Error::from(e)))?;
        }
    }
    std::os::unix::fs::lchown(dst, Some(uid), Some(gid)).map_err(at(dst))?;
    if !ft.is_symlink() {
        // After the chown, which clears setuid and setgid bits.
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(at(dst))?;
        let times = [
            nix::sys::time::TimeSpec::new(meta.atime(), meta.atime_nsec()),
            nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
        ];
        nix::sys::stat::utimensat(
            None,
            dst,
            &times[0],
            &times[1],
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| (dst.to_owned(), io::Error::from(e)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root: the full suite (scripts/test.sh) runs it"]
    fn idmapped_mount_and_shifted_copy_show_the_same_owners() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), b"x").unwrap();
        std::os::unix::fs::chown(src.join("f"), Some(1000), Some(1000)).unwrap();
        fs::set_permissions(src.join("f"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("f", src.join("l")).unwrap();
        fs::hard_link(src.join("f"), src.join("h")).unwrap();
        let range = IdRange {
            host: 200_000,
            size: 65536,
        };

        let copy = tmp.path().join("copy");
        copy_shifted(&src, &copy, range).unwrap();
        let m = fs::metadata(copy.join("f")).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (201_000, 201_000, 0o4755)
        );
        assert_eq!(fs::metadata(&copy).unwrap().uid(), 200_000);
        assert_eq!(fs::read_link(copy.join("l")).unwrap(), Path::new("f"));
        assert_eq!(fs::metadata(copy.join("h")).unwrap().ino(), m.ino());

        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let ns = userns_fd(range).unwrap();
        idmapped_mount(&src, &mnt, &ns).unwrap();
        let seen = fs::metadata(mnt.join("f")).map(|m| (m.uid(), m.gid()));
        nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert_eq!(seen.unwrap(), (201_000, 201_000));
        // The source is untouched.
        assert_eq!(fs::metadata(src.join("f")).unwrap().uid(), 1000);
    }
}
