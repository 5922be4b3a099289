//! `ImageStore::export`: an image as an OCI archive (a tar of an OCI image layout)
//! made of the very blobs it was imported from, so that a store importing the archive
//! holds the same image: the same id, manifest digest and layer digests. This is how
//! one host hands another an image that no registry has (`flynn import`, a slug's
//! image): a release pins a manifest digest, and only the original blobs have it.

use std::fs::File;
use std::io::{self, Write};

use serde_json::json;

use super::{ImageStore, StoreError, find, lock};
use crate::content::ContentError;
use crate::digest::Digest;

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// An image ready to be written as an OCI archive: its blobs are open, so a removal
/// of the image meanwhile does not cut the archive short.
#[derive(Debug)]
pub struct Export {
    index: Vec<u8>,
    /// Each blob once: digest, open file, size.
    blobs: Vec<(Digest, File, u64)>,
}

impl ImageStore {
    /// Opens what an export of `name_or_id` needs. Fails with
    /// [`StoreError::BlobsNotKept`] for an image whose layer blobs the store does not
    /// hold (pulled from a registry: another host pulls it from there).
    pub fn export(&self, name_or_id: &str) -> Result<Export, StoreError> {
        // Under the lock, so that no removal runs between the lookup and the opens.
        let inner = lock(&self.inner);
        let (id, record) = find(&inner.state, name_or_id)?;
        let mut blobs: Vec<(Digest, File, u64)> = Vec::new();
        for digest in record.blobs() {
            if blobs.iter().any(|(d, _, _)| d == digest) {
                continue;
            }
            let file = match self.content.open_blob(digest) {
                Ok(file) => file,
                Err(ContentError::NotFound(_)) => {
                    return Err(StoreError::BlobsNotKept {
                        image: name_or_id.to_owned(),
                        blob: digest.to_string(),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            let size = file
                .metadata()
                .map_err(|source| StoreError::Io {
                    op: "reading the size of",
                    path: self.content.path(digest),
                    source,
                })?
                .len();
            blobs.push((digest.clone(), file, size));
        }
        let manifest_size = blobs
            .iter()
            .find(|(d, _, _)| *d == record.manifest_digest)
            .map_or(0, |(_, _, size)| *size);
        let descriptor = |name: Option<&str>| {
            let mut d = json!({
                "mediaType": record.manifest_media_type,
                "digest": record.manifest_digest.to_string(),
                "size": manifest_size,
            });
            if let Some(name) = name {
                // containerd's convention: the full name, and the tag alone.
                let tag = name
                    .rsplit_once(':')
                    .filter(|(_, t)| !t.contains('/'))
                    .map_or("latest", |(_, t)| t);
                d["annotations"] = json!({
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                });
            }
            d
        };
        let names = inner.state.names_of(&id);
        let manifests: Vec<serde_json::Value> = if names.is_empty() {
            vec![descriptor(None)]
        } else {
            names.iter().map(|n| descriptor(Some(n))).collect()
        };
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))
        .map_err(|e| StoreError::Io {
            op: "writing the index of",
            path: self.root.clone(),
            source: io::Error::other(e),
        })?;
        Ok(Export { index, blobs })
    }
}

impl Export {
    /// Writes the archive: `oci-layout`, `index.json`, `blobs/sha256/<hex>`.
    pub fn write_to(self, out: impl Write) -> io::Result<()> {
        let mut tar = tar::Builder::new(out);
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut header = header(tar::EntryType::Directory, 0, 0o755);
            tar.append_data(&mut header, dir, io::empty())?;
        }
        for (name, data) in [("oci-layout", OCI_LAYOUT), ("index.json", &self.index[..])] {
            let mut header = header(tar::EntryType::Regular, data.len() as u64, 0o644);
            tar.append_data(&mut header, name, data)?;
        }
        for (digest, file, size) in self.blobs {
            let mut header = header(tar::EntryType::Regular, size, 0o644);
            // Exactly the size announced: a blob that changed on disk is an error, not
            // a corrupt archive.
            let mut reader = io::Read::take(file, size);
            tar.append_data(
                &mut header,
                format!("blobs/sha256/{}", digest.hex()),
                &mut reader,
            )?;
            if reader.limit() != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("blob {digest} is shorter than it was"),
                ));
            }
        }
        tar.into_inner()?.flush()
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}
