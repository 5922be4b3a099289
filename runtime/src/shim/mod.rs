//! The per-container shim, the per-exec shim, and the agent's side of talking to them.
//!
//! A shim is the agent's own binary run as `flynn-host shim <DIR>`: a fresh,
//! single-threaded process (libcontainer forks and changes directory process-wide, which
//! a multi-threaded daemon must never do). With a job directory (`shim.json`) it detaches
//! from the daemon, creates the container, waits for `start`, then supervises it: logs
//! its output, feeds its stdin, serves control requests, reaps it, records how it ended
//! and deletes it. With an exec directory (`exec.json`, [`exec_dir`]) it runs a process in
//! the job's running container instead and supervises that the same way. The daemon can
//! die and come back at any point; a shim does not depend on it after the handshake.
//!
//! After the start, unless the process exits within a short grace period (then the shim
//! finishes at once), the shim re-executes into its monitor (the handed-over descriptors
//! in [`MONITOR_ENV`]) so that the supervising process carries none of libcontainer's
//! memory: the lean `flynn-shim-monitor` binary when it is installed beside the running
//! binary ([`MONITOR_BINARY`]), else the same binary again. The supervised process stays
//! its child across exec, and `shim.lock` stays locked.

mod client;
mod common;
mod create;
mod error;
mod exec;
mod lock;
mod monitor;
pub mod protocol;
mod stdio;
mod sys;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::container::cleanup;
pub use client::{CreatedShim, ShimClient, ShimError, Spares, read_exit, spawn, spawn_exec};
pub use lock::wait_shim_gone;
pub use protocol::{ShimState, Status};
pub use sys::pidfd_open;

use crate::config::ContainerConfig;
pub use crate::config::ExecConfig;
use error::ShimSetupError;

/// Set (by the shim itself) when it re-executes into its monitoring phase.
pub const MONITOR_ENV: &str = "FLYNN_SHIM_MONITOR";

/// The lean monitor binary (`src/bin/flynn-shim-monitor.rs`): when a file of this name
/// is beside the running binary, the shim re-executes into it rather than into itself.
pub const MONITOR_BINARY: &str = "flynn-shim-monitor";

/// In place of the directory (`flynn-host shim --spare`): a container shim started
/// before its job, which reads the job directory from stdin ([`Spares`]).
pub const SPARE_ARG: &str = "--spare";

/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// What the agent writes to `shim.json` before spawning the shim.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ShimConfig {
    pub container: ContainerConfig,
    /// libcontainer's root directory (one state dir per container), e.g. `<state>/containers`.
    pub state_root: PathBuf,
    /// Where the container's output goes, in Docker's json-file format.
    pub log_path: PathBuf,
    /// Rotation of that log (`--log-opt max-size/max-file`); none: it only grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_rotation: Option<crate::logs::Rotation>,
}

impl ShimConfig {
    /// Compiled seccomp filters, shared by every container of the host
    /// ([`crate::seccomp`]): `<state_root>/seccomp`.
    pub fn seccomp_cache(&self) -> PathBuf {
        self.state_root.join("seccomp")
    }
}

/// What the agent writes to `exec.json` (through [`spawn_exec`]): the exec, plus where
/// libcontainer keeps the container's state. Reads as an [`ExecConfig`] too.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ExecShimConfig {
    #[serde(flatten)]
    pub exec: ExecConfig,
    pub state_root: PathBuf,
}

/// The directory of exec `exec_id` of the job in `job_dir`: `<job_dir>/exec/<exec_id>`.
/// Its files mirror a job directory's ([`JobFiles`] works on both), with `exec.json` in
/// place of `shim.json`.
pub fn exec_dir(job_dir: &Path, exec_id: &str) -> PathBuf {
    job_dir.join(EXECS).join(exec_id)
}

/// The folder of a job directory that holds its exec directories.
const EXECS: &str = "exec";

/// The files of one job directory, or of one exec directory (the same names).
#[derive(Clone, Debug)]
pub struct JobFiles {
    dir: PathBuf,
}

impl JobFiles {
    pub fn new(dir: &Path) -> JobFiles {
        JobFiles {
            dir: dir.to_owned(),
        }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// [`ShimConfig`], written by the agent (job directories).
    pub fn shim_config(&self) -> PathBuf {
        self.dir.join("shim.json")
    }
    /// [`ExecShimConfig`], written by the agent (exec directories).
    pub fn exec_config(&self) -> PathBuf {
        self.dir.join("exec.json")
    }
    /// The OCI process an exec runs as (exec directories), written by its shim.
    pub fn process_spec(&self) -> PathBuf {
        self.dir.join("process.json")
    }
    /// An exec's output (a job's is at [`ShimConfig::log_path`]).
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.json")
    }
    /// The console socket on which the shim receives the pty master (terminal only),
    /// removed once received.
    pub fn tty_socket(&self) -> PathBuf {
        self.dir.join("tty.sock")
    }
    /// The complete OCI spec, seccomp profile included: what the container runs with.
    pub fn spec(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// libcontainer's bundle: `config.json` there is the spec without `linux.seccomp`,
    /// which the shim compiles and installs itself ([`crate::seccomp`]).
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    /// Locked by the shim for as long as it lives ([`wait_shim_gone`]).
    pub fn shim_lock(&self) -> PathBuf {
        self.dir.join("shim.lock")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("shim.sock")
    }
    pub fn shim_pid(&self) -> PathBuf {
        self.dir.join("shim.pid")
    }
    /// [`crate::ExitStatus`], written atomically when the container has exited.
    pub fn exit_status(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// The shim's own diagnostics (its stderr once detached).
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }

    /// Unix socket paths are limited; fail early with the reason instead of a bind error.
    pub fn check_socket_path(&self) -> Result<PathBuf, ShimError> {
        let path = self.socket();
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ShimError::SocketPathTooLong { path, len });
        }
        Ok(path)
    }
}

fn read_config(files: &JobFiles) -> Result<ShimConfig, ShimSetupError> {
    let path = files.shim_config();
    let data = std::fs::read(&path).map_err(|source| ShimSetupError::ReadConfig {
        what: "shim",
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&data).map_err(|source| ShimSetupError::ParseConfig {
        what: "shim",
        path,
        source,
    })
}

/// The shim's entry point, for `flynn-host shim <DIR>`: a container shim for a job
/// directory, an exec shim for an exec directory (one holding `exec.json`). Returns the
/// process exit code.
///
/// Must be called first thing in `main`: before the process creates any thread (it forks,
/// and libcontainer forks and changes directory) and before it opens any file (it closes
/// every inherited descriptor above stderr, so that nothing leaked by the agent lives on
/// in the shim). After the start the shim may re-execute `/proc/self/exe` with the same
/// argv, so the same dispatch must lead back here.
pub fn main(dir: &Path) -> i32 {
    match std::env::var_os(MONITOR_ENV) {
        Some(handoff) => monitor::main_after_exec(dir, &handoff),
        None if dir.as_os_str() == SPARE_ARG => create::spare_main(),
        None if JobFiles::new(dir).exec_config().exists() => exec::main(dir),
        None => create::main(dir),
    }
}

/// The entry point of the lean monitor binary ([`MONITOR_BINARY`]), which only a shim
/// starts. Returns the process exit code.
pub fn monitor_main() -> i32 {
    // The shim keeps its argv (`<argv0> shim <DIR>`) across the re-exec.
    let dir = std::env::args_os()
        .nth(2)
        .map(PathBuf::from)
        .unwrap_or_default();
    match std::env::var_os(MONITOR_ENV) {
        Some(handoff) => monitor::main_after_exec(&dir, &handoff),
        None => {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!(
                    "{MONITOR_BINARY} is started by flynn-host's shims (with {MONITOR_ENV} \
                     set), never by hand\n"
                )
                .as_bytes(),
            );
            2
        }
    }
}

/// The shim's own diagnostics. Once detached, its stderr is `shim.log` in the job dir:
/// the only place a message can go when nobody is listening on the handshake any more.
fn diag(msg: &str) {
    use std::io::Write;
    tracing::warn!("{msg}");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let _ = writeln!(
        std::io::stderr(),
        "{now} shim[{}]: {msg}",
        std::process::id()
    );
}

/// A step of the shim's start, in `shim.log` when the agent runs with `FLYNN_LOG`
/// at debug or trace (the shim inherits its environment): with the agent's own step
/// lines, a start that stops somewhere says where.
///
/// `FLYNN_SHIM_HANG_AT=<step prefix>` (tests only) makes the shim stop at that step
/// for good, as a shim that hangs in the kernel would: the agent's time-outs must end
/// the start and clean up.
fn step(msg: &str) {
    let verbose =
        std::env::var("FLYNN_LOG").is_ok_and(|v| v.contains("debug") || v.contains("trace"));
    if verbose {
        use std::io::Write;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let _ = writeln!(
            std::io::stderr(),
            "{now} shim[{}]: step: {msg}",
            std::process::id()
        );
    }
    if std::env::var("FLYNN_SHIM_HANG_AT").is_ok_and(|at| !at.is_empty() && msg.starts_with(&at)) {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// An error with its causes, skipping causes whose text the message already contains.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = cause.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_json_reads_as_an_exec_config() {
        let file = ExecShimConfig {
            exec: ExecConfig {
                exec_id: "0123456789ab".into(),
                args: vec!["sh".into()],
                env: vec!["A=b".into()],
                cwd: Some("/srv".into()),
                user: None,
                tty: true,
                stdin: true,
            },
            state_root: "/var/lib/flynn/containers".into(),
        };
        let json = serde_json::to_vec(&file).unwrap();
        let as_exec: ExecConfig = serde_json::from_slice(&json).unwrap();
        assert_eq!(as_exec, file.exec);
        let back: ExecShimConfig = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.state_root, file.state_root);
        assert_eq!(
            exec_dir(Path::new("/j"), "0123456789ab"),
            Path::new("/j/exec/0123456789ab")
        );
    }
}
