//! The store's side of a registry pull: a lease that pins what the pull relies on, a
//! journal that keeps its finished layers across a crash, streaming layer unpack, and the
//! commit that makes the image visible.
//!
//! A pull writes `pulls/<unique>.json` (its config and diff ids) before it fetches
//! anything. `open` keeps the layers and config a journal names, so a pull interrupted by
//! a crash resumes with the layers it had finished; journals are deleted when their pull
//! commits, and at `open` when older than [`JOURNAL_TTL`] (what they kept is then deleted
//! as unused). A failed pull keeps its journal for the same reason.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::state::{ImageRecord, LayerRecord};
use super::{ImageStore, StoreError, blob_pin, layer_pin, lock};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::unpack::{Expected, UnpackError};
use crate::{Image, fsutil};

pub(super) const PULLS_DIR: &str = "pulls";
/// How long the layers of an unfinished pull are kept for it to resume.
pub const JOURNAL_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Serialize, Deserialize)]
struct Journal {
    config: Digest,
    layers: Vec<Digest>,
}

/// A layer of a pulled image: its unpacked form (diff id) and the blob it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledLayer {
    pub diff_id: Digest,
    pub blob_digest: Digest,
    pub blob_size: u64,
    pub media_type: String,
    /// Size of the uncompressed tar stream.
    pub size: u64,
}

/// The blob of a layer as the manifest describes it.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// What a pull commits.
pub struct PulledImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    pub layers: Vec<PulledLayer>,
    /// The tag pulled (none when pulled by digest).
    pub name: Option<Reference>,
    /// The index the manifest was chosen from: a reference by that digest finds the image.
    pub index_digest: Option<Digest>,
}

/// Held for the length of a pull: its layers and config stay in the store whatever
/// happens concurrently (a removal of another image sharing them), and its journal keeps
/// them across a crash. Dropping it unpins; [`PullLease::commit`] also ends the journal.
pub struct PullLease {
    store: Arc<ImageStore>,
    keys: Vec<String>,
    journal: PathBuf,
}

impl ImageStore {
    /// A stored blob (manifest or config), verified, if present.
    pub fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.content.contains(digest) {
            return Ok(None);
        }
        match self.content.read(digest) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(crate::ContentError::NotFound(_)) => Ok(None),
            Err(crate::ContentError::DigestMismatch { .. }) => {
                tracing::warn!(blob = %digest, "a stored blob is corrupt; fetching it again");
                self.content.delete(digest)?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a verified blob (a pulled config), checking it against `digest`.
    pub fn store_blob(&self, bytes: &[u8], digest: &Digest) -> Result<(), StoreError> {
        self.content.ingest_bytes(bytes, Some(digest))?;
        Ok(())
    }

    /// Starts a pull of the image with this config and these layers: pins them and writes
    /// the journal.
    pub fn begin_pull(
        self: &Arc<Self>,
        config: &Digest,
        diff_ids: &[Digest],
    ) -> Result<PullLease, StoreError> {
        let mut keys = vec![blob_pin(config)];
        keys.extend(diff_ids.iter().map(layer_pin));
        {
            let mut inner = lock(&self.inner);
            for key in &keys {
                *inner.pins.entry(key.clone()).or_insert(0) += 1;
            }
        }
        let lease = PullLease {
            store: Arc::clone(self),
            keys,
            journal: self
                .root
                .join(PULLS_DIR)
                .join(format!("{}.json", fsutil::unique_name("pull"))),
        };
        let journal = Journal {
            config: config.clone(),
            layers: diff_ids.to_vec(),
        };
        let bytes = serde_json::to_vec(&journal).map_err(|e| StoreError::Io {
            op: "encoding",
            path: lease.journal.clone(),
            source: io::Error::other(e),
        })?;
        flynn_fsutil::write_atomic_via(
            &self.tmp,
            &lease.journal,
            &bytes,
            flynn_fsutil::Durability::Durable,
        )
        .map_err(|source| StoreError::Io {
            op: "writing",
            path: lease.journal.clone(),
            source,
        })?;
        Ok(lease)
    }

    /// For `open`: the layers (hex) and blobs that recent pull journals keep. Deletes
    /// journals that are stale, unreadable, or whose image is in the store.
    pub(super) fn journaled(
        &self,
        committed: &dyn Fn(&Digest) -> bool,
    ) -> (HashSet<String>, HashSet<Digest>) {
        let dir = self.root.join(PULLS_DIR);
        let mut layers = HashSet::new();
        let mut blobs = HashSet::new();
        let Ok(entries) = fs::read_dir(&dir) else {
            return (layers, blobs);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let fresh = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age < JOURNAL_TTL);
            let journal = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Journal>(&b).ok());
            match journal {
                Some(j) if fresh && !committed(&j.config) => {
                    tracing::info!(journal = %path.display(), layers = j.layers.len(),
                        "keeping the layers of an unfinished pull");
                    layers.extend(j.layers.iter().map(|d| d.hex().to_owned()));
                    blobs.insert(j.config);
                }
                _ => {
                    if let Err(e) = fs::remove_file(&path) {
                        tracing::warn!(journal = %path.display(), error = %e, "could not delete a pull journal");
                    }
                }
            }
        }
        (layers, blobs)
    }

    fn end_journals_of(&self, config: &Digest) {
        let Ok(entries) = fs::read_dir(self.root.join(PULLS_DIR)) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let same = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Journal>(&b).ok())
                .is_some_and(|j| j.config == *config);
            if same {
                remove_journal(&path);
            }
        }
    }

    fn layer_record(&self, diff_id: &Digest, blob: &LayerBlob) -> Option<PulledLayer> {
        self.layers.info(diff_id).map(|info| PulledLayer {
            diff_id: diff_id.clone(),
            blob_digest: blob.digest.clone(),
            blob_size: blob.size,
            media_type: blob.media_type.clone(),
            size: info.size,
        })
    }
}

impl PullLease {
    pub fn store(&self) -> &Arc<ImageStore> {
        &self.store
    }

    /// The layer, if it is already in the store.
    pub fn present(&self, diff_id: &Digest, blob: &LayerBlob) -> Option<PulledLayer> {
        self.store.layer_record(diff_id, blob)
    }

    /// Unpacks a layer blob streamed from `src`, verifying its digest, size and diff id,
    /// and moves it into place. If the layer turns up meanwhile (an import of the same
    /// layer), `src` is left unread. Blocks: run it on a blocking thread.
    pub fn unpack(
        &self,
        src: impl Read + Send,
        blob: &LayerBlob,
        diff_id: &Digest,
    ) -> Result<PulledLayer, UnpackError> {
        let store = &self.store;
        store.with_layer_lock(diff_id, || {
            if let Some(present) = store.layer_record(diff_id, blob) {
                return Ok(present);
            }
            store
                .clear_damaged_layer(diff_id)
                .map_err(|e| UnpackError::Destination {
                    layer: blob.digest.to_string(),
                    path: store.layers.diff_dir(diff_id),
                    source: io::Error::other(e.to_string()),
                })?;
            let expected = Expected {
                compressed: Some(blob.digest.clone()),
                compressed_size: Some(blob.size),
                diff_id: Some(diff_id.clone()),
            };
            let unpacked = store
                .layers
                .unpack(src, &blob.digest.to_string(), &expected)?;
            Ok(PulledLayer {
                diff_id: unpacked.diff_id,
                blob_digest: unpacked.compressed,
                blob_size: unpacked.compressed_size,
                media_type: blob.media_type.clone(),
                size: unpacked.size,
            })
        })
    }

    /// Stores the manifest and makes the image visible under its name, in one metadata
    /// write; then ends the journal. Blocks.
    pub fn commit(&self, image: PulledImage) -> Result<Image, StoreError> {
        let store = &self.store;
        // The manifest is pinned like the rest until the image lists it.
        let manifest_pin = blob_pin(&image.manifest_digest);
        let config_digest = image.config_digest.clone();
        *lock(&store.inner)
            .pins
            .entry(manifest_pin.clone())
            .or_insert(0) += 1;
        let result = (|| {
            store
                .content
                .ingest_bytes(&image.manifest, Some(&image.manifest_digest))?;
            let config = store.blob(&image.config_digest)?.ok_or_else(|| {
                StoreError::Content(crate::ContentError::NotFound(image.config_digest.clone()))
            })?;
            let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config)
                .map_err(|source| StoreError::BadConfig {
                    id: image.config_digest.to_string(),
                    source,
                })?;
            let mut index_digests: Vec<Digest> = image.index_digest.into_iter().collect();
            if let Some(old) = lock(&store.inner)
                .state
                .images
                .get(&image.config_digest.to_string())
            {
                for d in &old.index_digests {
                    if !index_digests.contains(d) {
                        index_digests.push(d.clone());
                    }
                }
            }
            let record = ImageRecord {
                id: image.config_digest.clone(),
                manifest_digest: image.manifest_digest.clone(),
                manifest_media_type: image.manifest_media_type,
                created: config.created().clone(),
                architecture: config.architecture().to_string(),
                os: config.os().to_string(),
                layers: image
                    .layers
                    .into_iter()
                    .map(|l| LayerRecord {
                        diff_id: l.diff_id,
                        blob_digest: l.blob_digest,
                        blob_size: l.blob_size,
                        media_type: l.media_type,
                        size: l.size,
                    })
                    .collect(),
                index_digests,
            };
            let names: Vec<String> = image.name.iter().map(|n| n.to_string()).collect();
            store.commit(record, &names)
        })();
        store.unpin(&[manifest_pin]);
        if result.is_ok() {
            remove_journal(&self.journal);
            // Journals of earlier, interrupted pulls of this image are done with too: the
            // image now holds what they kept.
            store.end_journals_of(&config_digest);
        }
        result
    }
}

impl Drop for PullLease {
    fn drop(&mut self) {
        self.store.unpin(&self.keys);
    }
}

fn remove_journal(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(journal = %path.display(), error = %e,
            "could not delete a pull journal; it expires by itself"),
    }
}
