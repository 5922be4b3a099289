//! The content store: immutable blobs (manifests, configs) named by their sha256 digest.
//!
//! A blob becomes visible only complete and verified: it is written to a temp file in the
//! store, hashed while written, checked against the expected digest, fsynced, renamed into
//! `blobs/sha256/<hex>`, and the directory is fsynced.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::fsutil;

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("content store: {op} {path} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "blob digest mismatch: expected {expected}, got {actual}; the content is corrupt or was \
         tampered with, and was not stored"
    )]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest} is {actual} bytes, but {expected} were expected; it was not stored")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} is not in the content store; import the image again")]
    NotFound(Digest),
    #[error("reading the source of a blob failed: {0}")]
    Source(#[source] io::Error),
}

/// Blobs under `<root>/sha256/<hex>`, with temp files in a separate directory of the same
/// filesystem (so the final rename is atomic).
#[derive(Debug)]
pub struct ContentStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl ContentStore {
    /// Opens (creating them if needed) the blob directory under `root` and the temp dir.
    pub fn open(root: &Path, tmp: &Path) -> Result<ContentStore, ContentError> {
        let dir = root.join("sha256");
        for d in [&dir, tmp] {
            fs::create_dir_all(d).map_err(|source| ContentError::Io {
                op: "creating",
                path: d.to_owned(),
                source,
            })?;
        }
        Ok(ContentStore {
            dir,
            tmp: tmp.to_owned(),
        })
    }

    /// Where the blob lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Stores `data`, checking it against `expected` when given. Returns its digest.
    pub fn ingest_bytes(
        &self,
        data: &[u8],
        expected: Option<&Digest>,
    ) -> Result<Digest, ContentError> {
        let actual = Digest::of(data);
        if let Some(expected) = expected
            && *expected != actual
        {
            return Err(ContentError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        if self.contains(&actual) {
            return Ok(actual);
        }
        self.ingest(data, Some(&actual), Some(data.len() as u64))
    }

    /// Streams `src` into the store, hashing as it writes. Nothing is left behind on error.
    pub fn ingest(
        &self,
        mut src: impl Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<Digest, ContentError> {
        let io_err = |op, path: &Path| {
            let path = path.to_owned();
            move |source| ContentError::Io { op, path, source }
        };
        let (mut file, tmp) = fsutil::create_temp(&self.tmp, "ingest")
            .map_err(io_err("creating a temp file in", &self.tmp))?;
        let result = (|| {
            let mut hasher = Hasher::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(ContentError::Source(e)),
                };
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).map_err(io_err("writing", &tmp))?;
            }
            let size = hasher.len();
            let actual = hasher.finish();
            if let Some(expected) = expected
                && *expected != actual
            {
                return Err(ContentError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
            if let Some(expected) = expected_size
                && expected != size
            {
                return Err(ContentError::SizeMismatch {
                    digest: actual,
                    expected,
                    actual: size,
                });
            }
            file.sync_all().map_err(io_err("syncing", &tmp))?;
            let dest = self.path(&actual);
            fs::rename(&tmp, &dest).map_err(io_err("renaming a blob into", &dest))?;
            fsutil::fsync_dir(&self.dir).map_err(io_err("syncing", &self.dir))?;
            Ok(actual)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Reads a whole blob and checks it still matches its digest (disk corruption, tampering).
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let path = self.path(digest);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContentError::NotFound(digest.clone()));
            }
            Err(source) => {
                return Err(ContentError::Io {
                    op: "reading",
                    path,
                    source,
                });
            }
        };
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(ContentError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Deletes a blob; a missing blob is not an error.
    pub fn delete(&self, digest: &Digest) -> Result<(), ContentError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ContentError::Io {
                op: "deleting",
                path,
                source,
            }),
        }
    }

    /// Digests of all stored blobs. Stray files that are not named by a digest are removed:
    /// only this store writes here.
    pub fn list(&self) -> Result<Vec<Digest>, ContentError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| ContentError::Io {
            op: "listing",
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            match name.to_str().map(Digest::from_hex) {
                Some(Ok(d)) => out.push(d),
                _ => {
                    tracing::warn!(path = %entry.path().display(), "removing a stray file from the blob store");
                    let _ = fsutil::remove_any(&entry.path());
                }
            }
        }
        Ok(out)
    }

    /// Opens a blob for streaming.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, ContentError> {
        let path = self.path(digest);
        File::open(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ContentError::NotFound(digest.clone()),
            _ => ContentError::Io {
                op: "opening",
                path,
                source,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(&dir.path().join("blobs"), &dir.path().join("tmp")).unwrap();
        (dir, cs)
    }

    fn tmp_is_empty(dir: &tempfile::TempDir) -> bool {
        fs::read_dir(dir.path().join("tmp")).unwrap().count() == 0
    }

    #[test]
    fn ingest_stores_verified_blobs() {
        let (dir, cs) = store();
        let data = b"{\"schemaVersion\":2}";
        let d = cs
            .ingest(&data[..], Some(&Digest::of(data)), Some(data.len() as u64))
            .unwrap();
        assert_eq!(d, Digest::of(data));
        assert_eq!(cs.read(&d).unwrap(), data);
        assert_eq!(cs.path(&d), dir.path().join("blobs/sha256").join(d.hex()));
        // Without an expected digest the computed one names the blob.
        let d2 = cs.ingest(&b"other"[..], None, None).unwrap();
        assert_eq!(d2, Digest::of(b"other"));
        assert_eq!(cs.ingest_bytes(b"other", None).unwrap(), d2);
        let mut listed = cs.list().unwrap();
        listed.sort();
        let mut want = vec![d.clone(), d2.clone()];
        want.sort();
        assert_eq!(listed, want);
        cs.delete(&d2).unwrap();
        cs.delete(&d2).unwrap();
        assert!(matches!(cs.read(&d2), Err(ContentError::NotFound(_))));
        assert!(tmp_is_empty(&dir));
    }

    #[test]
    fn digest_mismatch_is_rejected_and_leaves_nothing() {
        let (dir, cs) = store();
        let expected = Digest::of(b"the real content");
        let err = cs
            .ingest(&b"tampered content"[..], Some(&expected), None)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&expected.to_string()), "{msg}");
        assert!(
            msg.contains(&Digest::of(b"tampered content").to_string()),
            "{msg}"
        );
        assert!(!cs.contains(&expected));
        assert!(!cs.contains(&Digest::of(b"tampered content")));
        assert!(tmp_is_empty(&dir));
        assert!(cs.list().unwrap().is_empty());

        let err = cs
            .ingest_bytes(b"tampered content", Some(&expected))
            .unwrap_err();
        assert!(matches!(err, ContentError::DigestMismatch { .. }));
        let err = cs
            .ingest(&b"abc"[..], Some(&Digest::of(b"abc")), Some(4))
            .unwrap_err();
        assert!(matches!(
            err,
            ContentError::SizeMismatch {
                expected: 4,
                actual: 3,
                ..
            }
        ));
        assert!(tmp_is_empty(&dir));
        assert!(cs.list().unwrap().is_empty());
    }

    #[test]
    fn corrupted_blob_on_disk_is_detected_on_read() {
        let (_dir, cs) = store();
        let d = cs.ingest_bytes(b"good", None).unwrap();
        fs::write(cs.path(&d), b"evil").unwrap();
        assert!(matches!(
            cs.read(&d),
            Err(ContentError::DigestMismatch { .. })
        ));
    }
}
