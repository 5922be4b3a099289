//! Replacing a file atomically, with an explicit durability: the one helper every
//! crate of the workspace uses for it (it depends on nothing of ours, so all can).
//! Also [`open_in_root`], the one way the image store and the runtime open a path that
//! a stranger's layer may have filled with `..` and symlinks.
//!
//! A replace writes a new temp file (a unique name, created exclusively, so two
//! writers of the same file never share one), then renames it over the destination:
//! readers see the old content or the whole new one, never a partial write. What a
//! crash of the *machine* leaves is the [`Durability`] the caller chose. A temp file
//! is removed when the replace fails; a crash in the middle may leave one behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::NixPath;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};

/// How many times [`open_in_root`] asks again after `EAGAIN`.
const RESOLVE_RETRIES: u32 = 64;

/// `openat2(2)` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` (and `O_CLOEXEC`): `path`
/// is resolved as if `root` were `/`, so neither `..` nor a symlink (absolute or
/// relative) can leave it.
///
/// The kernel answers `EAGAIN` to such a lookup when a rename or a mount happened
/// *anywhere on the system* while it walked a `..` (it cannot prove the walk stayed
/// inside). On a host that starts containers, mounts happen all the time, so this asks
/// again: a spurious `EAGAIN` once failed an unpack while other threads mounted.
pub fn open_in_root<P: ?Sized + NixPath>(
    root: BorrowedFd<'_>,
    path: &P,
    flags: OFlag,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut attempts = 0;
    loop {
        match openat2(root.as_raw_fd(), path, how) {
            // SAFETY: the kernel just returned this descriptor and nothing else owns it.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(Errno::EAGAIN) if attempts < RESOLVE_RETRIES => {
                attempts += 1;
                std::thread::yield_now();
            }
            Err(e) => return Err(e),
        }
    }
}

/// What survives a crash of the machine (a crash of the process always leaves the old
/// content or the new one, whatever the durability).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// No syncs: temp file + rename. After a machine crash the file may be the old
    /// one, the new one, or even empty. For files only read while this boot's
    /// processes live, or that can be rebuilt.
    Visible,
    /// The data is synced (fdatasync) before the rename, the directory is not: after a
    /// machine crash the file is the old one or the whole new one (the rename itself
    /// may be lost). Saves a flush of the directory on every write.
    Ordered,
    /// The file is synced (fsync) before the rename and its directory after it: once
    /// the replace returns, the new content survives a machine crash.
    Durable,
}

/// A name no other thread or process of this host will pick: pid, a per-process counter
/// and the clock. Collisions only cost an `EEXIST`, never data, because [`create_temp`]
/// creates with `O_EXCL`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id())
}

/// Makes the directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a new file (never an existing one; mode 0644 less the umask) in `dir`, for
/// reading and writing.
pub fn create_temp(dir: &Path, prefix: &str) -> io::Result<(File, PathBuf)> {
    loop {
        let path = dir.join(unique_name(prefix));
        match OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Replaces `path` with `data`; the temp file is made beside it (`.NAME-…`).
pub fn write_atomic(path: &Path, data: &[u8], durability: Durability) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    write_atomic_via(dir, path, data, durability)
}

/// Replaces `path` with `data`, the temp file made in `tmp_dir` (which must be on the
/// same filesystem: a directory that is emptied at start-up, say).
pub fn write_atomic_via(
    tmp_dir: &Path,
    path: &Path,
    data: &[u8],
    durability: Durability,
) -> io::Result<()> {
    replace_via(tmp_dir, path, durability, |file| file.write_all(data))
}

/// Replaces `path` with what `fill` writes to the temp file (beside it): for content
/// streamed rather than held in memory, or a file that needs another mode (`fill`
/// may set the temp file's permissions before it writes).
pub fn replace_with(
    path: &Path,
    durability: Durability,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    replace_via(dir, path, durability, fill)
}

fn replace_via(
    tmp_dir: &Path,
    path: &Path,
    durability: Durability,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (mut file, tmp) = create_temp(tmp_dir, &format!(".{name}"))?;
    let result = (|| {
        fill(&mut file)?;
        match durability {
            Durability::Visible => {}
            Durability::Ordered => file.sync_data()?,
            Durability::Durable => file.sync_all()?,
        }
        drop(file);
        fs::rename(&tmp, path)?;
        if durability == Durability::Durable {
            match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => fsync_dir(p)?,
                _ => fsync_dir(Path::new("."))?,
            }
        }
        Ok(())
    })();
    if result.is_err() {
        // Gone already if the rename happened; nothing else to do if it fails.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Durability; 3] = [
        Durability::Visible,
        Durability::Ordered,
        Durability::Durable,
    ];

    #[test]
    fn a_streamed_replace_keeps_the_old_file_when_the_writer_fails() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("rc");
        replace_with(&dest, Durability::Durable, |f| {
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(b"secret")
        })
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"secret");
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let failed = replace_with(&dest, Durability::Ordered, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("the source broke"))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(&dest).unwrap(), b"secret");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "a temp file was left"
        );
    }

    #[test]
    fn writes_and_replaces_leaving_no_temp() {
        for durability in ALL {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("state.json");
            write_atomic(&dest, b"one", durability).unwrap();
            assert_eq!(fs::read(&dest).unwrap(), b"one");
            write_atomic(&dest, b"two", durability).unwrap();
            assert_eq!(fs::read(&dest).unwrap(), b"two");
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["state.json"], "{durability:?}");
        }
    }

    #[test]
    fn writes_through_a_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let dest = dir.path().join("state.json");
        write_atomic_via(&tmp, &dest, b"one", Durability::Durable).unwrap();
        write_atomic_via(&tmp, &dest, b"two", Durability::Durable).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_replace_leaves_no_temp_and_the_old_content() {
        for durability in ALL {
            let dir = tempfile::tempdir().unwrap();
            // A non-empty directory cannot be renamed over.
            let dest = dir.path().join("busy");
            fs::create_dir(&dest).unwrap();
            fs::write(dest.join("keep"), b"x").unwrap();
            assert!(write_atomic(&dest, b"new", durability).is_err());
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["busy"], "{durability:?}");
            assert_eq!(fs::read(dest.join("keep")).unwrap(), b"x");
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("f");
        assert!(write_atomic(&missing, b"x", Durability::Visible).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("a"), unique_name("a"));
    }
}
