//! How a container ended, and the durable `exit.json` record of it.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExitStatus {
    /// The exit code, when the init process exited normally.
    pub code: Option<i32>,
    /// The signal that killed the init process. Note that a PID-namespace init only dies
    /// of signals it handles, or of SIGKILL.
    pub signal: Option<i32>,
    /// The kernel OOM killer killed at least one process of the container.
    pub oom_killed: bool,
    pub finished_at: DateTime<Utc>,
}

impl ExitStatus {
    pub fn from_wait(status: nix::sys::wait::WaitStatus, oom_killed: bool) -> ExitStatus {
        use nix::sys::wait::WaitStatus;
        let (code, signal) = match status {
            WaitStatus::Exited(_, code) => (Some(code), None),
            WaitStatus::Signaled(_, sig, _) => (None, Some(sig as i32)),
            _ => (None, None),
        };
        ExitStatus {
            code,
            signal,
            oom_killed,
            finished_at: Utc::now(),
        }
    }

    /// The number Docker reports: 137 after an OOM kill, else the code, else 128+signal.
    pub fn exit_code(&self) -> i32 {
        if self.oom_killed {
            return 137;
        }
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            // Never produced by a reaped process; 255 is what shells use for "unknown".
            (None, None) => 255,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExitFileError {
    #[error("cannot write exit status to {path:?}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read exit status from {path:?}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("exit status file {path:?} is corrupt: {source}")]
    Parse {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
}

/// Writes `status` so that readers see either no file or the whole record, even across
/// a crash: temp file, fsync, rename, fsync of the directory.
pub fn write(path: &Path, status: &ExitStatus) -> Result<(), ExitFileError> {
    let err = |source| ExitFileError::Write {
        path: path.to_owned(),
        source,
    };
    let data = serde_json::to_vec(status).map_err(|e| err(std::io::Error::other(e)))?;
    // Durable: the exit status is the one record the agent cannot rebuild.
    flynn_fsutil::write_atomic(path, &data, flynn_fsutil::Durability::Durable).map_err(err)
}

/// `None` when the container has not exited (or its shim died before recording it).
pub fn read(path: &Path) -> Result<Option<ExitStatus>, ExitFileError> {
    match std::fs::read(path) {
        Ok(data) => {
            serde_json::from_slice(&data)
                .map(Some)
                .map_err(|source| ExitFileError::Parse {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ExitFileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Option<i32>, signal: Option<i32>, oom: bool) -> ExitStatus {
        ExitStatus {
            code,
            signal,
            oom_killed: oom,
            finished_at: Utc::now(),
        }
    }

    #[test]
    fn docker_exit_codes() {
        assert_eq!(status(Some(0), None, false).exit_code(), 0);
        assert_eq!(status(Some(3), None, false).exit_code(), 3);
        assert_eq!(status(None, Some(15), false).exit_code(), 143);
        assert_eq!(status(None, Some(9), true).exit_code(), 137);
        assert_eq!(status(Some(1), None, true).exit_code(), 137);
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        assert_eq!(read(&path).unwrap(), None);
        let s = status(None, Some(9), true);
        write(&path, &s).unwrap();
        assert_eq!(read(&path).unwrap(), Some(s));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(read(&path), Err(ExitFileError::Parse { .. })));
    }
}
