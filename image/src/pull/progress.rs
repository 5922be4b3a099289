//! Progress of a pull, as events (the agent streams them as NDJSON, one per line).

use serde::{Deserialize, Serialize};

use crate::Image;

/// One step of a pull. `status` tells the kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest was found: what will be fetched.
    Resolved {
        /// The reference, in full.
        reference: String,
        /// The image manifest's digest.
        digest: String,
        /// The index (manifest list) it was chosen from, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index_digest: Option<String>,
        /// `os/arch[/variant]` of the image.
        platform: String,
        /// Which registry host answered (a mirror, or the registry itself).
        endpoint: String,
        /// Layer blobs, bottom first.
        layers: Vec<LayerInfo>,
    },
    /// A layer changed phase or made progress.
    Layer {
        /// The layer blob's digest.
        digest: String,
        phase: LayerPhase,
        /// Compressed bytes fetched so far.
        current: u64,
        /// The blob's size.
        total: u64,
        /// Why a download was resumed (with `phase: resuming`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The image is in the store under its name.
    Done {
        image: Image,
        /// The image manifest's digest.
        digest: String,
        /// False when nothing had to be fetched (the image was up to date).
        downloaded: bool,
    },
    /// The pull failed (sent by the API; the library returns the error instead).
    Error { error: String },
}

/// A layer blob to fetch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    pub digest: String,
    pub size: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LayerPhase {
    /// Queued, or waiting for another pull fetching the same blob.
    Waiting,
    /// Fetching and unpacking (both at once).
    Downloading,
    /// The connection broke: fetching the rest from where it stopped.
    Resuming,
    /// Fetched, verified (blob digest and diff id) and in the store.
    Done,
    /// Already in the store: not fetched.
    Exists,
}

/// Where a pull reports its events. Called from async tasks: it must not block.
pub type Progress = std::sync::Arc<dyn Fn(PullEvent) + Send + Sync>;
