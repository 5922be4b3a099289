//! Thin wrappers over the syscalls nix 0.29 lacks or returns as raw fds (`openat2` is
//! nix's, as in `runtime::rootfs`).
//!
//! Every `unsafe` block of the crate that is not a mount lives here or in `rootfs`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

fn cstring(bytes: &[u8]) -> Result<CString, Errno> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// `openat(2)` returning an owned fd; always `O_CLOEXEC`.
pub(crate) fn openat(
    dir: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let path = cstring(path)?;
    let flags = flags | OFlag::O_CLOEXEC;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call; the dirfd is
    // borrowed, so it stays open for the duration of the call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            path.as_ptr(),
            flags.bits(),
            mode.bits() as libc::c_uint,
        )
    };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fsetxattr(2)` on an open file or directory.
pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> Result<(), Errno> {
    let name = cstring(name.as_bytes())?;
    // SAFETY: `name` is NUL-terminated, `value` is a valid slice of the given length.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// `lsetxattr(2)` on `name` inside the directory `dir`, without following `name` if it is a
/// symlink. There is no `*at` xattr syscall before Linux 6.13, so the directory is reached
/// through its `/proc/self/fd` entry: only that magic link is followed, never `name`.
pub(crate) fn lsetxattr_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    key: &str,
    value: &[u8],
) -> Result<(), Errno> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let path = cstring(&path)?;
    let key = cstring(key.as_bytes())?;
    // SAFETY: both strings are NUL-terminated, `value` is a valid slice of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// `readlinkat(2)` into an owned buffer.
pub(crate) fn readlinkat(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Vec<u8>, Errno> {
    let name = cstring(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `name` is NUL-terminated; `buf` is writable for `buf.len()` bytes.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(Errno::result(n)?).map_err(|_| Errno::EOVERFLOW)?;
    buf.truncate(n);
    Ok(buf)
}

/// Takes an exclusive `flock(2)` on `file` without waiting; `EWOULDBLOCK` if someone holds it.
pub(crate) fn try_lock_exclusive(file: &std::fs::File) -> Result<(), Errno> {
    // SAFETY: flock only reads the fd, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Errno::result(rc).map(drop)
}
