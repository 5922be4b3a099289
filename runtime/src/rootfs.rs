//! File access inside a container's rootfs that can never escape it.
//!
//! The rootfs comes from an image, so any path in it may be a symlink planted to point
//! at the host (`/etc/passwd -> /etc/shadow`, `/app -> /`). Every lookup goes through
//! `openat2(RESOLVE_IN_ROOT)`, which makes the kernel resolve `..` and absolute symlinks
//! as if the rootfs were `/`.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot open the container rootfs {path:?}: {source}; is the image mounted?")]
    OpenRoot { path: PathBuf, source: Errno },
    #[error("cannot open {path:?} inside the container rootfs {root:?}: {source}")]
    Open {
        root: PathBuf,
        path: String,
        source: Errno,
    },
    #[error("cannot read {path:?} inside the container rootfs {root:?}: {source}")]
    Read {
        root: PathBuf,
        path: String,
        source: std::io::Error,
    },
    #[error("{path:?} inside the container rootfs {root:?} is not a regular file")]
    NotRegular { root: PathBuf, path: String },
    #[error("{path:?} inside the container rootfs {root:?} is larger than {limit} bytes")]
    TooLarge {
        root: PathBuf,
        path: String,
        limit: u64,
    },
    #[error("cannot create directory {path:?} inside the container rootfs {root:?}: {source}")]
    Mkdir {
        root: PathBuf,
        path: String,
        source: Errno,
    },
}

/// An open handle on a rootfs directory; all paths given to it are container paths.
pub struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl RootDir {
    pub fn open(path: &Path) -> Result<RootDir, RootfsError> {
        let raw = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| RootfsError::OpenRoot {
            path: path.to_owned(),
            source,
        })?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(RootDir {
            fd,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_in(&self, path: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
        flynn_fsutil::open_in_root(self.fd.as_fd(), path, flags)
    }

    /// Whether `path` is a directory (following links inside the root).
    pub fn is_dir(&self, path: &str) -> bool {
        self.open_in(path, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .is_ok()
    }

    /// Reads a regular file, or `None` when it (or a directory on its way) does not exist.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, RootfsError> {
        // O_NONBLOCK: a FIFO planted at this path must not hang the caller.
        let fd = match self.open_in(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
            Err(source) => {
                return Err(RootfsError::Open {
                    root: self.path.clone(),
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let st = fstat(fd.as_raw_fd()).map_err(|source| RootfsError::Open {
            root: self.path.clone(),
            path: path.to_owned(),
            source,
        })?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(RootfsError::NotRegular {
                root: self.path.clone(),
                path: path.to_owned(),
            });
        }
        let mut data = Vec::new();
        File::from(fd)
            .take(limit + 1)
            .read_to_end(&mut data)
            .map_err(|source| RootfsError::Read {
                root: self.path.clone(),
                path: path.to_owned(),
                source,
            })?;
        if data.len() as u64 > limit {
            return Err(RootfsError::TooLarge {
                root: self.path.clone(),
                path: path.to_owned(),
                limit,
            });
        }
        Ok(Some(data))
    }

    /// Creates `path` and its missing parents (mode 0755, owned by the caller), like
    /// `mkdir -p` run inside the container.
    pub fn mkdir_all(&self, path: &str) -> Result<(), RootfsError> {
        let err = |source| RootfsError::Mkdir {
            root: self.path.clone(),
            path: path.to_owned(),
            source,
        };
        let components: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let mut prefix = String::from("/");
        for (i, name) in components.iter().enumerate() {
            let parent = prefix.clone();
            if i > 0 {
                prefix.push('/');
            }
            prefix.push_str(name);
            match self.open_in(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                Ok(_) => continue,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(err(e)),
            }
            if *name == ".." {
                // `..` of a missing directory cannot be created; the kernel resolves it
                // to an existing parent, so reaching here means that parent is missing.
                return Err(err(Errno::ENOENT));
            }
            // The parent exists (it was just opened or created) and was resolved inside
            // the root, so creating a plain name under it cannot land outside.
            let dir = self
                .open_in(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
                .map_err(err)?;
            match mkdirat(
                Some(dir.as_raw_fd()),
                *name,
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(err(e)),
            }
            // A dangling symlink makes mkdirat say EEXIST: check that a directory is there.
            self.open_in(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY)
                .map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn symlinks_resolve_inside_root() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), "host secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("secret"), "inside").unwrap();
        // Absolute and relative links that would escape if followed on the host.
        symlink(host.path().join("secret"), root.path().join("etc/abs")).unwrap();
        symlink("../../../../../../secret", root.path().join("etc/rel")).unwrap();

        let dir = RootDir::open(root.path()).unwrap();
        // The absolute target does not exist inside the root: not found, not the host file.
        assert_eq!(dir.read_file("/etc/abs", 1024).unwrap(), None);
        assert_eq!(
            dir.read_file("/etc/rel", 1024).unwrap().as_deref(),
            Some(&b"inside"[..])
        );
        assert_eq!(dir.read_file("/nope/x", 1024).unwrap(), None);
        assert!(matches!(
            dir.read_file("/secret", 3),
            Err(RootfsError::TooLarge { .. })
        ));
        assert!(matches!(
            dir.read_file("/etc", 1024),
            Err(RootfsError::NotRegular { .. })
        ));
    }

    #[test]
    fn mkdir_all_stays_inside_root() {
        let host = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        symlink(host.path(), root.path().join("escape")).unwrap();
        let dir = RootDir::open(root.path()).unwrap();

        // A dangling link (its target does not exist inside the root) is refused rather
        // than followed to the host.
        assert!(matches!(
            dir.mkdir_all("/escape/a/b"),
            Err(RootfsError::Mkdir { .. })
        ));
        assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 0);

        dir.mkdir_all("/x/../y/./z").unwrap();
        dir.mkdir_all("/y/z").unwrap();
        assert!(root.path().join("y/z").is_dir());

        // Once the link's target exists inside the root, it is followed there.
        let inside = root.path().join(host.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        dir.mkdir_all("/escape/a/b").unwrap();
        assert!(inside.join("a/b").is_dir());
        assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 0);
    }
}
