//! Removing what is left of a container whose init has exited — its cgroups and
//! libcontainer's state directory — without libcontainer.
//!
//! Once init has exited and been reaped, the kernel has killed every other process of its
//! PID namespace, so the cgroups are empty and only need `rmdir`, and the state dir only
//! needs removing. libcontainer's delete would do the same after parsing the mount table
//! once per controller. Doing it here keeps libcontainer out of the shim's monitor (and
//! out of the lean monitor binary). The one surprise handled is a process moved into the
//! cgroup from outside (it outlives the PID namespace): with `kill_leftovers`, it is
//! killed and the removal retried for a while.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::cgroup::{self, CgroupError};

/// How long leftover processes get to die (SIGKILL is not instant: a process in
/// uninterruptible sleep dies when it wakes).
const KILL_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot lock the container state dir {path:?}: {source}")]
    Lock { path: PathBuf, source: Errno },
    #[error("cannot remove {path:?}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the cgroups {dirs:?} of container {id} still hold processes after SIGKILL; \
         remove them once those processes are gone"
    )]
    Busy { id: String, dirs: Vec<PathBuf> },
}

/// Removes the cgroups and the state dir (`<state_root>/<id>`) of an exited container,
/// holding the same `flock` on the state dir as [`crate::container::cleanup`], so that
/// the two never delete at the same time. A container already gone is not an error.
pub fn remove_exited(
    state_root: &Path,
    id: &str,
    kill_leftovers: bool,
) -> Result<(), TeardownError> {
    let dir = state_root.join(id);
    let _guard = match std::fs::File::open(&dir) {
        Ok(handle) => Some(Flock::lock(handle, FlockArg::LockExclusive).map_err(
            |(_, source)| TeardownError::Lock {
                path: dir.clone(),
                source,
            },
        )?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(TeardownError::Remove { path: dir, source }),
    };
    // Cgroups first, as libcontainer does: a crash in between leaves the state dir, by
    // which a later cleanup still finds the container.
    remove_cgroups(id, kill_leftovers)?;
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TeardownError::Remove {
            path: dir,
            source: e,
        }),
        _ => Ok(()),
    }
}

fn remove_cgroups(id: &str, kill_leftovers: bool) -> Result<(), TeardownError> {
    let deadline = Instant::now() + KILL_WAIT;
    let mut nap = Duration::from_millis(1);
    loop {
        let mut busy = Vec::new();
        for dir in cgroup::existing_dirs(id)? {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if kill_leftovers && e.raw_os_error() == Some(libc::EBUSY) => busy.push(dir),
                Err(source) => return Err(TeardownError::Remove { path: dir, source }),
            }
        }
        if busy.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TeardownError::Busy {
                id: id.to_owned(),
                dirs: busy,
            });
        }
        for dir in &busy {
            kill_members(dir, id);
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

/// SIGKILLs every process in the cgroup at `dir`.
fn kill_members(dir: &Path, id: &str) {
    // cgroup v2 (5.14+) kills the whole cgroup in one write.
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() && std::fs::write(&kill_file, "1").is_ok() {
        return;
    }
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    let suffix = format!("{}/{id}", cgroup::PARENT);
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // A pidfd pins the process: once it is checked to be in the container's cgroup,
        // the signal cannot reach another process that reused the pid meanwhile.
        let Ok(pidfd) = crate::shim::pidfd_open(pid) else {
            continue;
        };
        let member = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|text| text.lines().any(|l| l.ends_with(&suffix)));
        if member {
            let _ = pidfd_kill(&pidfd);
        }
    }
}

fn pidfd_kill(pidfd: &OwnedFd) -> Result<(), Errno> {
    rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL)
        .map_err(|e| Errno::from_raw(e.raw_os_error()))
}
