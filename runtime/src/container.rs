//! The libcontainer calls: create, start, delete, and cleanup after a lost shim.
//!
//! `create` forks and changes the working directory process-wide, so it must only run in
//! a single-threaded process: the shim. Nothing here is called from the daemon except
//! [`cleanup`], which neither forks nor changes directory.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupConfig, create_cgroup_manager};
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigHandler, Signal, signal};

use crate::cgroup;
use crate::config::is_valid_id;
use crate::seccomp::Filter;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid container id {0:?}: it must be 32 lowercase hex characters")]
    Id(String),
    #[error("cannot create the container state directory {path:?}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("libcontainer could not create container {id}: {source}")]
    Create {
        id: String,
        source: libcontainer::error::LibcontainerError,
    },
    #[error("cannot run the process in container {id}: {source}")]
    Exec {
        id: String,
        source: libcontainer::error::LibcontainerError,
    },
    #[error("libcontainer could not start container {id}: {source}")]
    Start {
        id: String,
        source: libcontainer::error::LibcontainerError,
    },
    #[error(
        "libcontainer could not delete container {id}: {source}; \
         run the cleanup again or remove its state dir and /flynn/{id} cgroups by hand"
    )]
    Delete {
        id: String,
        source: libcontainer::error::LibcontainerError,
    },
    #[error("cannot remove the cgroups of container {id}: {detail}")]
    Cgroup { id: String, detail: String },
}

/// The container's standard streams, as seen by its init process.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// How a process gets its standard streams.
pub enum Io {
    Pipes(Stdio),
    /// A pty made inside the container: its slave is stdin, stdout and stderr and the
    /// controlling terminal; its master is sent over the unix socket listening at this
    /// path (the spec's `process.terminal` must be true).
    Terminal {
        console_socket: PathBuf,
    },
}

impl Io {
    fn apply(self, builder: ContainerBuilder) -> ContainerBuilder {
        match self {
            Io::Pipes(stdio) => builder
                .with_stdin(stdio.stdin)
                .with_stdout(stdio.stdout)
                .with_stderr(stdio.stderr),
            Io::Terminal { console_socket } => builder.with_console_socket(Some(console_socket)),
        }
    }
}

/// libcontainer's default executor (validate the command, set the environment, `execvp`),
/// plus our seccomp filter installed in the init process right before the `execvp`: by
/// then no_new_privileges is set and the capabilities are dropped, and every later
/// syscall is the workload's.
#[derive(Clone)]
struct FilteredExecutor {
    filter: Option<Filter>,
}

impl Executor for FilteredExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(filter) = &self.filter {
            filter
                .install()
                .map_err(|e| ExecutorError::Other(e.to_string()))?;
        }
        libcontainer::workload::default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        libcontainer::workload::default::get_executor().setup_envs(envs)
    }
}

/// Creates the container from the spec in `bundle/config.json`. On return, init is a
/// child of the calling process, waiting for [`start`]. `seccomp`, if given, is installed
/// in init just before it executes the workload; the spec in the bundle must then carry
/// no `linux.seccomp` of its own.
pub fn create(
    state_root: &Path,
    id: &str,
    bundle: &Path,
    io: Io,
    seccomp: Option<Filter>,
) -> Result<Container, RuntimeError> {
    if !is_valid_id(id) {
        return Err(RuntimeError::Id(id.to_owned()));
    }
    std::fs::create_dir_all(state_root).map_err(|source| RuntimeError::StateDir {
        path: state_root.to_owned(),
        source,
    })?;
    let create_err = |source| RuntimeError::Create {
        id: id.to_owned(),
        source,
    };
    let builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(create_err)?;
    let builder = io
        .apply(builder)
        .with_executor(FilteredExecutor { filter: seccomp })
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true);

    // The init process inherits signal dispositions through clone and exec, and Rust
    // programs ignore SIGPIPE: without this, `yes | head` would spin in the container.
    let previous = set_sigpipe(SigHandler::SigDfl);
    let result = builder.build();
    set_sigpipe(previous);
    result.map_err(create_err)
}

/// Runs a process in the running container `id` (libcontainer's tenant builder): it
/// joins the namespaces of the container's init and its cgroups, and runs as `process`
/// (an OCI process, JSON, from [`crate::spec::exec_process`]) says: user, capabilities,
/// no_new_privileges, rlimits, terminal. `seccomp` is installed right before its
/// `execve`, as for init: the container's bundle spec has no seccomp profile, so
/// libcontainer would install none. Returns once the process runs its program; it is a
/// child of the caller. A program that cannot be run is an error here.
pub fn exec(
    state_root: &Path,
    id: &str,
    process: &Path,
    io: Io,
    seccomp: Option<Filter>,
) -> Result<nix::unistd::Pid, RuntimeError> {
    if !is_valid_id(id) {
        return Err(RuntimeError::Id(id.to_owned()));
    }
    let exec_err = |source| RuntimeError::Exec {
        id: id.to_owned(),
        source,
    };
    let builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(exec_err)?;
    let builder = io
        .apply(builder)
        .with_executor(FilteredExecutor { filter: seccomp })
        .as_tenant()
        .with_process(Some(process))
        .with_detach(true);
    let previous = set_sigpipe(SigHandler::SigDfl);
    let result = builder.build();
    set_sigpipe(previous);
    result.map_err(exec_err)
}

fn set_sigpipe(handler: SigHandler) -> SigHandler {
    // SAFETY: only SIG_DFL / SIG_IGN (or the disposition saved from a previous call, which
    // is one of those) are installed: no handler code runs, so nothing can be unsound.
    unsafe { signal(Signal::SIGPIPE, handler) }.unwrap_or(SigHandler::SigIgn)
}

/// Lets the created init exec the container's program.
pub fn start(container: &mut Container) -> Result<(), RuntimeError> {
    container.start().map_err(|source| RuntimeError::Start {
        id: container.id().to_owned(),
        source,
    })
}

/// Deletes the container's state dir and cgroups, killing whatever is left in them.
/// Idempotent: a container that is already gone is not an error, and concurrent calls
/// (a shim finishing while the agent cleans up) take turns. Cheap when there is nothing
/// left to do, the usual case once a shim has finished.
pub fn cleanup(state_root: &Path, id: &str) -> Result<(), RuntimeError> {
    if !is_valid_id(id) {
        return Err(RuntimeError::Id(id.to_owned()));
    }
    let dir = state_root.join(id);
    let result = delete_state(&dir, id).and_then(|()| remove_cgroups(id));
    match result {
        // Whoever else was deleting it (the shim, another cleanup) finished the job.
        Err(_) if is_gone(&dir, id) => Ok(()),
        other => other,
    }
}

/// Deletes a container whose init has exited and been reaped: its cgroups only need
/// `rmdir` and its state dir removing ([`crate::teardown`]), which skips libcontainer's
/// delete (its cgroup manager parses the mount table once per controller). Anything
/// unexpected (a cgroup still busy, say, because a process was moved into it from
/// outside) falls back to [`cleanup`], which kills and retries.
pub fn delete_exited(state_root: &Path, id: &str) -> Result<(), RuntimeError> {
    if !is_valid_id(id) {
        return Err(RuntimeError::Id(id.to_owned()));
    }
    match crate::teardown::remove_exited(state_root, id, false) {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::debug!(id, error = %e, "quick delete failed; deleting through libcontainer");
            cleanup(state_root, id)
        }
    }
}

fn is_gone(dir: &Path, id: &str) -> bool {
    !dir.exists() && cgroup::existing_dirs(id).is_ok_and(|d| d.is_empty())
}

/// The state dir, if there is one, through libcontainer (which also kills what runs and
/// removes the cgroups it recorded). Holds an exclusive `flock` on the directory meanwhile.
fn delete_state(dir: &Path, id: &str) -> Result<(), RuntimeError> {
    let state_err = |source: std::io::Error| RuntimeError::StateDir {
        path: dir.to_owned(),
        source,
    };
    let handle = match std::fs::File::open(dir) {
        Ok(handle) => handle,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(state_err(e)),
    };
    let _guard = Flock::lock(handle, FlockArg::LockExclusive)
        .map_err(|(_, e)| state_err(std::io::Error::from(e)))?;
    // Someone holding the lock before us may have deleted everything meanwhile.
    if !dir.exists() {
        return Ok(());
    }
    match Container::load(dir.to_owned()) {
        Ok(mut container) => container
            .delete(true)
            .map_err(|source| RuntimeError::Delete {
                id: id.to_owned(),
                source,
            }),
        // No readable state.json: a create that died half-way. Nothing in it is needed
        // to find the cgroups, which are removed next.
        Err(e) => {
            tracing::warn!(id, error = %e, "container state unreadable; removing it");
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::StateDir {
                    path: dir.to_owned(),
                    source: e,
                }),
                _ => Ok(()),
            }
        }
    }
}

/// The cgroups can outlive the state dir (a crash between the two removals, or a create
/// that failed early), so they are checked on their own: directly first, since building
/// libcgroups' manager costs a mount table parse per controller.
fn remove_cgroups(id: &str) -> Result<(), RuntimeError> {
    if cgroup::existing_dirs(id).is_ok_and(|d| d.is_empty()) {
        return Ok(());
    }
    let manager = create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroup::cgroup_path(id),
        systemd_cgroup: false,
        container_name: id.to_owned(),
    })
    .map_err(|e| RuntimeError::Cgroup {
        id: id.to_owned(),
        detail: e.to_string(),
    })?;
    use libcgroups::common::CgroupManager;
    manager.remove().map_err(|e| RuntimeError::Cgroup {
        id: id.to_owned(),
        detail: e.to_string(),
    })
}
