//! Exec into a running container that has a user namespace of its own.
//!
//! Written by hand because libcontainer 0.7 (the newest release) cannot do it: its
//! tenant builder joins the ipc, uts, net, pid, mnt and cgroup namespaces of the
//! container's init but never its user namespace, so the process would run as the
//! host's root inside the job. Joining the user namespace from the exec shim itself
//! does not work either: once in it, the shim's host root is unmapped and it can
//! create no file for its own state. So the join happens in processes of its own:
//!
//! ```text
//! shim ── fork ──> A: joins the container's cgroups (host paths), then its ipc,
//!  │                  uts, net, pid, cgroup and mnt namespaces as the host's root,
//!  │                  and its user namespace last (see [`NAMESPACES`]);
//!  │                  clone(CLONE_PARENT) ──> B; A reports B's pid and exits
//!  │                  (rlimits and oom_score_adj are set in A, before the user
//!  │                  namespace takes its host privileges away; B inherits them)
//!  └── B (a child of the shim, in the container's pid namespace): the terminal or
//!      the pipes, umask, cwd, supplementary groups, uid and gid,
//!      no_new_privileges, capabilities, seccomp, execve
//! ```
//!
//! B sets up the process in the order libcontainer's init does, with libcontainer's
//! own helpers for the capability and id changes, so that an exec into a
//! `--userns` job gets what an exec into any other job gets. A step that fails is
//! reported through a close-on-exec pipe, named; a successful `execve` closes it.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use oci_spec::runtime::Process;

use crate::container::Io;
use crate::seccomp::Filter;

/// The namespaces joined, in order. The host's root may join every namespace of the
/// job, whichever user namespace owns it, so the job's user namespace comes last: a
/// bridge job's network namespace is owned by the host's, and could not be joined
/// from inside the job's (EPERM), as the shim found when it created the job.
const NAMESPACES: [(&str, libc::c_int); 7] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
    ("user", libc::CLONE_NEWUSER),
];

/// Used when the process's environment has no PATH (as runc and Docker do).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("container {id} has no running init process")]
    NotRunning { id: String },
    #[error("cannot read the state of container {id}: {source}")]
    State {
        id: String,
        source: libcontainer::error::LibcontainerError,
    },
    #[error("cannot open {path:?}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot list the cgroups of container {id}: {detail}")]
    Cgroups { id: String, detail: String },
    #[error("the exec'd process has no command (process.args is empty)")]
    NoArgs,
    #[error("invalid {what} for the exec'd process: it contains a NUL byte")]
    Nul { what: &'static str },
    #[error("cannot connect to the console socket {path:?}: {source}")]
    Console {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{step}: {errno}")]
    Sys {
        step: &'static str,
        errno: nix::errno::Errno,
    },
    /// What the joining processes reported: the step that failed and why.
    #[error("{0}")]
    Child(String),
}

/// Runs `process` in the running container `id` (state under `state_root`), joining
/// its user namespace as well as the others. Returns once the program runs; the
/// process is a child of the caller. The caller must be single-threaded.
pub fn exec(
    state_root: &Path,
    id: &str,
    process: &Process,
    io: Io,
    seccomp: Option<Filter>,
) -> Result<Pid, JoinError> {
    let container =
        libcontainer::container::Container::load(state_root.join(id)).map_err(|source| {
            JoinError::State {
                id: id.to_owned(),
                source,
            }
        })?;
    let init = container
        .pid()
        .ok_or_else(|| JoinError::NotRunning { id: id.to_owned() })?;
    let namespaces = open_namespaces(init)?;
    // The pid came from the state file: make sure it was still the container's init
    // when its namespaces were opened (not a process that reused the pid since).
    let cgroups_of_init =
        std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap_or_default();
    let ours = crate::cgroup::cgroup_path(id);
    if !cgroups_of_init.contains(&*ours.to_string_lossy()) {
        return Err(JoinError::NotRunning { id: id.to_owned() });
    }
    let cgroups = crate::cgroup::existing_dirs(id).map_err(|e| JoinError::Cgroups {
        id: id.to_owned(),
        detail: e.to_string(),
    })?;
    let plan = Plan::new(process, seccomp)?;
    let stdio = match io {
        Io::Pipes(s) => Stdio::Pipes(s),
        Io::Terminal { console_socket } => {
            let stream =
                std::os::unix::net::UnixStream::connect(&console_socket).map_err(|source| {
                    JoinError::Console {
                        path: console_socket.clone(),
                        source,
                    }
                })?;
            Stdio::Console(stream.into())
        }
    };
    let (pid_r, pid_w) = pipe("making the pid pipe")?;
    let (err_r, err_w) = pipe("making the error pipe")?;

    // SAFETY: the caller is single-threaded (the exec shim), so the child is a complete
    // copy and may allocate; it leaves by `_exit` or `execve` only.
    match unsafe { nix::unistd::fork() }.map_err(|errno| JoinError::Sys {
        step: "fork",
        errno,
    })? {
        ForkResult::Child => {
            drop(pid_r);
            drop(err_r);
            let result = joiner(&namespaces, &cgroups, &pid_w, &err_w, &plan, stdio);
            if let Err(msg) = result {
                report_and_exit(&err_w, &msg);
            }
            // SAFETY: leaves the forked child without running the parent's atexit
            // handlers or flushing its buffers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(pid_w);
            drop(err_w);
            drop(stdio);
            let mut buf = [0u8; 4];
            let got = read_full(&pid_r, &mut buf);
            let _ = waitpid(child, None);
            let message = read_to_end(err_r);
            let pid = (got == 4).then(|| Pid::from_raw(i32::from_ne_bytes(buf)));
            match (pid, message.is_empty()) {
                (Some(pid), true) => Ok(pid),
                (pid, _) => {
                    if let Some(pid) = pid {
                        let _ = waitpid(pid, None);
                    }
                    Err(JoinError::Child(if message.is_empty() {
                        "the joining process ended without starting the program".into()
                    } else {
                        message
                    }))
                }
            }
        }
    }
}

enum Stdio {
    Pipes(crate::container::Stdio),
    /// Connected to the console socket: the pty's master is sent over it.
    Console(OwnedFd),
}

/// Everything B needs, made before the fork (where errors can be typed).
struct Plan {
    args: Vec<CString>,
    env: Vec<CString>,
    path: String,
    cwd: PathBuf,
    process: Process,
    seccomp: Option<Filter>,
}

impl Plan {
    fn new(process: &Process, seccomp: Option<Filter>) -> Result<Plan, JoinError> {
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(JoinError::NoArgs);
        }
        let cstrings = |v: &[String], what| {
            v.iter()
                .map(|s| CString::new(s.as_bytes()).map_err(|_| JoinError::Nul { what }))
                .collect::<Result<Vec<_>, _>>()
        };
        let env = process.env().clone().unwrap_or_default();
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .to_owned();
        Ok(Plan {
            args: cstrings(&args, "argument")?,
            env: cstrings(&env, "environment entry")?,
            path,
            cwd: process.cwd().clone(),
            process: process.clone(),
            seccomp,
        })
    }
}

/// The init's namespaces that differ from ours, opened before anything is joined
/// (the init could exit meanwhile; open descriptors keep its namespaces).
fn open_namespaces(init: Pid) -> Result<Vec<(OwnedFd, libc::c_int)>, JoinError> {
    let mut out = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = PathBuf::from(format!("/proc/{init}/ns/{name}"));
        let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
        let file = std::fs::File::open(&theirs).map_err(|source| JoinError::Open {
            path: theirs.clone(),
            source,
        })?;
        let same = match (file.metadata(), std::fs::metadata(&ours)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        // setns into one's own user namespace is EINVAL, and the others are no-ops.
        if !same {
            out.push((file.into(), flag));
        }
    }
    Ok(out)
}

/// Process A: cgroups, namespaces, then B.
fn joiner(
    namespaces: &[(OwnedFd, libc::c_int)],
    cgroups: &[PathBuf],
    pid_w: &OwnedFd,
    err_w: &OwnedFd,
    plan: &Plan,
    stdio: Stdio,
) -> Result<(), String> {
    for dir in cgroups {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, "0")
            .map_err(|e| format!("joining the container's cgroup {procs:?}: {e}"))?;
    }
    // Raising a hard limit or lowering the OOM score needs CAP_SYS_RESOURCE in the
    // host's user namespace: done here, before the job's is joined; B inherits both.
    let syscall = libcontainer::syscall::syscall::create_syscall();
    let process = &plan.process;
    for rlimit in process.rlimits().iter().flatten() {
        syscall
            .set_rlimit(rlimit)
            .map_err(|e| format!("setting rlimit {:?}: {e}", rlimit.typ()))?;
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("setting oom_score_adj: {e}"))?;
    }
    for (fd, flag) in namespaces {
        // SAFETY: plain system call on a descriptor we own.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), *flag) };
        nix::errno::Errno::result(rc)
            .map_err(|e| format!("joining the container's {} namespace: {e}", ns_name(*flag)))?;
    }
    // A plain fork would leave B a child of A; CLONE_PARENT makes it the shim's, which
    // monitors it. With no new stack the child runs on a copy of ours, as after fork.
    // SAFETY: A is single-threaded (a fork child); B continues below like a fork child.
    let rc = unsafe { crate::rawfork::fork_with(libc::CLONE_PARENT) };
    match rc {
        -1 => Err(format!(
            "starting the process in the container's pid namespace (clone): {}",
            nix::errno::Errno::last()
        )),
        0 => {
            let msg = match start(plan, stdio) {
                Err(msg) => msg,
                Ok(never) => match never {},
            };
            report_and_exit(err_w, &msg)
        }
        pid => {
            let pid = i32::try_from(pid).unwrap_or(-1);
            write_all(pid_w, &pid.to_ne_bytes());
            Ok(())
        }
    }
}

fn ns_name(flag: libc::c_int) -> &'static str {
    NAMESPACES
        .iter()
        .find(|(_, f)| *f == flag)
        .map_or("?", |(n, _)| n)
}

/// Process B: set up as the spec says and execute the program. Returns only on error.
fn start(plan: &Plan, stdio: Stdio) -> Result<std::convert::Infallible, String> {
    let syscall = libcontainer::syscall::syscall::create_syscall();
    let process = &plan.process;
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    match stdio {
        Stdio::Pipes(s) => {
            for (fd, target) in [(&s.stdin, 0), (&s.stdout, 1), (&s.stderr, 2)] {
                dup_to(fd.as_raw_fd(), target).map_err(|e| format!("setting up stdio: {e}"))?;
            }
        }
        Stdio::Console(socket) => {
            // Made from the container's devpts (its mount namespace is ours now).
            let fd = socket.as_raw_fd();
            std::mem::forget(socket); // setup_console closes it.
            libcontainer::tty::setup_console(syscall.as_ref(), fd, false)
                .map_err(|e| format!("setting up the terminal: {e}"))?;
        }
    }
    let user = process.user();
    if let Some(umask) = user.umask() {
        let mode = nix::sys::stat::Mode::from_bits(umask)
            .ok_or_else(|| format!("invalid umask {umask:o}"))?;
        nix::sys::stat::umask(mode);
    }
    // Before the user changes (root may enter where the user may not); again after.
    let chdir_later = match nix::unistd::chdir(&plan.cwd) {
        Ok(()) => false,
        Err(nix::errno::Errno::EPERM | nix::errno::Errno::EACCES) => true,
        Err(e) => return Err(format!("working directory {:?}: {e}", plan.cwd)),
    };
    // Always set, even empty: the host root's own groups must not follow it inside.
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    syscall
        .set_groups(&groups)
        .map_err(|e| format!("setting the supplementary groups {groups:?}: {e}"))?;
    syscall
        .set_id(Uid::from_raw(user.uid()), Gid::from_raw(user.gid()))
        .map_err(|e| format!("switching to uid {} gid {}: {e}", user.uid(), user.gid()))?;
    let no_new_privs = process.no_new_privileges() == Some(true);
    if no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privileges: {e}"))?;
    } else if let Some(filter) = &plan.seccomp {
        // Without no_new_privileges loading a filter needs CAP_SYS_ADMIN: before the drop.
        filter
            .install()
            .map_err(|e| format!("installing seccomp: {e}"))?;
    }
    libcontainer::capabilities::reset_effective(syscall.as_ref())
        .map_err(|e| format!("resetting capabilities: {e}"))?;
    if let Some(caps) = process.capabilities() {
        libcontainer::capabilities::drop_privileges(caps, syscall.as_ref())
            .map_err(|e| format!("dropping capabilities: {e}"))?;
    }
    if chdir_later {
        nix::unistd::chdir(&plan.cwd)
            .map_err(|e| format!("working directory {:?}: {e}", plan.cwd))?;
    }
    // Nothing of the host's but stdio crosses the execve (a leaked descriptor of a
    // host directory would be a way out of the job, as in runc's CVE-2024-21626).
    syscall
        .close_range(0)
        .map_err(|e| format!("closing inherited descriptors: {e}"))?;
    let program = resolve(&plan.args[0], &plan.path).ok_or_else(|| {
        format!(
            "executable {:?} not found in the container's PATH, or not executable",
            plan.args[0]
        )
    })?;
    if no_new_privs && let Some(filter) = &plan.seccomp {
        // As close to the execve as can be: the filter also confines what runs here.
        filter
            .install()
            .map_err(|e| format!("installing seccomp: {e}"))?;
    }
    // The shim keeps SIGPIPE ignored (a Rust program does), and an ignored signal
    // stays ignored across execve: `yes | head` would spin in the job.
    // SAFETY: SIG_DFL only: no handler code runs.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    }
    .map_err(|e| format!("resetting SIGPIPE: {e}"))?;
    let e = match nix::unistd::execve(&program, &plan.args, &plan.env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    // Worded as the CLI's exit codes expect (127 not found, 126 not executable).
    Err(match e {
        nix::errno::Errno::ENOENT => {
            format!("executable {:?} not found in the container", plan.args[0])
        }
        nix::errno::Errno::EACCES => format!("executable {:?}: permission denied", plan.args[0]),
        e => format!("executing {:?}: {e}", plan.args[0]),
    })
}

/// `execvp`'s lookup with the process's PATH, not ours.
fn resolve(arg0: &CString, path: &str) -> Option<CString> {
    let bytes = arg0.as_bytes();
    if bytes.contains(&b'/') {
        return Some(arg0.clone());
    }
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::OsStr::from_bytes(bytes);
    path.split(':').find_map(|dir| {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        let meta = std::fs::metadata(&candidate).ok()?;
        let executable = meta.is_file()
            && nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok();
        executable
            .then(|| CString::new(candidate.as_os_str().as_bytes()).ok())
            .flatten()
    })
}

fn dup_to(fd: RawFd, target: RawFd) -> Result<(), nix::errno::Errno> {
    if fd == target {
        // Already there: only the close-on-exec flag must go.
        return nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map(drop);
    }
    // SAFETY: plain system call; dup2 leaves the new descriptor without close-on-exec.
    nix::errno::Errno::result(unsafe { libc::dup2(fd, target) }).map(drop)
}

fn pipe(step: &'static str) -> Result<(OwnedFd, OwnedFd), JoinError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| JoinError::Sys { step, errno })
}

fn report_and_exit(err_w: &OwnedFd, msg: &str) -> ! {
    write_all(err_w, msg.as_bytes());
    // SAFETY: leaves the forked child without running the parent's exit handlers.
    unsafe { libc::_exit(127) }
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(0) => return,
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    got
}

fn read_to_end(fd: OwnedFd) -> String {
    let mut file = std::fs::File::from(fd);
    let mut out = Vec::new();
    // Bounded: a message, not a stream.
    let _ = (&mut file).take(64 * 1024).read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::ProcessBuilder;

    fn process(args: &[&str], env: &[&str]) -> Process {
        ProcessBuilder::default()
            .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .cwd("/")
            .build()
            .expect("process")
    }

    #[test]
    fn a_container_that_is_not_there_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = "0123456789abcdef0123456789abcdef";
        let io = Io::Terminal {
            console_socket: dir.path().join("none.sock"),
        };
        let err = exec(dir.path(), id, &process(&["true"], &[]), io, None).unwrap_err();
        assert!(matches!(err, JoinError::State { .. }), "{err}");
        assert!(err.to_string().contains(id), "{err}");
    }

    #[test]
    fn the_plan_refuses_what_execve_cannot_take() {
        let empty = Plan::new(&process(&[], &[]), None).err();
        assert!(matches!(empty, Some(JoinError::NoArgs)));
        let nul = Plan::new(&process(&["a\0b"], &[]), None).err();
        assert!(matches!(nul, Some(JoinError::Nul { what: "argument" })));
        let nul = Plan::new(&process(&["true"], &["X=a\0b"]), None).err();
        assert!(matches!(nul, Some(JoinError::Nul { .. })));
    }

    #[test]
    fn the_program_is_looked_up_in_the_processs_path() {
        let plan = Plan::new(&process(&["sh"], &["PATH=/no/such/dir:/bin"]), None).expect("plan");
        assert_eq!(plan.path, "/no/such/dir:/bin");
        assert_eq!(
            resolve(&plan.args[0], &plan.path).as_deref(),
            Some(c"/bin/sh")
        );
        let default = Plan::new(&process(&["sh"], &[]), None).expect("plan");
        assert_eq!(default.path, DEFAULT_PATH);
        assert_eq!(
            resolve(&CString::from(c"./x/y"), "/bin").as_deref(),
            Some(c"./x/y")
        );
        assert_eq!(
            resolve(&CString::from(c"no-such-program-here"), "/bin"),
            None
        );
        // A directory of that name is not a program.
        assert_eq!(resolve(&CString::from(c"tmp"), "/"), None);
    }
}
