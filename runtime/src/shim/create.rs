//! The shim's first phase: detach, create the container, hand-shake with the agent, start.

use std::io::{BufRead, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::common::{bind_control_socket, close_stdio, compile_seccomp, report, settle};
use super::error::ShimSetupError;
use super::monitor::{self, Handoff, Kind};
use super::protocol::{self, Handshake};
use super::stdio::{self, Pending};
use super::{JobFiles, ShimConfig, diag, error_chain, read_config, step, sys};
use crate::container::{self, Io};
use crate::seccomp::Filter;
use crate::spec;

pub fn main(job_dir: &Path) -> i32 {
    if !begin() {
        return 1;
    }
    create(job_dir)
}

/// A spare shim ([`super::SPARE_ARG`]): detaches and gets ready ahead of time, then
/// waits for the agent to write the job directory it is for (one line on stdin) and
/// carries on as [`main`] would. EOF instead of a line: no job came; it exits.
pub fn spare_main() -> i32 {
    if !begin() {
        return 1;
    }
    let Some(dir) = read_job_dir() else {
        return 0;
    };
    // Started as SCHED_IDLE (see `Spares`); the container inherits what we have now.
    if let Err(e) = sys::set_sched_policy(libc::SCHED_OTHER) {
        report(&Handshake::Error(format!(
            "cannot give the spare shim the normal scheduling policy: {e}"
        )));
        return 1;
    }
    create(&dir)
}

/// What every container shim does first, before it knows anything of its job.
fn begin() -> bool {
    sys::close_inherited_fds();
    sys::reset_signals();
    if let Err(e) = sys::detach() {
        report(&Handshake::Error(format!(
            "cannot detach the shim from the agent (setsid/fork): {e}"
        )));
        return false;
    }
    true
}

/// One line from stdin, read a byte at a time: what follows it (`start`) is read later
/// through the buffered std handle, which must find it still in the pipe.
fn read_job_dir() -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(0, &mut byte) {
            Ok(0) => return None,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 4096 => line.push(byte[0]),
            Ok(_) => return None,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
    (!line.is_empty()).then(|| std::ffi::OsStr::from_bytes(&line).into())
}

fn create(job_dir: &Path) -> i32 {
    // Absolute before settle() moves to "/": the agent may have given a relative path.
    let job_dir = std::path::absolute(job_dir).unwrap_or_else(|_| job_dir.to_owned());
    let files = JobFiles::new(&job_dir);
    let lock = match settle(&files) {
        Ok(lock) => lock,
        Err(e) => {
            let msg = e.to_string();
            // Nothing here is ours to clean up: the job dir may belong to a live shim.
            diag(&msg);
            report(&Handshake::Error(msg));
            return 1;
        }
    };
    step("settled (log, lock, pid file)");
    let prepared = match prepare(&files) {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            // Everything is cleaned up before the agent hears of the failure.
            diag(&msg);
            let _ = std::fs::remove_file(files.socket());
            report(&Handshake::Error(msg));
            return 1;
        }
    };
    step("prepared (spec, seccomp, stdio)");
    run(&files, prepared, lock)
}

struct Prepared {
    cfg: ShimConfig,
    listener: UnixListener,
    /// libcontainer's side of the container's streams, and ours.
    container_io: Io,
    io: Pending,
    seccomp: Option<Filter>,
}

/// Everything up to (not including) libcontainer's create. Errors are final messages.
fn prepare(files: &JobFiles) -> Result<Prepared, ShimSetupError> {
    let cfg = read_config(files)?;
    cfg.container
        .validate()
        .map_err(|e| ShimSetupError::InvalidConfig {
            what: "container",
            source: e.into(),
        })?;
    let listener = bind_control_socket(files)?;

    spec::prepare_rootfs(&cfg.container).map_err(|e| ShimSetupError::Spec(e.into()))?;
    let mut oci = spec::build_spec(&cfg.container).map_err(|e| ShimSetupError::Spec(e.into()))?;
    crate::host::adapt_spec(&mut oci);
    oci.save(files.spec())
        .map_err(|e| ShimSetupError::WriteSpec {
            path: files.spec(),
            source: e.into(),
        })?;
    join_network_first(&cfg.container, &mut oci)?;
    let seccomp = take_seccomp(&mut oci, &cfg)?;
    let bundle = files.bundle();
    std::fs::create_dir_all(&bundle).map_err(|source| ShimSetupError::Bundle {
        path: bundle.clone(),
        source,
    })?;
    let bundle_spec = bundle.join("config.json");
    oci.save(&bundle_spec)
        .map_err(|e| ShimSetupError::WriteSpec {
            path: bundle_spec.clone(),
            source: e.into(),
        })?;

    let (container_io, io) = stdio::prepare(files, cfg.container.tty, cfg.container.stdin)?;
    Ok(Prepared {
        cfg,
        listener,
        container_io,
        io,
        seccomp,
    })
}

/// A job in a user namespace of its own that joins a network namespace the host made
/// (a bridge job's): libcontainer would join it from inside the new user namespace,
/// which has no rights over it (EPERM). The shim joins it first, while it is still
/// the host's root (as runc does), and the container inherits it: the spec handed to
/// libcontainer names no network namespace.
fn join_network_first(
    c: &crate::config::ContainerConfig,
    oci: &mut Spec,
) -> Result<(), ShimSetupError> {
    let (Some(_), crate::config::NetworkMode::Path(path)) = (&c.security.userns, &c.network) else {
        return Ok(());
    };
    let err = |source: std::io::Error| ShimSetupError::JoinNetwork {
        path: path.clone(),
        source,
    };
    let ns = std::fs::File::open(path).map_err(err)?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| err(e.into()))?;
    if let Some(list) = oci
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    {
        list.retain(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Network);
    }
    Ok(())
}

/// Takes the seccomp profile out of the spec handed to libcontainer and returns it
/// compiled (from the host's cache when possible), for our executor to install.
fn take_seccomp(oci: &mut Spec, cfg: &ShimConfig) -> Result<Option<Filter>, ShimSetupError> {
    let profile = oci
        .linux_mut()
        .as_mut()
        .and_then(|l| l.seccomp_mut().take());
    compile_seccomp(oci, profile, &cfg.seccomp_cache())
}

fn run(files: &JobFiles, p: Prepared, lock: OwnedFd) -> i32 {
    let id = p.cfg.container.id.clone();
    let state_root = p.cfg.state_root.clone();
    // The write ends of the output pipes move into libcontainer, which closes them once
    // init has them: from then on, EOF on our read ends means the container is done.
    let result = container::create(&state_root, &id, &files.bundle(), p.container_io, p.seccomp);
    let mut container = match result {
        Ok(c) => c,
        Err(e) => {
            // libcontainer removed what it had created; the sockets are ours to remove.
            let msg = error_chain(&e);
            diag(&msg);
            p.io.discard();
            let _ = std::fs::remove_file(files.socket());
            report(&Handshake::Error(msg));
            return 1;
        }
    };
    step("created by libcontainer");
    let Some(init) = container.pid() else {
        let msg = format!("libcontainer created container {id} but reported no init pid");
        abort(files, &p.cfg, None, &msg);
        report(&Handshake::Error(msg));
        return 1;
    };

    // Init sent the pty master (if any) while being created.
    let io = match p.io.complete() {
        Ok(io) => io,
        Err(e) => {
            let msg = e.to_string();
            abort(files, &p.cfg, Some(init), &msg);
            report(&Handshake::Error(msg));
            return 1;
        }
    };

    if cfg_wants_loopback(&p.cfg)
        && let Err(e) = crate::loopback::bring_up(init.as_raw())
    {
        let msg = e.to_string();
        abort(files, &p.cfg, Some(init), &msg);
        report(&Handshake::Error(msg));
        return 1;
    }

    let created = Handshake::Created {
        pid: init.as_raw(),
        shim_pid: std::process::id() as i32,
    };
    if !report(&created) {
        abort(
            files,
            &p.cfg,
            Some(init),
            "the agent went away before start",
        );
        return 1;
    }
    step("reported created; waiting for start");
    if !wait_for_start() {
        abort(
            files,
            &p.cfg,
            Some(init),
            "the agent closed stdin before start",
        );
        return 0;
    }
    if let Err(e) = container::start(&mut container) {
        let msg = error_chain(&e);
        abort(files, &p.cfg, Some(init), &msg);
        report(&Handshake::Error(msg));
        return 1;
    }
    report(&Handshake::Started { pid: init.as_raw() });
    step("started");
    drop(container);
    close_stdio();

    monitor::hand_over(
        files,
        Handoff {
            kind: Kind::Container,
            pid: init,
            stdout: io.stdout,
            stderr: io.stderr,
            terminal: io.terminal,
            stdin: io.stdin,
            listener: p.listener.into(),
            lock,
        },
    )
}

/// A namespace the agent hands over is the agent's to configure; a fresh one only has a
/// loopback interface, down.
fn cfg_wants_loopback(cfg: &ShimConfig) -> bool {
    cfg.container.network == crate::config::NetworkMode::New
}

/// Blocks until the agent says `start` (true) or goes away (false).
fn wait_for_start() -> bool {
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut line = String::new();
        // A bounded read: the agent writes one short word.
        match (&mut stdin).take(4096).read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        match line.trim() {
            protocol::START => return true,
            "abort" => return false,
            other => {
                report(&Handshake::Error(format!(
                    "unknown handshake command {other:?}: expected {:?}",
                    protocol::START
                )));
            }
        }
    }
}

/// Kills and deletes a container that will never run, leaving nothing behind.
fn abort(files: &JobFiles, cfg: &ShimConfig, init: Option<Pid>, why: &str) {
    diag(&format!("aborting container {}: {why}", cfg.container.id));
    if let Some(pid) = init {
        // Reap it first so that its cgroups are empty when libcontainer removes them.
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
    }
    if let Err(e) = container::cleanup(&cfg.state_root, &cfg.container.id) {
        diag(&error_chain(&e));
    }
    let _ = std::fs::remove_file(files.socket());
    let _ = std::fs::remove_file(files.tty_socket());
}
