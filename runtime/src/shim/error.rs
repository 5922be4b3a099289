//! Why a shim could not get its process running (or its monitor could not take it
//! over). The agent hears these through the handshake as their messages
//! (`Handshake::Error`), and passes them on to users: the wording is part of the
//! interface.
//!
//! The monitor reaches this type (it reads the shim config), so it must not name
//! libcontainer's types (nor tokio's): errors of the creating phase's libraries travel
//! boxed, so only the phase that boxes them links their code.

use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;

/// Another library's error, boxed: see the module's comment.
pub type Source = Box<dyn std::error::Error>;

#[derive(Debug, thiserror::Error)]
pub enum ShimSetupError {
    /// `shim.json` or `exec.json` (`what`: "shim" or "exec").
    #[error("cannot read {what} config {path:?}: {source}")]
    ReadConfig {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {what} config {path:?}: {source}")]
    ParseConfig {
        what: &'static str,
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The config's values (`what`: "container" or "exec").
    #[error("invalid {what} config: {source}")]
    InvalidConfig { what: &'static str, source: Source },

    #[error("cannot open {path:?}: {source}")]
    OpenLock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path:?}: {source}")]
    Lock { path: PathBuf, source: Errno },
    #[error("cannot query the lock on {path:?}: {source}")]
    QueryLock { path: PathBuf, source: Errno },
    /// `pid` is "unknown" when the holder is not visible from this pid namespace.
    #[error(
        "another shim (pid {pid}) is still running for {dir:?} after {waited:?}: each job \
         needs its own directory"
    )]
    ShimRunning {
        pid: String,
        dir: PathBuf,
        waited: Duration,
    },

    /// The control socket's path is unusable (too long).
    #[error("{0}")]
    SocketPath(Source),
    #[error("another shim is already serving {path:?}: each job needs its own directory")]
    SocketInUse { path: PathBuf },
    #[error("cannot remove the stale control socket {path:?}: {source}")]
    StaleSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path:?}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Building the spec, or preparing the rootfs for it.
    #[error("{0}")]
    Spec(Source),
    #[error("cannot write the OCI spec {path:?}: {source}")]
    WriteSpec { path: PathBuf, source: Source },
    #[error("cannot join the job's network namespace {path:?}: {source}")]
    JoinNetwork {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the bundle directory {path:?}: {source}")]
    Bundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the container's spec {path:?}: {source}")]
    ReadSpec { path: PathBuf, source: Source },
    #[error("the container's spec {path:?} has no process")]
    SpecWithoutProcess { path: PathBuf },
    #[error("cannot encode the exec's process: {0}")]
    EncodeProcess(serde_json::Error),
    #[error("cannot write {path:?}: {source}")]
    WriteProcess {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "a seccomp profile needs no_new_privileges in this runtime (a bug in the spec \
         builder)"
    )]
    SeccompWithoutNoNewPrivileges,
    #[error("cannot prepare the container's seccomp filter: {0}")]
    Seccomp(Source),

    #[error("{dir:?} is not an exec directory (<job_dir>/{execs}/<exec_id>)", execs = super::EXECS)]
    NotExecDir { dir: PathBuf },
    #[error("exec directory {dir:?} does not match exec id {exec_id}")]
    ExecIdMismatch { dir: PathBuf, exec_id: String },
    #[error("container {id} is not running: start the job before exec'ing into it")]
    ContainerNotRunning { id: String },

    #[error("cannot remove the stale console socket {path:?}: {source}")]
    StaleConsoleSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on the console socket {path:?}: {source}")]
    ConsoleListen {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `which`: "stdout", "stderr" or "stdin".
    #[error("cannot create the {which} pipe: {source}")]
    Pipe { which: &'static str, source: Errno },
    #[error("cannot open /dev/null for stdin: {0}")]
    DevNull(std::io::Error),
    #[error("the container did not send its terminal within {ms} ms")]
    TerminalTimeout { ms: u16 },
    #[error("cannot wait on the console socket: {0}")]
    ConsoleWait(Errno),
    #[error("cannot accept on the console socket: {0}")]
    ConsoleAccept(std::io::Error),
    #[error("cannot receive the terminal from the container: {0}")]
    ConsoleReceive(Errno),
    #[error("cannot read the console socket message: {0}")]
    ConsoleMessage(Errno),
    #[error("the container's console message carried no descriptor")]
    NoTerminal,
    #[error("cannot stat the pty master: {0}")]
    StatMaster(Errno),
    #[error(
        "the container sent a descriptor that is not a pty master (mode {mode:o}, device \
         {major}:{minor})"
    )]
    NotPtyMaster { mode: u32, major: u64, minor: u64 },
    #[error("cannot duplicate the pty master: {0}")]
    DuplicateMaster(std::io::Error),

    /// The monitor's set-up (`what` failed).
    #[error("{what}: {source}")]
    Monitor { what: &'static str, source: Source },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages reach users: they read as they did when they were strings.
    #[test]
    fn messages_keep_their_wording() {
        let dir = PathBuf::from("/j/exec/x");
        assert_eq!(
            ShimSetupError::NotExecDir { dir: dir.clone() }.to_string(),
            format!("{dir:?} is not an exec directory (<job_dir>/exec/<exec_id>)")
        );
        assert_eq!(
            ShimSetupError::ShimRunning {
                pid: "7".into(),
                dir: dir.clone(),
                waited: Duration::from_secs(5),
            }
            .to_string(),
            format!(
                "another shim (pid 7) is still running for {dir:?} after 5s: each job needs its own directory"
            )
        );
        assert_eq!(
            ShimSetupError::Pipe {
                which: "stdin",
                source: Errno::EMFILE
            }
            .to_string(),
            format!("cannot create the stdin pipe: {}", Errno::EMFILE)
        );
        assert_eq!(
            ShimSetupError::Monitor {
                what: "cannot block SIGCHLD",
                source: Errno::EINVAL.into()
            }
            .to_string(),
            format!("cannot block SIGCHLD: {}", Errno::EINVAL)
        );
    }
}
