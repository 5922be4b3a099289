//! How a container ended, and the durable `exit.json` record of it.

use std::io::Write;
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
    write_atomic(path, &data, Durability::Fsync).map_err(err)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Survives power loss: the exit status is the one record the agent cannot rebuild.
    Fsync,
    /// Only ever read while this boot's processes live (shim.pid, shim.json): a crash of
    /// the host kills those processes anyway, so the fsyncs would only add latency.
    Visible,
}

/// Readers see either the old file or the whole new one, never a partial write.
pub(crate) fn write_atomic(
    path: &Path,
    data: &[u8],
    durability: Durability,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    if durability == Durability::Fsync {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    if durability == Durability::Fsync {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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
