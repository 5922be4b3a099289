//! Images for the Flynn host: references, the content store, import of image archives,
//! layer unpacking and overlay root filesystems.
//!
//! This crate owns everything about images on local disk: parsing and normalizing
//! references, storing manifests and configs by digest, unpacking layers once (shared by
//! all images), naming and removing images, and mounting overlayfs over an image's layers.
//! It must not spawn processes, enter or create namespaces, or know about containers,
//! jobs or the network: the agent composes it with the runtime. Every public method is
//! blocking and safe to call from several threads at once.
//!
//! # Design
//!
//! - **Store layout** (see [`store`]): `images.json` (images and tags, replaced atomically),
//!   `blobs/sha256/<hex>` (manifests and configs), `layers/<diff id hex>/diff` (unpacked
//!   layers), `tmp/` and `trash/` (work in progress; emptied by [`ImageStore::open`]).
//! - **Visibility order**: a blob or layer is written under `tmp/`, verified against its
//!   digest(s), flushed (fsync / one syncfs per layer) and renamed into place; an image
//!   becomes visible last, in one metadata write. Removal writes the metadata first, then
//!   renames layers into `trash/`, then deletes. So after a crash at any point, `open`
//!   finds every listed image complete, and deletes what no image lists.
//! - **Compressed layer blobs are not kept**: once a layer is unpacked and both its digests
//!   verified, only the unpacked tree remains; the image record keeps the blob digest, size
//!   and media type (and the manifest, which names them). `docker save` archives carry no
//!   manifest: the store writes the OCI manifest matching their blobs.
//! - **Unpack security** (see [`unpack`]): paths are resolved by the kernel inside the layer
//!   root (`openat2` + `RESOLVE_IN_ROOT`), and the final component is handled with `*at`
//!   syscalls that never follow it. Absolute entry names are taken relative to the layer
//!   root (as Docker does); names climbing above it with `..` are refused, as are hardlinks
//!   whose target does. Symlink targets are stored verbatim. Device nodes are skipped.
//!   Overlay-reserved xattrs (`trusted.overlay.*`) from the image are dropped.
//! - **Unpack speed**: one thread reads, hashes (compressed and uncompressed) and
//!   decompresses; another writes files. Directory times are set once at the end, and the
//!   layer is flushed with one `syncfs` instead of an fsync per file.
//! - **Names**: an imported image is named by its archive (`RepoTags`; in OCI layouts the
//!   `io.containerd.image.name` annotation, or `org.opencontainers.image.ref.name` when it
//!   is a full reference — a bare tag like `1.0` names nothing) plus the caller's `tag`,
//!   which is always added (and refused for an archive of several images). An image with
//!   no name is kept, untagged, reachable by id. A name moving to another image leaves the
//!   old one untagged, as Docker does.
//! - **Concurrency**: one mutex guards the metadata; imports pin the layers and blobs they
//!   rely on so a concurrent removal cannot delete them; a per-layer lock makes two
//!   imports sharing a layer unpack it once. A `flock` keeps a second process out.

pub mod archive;
pub mod content;
pub mod digest;
mod fsutil;
pub mod import;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod store;
mod sys;
pub mod unpack;

use serde::{Deserialize, Serialize};

pub use content::{ContentError, ContentStore};
pub use digest::Digest;
pub use import::ImportError;
pub use pull::{PullError, PullEvent, PullRequest, Puller};
pub use reference::{Reference, ReferenceError};
pub use rootfs::RootfsError;
pub use store::{ImageStore, StoreError};
pub use unpack::UnpackError;

/// An image in the store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// `sha256:<config digest hex>`, like Docker's image id.
    pub id: String,
    /// Full references naming the image (`docker.io/library/busybox:latest`), sorted; empty
    /// for an untagged image (Docker's `<none>`).
    pub names: Vec<String>,
    pub manifest_digest: String,
    /// From the config.
    pub created: Option<String>,
    /// Sum of the uncompressed layer sizes.
    pub size: u64,
    /// Diff ids, bottom layer first.
    pub layers: Vec<String>,
    pub architecture: String,
    pub os: String,
}

/// An image an import stored, with the names that import gave it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    pub image: Image,
    /// Full references from the archive and the caller's tag; empty when the archive
    /// named nothing (the image is then reachable by id only).
    pub loaded: Vec<String>,
}

/// What [`ImageStore::remove`] did: names removed, then image and layer ids deleted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub untagged: Vec<String>,
    pub deleted: Vec<String>,
}
