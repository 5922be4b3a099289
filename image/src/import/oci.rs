//! OCI image layouts: `oci-layout`, `index.json` and content-addressed `blobs/sha256/<hex>`.
//! Docker schema2 media types are accepted alongside the OCI ones.

use std::collections::HashMap;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

use super::{ImportError, ManifestBlob, PlannedImage, PlannedLayer, Source, read_config, verify};
use crate::digest::Digest;
use crate::reference::{self, Reference};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Indexes nested deeper than this are refused (a loop, or nonsense).
const MAX_INDEX_DEPTH: usize = 4;

enum Kind {
    Manifest,
    Index,
    Unknown,
}

fn classify(media_type: &MediaType) -> Kind {
    match media_type {
        MediaType::ImageManifest => Kind::Manifest,
        MediaType::ImageIndex => Kind::Index,
        MediaType::Other(m) if m == DOCKER_MANIFEST => Kind::Manifest,
        MediaType::Other(m) if m == DOCKER_MANIFEST_LIST => Kind::Index,
        _ => Kind::Unknown,
    }
}

fn is_linux_amd64(d: &Descriptor) -> Option<bool> {
    d.platform()
        .as_ref()
        .map(|p| p.os().to_string() == "linux" && p.architecture().to_string() == "amd64")
}

fn platform_name(d: &Descriptor) -> String {
    match d.platform() {
        Some(p) => format!("{}/{}", p.os(), p.architecture()),
        None => "unspecified".to_owned(),
    }
}

pub(super) fn plan(source: &Source) -> Result<Vec<PlannedImage>, ImportError> {
    let malformed = |name: &str, reason: String| ImportError::Malformed {
        source_path: source.describe().to_owned(),
        name: name.to_owned(),
        reason,
    };
    let layout: serde_json::Value = serde_json::from_slice(&source.read_json_file("oci-layout")?)
        .map_err(|e| malformed("oci-layout", e.to_string()))?;
    if !layout
        .get("imageLayoutVersion")
        .is_some_and(|v| v.is_string())
    {
        return Err(malformed("oci-layout", "no imageLayoutVersion".to_owned()));
    }
    let index: ImageIndex = serde_json::from_slice(&source.read_json_file("index.json")?)
        .map_err(|e| malformed("index.json", format!("not an OCI image index: {e}")))?;

    let mut images = Vec::new();
    let mut skipped = Vec::new();
    for descriptor in index.manifests() {
        if is_linux_amd64(descriptor) == Some(false) {
            skipped.push(platform_name(descriptor));
            continue;
        }
        let names = names_of(descriptor);
        if let Some((blob, manifest)) = resolve(source, descriptor, 0)? {
            images.push(plan_image(source, blob, manifest, names)?);
        }
    }
    if images.is_empty() && !skipped.is_empty() {
        return Err(ImportError::NoPlatform {
            source_path: source.describe().to_owned(),
            available: skipped.join(", "),
        });
    }
    Ok(images)
}

/// Names carried by an `index.json` entry. `org.opencontainers.image.ref.name` is often just
/// a tag (`1.0`), which names nothing without a repository: such an image stays untagged
/// unless the caller tags it.
fn names_of(descriptor: &Descriptor) -> Vec<Reference> {
    let empty = HashMap::new();
    let annotations = descriptor.annotations().as_ref().unwrap_or(&empty);
    let candidate = match annotations.get(ANNOTATION_CONTAINERD_NAME) {
        Some(full) => Some(full),
        None => annotations
            .get(ANNOTATION_REF_NAME)
            .filter(|r| !reference::is_valid_tag(r)),
    };
    match candidate.map(|c| (c, c.parse::<Reference>())) {
        Some((_, Ok(r))) => vec![r],
        Some((raw, Err(e))) => {
            tracing::warn!(name = raw.as_str(), error = %e, "ignoring an invalid image name in index.json");
            Vec::new()
        }
        None => Vec::new(),
    }
}

fn blob_member(
    source: &Source,
    descriptor: &Descriptor,
    what: &str,
) -> Result<(String, Digest), ImportError> {
    let digest: Digest =
        descriptor
            .digest()
            .to_string()
            .parse()
            .map_err(|e| ImportError::Malformed {
                source_path: source.describe().to_owned(),
                name: what.to_owned(),
                reason: format!("{e}"),
            })?;
    Ok((format!("blobs/sha256/{}", digest.hex()), digest))
}

fn read_blob(
    source: &Source,
    descriptor: &Descriptor,
    what: &str,
) -> Result<(Vec<u8>, Digest), ImportError> {
    let (member, digest) = blob_member(source, descriptor, what)?;
    let bytes = source.read_json_file(&member)?;
    verify(
        &bytes,
        &format!("{what} {digest}"),
        Some((&digest, Some(descriptor.size()))),
    )?;
    Ok((bytes, digest))
}

/// Follows a descriptor down to an image manifest, choosing linux/amd64 in indexes.
fn resolve(
    source: &Source,
    descriptor: &Descriptor,
    depth: usize,
) -> Result<Option<(ManifestBlob, ImageManifest)>, ImportError> {
    let (bytes, digest) = read_blob(source, descriptor, "manifest")?;
    let malformed = |reason: String| ImportError::Malformed {
        source_path: source.describe().to_owned(),
        name: format!("blob {digest}"),
        reason,
    };
    let kind = match classify(descriptor.media_type()) {
        Kind::Unknown => {
            // Some tools leave the media type out of the descriptor; look at the document.
            let doc: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
            if doc.get("manifests").is_some() {
                Kind::Index
            } else if doc.get("config").is_some() && doc.get("layers").is_some() {
                Kind::Manifest
            } else {
                tracing::warn!(digest = %digest, media_type = %descriptor.media_type(),
                    "skipping an index.json entry that is not an image");
                return Ok(None);
            }
        }
        kind => kind,
    };
    match kind {
        Kind::Manifest | Kind::Unknown => {
            let manifest: ImageManifest = serde_json::from_slice(&bytes)
                .map_err(|e| malformed(format!("not an image manifest: {e}")))?;
            let media_type = manifest
                .media_type()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_else(|| descriptor.media_type().to_string());
            Ok(Some((
                ManifestBlob {
                    bytes,
                    digest,
                    media_type,
                },
                manifest,
            )))
        }
        Kind::Index => {
            if depth >= MAX_INDEX_DEPTH {
                return Err(malformed("image indexes nested too deep".to_owned()));
            }
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| malformed(format!("not an image index: {e}")))?;
            let manifests = index.manifests();
            let chosen = manifests
                .iter()
                .find(|d| is_linux_amd64(d) == Some(true))
                .or_else(|| match manifests.as_slice() {
                    [only] if only.platform().is_none() => Some(only),
                    _ => None,
                });
            match chosen {
                Some(d) => resolve(source, d, depth + 1),
                None => Err(ImportError::NoPlatform {
                    source_path: source.describe().to_owned(),
                    available: manifests
                        .iter()
                        .map(platform_name)
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            }
        }
    }
}

fn plan_image(
    source: &Source,
    blob: ManifestBlob,
    manifest: ImageManifest,
    names: Vec<Reference>,
) -> Result<PlannedImage, ImportError> {
    if manifest.schema_version() != 2 {
        return Err(ImportError::Malformed {
            source_path: source.describe().to_owned(),
            name: format!("manifest {}", blob.digest),
            reason: format!(
                "schemaVersion {} (only 2 is supported)",
                manifest.schema_version()
            ),
        });
    }
    let config_desc = manifest.config();
    let config_type = config_desc.media_type().to_string();
    if !matches!(config_desc.media_type(), MediaType::ImageConfig) && config_type != DOCKER_CONFIG {
        return Err(ImportError::UnsupportedMediaType {
            what: format!("the config of manifest {}", blob.digest),
            media_type: config_type,
            expected: "config",
        });
    }
    let (config_member, config_digest) = blob_member(source, config_desc, "config")?;
    let (config_bytes, config_digest, config, diff_ids) = read_config(
        source,
        &config_member,
        Some((&config_digest, Some(config_desc.size()))),
        manifest.layers().len(),
    )?;
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (descriptor, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let media_type = descriptor.media_type().to_string();
        if !LAYER_MEDIA_TYPES.contains(&media_type.as_str()) {
            return Err(ImportError::UnsupportedMediaType {
                what: format!("a layer of manifest {}", blob.digest),
                media_type,
                expected: "layer",
            });
        }
        let (member, digest) = blob_member(source, descriptor, "layer")?;
        layers.push(PlannedLayer {
            member,
            digest: Some(digest),
            size: Some(descriptor.size()),
            media_type: Some(media_type),
            diff_id,
        });
    }
    Ok(PlannedImage {
        names,
        config_bytes,
        config_digest,
        config,
        manifest: Some(blob),
        layers,
    })
}
