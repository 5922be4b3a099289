//! What a registry answers for a manifest request: an image index (or Docker manifest
//! list), or an image manifest (OCI or Docker schema 2), told apart by `mediaType` and, for
//! OCI documents that omit it, by their fields.

use oci_spec::image::{ImageIndex, ImageManifest};

use super::PullError;
use super::platform::Platform;
use crate::digest::Digest;

pub(super) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The Accept header of manifest requests: everything we can use.
pub(super) const ACCEPT: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Layer media types we unpack (the compression is detected from the bytes).
const LAYER_TYPES: &[&str] = &[
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
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// A blob a manifest points at.
#[derive(Clone, Debug)]
pub(super) struct Blob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// An index entry.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub blob: Blob,
    /// `os/arch[/variant]`, or None when the entry states no platform.
    pub platform: Option<(String, String, Option<String>)>,
}

impl Entry {
    fn describe(&self) -> String {
        match &self.platform {
            Some((os, arch, Some(v))) => format!("{os}/{arch}/{v}"),
            Some((os, arch, None)) => format!("{os}/{arch}"),
            None => "unspecified".to_owned(),
        }
    }
}

pub(super) enum Document {
    Index(Vec<Entry>),
    Manifest {
        media_type: String,
        config: Blob,
        layers: Vec<Blob>,
    },
}

/// Parses a manifest document fetched as `what` (for errors).
pub(super) fn parse(bytes: &[u8], what: &str) -> Result<Document, PullError> {
    let malformed = |reason: String| PullError::BadManifest {
        what: what.to_owned(),
        reason,
    };
    let probe: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let media_type = probe
        .get("mediaType")
        .and_then(|m| m.as_str())
        .map(str::to_owned);
    if probe.get("schemaVersion").and_then(|v| v.as_i64()) == Some(1)
        || media_type
            .as_deref()
            .is_some_and(|m| DOCKER_SCHEMA1.contains(&m))
    {
        return Err(PullError::UnsupportedManifest {
            what: what.to_owned(),
            media_type: "Docker schema 1".to_owned(),
        });
    }
    let is_index = match media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => {
            return Err(PullError::UnsupportedManifest {
                what: what.to_owned(),
                media_type: other.to_owned(),
            });
        }
        None if probe.get("manifests").is_some() => true,
        None if probe.get("config").is_some() => false,
        None => return Err(malformed("neither an image index nor a manifest".into())),
    };
    if is_index {
        let index: ImageIndex = serde_json::from_slice(bytes)
            .map_err(|e| malformed(format!("not an image index: {e}")))?;
        let entries = index
            .manifests()
            .iter()
            .map(|d| {
                Ok(Entry {
                    blob: blob(d, what)?,
                    platform: d.platform().as_ref().map(|p| {
                        (
                            p.os().to_string(),
                            p.architecture().to_string(),
                            p.variant().clone(),
                        )
                    }),
                })
            })
            .collect::<Result<Vec<_>, PullError>>()?;
        return Ok(Document::Index(entries));
    }
    let manifest: ImageManifest = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("not an image manifest: {e}")))?;
    let config = blob(manifest.config(), what)?;
    if !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Err(PullError::NotAnImage {
            what: what.to_owned(),
            media_type: config.media_type,
        });
    }
    let layers = manifest
        .layers()
        .iter()
        .map(|d| {
            let b = blob(d, what)?;
            if !LAYER_TYPES.contains(&b.media_type.as_str()) {
                return Err(PullError::UnsupportedLayer {
                    what: what.to_owned(),
                    digest: b.digest,
                    media_type: b.media_type,
                });
            }
            Ok(b)
        })
        .collect::<Result<Vec<_>, PullError>>()?;
    Ok(Document::Manifest {
        media_type: media_type.unwrap_or_else(|| OCI_MANIFEST.to_owned()),
        config,
        layers,
    })
}

fn blob(d: &oci_spec::image::Descriptor, what: &str) -> Result<Blob, PullError> {
    let digest = d
        .digest()
        .to_string()
        .parse::<Digest>()
        .map_err(|e| PullError::BadManifest {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(Blob {
        digest,
        size: d.size(),
        media_type: d.media_type().to_string(),
    })
}

/// The entry of `entries` for `platform`: the first that matches, as Docker chooses.
/// Entries that are not image manifests (attestations, nested indexes) are skipped.
pub(super) fn select<'a>(
    entries: &'a [Entry],
    platform: &Platform,
    what: &str,
) -> Result<&'a Entry, PullError> {
    let images = entries
        .iter()
        .filter(|e| matches!(e.blob.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST));
    let mut available = Vec::new();
    for entry in images {
        if let Some((os, arch, variant)) = &entry.platform {
            if platform.matches(os, arch, variant.as_deref()) {
                return Ok(entry);
            }
            if os != "unknown" {
                available.push(entry.describe());
            }
        }
    }
    Err(PullError::NoPlatform {
        what: what.to_owned(),
        wanted: platform.to_string(),
        available: if available.is_empty() {
            "none".to_owned()
        } else {
            available.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn index() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D1}","size":10,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D2}","size":11,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D3}","size":12,"platform":{{"os":"unknown","architecture":"unknown"}}}}
            ]}}"#
        )
    }

    #[test]
    fn index_entries_are_chosen_by_platform() {
        let Document::Index(entries) = parse(index().as_bytes(), "idx").unwrap() else {
            panic!("not an index");
        };
        let amd64 = select(&entries, &"linux/amd64".parse().unwrap(), "idx").unwrap();
        assert_eq!(amd64.blob.digest.to_string(), D2);
        let arm64 = select(&entries, &"linux/arm64".parse().unwrap(), "idx").unwrap();
        assert_eq!(arm64.blob.digest.to_string(), D1);
        let err = select(&entries, &"linux/s390x".parse().unwrap(), "idx").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("linux/s390x") && msg.contains("linux/arm64/v8, linux/amd64"),
            "{msg}"
        );
        assert!(!msg.contains("unknown"), "{msg}");
    }

    #[test]
    fn manifests_are_checked_for_image_media_types() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":5}},
               "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{D2}","size":7}}]}}"#
        );
        let Document::Manifest {
            media_type,
            config,
            layers,
        } = parse(manifest.as_bytes(), "m").unwrap()
        else {
            panic!("not a manifest");
        };
        assert_eq!(media_type, OCI_MANIFEST);
        assert_eq!(config.size, 5);
        assert_eq!(layers[0].digest.to_string(), D2);

        let helm = manifest.replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.cncf.helm.config.v1+json",
        );
        assert!(matches!(
            parse(helm.as_bytes(), "m"),
            Err(PullError::NotAnImage { .. })
        ));
        let odd = manifest.replace("tar+zstd", "tar+xz");
        assert!(matches!(
            parse(odd.as_bytes(), "m"),
            Err(PullError::UnsupportedLayer { .. })
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":1,"name":"x"}"#, "m"),
            Err(PullError::UnsupportedManifest { .. })
        ));
        assert!(matches!(
            parse(b"[", "m"),
            Err(PullError::BadManifest { .. })
        ));
    }
}

/// Structure-aware fuzzing: documents shaped like indexes and manifests, with fields of
/// every JSON type, hostile digests, sizes and media types. `PROPTEST_CASES` sets the
/// number of cases (256 by default; `scripts/fuzz.sh` runs more).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::from),
        ]
    }

    fn media_type() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(
                [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST]
                    .iter()
                    .chain(LAYER_TYPES)
                    .chain(CONFIG_TYPES)
                    .chain(DOCKER_SCHEMA1)
                    .map(|s| Value::from(*s))
                    .collect::<Vec<_>>()
            ),
            scalar(),
        ]
    }

    fn digest() -> impl Strategy<Value = Value> {
        prop_oneof![
            "sha256:[0-9a-f]{64}".prop_map(Value::from),
            "sha(256|512):[0-9a-fA-F]{0,70}".prop_map(Value::from),
            "[a-z0-9+._-]{1,10}:[a-zA-Z0-9=_-]{1,40}".prop_map(Value::from),
            scalar(),
        ]
    }

    fn size() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u64>().prop_map(Value::from),
            Just(json!(-1)),
            Just(json!(1.5)),
            Just(json!(1e300)),
            scalar(),
        ]
    }

    fn descriptor() -> impl Strategy<Value = Value> {
        (
            media_type(),
            digest(),
            size(),
            prop::option::of((".{0,8}", ".{0,8}", prop::option::of(".{0,4}"))),
            any::<bool>(),
        )
            .prop_map(|(m, d, s, platform, drop_digest)| {
                let mut v = json!({"mediaType": m, "digest": d, "size": s});
                if let Some((os, arch, variant)) = platform {
                    v["platform"] = json!({"os": os, "architecture": arch});
                    if let Some(variant) = variant {
                        v["platform"]["variant"] = json!(variant);
                    }
                }
                if drop_digest {
                    v.as_object_mut().map(|o| o.remove("digest"));
                }
                v
            })
    }

    fn document() -> impl Strategy<Value = Value> {
        let schema = prop_oneof![Just(json!(2)), Just(json!(1)), scalar()];
        (
            schema,
            prop::option::of(media_type()),
            prop::option::of(descriptor()),
            prop::option::of(prop::collection::vec(descriptor(), 0..4)),
            prop::option::of(prop::collection::vec(descriptor(), 0..4)),
        )
            .prop_map(|(schema, media, config, layers, manifests)| {
                let mut v = json!({"schemaVersion": schema});
                if let Some(m) = media {
                    v["mediaType"] = m;
                }
                if let Some(c) = config {
                    v["config"] = c;
                }
                if let Some(l) = layers {
                    v["layers"] = Value::Array(l);
                }
                if let Some(m) = manifests {
                    v["manifests"] = Value::Array(m);
                }
                v
            })
    }

    proptest! {
        #[test]
        fn manifests_and_indexes(doc in document()) {
            let bytes = serde_json::to_vec(&doc).unwrap();
            match parse(&bytes, "fuzz") {
                Ok(Document::Index(entries)) => {
                    let listed = doc.get("manifests").and_then(Value::as_array).map_or(0, Vec::len);
                    prop_assert_eq!(entries.len(), listed);
                    let _ = select(&entries, &Platform::host(), "fuzz");
                }
                Ok(Document::Manifest { config, layers, .. }) => {
                    prop_assert!(CONFIG_TYPES.contains(&config.media_type.as_str()));
                    for l in &layers {
                        prop_assert!(LAYER_TYPES.contains(&l.media_type.as_str()));
                        prop_assert_eq!(l.digest.to_string().len(), "sha256:".len() + 64);
                    }
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn manifest_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes, "fuzz");
        }
    }
}
