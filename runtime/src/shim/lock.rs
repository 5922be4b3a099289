//! `shim.lock`: how the agent tells that a shim is completely done.
//!
//! A shim answers waiters as soon as the exit is recorded, and only then deletes the
//! container (cgroups, state dir). So "the exit is known" no longer means "the shim is
//! finished"; this lock does. The shim takes a POSIX record lock (`F_SETLK`, whole file)
//! on `shim.lock` right after it detaches and holds it until its process ends, across the
//! re-exec into the monitor. Unlike `flock`, a record lock belongs to the process, not to
//! the open file: the container's init, cloned from the shim, never holds it, so the lock
//! goes away exactly when the shim does. [`wait_shim_gone`] asks the kernel who holds it
//! (`F_GETLK` reports the holder's pid) and waits for that process with a pidfd.
//!
//! A record lock is released when its process closes *any* descriptor of the file, so the
//! shim never opens `shim.lock` a second time.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::error::ShimSetupError;
use super::{JobFiles, ShimError, sys};

/// A whole-file write-lock request (or query) for `fcntl`.
fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is plain integers (and, on some architectures, padding), for which
    // all-zero bytes are a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 0;
    lock
}

/// How long a new shim waits for the previous shim of the same job to finish: it may
/// still be deleting its container when the agent restarts the job (the exit is known
/// before the delete). Normally milliseconds; beyond this, the other shim is taken to be
/// alive and serving another container.
const PREVIOUS_SHIM_WAIT: Duration = Duration::from_secs(5);

/// Creates (if needed) and locks `shim.lock` for this process; the descriptor must stay
/// open for the rest of its life. Waits a while for a previous shim of the job to finish;
/// fails, naming the holder, if one still holds the lock after that.
pub(super) fn acquire(files: &JobFiles) -> Result<OwnedFd, ShimSetupError> {
    let path = files.shim_lock();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| ShimSetupError::OpenLock {
            path: path.clone(),
            source,
        })?;
    let deadline = Instant::now() + PREVIOUS_SHIM_WAIT;
    loop {
        match fcntl(
            file.as_raw_fd(),
            FcntlArg::F_SETLK(&whole_file(libc::F_WRLCK)),
        ) {
            Ok(_) => return Ok(file.into()),
            Err(Errno::EAGAIN | Errno::EACCES) => {}
            Err(source) => return Err(ShimSetupError::Lock { path, source }),
        }
        match wait_unlocked(&file, deadline) {
            Ok(Wait::Unlocked) => {}
            Ok(Wait::TimedOut(pid)) => {
                let pid = if pid > 0 {
                    pid.to_string()
                } else {
                    "unknown".to_owned()
                };
                return Err(ShimSetupError::ShimRunning {
                    pid,
                    dir: files.dir().to_owned(),
                    waited: PREVIOUS_SHIM_WAIT,
                });
            }
            Err(source) => return Err(ShimSetupError::QueryLock { path, source }),
        }
    }
}

/// The pid of the process holding a lock on `file`, if any; `Some(0)` when the holder
/// is not visible from this pid namespace.
fn holder(file: &impl AsFd) -> Result<Option<i32>, Errno> {
    let mut query = whole_file(libc::F_WRLCK);
    fcntl(file.as_fd().as_raw_fd(), FcntlArg::F_GETLK(&mut query))?;
    if query.l_type == libc::F_UNLCK as libc::c_short {
        Ok(None)
    } else {
        Ok(Some(query.l_pid.max(0)))
    }
}

enum Wait {
    Unlocked,
    /// Still held at the deadline, by this pid (0: not visible from here).
    TimedOut(i32),
}

/// Waits until no process holds a lock on `file`, or until `deadline`. Sleeps on a pidfd
/// of the holder (no polling) where pidfds exist and the holder is visible.
fn wait_unlocked(file: &File, deadline: Instant) -> Result<Wait, Errno> {
    let mut nap = Duration::from_micros(200);
    loop {
        let Some(pid) = holder(file)? else {
            return Ok(Wait::Unlocked);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Wait::TimedOut(pid));
        }
        let pidfd = if pid > 0 {
            sys::pidfd_open(pid).ok()
        } else {
            None
        };
        match pidfd {
            // The pid may have been reused between the query and pidfd_open: the pidfd
            // is only that of the holder if it still holds the lock now.
            Some(pidfd) if holder(file)? == Some(pid) => {
                let ms = left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32;
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                match poll(
                    &mut fds,
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
                ) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e),
                }
            }
            Some(_) => {}
            // No pidfds (before Linux 5.3) or a holder we cannot see: look again shortly.
            None => {
                std::thread::sleep(nap.min(left));
                nap = (nap * 2).min(Duration::from_millis(20));
            }
        }
    }
}

/// Blocks until the shim of `job_dir` has exited, so that nothing it does can race the
/// caller's own cleanup (unmounting the rootfs, [`crate::shim::cleanup`], removing the job
/// directory, starting the job again). Returns at once when no shim holds the lock:
/// finished, never started, or a shim from before this lock existed. Only meaningful once
/// the shim has reported `created` (it takes the lock before that). Blocking: call it from
/// a blocking context (`tokio::task::spawn_blocking`).
pub fn wait_shim_gone(job_dir: &Path, timeout: Duration) -> Result<(), ShimError> {
    let path = JobFiles::new(job_dir).shim_lock();
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ShimError::Io {
                what: format!("opening {path:?}"),
                source,
            });
        }
    };
    match wait_unlocked(&file, Instant::now() + timeout) {
        Ok(Wait::Unlocked) => Ok(()),
        Ok(Wait::TimedOut(_)) => Err(ShimError::StillRunning {
            dir: job_dir.to_owned(),
            waited: timeout,
        }),
        Err(e) => Err(ShimError::Io {
            what: format!("waiting for the shim holding {path:?}"),
            source: e.into(),
        }),
    }
}
