//! `docker save` archives: `manifest.json` lists, per image, its config file, its tags and
//! its layer files (`<id>/layer.tar`, or `blobs/sha256/<hex>` since Docker 25).

use serde::Deserialize;

use super::{ImportError, PlannedImage, PlannedLayer, Source, digest_from_member, read_config};
use crate::reference::Reference;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub(super) fn plan(source: &Source) -> Result<Vec<PlannedImage>, ImportError> {
    let malformed = |reason: String| ImportError::Malformed {
        source_path: source.describe().to_owned(),
        name: "manifest.json".to_owned(),
        reason,
    };
    let bytes = source.read_json_file("manifest.json")?;
    let entries: Vec<Entry> = serde_json::from_slice(&bytes)
        .map_err(|e| malformed(format!("expected [{{Config, RepoTags, Layers}}]: {e}")))?;
    let mut images = Vec::with_capacity(entries.len());
    for entry in entries {
        let expected = digest_from_member(&entry.config);
        let (config_bytes, config_digest, config, diff_ids) = read_config(
            source,
            &entry.config,
            expected.as_ref().map(|d| (d, None)),
            entry.layers.len(),
        )?;
        let names = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| {
                t.parse::<Reference>()
                    .map_err(|e| malformed(format!("RepoTags: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let layers = entry
            .layers
            .into_iter()
            .zip(diff_ids)
            .map(|(member, diff_id)| PlannedLayer {
                digest: digest_from_member(&member),
                member,
                size: None,
                media_type: None,
                diff_id,
            })
            .collect();
        images.push(PlannedImage {
            names,
            config_bytes,
            config_digest,
            config,
            manifest: None,
            layers,
        });
    }
    Ok(images)
}
