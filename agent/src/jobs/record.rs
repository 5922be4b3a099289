//! A job's directory on disk: its record (`job.json`), log file, and rootfs
//! mount. Records are replaced atomically, so a daemon killed at any moment
//! leaves either the old or the new record, never a torn one.

use std::fs;
use std::path::{Path, PathBuf};

use super::JobError;
use crate::model::{ExitInfo, Job};

pub const RECORD_FILE: &str = "job.json";
pub const LOG_FILE: &str = "log.json";

/// How long removal waits for an exited job's shim to finish its own cleanup.
const SHIM_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// 128 random bits as 32 hex characters.
/// Unique, not secret: never waits for the kernel's random pool.
pub fn new_id() -> Result<String, JobError> {
    crate::random::hex(16, crate::random::Use::Unique)
        .map_err(|e| JobError::io(Path::new("getrandom"), e))
}

/// Creates the job's directory with its first record and an empty log (so log
/// followers can open it before the job starts).
pub fn create_dir(dir: &Path, job: &Job) -> Result<(), JobError> {
    fs::create_dir_all(dir).map_err(|e| JobError::io(dir, e))?;
    let log = dir.join(LOG_FILE);
    fs::File::create(&log).map_err(|e| JobError::io(&log, e))?;
    crate::failpoint::hit("create.dir");
    save(dir, job)
}

pub fn save(dir: &Path, job: &Job) -> Result<(), JobError> {
    let data = serde_json::to_vec_pretty(job).map_err(|e| JobError::Internal(e.to_string()))?;
    let path = dir.join(RECORD_FILE);
    // Ordered: a machine crash leaves the old record or the new one, whole (the
    // directory is not flushed on every change of a job).
    flynn_fsutil::write_atomic(&path, &data, flynn_fsutil::Durability::Ordered)
        .map_err(|e| JobError::io(&path, e))
}

/// Every readable record under `jobs`. A directory without a readable record is
/// a job whose creation was interrupted before its first record landed: it is
/// removed (nothing else can refer to it).
pub fn load_all(jobs: &Path) -> Vec<Job> {
    let entries = match fs::read_dir(jobs) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::error!(dir = %jobs.display(), error = %e, "reading the jobs directory");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let record = dir.join(RECORD_FILE);
        match fs::read(&record)
            .map_err(|e| e.to_string())
            .and_then(|d| serde_json::from_slice::<Job>(&d).map_err(|e| e.to_string()))
        {
            Ok(job) => out.push(job),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a job directory without a valid record");
                let _ = unmount_rootfs(&dir);
                if let Err(e) = fs::remove_dir_all(&dir) {
                    tracing::error!(dir = %dir.display(), error = %e, "removing a broken job directory");
                }
            }
        }
    }
    out
}

/// Ids of every recorded job. The host network keeps their endpoints at start-up:
/// a record that says created or exited may belong to a container that is in fact
/// running (a daemon killed between start and record), and recovery, which can tell,
/// releases the endpoints of the jobs that are not.
pub fn recorded_ids(jobs: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(jobs) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| fs::read(e.path().join(RECORD_FILE)).ok())
        .filter_map(|d| serde_json::from_slice::<Job>(&d).ok())
        .filter(|j| j.state != crate::model::JobState::Removed)
        .map(|j| j.id)
        .collect()
}

fn rootfs_dirs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join("rootfs"), dir.join("upper"), dir.join("work"))
}

/// Mounts the job's overlay: the image's layers below, the job's own upper dir on top
/// (for a job in a user namespace, see `userns`).
pub fn mount_rootfs(
    dir: &Path,
    lowers: &[PathBuf],
    userns: Option<crate::model::IdRange>,
) -> Result<(), JobError> {
    let (rootfs, upper, work) = rootfs_dirs(dir);
    for d in [&rootfs, &upper, &work] {
        fs::create_dir_all(d).map_err(|e| JobError::io(d, e))?;
    }
    // A previous run's mount may survive a daemon crash; never stack a second one.
    image::rootfs::unmount(&rootfs)?;
    match userns {
        None => image::rootfs::mount_overlay(lowers, &upper, &work, &rootfs)?,
        Some(range) => super::userns::mount_rootfs(dir, lowers, &upper, &work, &rootfs, range)?,
    }
    Ok(())
}

pub fn unmount_rootfs(dir: &Path) -> Result<(), JobError> {
    let (rootfs, _, _) = rootfs_dirs(dir);
    if rootfs.exists() {
        image::rootfs::unmount(&rootfs)?;
    }
    Ok(())
}

/// Removes everything a job left: mount, container state and cgroups, directory.
pub fn destroy(dir: &Path, containers: &Path, id: &str) -> Result<(), JobError> {
    // The shim deletes its container after reporting the exit, and exec shims
    // record their process's end a moment after the container's: let them finish.
    let execs = fs::read_dir(dir.join("exec"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    for shim_dir in std::iter::once(dir.to_path_buf()).chain(execs) {
        if let Err(e) = runtime::shim::wait_shim_gone(&shim_dir, SHIM_EXIT_GRACE) {
            tracing::warn!(job = id, dir = %shim_dir.display(), error = %e, "a shim is still there; cleaning up anyway");
        }
    }
    unmount_rootfs(dir)?;
    crate::failpoint::hit("rm.unmounted");
    runtime::shim::cleanup(containers, id)?;
    crate::failpoint::hit("rm.cleaned");
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JobError::io(dir, e)),
    }
}

/// How long the exit of a removed job is kept for late waiters.
pub const TOMBSTONE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// How long the log of an auto-removed job is kept: long enough for a `run --rm`
/// whose log stream was cut by a daemon handover to read the rest from the
/// successor, short enough that large logs do not pile up.
pub const REMOVED_LOG_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Moves an auto-removed job's log beside its tombstone (same filesystem: a
/// rename). Its age counts from now, not from the last line the job wrote.
pub fn keep_log(job_dir: &Path, removed: &Path, id: &str) {
    let kept = removed.join(format!("{id}.log"));
    match fs::rename(job_dir.join(LOG_FILE), &kept) {
        Ok(()) => {
            if let Ok(file) = fs::File::options().write(true).open(&kept) {
                let _ = file.set_modified(std::time::SystemTime::now());
            }
        }
        // Moved already by a removal that a crash interrupted, or never written.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(job = id, error = %e, "keeping the log of a removed job"),
    }
}

/// The kept log of a job removed a short while ago.
pub fn removed_log(removed: &Path, id: &str) -> Option<PathBuf> {
    if !is_full_id(id) {
        return None;
    }
    let path = removed.join(format!("{id}.log"));
    path.is_file().then_some(path)
}

/// Only full ids name a tombstone; anything else could point outside its dir.
fn is_full_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Keeps a removed job's exit. Best effort: a waiter that comes too late gets 404.
pub fn write_tombstone(dir: &Path, id: &str, exit: &ExitInfo) {
    let Ok(data) = serde_json::to_vec(exit) else {
        return;
    };
    let path = dir.join(format!("{id}.json"));
    if let Err(e) = flynn_fsutil::write_atomic(&path, &data, flynn_fsutil::Durability::Visible) {
        tracing::warn!(job = id, error = %e, "keeping the exit of a removed job");
    }
}

pub fn read_tombstone(dir: &Path, id: &str) -> Option<ExitInfo> {
    if !is_full_id(id) {
        return None;
    }
    let data = fs::read(dir.join(format!("{id}.json"))).ok()?;
    serde_json::from_slice(&data).ok()
}

pub fn prune_tombstones(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let ttl = if entry.path().extension().is_some_and(|e| e == "log") {
            REMOVED_LOG_TTL
        } else {
            TOMBSTONE_TTL
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age > ttl);
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
}
