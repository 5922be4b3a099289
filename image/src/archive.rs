//! Random access to the members of an uncompressed tar file: index the headers once, then
//! read any member by offset. Imports read manifests first and layers later, in any order,
//! without extracting the archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

/// Links followed while looking a member up, like the kernel's MAXSYMLINKS.
const MAX_LINK_HOPS: usize = 40;

/// Why an archive or one of its members cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading archive {path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid tar archive (corrupt, truncated or another format): {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is truncated: member {member:?} ends past the end of the file")]
    Truncated { path: PathBuf, member: String },
    #[error("{path} has no member {member:?}; the archive is incomplete")]
    NotFound { path: PathBuf, member: String },
    #[error("{path}: member {member:?} is a link loop")]
    LinkLoop { path: PathBuf, member: String },
}

#[derive(Debug, Clone)]
enum Node {
    File { offset: u64, size: u64 },
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Other,
}

/// Where a member's bytes are in the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    pub offset: u64,
    pub size: u64,
}

/// An indexed tar file.
pub(crate) struct TarArchive {
    file: File,
    path: PathBuf,
    nodes: HashMap<Vec<u8>, Node>,
}

/// Normalizes a member name: no leading `./` or `/`, no empty or `.` components, `..` popped.
fn normalize(name: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c.to_vec()),
        }
    }
    out
}

fn key(components: &[Vec<u8>]) -> Vec<u8> {
    components.join(&b'/')
}

impl TarArchive {
    /// Indexes the archive at `path`.
    #[cfg(test)]
    pub(crate) fn open(path: &Path) -> Result<TarArchive, ArchiveError> {
        let file = File::open(path).map_err(|source| ArchiveError::Io {
            path: path.to_owned(),
            source,
        })?;
        TarArchive::from_file(file, path)
    }

    /// Indexes an already open archive; `path` only names it in errors.
    pub(crate) fn from_file(file: File, path: &Path) -> Result<TarArchive, ArchiveError> {
        let corrupt = |source| ArchiveError::Corrupt {
            path: path.to_owned(),
            source,
        };
        let len = file
            .metadata()
            .map_err(|source| ArchiveError::Io {
                path: path.to_owned(),
                source,
            })?
            .len();
        let mut nodes = HashMap::new();
        {
            let mut archive = tar::Archive::new(&file);
            for entry in archive.entries_with_seek().map_err(corrupt)? {
                let entry = entry.map_err(corrupt)?;
                let name = key(&normalize(&entry.path_bytes()));
                let node = match entry.header().entry_type() {
                    EntryType::Regular | EntryType::Continuous => {
                        let offset = entry.raw_file_position();
                        let size = entry.size();
                        if offset.checked_add(size).is_none_or(|end| end > len) {
                            return Err(ArchiveError::Truncated {
                                path: path.to_owned(),
                                member: String::from_utf8_lossy(&name).into_owned(),
                            });
                        }
                        Node::File { offset, size }
                    }
                    EntryType::Symlink => Node::Symlink(
                        entry
                            .link_name_bytes()
                            .map(|l| l.into_owned())
                            .unwrap_or_default(),
                    ),
                    EntryType::Link => Node::Hardlink(
                        entry
                            .link_name_bytes()
                            .map(|l| l.into_owned())
                            .unwrap_or_default(),
                    ),
                    _ => Node::Other,
                };
                nodes.insert(name, node);
            }
        }
        Ok(TarArchive {
            file,
            path: path.to_owned(),
            nodes,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Finds a regular-file member, following symlinks and hardlinks inside the archive
    /// (old `docker save` archives link duplicate layers to one copy).
    pub(crate) fn member(&self, name: &str) -> Result<Member, ArchiveError> {
        let not_found = || ArchiveError::NotFound {
            path: self.path.clone(),
            member: name.to_owned(),
        };
        let mut pending: Vec<Vec<u8>> = normalize(name.as_bytes());
        pending.reverse();
        let mut resolved: Vec<Vec<u8>> = Vec::new();
        let mut hops = 0;
        while let Some(component) = pending.pop() {
            if component == b".." {
                resolved.pop();
                continue;
            }
            resolved.push(component);
            let link = match self.nodes.get(&key(&resolved)) {
                Some(Node::Symlink(target)) => {
                    resolved.pop();
                    if target.starts_with(b"/") {
                        resolved.clear();
                    }
                    target
                }
                Some(Node::Hardlink(target)) => {
                    // Hardlink names are relative to the archive root.
                    resolved.clear();
                    target
                }
                _ => continue,
            };
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err(ArchiveError::LinkLoop {
                    path: self.path.clone(),
                    member: name.to_owned(),
                });
            }
            for c in link.split(|b| *b == b'/').rev() {
                match c {
                    b"" | b"." => {}
                    c => pending.push(c.to_vec()),
                }
            }
        }
        match self.nodes.get(&key(&resolved)) {
            Some(Node::File { offset, size }) => Ok(Member {
                offset: *offset,
                size: *size,
            }),
            _ => Err(not_found()),
        }
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.member(name).is_ok()
    }

    /// A reader over one member's bytes. Positioned reads: readers of several members can
    /// be used at once, from several threads.
    pub(crate) fn reader(&self, member: Member) -> SectionReader<'_> {
        SectionReader {
            file: &self.file,
            pos: member.offset,
            end: member.offset + member.size,
        }
    }
}

pub(crate) struct SectionReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for SectionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member ends past the end of the file",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Name, file data, or link target and kind (neither: a directory).
    type TestEntry<'a> = (&'a str, Option<&'a [u8]>, Option<(&'a str, EntryType)>);

    fn build(entries: &[TestEntry<'_>]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(file.reopen().unwrap());
        for (name, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match (data, link) {
                (Some(data), _) => {
                    h.set_size(data.len() as u64);
                    h.set_entry_type(EntryType::Regular);
                    b.append_data(&mut h, name, *data).unwrap();
                }
                (None, Some((target, kind))) => {
                    h.set_size(0);
                    h.set_entry_type(*kind);
                    b.append_link(&mut h, name, target).unwrap();
                }
                (None, None) => {
                    h.set_size(0);
                    h.set_entry_type(EntryType::Directory);
                    b.append_data(&mut h, name, &[][..]).unwrap();
                }
            }
        }
        b.finish().unwrap();
        file
    }

    fn read(a: &TarArchive, name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        a.reader(a.member(name).unwrap())
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn members_are_found_through_links() {
        let f = build(&[
            ("./manifest.json", Some(b"[]"), None),
            ("abc/", None, None),
            ("abc/layer.tar", Some(b"layer bytes"), None),
            (
                "def/layer.tar",
                None,
                Some(("../abc/layer.tar", EntryType::Symlink)),
            ),
            (
                "ghi/layer.tar",
                None,
                Some(("abc/layer.tar", EntryType::Link)),
            ),
            ("blobs", None, Some(("abc", EntryType::Symlink))),
            ("loop", None, Some(("loop", EntryType::Symlink))),
        ]);
        let a = TarArchive::open(f.path()).unwrap();
        assert_eq!(read(&a, "manifest.json"), b"[]");
        assert_eq!(read(&a, "def/layer.tar"), b"layer bytes");
        assert_eq!(read(&a, "ghi/layer.tar"), b"layer bytes");
        assert_eq!(read(&a, "blobs/layer.tar"), b"layer bytes");
        assert!(matches!(
            a.member("nope"),
            Err(ArchiveError::NotFound { .. })
        ));
        assert!(matches!(
            a.member("abc"),
            Err(ArchiveError::NotFound { .. })
        ));
        assert!(matches!(
            a.member("loop"),
            Err(ArchiveError::LinkLoop { .. })
        ));
    }

    #[test]
    fn truncated_and_garbage_archives_are_rejected() {
        let f = build(&[("big", Some(&[7u8; 4096]), None)]);
        let bytes = std::fs::read(f.path()).unwrap();
        let cut = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(cut.path(), &bytes[..2048]).unwrap();
        assert!(matches!(
            TarArchive::open(cut.path()),
            Err(ArchiveError::Truncated { .. })
        ));
        std::fs::write(cut.path(), [0x42u8; 1500]).unwrap();
        let err = TarArchive::open(cut.path()).err().unwrap();
        assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("not a valid tar archive"));
    }
}
