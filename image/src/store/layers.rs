//! Unpacked layers, one directory per diff id: `layers/<hex>/diff` (the overlay lowerdir)
//! and `layers/<hex>/layer.json`. A layer is unpacked in `tmp/`, verified, flushed, then
//! renamed into place, so a layer directory that exists is always complete.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::fsutil;
use crate::unpack::{self, Expected, UnpackError, Unpacked};

const DIFF_DIR: &str = "diff";
const INFO_FILE: &str = "layer.json";

#[derive(Serialize, Deserialize)]
pub(super) struct LayerInfo {
    pub diff_id: Digest,
    /// Size of the uncompressed tar stream.
    pub size: u64,
}

pub(super) struct Layers {
    dir: PathBuf,
    tmp: PathBuf,
    trash: PathBuf,
}

impl Layers {
    pub(super) fn new(dir: PathBuf, tmp: PathBuf, trash: PathBuf) -> Layers {
        Layers { dir, tmp, trash }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn diff_dir(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join(diff_id.hex()).join(DIFF_DIR)
    }

    /// The layer's info if it is present and complete.
    pub(super) fn info(&self, diff_id: &Digest) -> Option<LayerInfo> {
        let bytes = fs::read(self.dir.join(diff_id.hex()).join(INFO_FILE)).ok()?;
        let info: LayerInfo = serde_json::from_slice(&bytes).ok()?;
        (info.diff_id == *diff_id && self.diff_dir(diff_id).is_dir()).then_some(info)
    }

    /// True if something is at the layer's place, complete or not.
    pub(super) fn occupied(&self, diff_id: &Digest) -> bool {
        fs::symlink_metadata(self.dir.join(diff_id.hex())).is_ok()
    }

    /// Unpacks and verifies a layer blob, then moves it into place under its diff id.
    pub(super) fn unpack(
        &self,
        src: impl Read + Send,
        label: &str,
        expected: &Expected,
    ) -> Result<Unpacked, UnpackError> {
        let staging = self.tmp.join(fsutil::unique_name("unpack"));
        let dest_err = |path: &Path| {
            let path = path.to_owned();
            move |source: io::Error| UnpackError::Destination {
                layer: label.to_owned(),
                path,
                source,
            }
        };
        let diff = staging.join(DIFF_DIR);
        let result = (|| {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&staging)
                .map_err(dest_err(&staging))?;
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&diff)
                .map_err(dest_err(&diff))?;
            let unpacked = unpack::unpack_layer(src, &diff, label, expected)?;
            let info = LayerInfo {
                diff_id: unpacked.diff_id.clone(),
                size: unpacked.size,
            };
            let info_bytes =
                serde_json::to_vec(&info).map_err(|e| dest_err(&staging)(io::Error::other(e)))?;
            let info_path = staging.join(INFO_FILE);
            fs::write(&info_path, info_bytes)
                .and_then(|()| fs::File::open(&info_path)?.sync_all())
                .and_then(|()| fsutil::fsync_dir(&staging))
                .map_err(dest_err(&info_path))?;
            let dest = self.dir.join(unpacked.diff_id.hex());
            match fs::rename(&staging, &dest) {
                Ok(()) => {}
                // Someone else put the same verified layer there first: ours is redundant.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                    let _ = fsutil::remove_any(&staging);
                }
                Err(e) => return Err(dest_err(&dest)(e)),
            }
            fsutil::fsync_dir(&self.dir).map_err(dest_err(&self.dir))?;
            Ok(unpacked)
        })();
        if result.is_err()
            && let Err(e) = fsutil::remove_any(&staging)
        {
            tracing::warn!(path = %staging.display(), error = %e,
                "could not remove a failed unpack; it is removed when the store is next opened");
        }
        result
    }

    /// Moves a layer out of `layers/` (one atomic rename) so that no one can use it any
    /// more; the caller deletes what is returned. A crash before deletion leaves only trash.
    pub(super) fn trash(&self, diff_id: &Digest) -> io::Result<Option<PathBuf>> {
        self.trash_dir_entry(diff_id.hex())
    }

    pub(super) fn trash_dir_entry(&self, name: &str) -> io::Result<Option<PathBuf>> {
        let from = self.dir.join(name);
        let to = self.trash.join(fsutil::unique_name(name));
        match fs::rename(&from, &to) {
            Ok(()) => {
                fsutil::fsync_dir(&self.dir)?;
                Ok(Some(to))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Names of the entries of `layers/`.
    pub(super) fn entries(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            out.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }
}
