//! Images for the Flynn host: references, the content store, import of image archives,
//! pulls from registries, layer unpacking and overlay root filesystems.
//!
//! This crate owns everything about images on local disk: parsing and normalizing
//! references, storing manifests and configs by digest, unpacking layers once (shared by
//! all images), naming and removing images, and mounting overlayfs over an image's layers;
//! and fetching images from registries ([`registry`], [`pull`]).
//! It must not spawn processes, enter or create namespaces, or know about containers,
//! jobs or the host's network setup: the agent composes it with the runtime. Store methods
//! are blocking and safe to call from several threads at once; pulls are async (tokio).
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
//! - **Layer blobs are kept for imported images only**: an import keeps each layer's blob
//!   as the archive has it (read again from the archive once unpacked, verified) beside the
//!   unpacked tree, so [`ImageStore::export`] can hand the very image (same id, manifest and
//!   layer digests) to another host: an imported image is in no registry, and a release
//!   pins its manifest digest. A pull keeps only the unpacked tree (the registry has the
//!   blobs; another host pulls from there). The image record keeps every blob's digest, size
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
//! - **Pulls** (see [`pull`], [`registry`]): HTTP through the `oci-client` crate (reqwest,
//!   rustls): it does the `/v2/` challenge, anonymous and credentialed bearer tokens, basic
//!   auth, token expiry, HTTP or HTTPS per registry, mirrors (`?ns=`), and blob streams from
//!   an offset (`Range`), which is all a pull needs; verification stays ours. Endpoints:
//!   the registry's mirrors from the daemon config, then the registry (Docker Hub's API is
//!   `registry-1.docker.io`); a mirror that fails falls through to the next. Plain HTTP for
//!   loopback, `localhost` and configured `insecure` hosts/CIDRs, as Docker (no HTTPS try
//!   first). Credentials: the request's, else the daemon's Docker `config.json` `auths`
//!   (credential helpers are programs, which this crate does not run). An index yields the
//!   first manifest for the platform (the host's by default, `linux/amd64` here).
//! - **Pull data path**: each layer streams from the HTTP body through a bounded channel
//!   into the unpacker (the same two-thread unpack as imports: hash the blob, decompress,
//!   hash the tar, write files into `tmp/`); nothing is written whole before unpacking
//!   starts, and the layer is renamed into place only after its digest, size and diff id
//!   verified. Layers run 3 at a time; present ones are skipped. A broken connection is
//!   resumed with `Range` from the byte reached (the hashers and decompressor just keep
//!   going); a response that is longer or cleanly shorter than the descriptor is a wrong
//!   blob, not a broken connection. One fetch per blob digest at a time per daemon: a
//!   second pull waits for it, then finds the layer (or config) in the store.
//! - **Interrupted pulls**: a pull writes a journal (`pulls/`, its config and diff ids)
//!   before fetching; `open` keeps what recent journals name, so after a crash the next
//!   pull resumes with the layers that had finished, while the layer in flight (in `tmp/`)
//!   restarts from zero. Journals end at commit, and expire after 24 h (their layers are
//!   then deleted as unused). The image is visible only after the commit, as for imports.
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
pub use store::{Export, ImageStore, StoreError};
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
