use std::path::Path;

/// Why a job operation failed. Each variant maps to one HTTP status in the API.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no such job: {0}")]
    NotFound(String),
    #[error("job id prefix {0} matches several jobs: give more characters")]
    Ambiguous(String),
    #[error("the name {0:?} is already used by another job: remove it or choose another name")]
    NameInUse(String),
    #[error("job {0} is running: stop it first, or force the removal")]
    Running(String),
    #[error("job {0} is not running")]
    NotRunning(String),
    #[error("{0} has no terminal to resize: start it with -t")]
    NoTerminal(String),
    #[error("job {0} is being removed")]
    Removing(String),
    #[error("job {0} did not exit after SIGKILL")]
    StopTimeout(String),
    #[error(transparent)]
    Image(#[from] image::StoreError),
    #[error("cannot mount the job's root filesystem: {0}")]
    Rootfs(#[from] image::rootfs::RootfsError),
    #[error("cannot run the job: {0}")]
    Shim(#[from] runtime::shim::ShimError),
    #[error("{0}")]
    Network(#[from] network::NetworkError),
    /// Boxed: libcontainer's errors are large and this path is rare.
    #[error("cannot clean up the job's container: {0}")]
    Runtime(Box<runtime::RuntimeError>),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{step} did not finish within {}s: the host's disk or kernel is stuck (see the daemon's log); nothing of the job was left", waited.as_secs())]
    TimedOut {
        step: &'static str,
        waited: std::time::Duration,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<runtime::RuntimeError> for JobError {
    fn from(e: runtime::RuntimeError) -> JobError {
        JobError::Runtime(Box::new(e))
    }
}

impl JobError {
    pub fn io(path: &Path, source: std::io::Error) -> JobError {
        JobError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub fn join(e: tokio::task::JoinError) -> JobError {
        JobError::Internal(format!("a worker task failed: {e}"))
    }
}
