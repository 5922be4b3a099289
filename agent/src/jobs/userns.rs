//! Jobs in user namespaces (`--userns`): which host ids a job gets, and a root
//! filesystem its root can use.
//!
//! **Ids: a slice of 65536 per job** (Podman's `--userns=auto`, not Docker's
//! `userns-remap`, where every container shares one range): a job's root is no one on
//! the host, and no other job either, so one job that escapes its namespace owns none
//! of another's files. The slices are cut from host ids `FIRST_HOST_ID..` (0x70000000:
//! above systemd-nspawn's container range, below systemd's "foreign" range at
//! 0x7FFE0000 and the 2^31 ids that some tools take for negative). A job keeps its
//! slice for its life (its upper dir holds files owned by it), recorded in its
//! `job.json` (`config.userns`); the lowest slice no recorded job holds is taken,
//! so no separate allocation file can disagree with the jobs.
//!
//! **Rootfs:** the image's layers stay owned by the host's ids. Each layer is mounted
//! idmapped into the job's slice (`runtime::idmap`), the overlay is built on those
//! mounts (overlayfs takes idmapped lower layers since Linux 5.19) and the layer
//! mounts are detached at once (the overlay holds its own clones of them). The upper
//! dir is owned by the slice's root, so what the job writes is the slice's on disk.
//! Where the kernel refuses an idmapped mount, or with `FLYNN_USERNS_NO_IDMAP=1`, the
//! merged image is copied once into the job's directory with every owner shifted
//! (`copy/`), and that copy is the job's rootfs: slower to start, more disk.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::JobError;
use crate::model::IdRange;

/// Ids per job: uid and gid 0-65535 inside, as an image's files and users expect.
pub const SLICE: u32 = 65536;
/// The first host id given to jobs.
pub const FIRST_HOST_ID: u32 = 0x7000_0000;
/// Slices up to 0x7FFE0000 (systemd's foreign range starts there).
pub const SLICES: u32 = (0x7FFE_0000 - FIRST_HOST_ID) / SLICE;
const _: () = assert!(FIRST_HOST_ID + SLICES * SLICE <= 0x7FFE_0000);

/// Set to use the chowned copy even where idmapped mounts work (tests, benchmarks).
pub const NO_IDMAP_ENV: &str = "FLYNN_USERNS_NO_IDMAP";

/// The lowest slice none of `taken` holds.
pub fn allocate(taken: impl Iterator<Item = IdRange>) -> Result<IdRange, JobError> {
    let mut used: Vec<u32> = taken
        .filter(|r| r.host >= FIRST_HOST_ID)
        .map(|r| (r.host - FIRST_HOST_ID) / SLICE)
        .collect();
    used.sort_unstable();
    used.dedup();
    let free = used
        .iter()
        .enumerate()
        .find(|(i, s)| *i as u32 != **s)
        .map_or(used.len() as u32, |(i, _)| i as u32);
    if free >= SLICES {
        return Err(JobError::BadRequest(format!(
            "all {SLICES} user namespace ranges are taken by jobs: remove some jobs, or run \
             this one with --userns=host"
        )));
    }
    Ok(IdRange {
        host: FIRST_HOST_ID + free * SLICE,
        size: SLICE,
    })
}

fn runtime_range(r: IdRange) -> runtime::IdRange {
    runtime::IdRange {
        host: r.host,
        size: r.size,
    }
}

fn chown(path: &Path, r: IdRange) -> Result<(), JobError> {
    std::os::unix::fs::lchown(path, Some(r.host), Some(r.host)).map_err(|e| JobError::io(path, e))
}

/// The job's root walks the path to its rootfs and its bind mounts' sources with
/// none of the host's privileges: the state dir and the job's directories need the
/// search bit for others (the state dir becomes 0711 at most, as Docker's does with
/// user namespaces; nothing in it becomes readable).
/// The state dir's own ancestors are the host's to set: one that others cannot search
/// is an error that says so (never changed behind the operator's back).
pub fn make_traversable(dirs: &[&Path]) -> Result<(), JobError> {
    for dir in dirs {
        let meta = fs::metadata(dir).map_err(|e| JobError::io(dir, e))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode((mode | 0o001) & 0o7777))
                .map_err(|e| JobError::io(dir, e))?;
        }
    }
    let Some(top) = dirs.first() else {
        return Ok(());
    };
    for dir in top.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(JobError::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "others cannot search this directory (mode {:04o}), and a job in a user \
                         namespace reaches its root filesystem through it without the host's \
                         privileges: chmod o+x it, or keep the daemon's state dir under \
                         directories others can search",
                        mode & 0o7777
                    ),
                ),
            ));
        }
    }
    Ok(())
}

/// The files the daemon writes for the job (/etc/hosts...) become its root's.
pub fn chown_files(mounts: &[runtime::BindMount], r: IdRange) -> Result<(), JobError> {
    for m in mounts {
        chown(&m.source, r)?;
    }
    Ok(())
}

/// Mounts the job's rootfs at `rootfs` for a job in `range` (see the module's notes).
pub fn mount_rootfs(
    dir: &Path,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    rootfs: &Path,
    range: IdRange,
) -> Result<(), JobError> {
    let copy = dir.join("copy");
    // A job that started once from a copy keeps it (its changes are there).
    if std::env::var_os(NO_IDMAP_ENV).is_some_and(|v| v == "1") || copy.exists() {
        return mount_copy(dir, lowers, rootfs, range);
    }
    chown(upper, range)?;
    match mount_idmapped(dir, lowers, upper, work, rootfs, range) {
        Err(Idmapped::Unsupported(e)) => {
            tracing::warn!(error = %e, "no idmapped mounts here: the job gets a chowned copy of its image");
            mount_copy(dir, lowers, rootfs, range)
        }
        Err(Idmapped::Failed(e)) => Err(e),
        Ok(()) => Ok(()),
    }
}

enum Idmapped {
    Unsupported(runtime::idmap::IdmapError),
    Failed(JobError),
}

impl From<JobError> for Idmapped {
    fn from(e: JobError) -> Self {
        Idmapped::Failed(e)
    }
}

fn idmap_err(e: runtime::idmap::IdmapError) -> Idmapped {
    if e.is_unsupported() {
        Idmapped::Unsupported(e)
    } else {
        Idmapped::Failed(JobError::BadRequest(format!(
            "cannot mount the job's root filesystem: {e}"
        )))
    }
}

fn mount_idmapped(
    dir: &Path,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    rootfs: &Path,
    range: IdRange,
) -> Result<(), Idmapped> {
    let layers = dir.join("idmap");
    fs::create_dir_all(&layers).map_err(|e| JobError::io(&layers, e))?;
    let ns = runtime::idmap::userns_fd(runtime_range(range)).map_err(idmap_err)?;
    let mut mounted = Vec::new();
    let result = (|| {
        for (i, lower) in lowers.iter().enumerate() {
            let at = layers.join(i.to_string());
            fs::create_dir_all(&at).map_err(|e| JobError::io(&at, e))?;
            image::rootfs::unmount(&at).map_err(JobError::from)?;
            runtime::idmap::idmapped_mount(lower, &at, &ns).map_err(idmap_err)?;
            mounted.push(at);
        }
        image::rootfs::mount_overlay(&mounted, upper, work, rootfs)
            .map_err(|e| Idmapped::Failed(e.into()))
    })();
    // The overlay keeps private clones of its layers: the mounts can go either way.
    for at in &mounted {
        if let Err(e) = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %at.display(), error = %e, "detaching an idmapped layer");
        }
    }
    let _ = fs::remove_dir_all(&layers);
    result
}

/// The merged image copied into `<dir>/copy` with owners shifted (once), bind-mounted
/// on `rootfs`.
fn mount_copy(
    dir: &Path,
    lowers: &[PathBuf],
    rootfs: &Path,
    range: IdRange,
) -> Result<(), JobError> {
    let copy = dir.join("copy");
    if !copy.exists() {
        let staging = dir.join("copy.tmp");
        let merged = dir.join("merged.tmp");
        let scratch = dir.join("scratch.tmp");
        let _ = image::rootfs::unmount(&merged);
        for d in [&staging, &scratch] {
            if d.exists() {
                fs::remove_dir_all(d).map_err(|e| JobError::io(d, e))?;
            }
        }
        for d in [&merged, &scratch.join("upper"), &scratch.join("work")] {
            fs::create_dir_all(d).map_err(|e| JobError::io(d, e))?;
        }
        // The image's merged view, read-only in effect: nothing writes to it.
        image::rootfs::mount_overlay(
            lowers,
            &scratch.join("upper"),
            &scratch.join("work"),
            &merged,
        )?;
        let copied = runtime::idmap::copy_shifted(&merged, &staging, runtime_range(range));
        let _ = image::rootfs::unmount(&merged);
        let _ = fs::remove_dir_all(&scratch);
        let _ = fs::remove_dir(&merged);
        copied.map_err(|e| JobError::BadRequest(format!("cannot make the job's rootfs: {e}")))?;
        fs::rename(&staging, &copy).map_err(|e| JobError::io(&copy, e))?;
    }
    nix::mount::mount(
        Some(&copy),
        rootfs,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| JobError::io(rootfs, e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_the_lowest_free() {
        let r = |k: u32| IdRange {
            host: FIRST_HOST_ID + k * SLICE,
            size: SLICE,
        };
        assert_eq!(allocate([].into_iter()).unwrap(), r(0));
        assert_eq!(allocate([r(0), r(1)].into_iter()).unwrap(), r(2));
        assert_eq!(allocate([r(1), r(0), r(3)].into_iter()).unwrap(), r(2));
        assert_eq!(allocate([r(1)].into_iter()).unwrap(), r(0));
        let all = (0..SLICES).map(r);
        assert!(allocate(all).is_err());
    }
}
