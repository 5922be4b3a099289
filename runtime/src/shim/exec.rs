//! The exec shim's first phase: detach, run a process in the job's running container
//! (libcontainer's tenant builder), report, then monitor it like a container.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use oci_spec::runtime::Spec;

use super::common::{bind_control_socket, close_stdio, compile_seccomp, report, settle};
use super::error::ShimSetupError;
use super::monitor::{self, Handoff, Kind};
use super::protocol::Handshake;
use super::stdio::{self, Pending};
use super::{ExecShimConfig, JobFiles, ShimConfig, diag, error_chain, read_config, sys};
use crate::container::{self, Io};
use crate::seccomp::Filter;
use crate::spec;

/// libcontainer names the sockets a tenant (exec) leaves in the container's state dir
/// with these prefixes and never removes them.
const TENANT_PREFIXES: [&str; 2] = ["tenant-notify-", "tenant-tty-"];

pub fn main(exec_dir: &Path) -> i32 {
    sys::close_inherited_fds();
    sys::reset_signals();
    if let Err(e) = sys::detach() {
        report(&Handshake::Error(format!(
            "cannot detach the exec shim from the agent (setsid/fork): {e}"
        )));
        return 1;
    }
    let exec_dir = std::path::absolute(exec_dir).unwrap_or_else(|_| exec_dir.to_owned());
    let files = JobFiles::new(&exec_dir);
    let lock = match settle(&files) {
        Ok(lock) => lock,
        Err(e) => {
            let msg = e.to_string();
            diag(&msg);
            report(&Handshake::Error(msg));
            return 1;
        }
    };
    let prepared = match prepare(&files) {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            diag(&msg);
            let _ = std::fs::remove_file(files.socket());
            let _ = std::fs::remove_file(files.tty_socket());
            report(&Handshake::Error(msg));
            return 1;
        }
    };
    run(&files, prepared, lock)
}

struct Prepared {
    id: String,
    /// The container's rootfs, as mounted on the host.
    rootfs: PathBuf,
    state_root: PathBuf,
    /// `<job_dir>/exec`: locked while libcontainer runs the exec ([`lock_execs`]).
    execs: PathBuf,
    listener: UnixListener,
    process_io: Io,
    io: Pending,
    seccomp: Option<Filter>,
    /// The process, when the container has a user namespace of its own, which
    /// libcontainer's tenant builder cannot join ([`crate::join`] does).
    join: Option<oci_spec::runtime::Process>,
}

fn read_exec_config(files: &JobFiles) -> Result<ExecShimConfig, ShimSetupError> {
    let path = files.exec_config();
    let data = std::fs::read(&path).map_err(|source| ShimSetupError::ReadConfig {
        what: "exec",
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&data).map_err(|source| ShimSetupError::ParseConfig {
        what: "exec",
        path,
        source,
    })
}

/// `<job_dir>` from `<job_dir>/exec/<exec_id>`.
fn job_dir_of(exec_dir: &Path) -> Result<&Path, ShimSetupError> {
    exec_dir
        .parent()
        .filter(|p| p.file_name() == Some(super::EXECS.as_ref()))
        .and_then(Path::parent)
        .ok_or_else(|| ShimSetupError::NotExecDir {
            dir: exec_dir.to_owned(),
        })
}

/// Everything up to libcontainer's part. Errors are final messages.
fn prepare(files: &JobFiles) -> Result<Prepared, ShimSetupError> {
    let cfg = read_exec_config(files)?;
    cfg.exec
        .validate()
        .map_err(|e| ShimSetupError::InvalidConfig {
            what: "exec",
            source: e.into(),
        })?;
    if files.dir().file_name() != Some(cfg.exec.exec_id.as_ref()) {
        return Err(ShimSetupError::ExecIdMismatch {
            dir: files.dir().to_owned(),
            exec_id: cfg.exec.exec_id.clone(),
        });
    }
    let job_dir = job_dir_of(files.dir())?;
    let job = JobFiles::new(job_dir);
    let ShimConfig { container, .. } = read_config(&job)?;
    let id = container.id.clone();
    if job.exit_status().exists() || !cfg.state_root.join(&id).join("state.json").exists() {
        return Err(ShimSetupError::ContainerNotRunning { id });
    }
    // The spec the container runs with (seccomp profile included), as its shim wrote it.
    let oci = Spec::load(job.spec()).map_err(|e| ShimSetupError::ReadSpec {
        path: job.spec(),
        source: e.into(),
    })?;
    let base = oci
        .process()
        .as_ref()
        .ok_or_else(|| ShimSetupError::SpecWithoutProcess { path: job.spec() })?;
    let process = spec::exec_process(&container, base, &cfg.exec)
        .map_err(|e| ShimSetupError::Spec(e.into()))?;
    let data = serde_json::to_vec_pretty(&process).map_err(ShimSetupError::EncodeProcess)?;
    // Visible only: read while this boot's processes live (a crash of the host kills
    // them anyway), so fsyncs would only add latency.
    flynn_fsutil::write_atomic(
        &files.process_spec(),
        &data,
        flynn_fsutil::Durability::Visible,
    )
    .map_err(|source| ShimSetupError::WriteProcess {
        path: files.process_spec(),
        source,
    })?;

    let userns = oci
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|list| {
            list.iter()
                .any(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::User)
        });
    let profile = oci.linux().as_ref().and_then(|l| l.seccomp().clone());
    let seccomp = compile_seccomp(&oci, profile, &cfg.state_root.join("seccomp"))?;
    let listener = bind_control_socket(files)?;
    let (process_io, io) = stdio::prepare(files, cfg.exec.tty, cfg.exec.stdin)?;
    Ok(Prepared {
        id,
        rootfs: container.rootfs.clone(),
        state_root: cfg.state_root,
        execs: job_dir.join(super::EXECS),
        listener,
        process_io,
        io,
        seccomp,
        join: userns.then_some(process),
    })
}

fn run(files: &JobFiles, p: Prepared, lock: OwnedFd) -> i32 {
    let Prepared {
        id,
        rootfs,
        state_root,
        execs,
        listener,
        process_io,
        io,
        seccomp,
        join,
    } = p;
    let result = {
        // One exec of a container at a time through libcontainer: so that the sockets it
        // leaves in the container's state dir are known to be this exec's.
        let _guard = lock_execs(&execs);
        let container_dir = state_root.join(&id);
        let before = tenant_entries(&container_dir);
        let result = match &join {
            Some(process) => crate::join::exec(&state_root, &id, process, process_io, seccomp)
                .map_err(|e| e.to_string()),
            None => container::exec(&state_root, &id, &files.process_spec(), process_io, seccomp)
                .map_err(|e| exec_error(&e, files, &rootfs)),
        };
        for name in tenant_entries(&container_dir) {
            if !before.contains(&name) {
                let _ = std::fs::remove_file(container_dir.join(name));
            }
        }
        result
    };
    let pid = match result {
        Ok(pid) => pid,
        Err(msg) => {
            diag(&msg);
            io.discard();
            let _ = std::fs::remove_file(files.socket());
            report(&Handshake::Error(msg));
            return 1;
        }
    };
    let io = match io.complete() {
        Ok(io) => io,
        Err(e) => {
            let msg = e.to_string();
            diag(&format!("{msg}; killing the exec'd process"));
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            let _ = std::fs::remove_file(files.socket());
            report(&Handshake::Error(msg));
            return 1;
        }
    };
    report(&Handshake::Started { pid: pid.as_raw() });
    close_stdio();
    monitor::hand_over(
        files,
        Handoff {
            kind: Kind::Exec,
            pid,
            stdout: io.stdout,
            stderr: io.stderr,
            terminal: io.terminal,
            stdin: io.stdin,
            listener: listener.into(),
            lock,
        },
    )
}

/// libcontainer's error for a failed exec, said plainly where we can tell the cause.
fn exec_error(err: &container::RuntimeError, files: &JobFiles, rootfs: &Path) -> String {
    let chain = error_chain(err);
    let Ok(cfg) = read_exec_config(files) else {
        return chain;
    };
    let program = cfg.exec.args.first().map(String::as_str).unwrap_or("");
    if chain.contains("not found in $PATH") {
        return format!(
            "executable {program:?} not found in the container's PATH, or not executable \
             ({chain})"
        );
    }
    // Seen from the host, the rootfs lacks what the container mounts (/proc, /dev,
    // ...), so this is only a hint once the exec has failed anyway.
    if let Some(cwd) = &cfg.exec.cwd
        && crate::rootfs::RootDir::open(rootfs).is_ok_and(|root| !root.is_dir(cwd))
    {
        return format!("working directory {cwd:?} does not exist in the container ({chain})");
    }
    chain
}

/// An exclusive `flock` on `<job_dir>/exec`, released when dropped. Without it (the
/// directory cannot be opened or locked) the exec still runs; only the cleanup of
/// libcontainer's leftover sockets could then race another exec.
fn lock_execs(execs: &Path) -> Option<Flock<std::fs::File>> {
    let dir = std::fs::File::open(execs)
        .map_err(|e| diag(&format!("cannot open {execs:?} to lock it: {e}")))
        .ok()?;
    Flock::lock(dir, FlockArg::LockExclusive)
        .map_err(|(_, e)| diag(&format!("cannot lock {execs:?}: {e}")))
        .ok()
}

fn tenant_entries(dir: &Path) -> Vec<OsString> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|name| {
            let name = name.to_string_lossy();
            TENANT_PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .collect()
}
