//! The few process-level syscalls the shim needs, each kept small.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::unistd::{ForkResult, fork, setsid};

/// Leaves the daemon's session and process tree: setsid, then fork so that the daemon's
/// child exits at once and the shim is reparented to init (or the nearest subreaper).
///
/// Must only be called while the process is single-threaded.
pub fn detach() -> Result<(), Errno> {
    // EPERM means we already lead a process group; the fork below still detaches us.
    let _ = setsid();
    // SAFETY: `shim::main` runs before the process creates any thread, so the child is a
    // complete copy and may run arbitrary code (allocate, lock) after the fork.
    match unsafe { fork() }? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => Ok(()),
    }
}

pub fn pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
}

pub fn set_nonblocking(fd: &impl AsFd) -> Result<(), Errno> {
    let raw = fd.as_fd().as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL)?);
    fcntl(raw, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// Lets a descriptor survive (or not) the next exec.
pub fn set_inherit(fd: &impl AsFd, inherit: bool) -> Result<(), Errno> {
    let flags = if inherit {
        FdFlag::empty()
    } else {
        FdFlag::FD_CLOEXEC
    };
    fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_SETFD(flags)).map(drop)
}

/// Points one of the standard descriptors (0, 1, 2) at `file`.
pub fn redirect(target: i32, file: &impl AsFd) -> Result<(), Errno> {
    nix::unistd::dup2(file.as_fd().as_raw_fd(), target).map(drop)
}

/// Whether `raw` is an open descriptor of this process.
pub fn is_open(raw: i32) -> bool {
    fcntl(raw, FcntlArg::F_GETFD).is_ok()
}

/// Closes every descriptor above stderr. The agent may leak descriptors without
/// O_CLOEXEC into the shim (it inherits them through fork/exec), and a shim that outlives
/// the agent must not hold, say, the write end of one of the agent's pipes.
pub fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors; at this point (first thing in the
    // shim) no Rust object in this process owns a descriptor above 2.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc lists. Collect first, since reading the
    // directory itself uses a descriptor.
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        let _ = nix::unistd::close(fd);
    }
}
