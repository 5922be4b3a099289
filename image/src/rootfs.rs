//! Container root filesystems: overlayfs over an image's unpacked layers.
//!
//! The mount uses the file-descriptor mount API (`fsopen`/`fsconfig`) and passes each
//! lowerdir separately (`lowerdir+`, Linux 6.8+), which has no length limit and needs no
//! escaping. Older kernels get classic `mount(2)`, whose option string must fit in a page:
//! 6.5-6.7 refuse `lowerdir+` at `fsconfig`, and before 6.5 (Debian 12's 6.1) the key is
//! accepted as legacy mount data and only refused when the superblock is created.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};

/// Bytes available for `mount(2)` data: one page, including the final NUL.
const LEGACY_DATA_MAX: usize = 4095;

/// Why a rootfs could not be mounted or unmounted.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("an overlay needs at least one lower layer; this image has none")]
    NoLayers,
    #[error("path {path:?} cannot be passed to overlayfs: {reason}")]
    BadPath { path: PathBuf, reason: &'static str },
    #[error(
        "the overlay options take {len} bytes, over the {limit}-byte limit of mount(2) (too many \
         layers or too long paths); this kernel lacks `lowerdir+` (Linux 6.8) which lifts the \
         limit: use a shorter store path or flatten the image"
    )]
    TooManyLayers { len: usize, limit: usize },
    #[error("mounting overlayfs on {target} failed: {source}{detail}")]
    Mount {
        target: PathBuf,
        #[source]
        source: io::Error,
        /// Messages the kernel logged for the mount, if any.
        detail: String,
    },
    #[error("unmounting {target} failed: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn cpath(path: &Path) -> Result<CString, RootfsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| RootfsError::BadPath {
        path: path.to_owned(),
        reason: "it contains a NUL byte",
    })
}

/// Mounts overlayfs on `target`: `lowers` bottom layer first (as [`crate::ImageStore::layer_dirs`]
/// returns them), `upper` receives the container's changes, `work` is overlayfs scratch
/// space on the same filesystem as `upper`.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    if lowers.is_empty() {
        return Err(RootfsError::NoLayers);
    }
    match mount_fd_api(lowers, upper, work, target)? {
        Mounted::Yes => Ok(()),
        Mounted::Unsupported => mount_legacy(lowers, upper, work, target),
    }
}

enum Mounted {
    Yes,
    Unsupported,
}

fn mount_err(target: &Path, errno: Errno, detail: String) -> RootfsError {
    RootfsError::Mount {
        target: target.to_owned(),
        source: errno.into(),
        detail,
    }
}

/// rustix's errno as nix's, which the rest of the crate matches on.
fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

fn fsconfig_string(fs: &OwnedFd, key: &str, value: &CString) -> Result<(), Errno> {
    rustix::mount::fsconfig_set_string(fs, key, value.as_c_str()).map_err(errno)
}

/// The kernel's messages about a failed fs context, read from its fd ("e overlayfs: ...").
fn fs_log(fs: &OwnedFd) -> String {
    let mut out = String::new();
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: buf is writable for its length; fs is an open fs context fd.
        let n = unsafe { libc::read(fs.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { break };
        if n == 0 {
            break;
        }
        out.push_str(" (");
        out.push_str(String::from_utf8_lossy(&buf[..n]).trim());
        out.push(')');
    }
    out
}

fn mount_fd_api(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<Mounted, RootfsError> {
    let fs = match rustix::mount::fsopen(c"overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(errno) {
        Ok(fs) => fs,
        Err(Errno::ENOSYS) => return Ok(Mounted::Unsupported),
        Err(e) => return Err(mount_err(target, e, String::new())),
    };

    for (i, lower) in lowers.iter().rev().enumerate() {
        match fsconfig_string(&fs, "lowerdir+", &cpath(lower)?) {
            Ok(()) => {}
            // Kernels before 6.8 do not know the option at all.
            Err(Errno::EINVAL) if i == 0 && fs_log(&fs).contains("lowerdir+") => {
                return Ok(Mounted::Unsupported);
            }
            Err(e) => return Err(mount_err(target, e, fs_log(&fs))),
        }
    }
    fsconfig_string(&fs, "upperdir", &cpath(upper)?)
        .map_err(|e| mount_err(target, e, fs_log(&fs)))?;
    fsconfig_string(&fs, "workdir", &cpath(work)?)
        .map_err(|e| mount_err(target, e, fs_log(&fs)))?;
    match rustix::mount::fsconfig_create(&fs).map_err(errno) {
        Ok(()) => {}
        // Before 6.5 overlayfs has no fs_context of its own: the VFS collects every
        // key into legacy mount data, so `lowerdir+` is only refused here.
        Err(Errno::EINVAL) => return Ok(Mounted::Unsupported),
        Err(e) => return Err(mount_err(target, e, fs_log(&fs))),
    }
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| mount_err(target, errno(e), fs_log(&fs)))?;
    rustix::mount::move_mount(
        &mnt,
        c"",
        rustix::fs::CWD,
        cpath(target)?.as_c_str(),
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| mount_err(target, errno(e), String::new()))?;
    Ok(Mounted::Yes)
}

fn option_path(path: &Path) -> Result<&OsStr, RootfsError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.iter().any(|b| matches!(b, b',' | b':' | b'\\')) {
        return Err(RootfsError::BadPath {
            path: path.to_owned(),
            reason: "',', ':' and '\\' are separators in overlay mount options",
        });
    }
    Ok(path.as_os_str())
}

fn mount_legacy(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    let mut data = b"lowerdir=".to_vec();
    for (i, lower) in lowers.iter().rev().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        data.extend_from_slice(option_path(lower)?.as_bytes());
    }
    data.extend_from_slice(b",upperdir=");
    data.extend_from_slice(option_path(upper)?.as_bytes());
    data.extend_from_slice(b",workdir=");
    data.extend_from_slice(option_path(work)?.as_bytes());
    if data.len() > LEGACY_DATA_MAX {
        return Err(RootfsError::TooManyLayers {
            len: data.len(),
            limit: LEGACY_DATA_MAX,
        });
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(OsStr::from_bytes(&data)),
    )
    .map_err(|e| mount_err(target, e, String::new()))
}

/// Unmounts `target`. Idempotent: Ok if nothing is mounted there (or it does not exist).
/// A busy mount is detached (it disappears once its last user is gone).
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    let err = |e: Errno| RootfsError::Unmount {
        target: target.to_owned(),
        source: e.into(),
    };
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => {
            tracing::warn!(target = %target.display(), "rootfs busy; detaching it");
            nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root: the full suite (scripts/test.sh) runs it"]
    fn legacy_mount_works_and_refuses_options_over_a_page() {
        let tmp = tempfile::tempdir().unwrap();
        let d = |n: &str| {
            let p = tmp.path().join(n);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let (l1, l2, up, work, merged) = (d("l1"), d("l2"), d("u"), d("w"), d("m"));
        std::fs::write(l1.join("a"), b"bottom").unwrap();
        std::fs::write(l2.join("a"), b"top").unwrap();
        mount_legacy(&[l1.clone(), l2.clone()], &up, &work, &merged).unwrap();
        let seen = std::fs::read(merged.join("a"));
        unmount(&merged).unwrap();
        assert_eq!(seen.unwrap(), b"top");

        let long: Vec<PathBuf> = (0..50)
            .map(|i| tmp.path().join(format!("{i}-{}", "x".repeat(100))))
            .collect();
        let err = mount_legacy(&long, &up, &work, &merged).unwrap_err();
        assert!(matches!(err, RootfsError::TooManyLayers { .. }), "{err}");
        let err = mount_legacy(&[tmp.path().join("a:b")], &up, &work, &merged).unwrap_err();
        assert!(matches!(err, RootfsError::BadPath { .. }), "{err}");
    }
}
