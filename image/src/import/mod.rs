//! Reading image archives: detect the format, read and verify manifests and configs, and
//! describe what to store (a plan). Layers are not read here; the store streams them from
//! the source while unpacking.
//!
//! Formats: a `docker save` archive (`manifest.json`), an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/`), each as a directory or a tar file (optionally gzip/zstd).

mod docker;
mod oci;
pub(crate) mod source;

use std::io;
use std::path::PathBuf;

use oci_spec::image::ImageConfiguration;

use crate::StoreError;
use crate::archive::ArchiveError;
use crate::content::ContentError;
use crate::digest::Digest;
use crate::reference::Reference;
use crate::unpack::UnpackError;
pub(crate) use source::Source;

/// Why an import failed. The store is unchanged by a failed import, except that images
/// fully imported before the failure (from a multi-image archive) stay.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading {path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not an image archive: expected a `docker save` archive (with manifest.json) \
         or an OCI image layout (with oci-layout and index.json), as a directory or a tar file"
    )]
    UnknownFormat { path: PathBuf },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("decompressing {path} failed, the file is corrupt or truncated: {source}")]
    CompressedArchive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{source_path}: {name} is missing; the archive is incomplete")]
    MissingFile { source_path: PathBuf, name: String },
    #[error("{source_path}: {name} is malformed: {reason}")]
    Malformed {
        source_path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{name} is {size} bytes; documents above {limit} bytes are refused")]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error(
        "{what}: digest mismatch: expected {expected}, got {actual}; the archive is corrupt or was \
         tampered with"
    )]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: size mismatch: the descriptor says {expected} bytes, the blob has {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what} has media type {media_type:?}, which is not a container image {expected}")]
    UnsupportedMediaType {
        what: String,
        media_type: String,
        expected: &'static str,
    },
    #[error("{source_path} contains no image")]
    NoImages { source_path: PathBuf },
    #[error("{source_path}: no linux/amd64 image in the index (it has: {available})")]
    NoPlatform {
        source_path: PathBuf,
        available: String,
    },
    #[error(
        "{source_path} holds {count} images; a tag can only name an archive of one image \
         (import without a tag, then tag the images)"
    )]
    TagWithSeveralImages { source_path: PathBuf, count: usize },
    #[error("tag {0} contains a digest; a tag names an image by repository and tag only")]
    TagWithDigest(String),
    #[error(
        "image config {config} lists {diff_ids} layer diff ids but the manifest has {layers} \
         layers; the image is malformed"
    )]
    LayerCountMismatch {
        config: Digest,
        diff_ids: usize,
        layers: usize,
    },
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The manifest as found in the archive (OCI), or `None` for `docker save` archives,
/// whose manifest is written by the store once the layer digests are known.
pub(crate) struct ManifestBlob {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub media_type: String,
}

/// One layer to unpack, as described by the archive.
pub(crate) struct PlannedLayer {
    /// File of the source holding the blob.
    pub member: String,
    /// Digest and size of the blob, when the archive states them.
    pub digest: Option<Digest>,
    pub size: Option<u64>,
    pub media_type: Option<String>,
    /// From the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// One image to store.
pub(crate) struct PlannedImage {
    pub names: Vec<Reference>,
    pub config_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    pub manifest: Option<ManifestBlob>,
    pub layers: Vec<PlannedLayer>,
}

/// Reads the archive's metadata into a plan. `tag` is added to the names of the single
/// image of the archive.
pub(crate) fn plan(
    source: &Source,
    tag: Option<&Reference>,
) -> Result<Vec<PlannedImage>, ImportError> {
    let mut images = if source.exists("manifest.json") {
        docker::plan(source)?
    } else if source.exists("oci-layout") || source.exists("index.json") {
        oci::plan(source)?
    } else {
        return Err(ImportError::UnknownFormat {
            path: source.describe().to_owned(),
        });
    };
    // The same image listed twice (under two names) is one image.
    let mut merged: Vec<PlannedImage> = Vec::new();
    for image in images.drain(..) {
        match merged
            .iter_mut()
            .find(|m| m.config_digest == image.config_digest)
        {
            Some(existing) => {
                for name in image.names {
                    if !existing.names.contains(&name) {
                        existing.names.push(name);
                    }
                }
            }
            None => merged.push(image),
        }
    }
    if merged.is_empty() {
        return Err(ImportError::NoImages {
            source_path: source.describe().to_owned(),
        });
    }
    if let Some(tag) = tag {
        if tag.digest().is_some() {
            return Err(ImportError::TagWithDigest(tag.to_string()));
        }
        if merged.len() > 1 {
            return Err(ImportError::TagWithSeveralImages {
                source_path: source.describe().to_owned(),
                count: merged.len(),
            });
        }
        if let Some(image) = merged.first_mut()
            && !image.names.contains(tag)
        {
            image.names.push(tag.clone());
        }
    }
    Ok(merged)
}

/// Reads, verifies and parses an image config; checks it has one diff id per layer.
fn read_config(
    source: &Source,
    member: &str,
    expected: Option<(&Digest, Option<u64>)>,
    layer_count: usize,
) -> Result<(Vec<u8>, Digest, ImageConfiguration, Vec<Digest>), ImportError> {
    let bytes = source.read_json_file(member)?;
    let digest = verify(&bytes, &format!("image config {member}"), expected)?;
    let config: ImageConfiguration =
        serde_json::from_slice(&bytes).map_err(|e| ImportError::Malformed {
            source_path: source.describe().to_owned(),
            name: member.to_owned(),
            reason: format!("not an image config: {e}"),
        })?;
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| {
            d.parse::<Digest>().map_err(|e| ImportError::Malformed {
                source_path: source.describe().to_owned(),
                name: member.to_owned(),
                reason: format!("rootfs.diff_ids: {e}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if diff_ids.len() != layer_count {
        return Err(ImportError::LayerCountMismatch {
            config: digest,
            diff_ids: diff_ids.len(),
            layers: layer_count,
        });
    }
    Ok((bytes, digest, config, diff_ids))
}

/// Checks `bytes` against an expected digest (and size); returns their digest.
fn verify(
    bytes: &[u8],
    what: &str,
    expected: Option<(&Digest, Option<u64>)>,
) -> Result<Digest, ImportError> {
    let actual = Digest::of(bytes);
    if let Some((digest, size)) = expected {
        if *digest != actual {
            return Err(ImportError::DigestMismatch {
                what: what.to_owned(),
                expected: digest.clone(),
                actual,
            });
        }
        if let Some(size) = size
            && size != bytes.len() as u64
        {
            return Err(ImportError::SizeMismatch {
                what: what.to_owned(),
                expected: size,
                actual: bytes.len() as u64,
            });
        }
    }
    Ok(actual)
}

/// `blobs/sha256/<hex>` (OCI and newer `docker save`) and `<hex>.json` (older configs) name
/// their content's digest; other member names say nothing about it.
fn digest_from_member(member: &str) -> Option<Digest> {
    let name = member.trim_start_matches("./");
    if let Some(hex) = name.strip_prefix("blobs/sha256/") {
        return Digest::from_hex(hex).ok();
    }
    name.strip_suffix(".json")
        .and_then(|hex| Digest::from_hex(hex).ok())
}

impl ImportError {
    /// True when the archive itself is at fault (bad format, corrupt, tampered, hostile),
    /// false when the host is (I/O, disk full, store trouble): a 400 rather than a 500.
    pub fn is_client_error(&self) -> bool {
        match self {
            ImportError::Io { .. } | ImportError::Store(_) => false,
            ImportError::Archive(ArchiveError::Io { .. }) => false,
            ImportError::Content(e) => matches!(
                e,
                ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. }
            ),
            ImportError::Unpack(e) => e.is_client_error(),
            _ => true,
        }
    }
}
