//! A fork that takes clone(2)'s flags.

/// `clone(flags | SIGCHLD)` with no new stack and no `CLONE_VM`: a fork whose child
/// also gets `flags` (a new user namespace, `CLONE_PARENT`, ...), which fork(2)
/// cannot ask for; nix's `clone` wants a stack and a callback, more than a child
/// that carries on from here needs. Returns 0 in the child, its pid in the parent,
/// -1 on failure (errno set).
///
/// # Safety
/// As for fork: in a multithreaded caller the child may only make
/// async-signal-safe calls until it executes or exits.
pub(crate) unsafe fn fork_with(flags: libc::c_int) -> libc::c_long {
    // SAFETY: per the caller's contract; the kernel copies our stack for the child.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    }
}
