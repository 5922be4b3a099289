//! Where an import reads from: an OCI layout directory (or an extracted `docker save`), or
//! a tar archive of either, read in place.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::ImportError;
use crate::archive::TarArchive;
use crate::fsutil;

/// Manifests, configs and indexes above this size are refused rather than read into memory.
pub(crate) const MAX_JSON_SIZE: u64 = 32 * 1024 * 1024;

pub(crate) enum Source {
    Dir { root: OwnedFd, path: PathBuf },
    Tar(TarArchive),
}

impl Source {
    /// Opens `path`. A gzip- or zstd-compressed archive is first decompressed into an
    /// anonymous (already unlinked) file in `tmp`, so it needs no cleanup even after a crash.
    pub(crate) fn open(path: &Path, tmp: &Path) -> Result<Source, ImportError> {
        let io_err = |source| ImportError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if meta.is_dir() {
            let root: OwnedFd = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(path)
                .map_err(io_err)?
                .into();
            return Ok(Source::Dir {
                root,
                path: path.to_owned(),
            });
        }
        let mut file = File::open(path).map_err(io_err)?;
        let mut head = [0u8; 4];
        let n = file.read(&mut head).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        let head = &head[..n];
        let compressed =
            head.starts_with(&[0x1f, 0x8b]) || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        let file = if compressed {
            decompress_to_temp(file, head, tmp, path)?
        } else {
            file
        };
        let archive = TarArchive::from_file(file, path)?;
        if archive.is_empty() {
            return Err(ImportError::UnknownFormat {
                path: path.to_owned(),
            });
        }
        Ok(Source::Tar(archive))
    }

    pub(crate) fn describe(&self) -> &Path {
        match self {
            Source::Dir { path, .. } => path,
            Source::Tar(a) => a.path(),
        }
    }

    fn missing(&self, name: &str) -> ImportError {
        ImportError::MissingFile {
            source_path: self.describe().to_owned(),
            name: name.to_owned(),
        }
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir { root, .. } => {
                flynn_fsutil::open_in_root(root.as_fd(), name.as_bytes(), OFlag::O_PATH).is_ok()
            }
            Source::Tar(a) => a.contains(name),
        }
    }

    /// Opens a file of the source; `name` is resolved inside the source (a `../` or a
    /// symlink cannot make an import read host files).
    pub(crate) fn open_file(
        &self,
        name: &str,
    ) -> Result<(Box<dyn Read + Send + '_>, u64), ImportError> {
        match self {
            Source::Dir { root, path } => {
                // Non-blocking: a fifo planted in the directory must not hang the import (it is
                // refused just below, as not a regular file).
                let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
                let fd = match flynn_fsutil::open_in_root(root.as_fd(), name.as_bytes(), flags) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(self.missing(name)),
                    Err(e) => {
                        return Err(ImportError::Io {
                            path: path.join(name),
                            source: e.into(),
                        });
                    }
                };
                let file = File::from(fd);
                let meta = file.metadata().map_err(|source| ImportError::Io {
                    path: path.join(name),
                    source,
                })?;
                if !meta.is_file() {
                    return Err(self.missing(name));
                }
                Ok((Box::new(file), meta.len()))
            }
            Source::Tar(archive) => {
                let member = archive.member(name).map_err(|e| match e {
                    crate::archive::ArchiveError::NotFound { .. } => self.missing(name),
                    other => other.into(),
                })?;
                Ok((Box::new(archive.reader(member)), member.size))
            }
        }
    }

    /// Reads a small JSON document whole.
    pub(crate) fn read_json_file(&self, name: &str) -> Result<Vec<u8>, ImportError> {
        let (reader, size) = self.open_file(name)?;
        if size > MAX_JSON_SIZE {
            return Err(ImportError::TooLarge {
                name: name.to_owned(),
                size,
                limit: MAX_JSON_SIZE,
            });
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        reader
            .take(MAX_JSON_SIZE)
            .read_to_end(&mut data)
            .map_err(|source| ImportError::Io {
                path: self.describe().join(name),
                source,
            })?;
        Ok(data)
    }
}

fn decompress_to_temp(
    file: File,
    head: &[u8],
    tmp: &Path,
    path: &Path,
) -> Result<File, ImportError> {
    let io_err = |source| ImportError::Io {
        path: path.to_owned(),
        source,
    };
    let (mut out, tmp_path) = fsutil::create_temp(tmp, "import").map_err(io_err)?;
    // Unlinked now: the space is freed when the import drops the file, crash or not.
    std::fs::remove_file(&tmp_path).map_err(io_err)?;
    let reader = io::BufReader::new(file);
    let copied = if head.starts_with(&[0x1f, 0x8b]) {
        io::copy(&mut flate2::read::MultiGzDecoder::new(reader), &mut out)
    } else {
        zstd::stream::read::Decoder::with_buffer(reader)
            .and_then(|mut d| io::copy(&mut d, &mut out))
    };
    copied.map_err(|source| ImportError::CompressedArchive {
        path: path.to_owned(),
        source,
    })?;
    out.flush().map_err(io_err)?;
    out.rewind().map_err(io_err)?;
    Ok(out)
}
