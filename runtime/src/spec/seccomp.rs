//! Docker's default seccomp policy, as a table grouped by purpose.
//!
//! The policy is an allowlist: anything not named here fails with EPERM. Some syscalls are
//! only allowed when the container holds the capability that makes them meaningful (the
//! profile is rendered against the container's bounding set, as Docker does), and a few are
//! allowed only for harmless arguments.

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// Files, directories, descriptors and their metadata.
#[rustfmt::skip]
const FILES: &[&str] = &[
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range",
    "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
    "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "flock", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd", "getdents",
    "getdents64", "lchown", "lchown32", "link", "linkat", "_llseek", "lseek", "lstat",
    "lstat64", "mkdir", "mkdirat", "mknod", "mknodat", "name_to_handle_at", "newfstatat",
    "open", "openat", "openat2", "pipe", "pipe2", "pread64", "preadv", "preadv2", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "rename",
    "renameat", "renameat2", "rmdir", "sendfile", "sendfile64", "splice", "stat", "stat64",
    "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "tee", "truncate", "truncate64", "umask", "unlink", "unlinkat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vmsplice", "write", "writev",
];

/// Extended attributes.
#[rustfmt::skip]
const XATTRS: &[&str] = &[
    "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "lgetxattr",
    "listxattr", "llistxattr", "lremovexattr", "lsetxattr", "removexattr", "setxattr",
];

/// Waiting on descriptors: poll, select, epoll, eventfd, inotify, timerfd, signalfd, aio.
#[rustfmt::skip]
const EVENTS: &[&str] = &[
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "fanotify_mark",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup",
    "io_submit", "_newselect", "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64",
    "select", "signalfd", "signalfd4", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64",
];

/// Memory mappings and locking.
#[rustfmt::skip]
const MEMORY: &[&str] = &[
    "brk", "cachestat", "madvise", "map_shadow_stack", "membarrier", "memfd_create",
    "memfd_secret", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
    "mremap", "msync", "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "remap_file_pages",
];

/// Process lifecycle, limits and introspection of oneself. `clone` is conditional (below).
#[rustfmt::skip]
const PROCESSES: &[&str] = &[
    "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "getcpu",
    "getitimer", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrlimit",
    "get_robust_list", "getrusage", "getsid", "get_thread_area", "gettid", "ioprio_get",
    "ioprio_set", "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "process_mrelease",
    "restart_syscall", "rseq", "seccomp", "setitimer", "setpgid", "setpriority", "setrlimit",
    "set_robust_list", "setsid", "set_thread_area", "set_tid_address", "ugetrlimit", "vfork",
    "wait4", "waitid", "waitpid",
];

/// Debugging a process of the same container; safe since kernel 4.8, whose seccomp
/// checks run again after a tracer changes the syscall.
const PTRACE: &[&str] = &["process_vm_readv", "process_vm_writev", "ptrace"];

/// Credentials: changing to ids the process is already entitled to.
#[rustfmt::skip]
const CREDENTIALS: &[&str] = &[
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
    "getgroups32", "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid", "getuid32",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32",
];

/// Signals.
#[rustfmt::skip]
const SIGNALS: &[&str] = &[
    "alarm", "kill", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sigaltstack", "sigprocmask", "sigreturn",
    "tgkill", "tkill",
];

/// Threads and synchronisation.
#[rustfmt::skip]
const FUTEXES: &[&str] = &[
    "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake",
];

/// Clocks and timers (reading them; setting the clock needs CAP_SYS_TIME, below).
#[rustfmt::skip]
const TIME: &[&str] = &[
    "adjtimex", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64",
    "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64",
    "gettimeofday", "nanosleep", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64", "times",
];

/// Scheduling and CPU affinity.
#[rustfmt::skip]
const SCHEDULING: &[&str] = &[
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield",
];

/// System V and POSIX IPC (namespaced by the container's IPC namespace).
#[rustfmt::skip]
const IPC: &[&str] = &[
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt",
    "shmget",
];

/// Sockets. `socket` itself is conditional (below).
#[rustfmt::skip]
const NETWORK: &[&str] = &[
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg",
    "sendmsg", "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
];

/// Everything else a normal program expects.
#[rustfmt::skip]
const MISC: &[&str] = &[
    "getrandom", "ioctl", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "sysinfo", "uname",
];

#[cfg(target_arch = "x86_64")]
const ARCH_SPECIFIC: &[&str] = &["arch_prctl", "modify_ldt"];
#[cfg(target_arch = "aarch64")]
#[rustfmt::skip]
const ARCH_SPECIFIC: &[&str] = &[
    "arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls",
    "sync_file_range2",
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH_SPECIFIC: &[&str] = &[];

/// Syscalls that only make sense with a capability: allowed iff the container has it.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
    (Capability::Syslog, &["syslog"]),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "finit_module", "init_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    (Capability::SysRawio, &["ioperm", "iopl"]),
    (
        Capability::SysTime,
        &["clock_settime", "clock_settime64", "settimeofday", "stime"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
];

/// Namespace-creating clone flags (CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER |
/// NEWPID | NEWNET): plain fork/thread creation must not carry any of them.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Execution domains that only change uname/address-space quirks, not privileges:
/// PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the "query" value.
const SAFE_PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// vsock reaches the hypervisor, outside the container's network namespace.
const AF_VSOCK: u64 = 40;

fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
) -> Result<LinuxSeccompArg, OciSpecError> {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value)
        .value_two(value_two)
        .build()
}

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s
}

fn allow(names: &[&str]) -> LinuxSyscall {
    rule(names, LinuxSeccompAction::ScmpActAllow)
}

fn allow_if(names: &[&str], args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut s = allow(names);
    s.set_args(Some(args));
    s
}

fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

/// The profile for a container whose bounding set is `caps`.
pub fn default_profile(caps: &[Capability]) -> Result<LinuxSeccomp, OciSpecError> {
    let has = |c: &Capability| caps.contains(c);
    let mut syscalls = Vec::new();
    for group in [
        FILES,
        XATTRS,
        EVENTS,
        MEMORY,
        PROCESSES,
        PTRACE,
        CREDENTIALS,
        SIGNALS,
        FUTEXES,
        TIME,
        SCHEDULING,
        IPC,
        NETWORK,
        MISC,
        ARCH_SPECIFIC,
    ] {
        syscalls.push(allow(group));
    }

    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            syscalls.push(allow(names));
        }
    }

    if !has(&Capability::SysAdmin) {
        // Threads and forks, but no new namespaces: (flags & CLONE_NAMESPACE_FLAGS) == 0.
        // The OCI spec says MASKED_EQ compares (arg & value) == valueTwo. (libcontainer
        // 0.7 passes the two the other way round, which is one reason the shim compiles
        // profiles itself, in crate::seccomp: libcontainer never sees this one.)
        syscalls.push(allow_if(
            &["clone"],
            vec![arg(
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
                CLONE_NAMESPACE_FLAGS,
                0,
            )?],
        ));
        // clone3 hides its flags in memory seccomp cannot read: ENOSYS makes libc fall
        // back to clone, whose flags the rule above can check.
        let mut clone3 = rule(&["clone3"], LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(libc::ENOSYS as u32));
        syscalls.push(clone3);
    } else {
        syscalls.push(allow(&["clone3"]));
    }

    for &persona in SAFE_PERSONALITIES {
        syscalls.push(allow_if(
            &["personality"],
            vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, persona, 0)?],
        ));
    }

    syscalls.push(allow_if(
        &["socket"],
        vec![arg(0, LinuxSeccompOperator::ScmpCmpNe, AF_VSOCK, 0)?],
    ));

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    profile.set_architectures(Some(architectures()));
    profile.set_syscalls(Some(syscalls));
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::caps::DEFAULT_CAPABILITIES;

    fn allowed(profile: &LinuxSeccomp, name: &str) -> Vec<LinuxSyscall> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.names().iter().any(|n| n == name))
            .cloned()
            .collect()
    }

    #[test]
    fn default_caps_profile() {
        let p = default_profile(DEFAULT_CAPABILITIES).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        for name in [
            "read",
            "pipe2",
            "execve",
            "wait4",
            "futex",
            "chroot",
            "getrandom",
        ] {
            let rules = allowed(&p, name);
            assert_eq!(rules.len(), 1, "{name}");
            assert!(rules[0].args().is_none(), "{name} unconditional");
        }
        for name in [
            "mount",
            "unshare",
            "setns",
            "reboot",
            "bpf",
            "keyctl",
            "io_uring_setup",
        ] {
            assert!(allowed(&p, name).is_empty(), "{name} must be blocked");
        }
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1);
        let a = clone[0].args().as_ref().unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].index(), a[0].op(), a[0].value(), a[0].value_two()),
            (
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
                CLONE_NAMESPACE_FLAGS,
                Some(0)
            )
        );
        let clone3 = allowed(&p, "clone3");
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(libc::ENOSYS as u32));
        assert_eq!(allowed(&p, "personality").len(), SAFE_PERSONALITIES.len());
        let socket = allowed(&p, "socket");
        let a = socket[0].args().as_ref().unwrap()[0];
        assert_eq!(
            (a.op(), a.value()),
            (LinuxSeccompOperator::ScmpCmpNe, AF_VSOCK)
        );
    }

    #[test]
    fn sys_admin_unlocks_namespaces() {
        let mut caps = DEFAULT_CAPABILITIES.to_vec();
        caps.push(Capability::SysAdmin);
        let p = default_profile(&caps).unwrap();
        for name in ["mount", "unshare", "setns"] {
            assert_eq!(allowed(&p, name).len(), 1, "{name}");
        }
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert!(clone[0].args().is_none());
        assert_eq!(
            allowed(&p, "clone3")[0].action(),
            LinuxSeccompAction::ScmpActAllow
        );
    }
}
