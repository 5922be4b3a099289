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

/// Sets this process's scheduling policy (`SCHED_IDLE`, `SCHED_OTHER`, ...), priority
/// 0. A single system call: safe between fork and exec.
pub fn set_sched_policy(policy: libc::c_int) -> Result<(), Errno> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call.
    Errno::result(unsafe { libc::sched_setscheduler(0, policy, &param) }).map(drop)
}

/// A descriptor that becomes readable when process `pid` ends (Linux 5.3+).
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // The kernel refuses a pid <= 0 with EINVAL too.
    let pid = (pid > 0)
        .then(|| rustix::process::Pid::from_raw(pid))
        .flatten()
        .ok_or(Errno::EINVAL)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| Errno::from_raw(e.raw_os_error()))
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
    // A raw syscall: neither nix 0.29 nor rustix 1.1 (the version in the tree) has
    // close_range.
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

/// Puts every signal back to its default action (SIGPIPE aside: a Rust program keeps it
/// ignored) and unblocks all signals. The container's init inherits both through clone
/// and exec, and the agent may hand us odd ones: glibc's posix_spawn, which Rust uses to
/// spawn the shim, leaves glibc's internal signals 32 and 33 *ignored* in the child.
pub fn reset_signals() {
    // glibc's sigaction refuses to touch its internal signals, so this uses the raw
    // syscall. An all-zero kernel sigaction means SIG_DFL, no flags, empty mask, whatever
    // the architecture's field order.
    let default_action = [0u64; 4];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == libc::SIGPIPE {
            continue;
        }
        // SAFETY: rt_sigaction reads a kernel sigaction from a valid, live buffer at
        // least as large as the kernel's struct; the old-action pointer is null. No
        // handler is installed, so no code can run asynchronously.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default_action.as_ptr(),
                std::ptr::null_mut::<u64>(),
                std::mem::size_of::<u64>(),
            );
        }
    }
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
}

/// Back to what a Rust program expects: EPIPE errors instead of death by SIGPIPE.
pub fn ignore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_IGN installs no handler code, so nothing can run asynchronously.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

/// Executes the binary open at `exe` (an O_PATH descriptor is enough) with this
/// process's argv and environment. Only returns on failure.
pub fn exec_fd(exe: &impl AsFd) -> Errno {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    // The new program must not inherit the descriptor of its own binary.
    let _ = set_inherit(exe, false);
    let to_c = |bytes: &[u8]| CString::new(bytes).ok();
    let Some(args) = std::env::args_os()
        .map(|a| to_c(a.as_bytes()))
        .collect::<Option<Vec<_>>>()
    else {
        return Errno::EINVAL;
    };
    let Some(env) = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            to_c(&kv)
        })
        .collect::<Option<Vec<_>>>()
    else {
        return Errno::EINVAL;
    };
    let Err(e) = nix::unistd::execveat(
        Some(exe.as_fd().as_raw_fd()),
        c"",
        &args,
        &env,
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    );
    e
}

/// Unmaps, from this process only, the pages of its read-only file mappings (the
/// binary's code and constants, shared libraries) that nothing has modified, and asks
/// the kernel to fault them back one page at a time (`MADV_RANDOM`: no fault-around of
/// 16 neighbours). Start-up touches much code the monitor's loop never runs again, and
/// fault-around maps even more around it; after this, the resident set holds only what
/// the loop uses. The pages stay in the page cache (shared with every other process of
/// the binary); touching them again costs a minor fault. Best effort.
///
/// Only mappings without a single private (copy-on-write) page are touched: dropping a
/// relocated page would bring back the file's unrelocated bytes.
pub fn drop_clean_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut current: Option<(usize, usize, bool)> = None;
    let mut candidates = Vec::new();
    for line in smaps.lines() {
        if let Some(range) = mapping_header(line) {
            current = Some(range);
            continue;
        }
        let Some((start, end, eligible)) = current else {
            continue;
        };
        if let Some(anon) = line.strip_prefix("Anonymous:") {
            let private = anon.trim().trim_end_matches("kB").trim() != "0";
            if eligible && !private {
                candidates.push((start, end));
            }
            current = None;
        }
    }
    for (start, end) in candidates {
        // SAFETY: the range is one of this process's own mappings, read-only and backed
        // by a file, with no private page: MADV_RANDOM only changes read-ahead, and
        // MADV_DONTNEED only drops page table entries that the next access restores
        // from the same file. No Rust object refers to the mapping as memory it owns.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// `start-end perms offset dev inode path` → (start, end, read-only file mapping).
fn mapping_header(line: &str) -> Option<(usize, usize, bool)> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    let path = fields.nth(3).unwrap_or("");
    let eligible = !perms.contains('w') && perms.ends_with('p') && path.starts_with('/');
    Some((start, end, eligible))
}

/// Reads at most `max` bytes from `fd` into `buf` (replacing its contents) without
/// initializing the buffer first: only the pages the kernel fills are touched.
pub fn read_into(fd: &impl AsFd, buf: &mut Vec<u8>, max: usize) -> Result<usize, Errno> {
    buf.clear();
    buf.reserve(max);
    // SAFETY: the pointer is valid for writes of `max` bytes (reserved above), read(2)
    // writes at most that many, and only the `n` bytes it reports written become part of
    // the vector.
    let n = unsafe { libc::read(fd.as_fd().as_raw_fd(), buf.as_mut_ptr().cast(), max) };
    let n = Errno::result(n)? as usize;
    // SAFETY: read(2) initialized the first `n` bytes, and n <= max <= capacity.
    unsafe { buf.set_len(n) };
    Ok(n)
}
