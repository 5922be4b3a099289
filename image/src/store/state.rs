//! The store's metadata (images and tags), kept in memory and persisted as one JSON file
//! replaced atomically, so a crash leaves either the old or the new state.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Image;
use crate::digest::Digest;

pub(super) const STATE_FILE: &str = "images.json";
const STATE_VERSION: u32 = 1;

/// A layer of an image: the unpacked layer (by diff id) and the blob it came from (kept
/// in the content store for imported images, not for pulled ones).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(super) struct LayerRecord {
    pub diff_id: Digest,
    pub blob_digest: Digest,
    pub blob_size: u64,
    pub media_type: String,
    /// Size of the uncompressed tar stream.
    pub size: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(super) struct ImageRecord {
    /// The config digest, which is the image id.
    pub id: Digest,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
    pub layers: Vec<LayerRecord>,
    /// Indexes (manifest lists) this image was pulled through: references by these
    /// digests find it too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub index_digests: Vec<Digest>,
}

impl ImageRecord {
    /// The digests of its blobs: config, manifest, then the layers' (kept or not).
    pub(super) fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.id, &self.manifest_digest]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.blob_digest))
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct State {
    pub version: u32,
    /// Image id (`sha256:<hex>`) -> image.
    pub images: BTreeMap<String, ImageRecord>,
    /// Full reference (`docker.io/library/busybox:latest`) -> image id.
    pub tags: BTreeMap<String, String>,
}

impl State {
    pub(super) fn load(path: &Path) -> io::Result<State> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State {
                version: STATE_VERSION,
                ..State::default()
            }),
            Err(e) => Err(e),
        }
    }

    pub(super) fn save(&self, tmp_dir: &Path, path: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        // Durable: the tags and records of the store are not rebuilt from anything.
        flynn_fsutil::write_atomic_via(tmp_dir, path, &bytes, flynn_fsutil::Durability::Durable)
    }

    pub(super) fn names_of(&self, id: &str) -> Vec<String> {
        self.tags
            .iter()
            .filter(|(_, target)| *target == id)
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub(super) fn image(&self, record: &ImageRecord) -> Image {
        let id = record.id.to_string();
        Image {
            names: self.names_of(&id),
            id,
            manifest_digest: record.manifest_digest.to_string(),
            created: record.created.clone(),
            size: record.layers.iter().map(|l| l.size).sum(),
            layers: record
                .layers
                .iter()
                .map(|l| l.diff_id.to_string())
                .collect(),
            architecture: record.architecture.clone(),
            os: record.os.clone(),
        }
    }

    /// True if any image other than `except` uses the layer.
    pub(super) fn layer_used(&self, diff_id: &Digest, except: Option<&str>) -> bool {
        self.images
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .any(|(_, r)| r.layers.iter().any(|l| l.diff_id == *diff_id))
    }

    /// True if any image other than `except` uses the blob as manifest, config or layer.
    pub(super) fn blob_used(&self, digest: &Digest, except: Option<&str>) -> bool {
        self.images
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .any(|(_, r)| r.blobs().any(|b| b == digest))
    }
}
