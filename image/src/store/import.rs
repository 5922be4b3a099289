//! `ImageStore::import`: store what an archive's plan describes. Layers first (each
//! verified and moved into place), then the manifest and config blobs, and the image
//! becomes visible last, in one metadata write.

use std::io::Read;
use std::path::Path;

use super::state::{ImageRecord, LayerRecord};
use super::{ImageStore, StoreError, blob_pin, layer_pin, lock};
use crate::digest::Digest;
use crate::import::{self, ImportError, ManifestBlob, PlannedImage, PlannedLayer, Source};
use crate::reference::Reference;
use crate::unpack::{Compression, Expected};
use crate::{Image, Imported};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fn layer_media_type(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

impl ImageStore {
    /// Imports the images of a `docker save` archive or an OCI layout (directory or tar,
    /// optionally gzip/zstd-compressed), detecting the format. Blocks until done.
    ///
    /// Images are named by the archive (`RepoTags`, or `index.json` annotations) and by
    /// `tag`, which is only allowed for an archive of one image. A name already used by
    /// another image moves to the imported one (the other stays, untagged, if it has no
    /// other name). Layers already in the store are not read again.
    pub fn import(&self, src: &Path, tag: Option<&Reference>) -> Result<Vec<Image>, ImportError> {
        Ok(self
            .import_named(src, tag)?
            .into_iter()
            .map(|i| i.image)
            .collect())
    }

    /// [`ImageStore::import`], also telling which names this import gave each image
    /// (what `docker load` prints as "Loaded image").
    pub fn import_named(
        &self,
        src: &Path,
        tag: Option<&Reference>,
    ) -> Result<Vec<Imported>, ImportError> {
        let source = Source::open(src, &self.tmp)?;
        let plan = import::plan(&source, tag)?;
        let mut imported = Vec::with_capacity(plan.len());
        for image in plan {
            let loaded = image
                .names
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>();
            let result = self.import_image(&source, image)?;
            tracing::info!(id = %result.id, names = ?loaded, source = %src.display(), "imported image");
            imported.push(Imported {
                image: result,
                loaded,
            });
        }
        Ok(imported)
    }

    fn import_image(&self, source: &Source, image: PlannedImage) -> Result<Image, ImportError> {
        let mut pins = self.pin(
            std::iter::once(blob_pin(&image.config_digest))
                .chain(image.layers.iter().map(|l| layer_pin(&l.diff_id))),
        );
        let mut unpacked_here = Vec::new();
        let result = self.store_image(source, image, &mut pins, &mut unpacked_here);
        if result.is_err() {
            self.discard_layers(&unpacked_here);
        }
        drop(pins);
        result
    }

    fn store_image(
        &self,
        source: &Source,
        image: PlannedImage,
        pins: &mut super::Pins<'_>,
        unpacked_here: &mut Vec<Digest>,
    ) -> Result<Image, ImportError> {
        let mut layers = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            let (record, unpacked) = self.ensure_layer(source, layer)?;
            if unpacked {
                unpacked_here.push(record.diff_id.clone());
            }
            pins.add(blob_pin(&record.blob_digest));
            self.keep_layer_blob(source, layer, &record)?;
            layers.push(record);
        }
        let manifest = match image.manifest {
            Some(manifest) => manifest,
            None => {
                synthesize_manifest(source, &image.config_bytes, &image.config_digest, &layers)?
            }
        };
        pins.add(blob_pin(&manifest.digest));
        self.content
            .ingest_bytes(&image.config_bytes, Some(&image.config_digest))?;
        self.content
            .ingest_bytes(&manifest.bytes, Some(&manifest.digest))?;
        let record = ImageRecord {
            id: image.config_digest,
            manifest_digest: manifest.digest,
            manifest_media_type: manifest.media_type,
            created: image.config.created().clone(),
            architecture: image.config.architecture().to_string(),
            os: image.config.os().to_string(),
            layers,
            index_digests: Vec::new(),
        };
        let names: Vec<String> = image
            .names
            .iter()
            .filter(|n| n.digest().is_none())
            .map(|n| n.to_string())
            .collect();
        Ok(self.commit(record, &names)?)
    }

    /// After a failed import: deletes the layers it unpacked, unless an image or another
    /// import in progress uses them, so a failure leaves the store as it was.
    fn discard_layers(&self, diff_ids: &[Digest]) {
        let mut trashed = Vec::new();
        {
            let inner = lock(&self.inner);
            for diff_id in diff_ids {
                let only_ours = inner.pins.get(&layer_pin(diff_id)) == Some(&1);
                if only_ours && !inner.state.layer_used(diff_id, None) {
                    match self.layers.trash(diff_id) {
                        Ok(Some(path)) => trashed.push(path),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(layer = %diff_id, error = %e, "could not discard a layer")
                        }
                    }
                }
            }
        }
        for path in trashed {
            if let Err(e) = crate::fsutil::remove_any(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a discarded layer");
            }
        }
    }

    /// Makes the layer present, unpacking it unless it already is.
    fn ensure_layer(
        &self,
        source: &Source,
        layer: &PlannedLayer,
    ) -> Result<(LayerRecord, bool), ImportError> {
        self.with_layer_lock(&layer.diff_id, || self.ensure_layer_locked(source, layer))
    }

    fn ensure_layer_locked(
        &self,
        source: &Source,
        layer: &PlannedLayer,
    ) -> Result<(LayerRecord, bool), ImportError> {
        if let Some(info) = self.layers.info(&layer.diff_id) {
            tracing::debug!(layer = %layer.diff_id, "layer already present");
            let (blob_digest, blob_size, media_type) =
                match (&layer.digest, layer.size, &layer.media_type) {
                    (Some(d), Some(s), Some(m)) => (d.clone(), s, m.clone()),
                    _ => describe_blob(source, layer)?,
                };
            let record = LayerRecord {
                diff_id: layer.diff_id.clone(),
                blob_digest,
                blob_size,
                media_type,
                size: info.size,
            };
            return Ok((record, false));
        }
        self.clear_damaged_layer(&layer.diff_id)?;
        let (reader, member_size) = source.open_file(&layer.member)?;
        let expected = Expected {
            compressed: layer.digest.clone(),
            compressed_size: Some(layer.size.unwrap_or(member_size)),
            diff_id: Some(layer.diff_id.clone()),
        };
        let label = format!("{} ({})", layer.diff_id, layer.member);
        let unpacked = self.layers.unpack(reader, &label, &expected)?;
        tracing::debug!(layer = %layer.diff_id, size = unpacked.size, "layer unpacked");
        let record = LayerRecord {
            diff_id: unpacked.diff_id,
            blob_digest: unpacked.compressed,
            blob_size: unpacked.compressed_size,
            media_type: layer
                .media_type
                .clone()
                .unwrap_or_else(|| layer_media_type(unpacked.compression).to_owned()),
            size: unpacked.size,
        };
        Ok((record, true))
    }

    /// Keeps the layer's blob as the archive has it (compressed or not), so that the
    /// image can be exported with its digests ([`ImageStore::export`]): another host
    /// then stores the very image this one holds. Read again from the source (the
    /// unpack did not keep it), verified against the digest the image records.
    fn keep_layer_blob(
        &self,
        source: &Source,
        layer: &PlannedLayer,
        record: &LayerRecord,
    ) -> Result<(), ImportError> {
        if self.content.contains(&record.blob_digest) {
            return Ok(());
        }
        let (reader, _) = source.open_file(&layer.member)?;
        self.content
            .ingest(reader, Some(&record.blob_digest), Some(record.blob_size))?;
        Ok(())
    }

    /// Makes the image visible under its names, in one metadata write.
    pub(super) fn commit(
        &self,
        record: ImageRecord,
        names: &[String],
    ) -> Result<Image, StoreError> {
        let mut inner = lock(&self.inner);
        let before = inner.state.clone();
        let id = record.id.to_string();
        let replaced_manifest = inner
            .state
            .images
            .get(&id)
            .map(|old| old.manifest_digest.clone())
            .filter(|old| *old != record.manifest_digest);
        inner.state.images.insert(id.clone(), record);
        for name in names {
            if let Some(previous) = inner.state.tags.insert(name.clone(), id.clone())
                && previous != id
            {
                tracing::info!(
                    name = name.as_str(),
                    from = previous.as_str(),
                    to = id.as_str(),
                    "tag moved"
                );
            }
        }
        self.save(&mut inner, before)?;
        if let Some(old) = replaced_manifest
            && !inner.state.blob_used(&old, None)
            && !inner.pins.contains_key(&blob_pin(&old))
            && let Err(e) = self.content.delete(&old)
        {
            tracing::warn!(blob = %old, error = %e, "could not delete a replaced manifest");
        }
        let record = inner
            .state
            .images
            .get(&id)
            .ok_or(StoreError::NotFound(id.clone()))?;
        Ok(inner.state.image(record))
    }
}

/// Digest, size and media type of a `docker save` layer blob that need not be unpacked.
fn describe_blob(
    source: &Source,
    layer: &PlannedLayer,
) -> Result<(Digest, u64, String), ImportError> {
    let (mut reader, size) = source.open_file(&layer.member)?;
    let mut head = [0u8; 4];
    let mut filled = 0;
    while filled < head.len() {
        let n = reader
            .read(&mut head[filled..])
            .map_err(|source| ImportError::Io {
                path: source_path(layer),
                source,
            })?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    let compression = Compression::sniff(&head[..filled]);
    let digest = match (&layer.digest, compression) {
        (Some(d), _) => d.clone(),
        // An uncompressed layer blob is the tar stream itself.
        (None, Compression::None) => layer.diff_id.clone(),
        (None, _) => {
            let (reader, _) = source.open_file(&layer.member)?;
            hash(reader).map_err(|e| ImportError::Io {
                path: source_path(layer),
                source: e,
            })?
        }
    };
    Ok((digest, size, layer_media_type(compression).to_owned()))
}

fn source_path(layer: &PlannedLayer) -> std::path::PathBuf {
    std::path::PathBuf::from(&layer.member)
}

fn hash(mut reader: impl Read) -> std::io::Result<Digest> {
    let mut hasher = crate::digest::Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// `docker save` archives carry no manifest: write the OCI manifest a registry would serve
/// for these blobs, so every stored image has one.
fn synthesize_manifest(
    source: &Source,
    config_bytes: &[u8],
    config_digest: &Digest,
    layers: &[LayerRecord],
) -> Result<ManifestBlob, ImportError> {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": config_digest.to_string(),
            "size": config_bytes.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type,
            "digest": l.blob_digest.to_string(),
            "size": l.blob_size,
        })).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| ImportError::Malformed {
        source_path: source.describe().to_owned(),
        name: "manifest.json".to_owned(),
        reason: format!("cannot write an OCI manifest for it: {e}"),
    })?;
    Ok(ManifestBlob {
        digest: Digest::of(&bytes),
        bytes,
        media_type: OCI_MANIFEST.to_owned(),
    })
}
