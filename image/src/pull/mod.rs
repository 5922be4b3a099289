//! Pulling images from registries into the store.
//!
//! A pull resolves the reference at the first endpoint that answers (mirrors, then the
//! registry), chooses the platform's manifest from an index, fetches and verifies the
//! config, then fetches the layers concurrently ([`MAX_CONCURRENT_LAYERS`] at a time),
//! each unpacked while it streams ([`layer`]). Layers already in the store are not
//! fetched. Two pulls needing the same blob at once fetch it once: the second waits for
//! the first, then finds the layer in the store. Every blob is verified (digest, size,
//! and for layers the diff id) before it is visible; the image becomes visible last, in
//! one metadata write ([`crate::store::PullLease::commit`]).

mod layer;
mod manifest;
pub mod platform;
pub mod progress;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt};

use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::client::{Remote, Target};
use crate::registry::{Credentials, DockerConfig, Endpoint, RegistryConfig, RegistryError};
use crate::store::{ImageStore, LayerBlob, PullLease, PulledImage, PulledLayer, StoreError};
use crate::unpack::UnpackError;
use crate::{Image, registry};
use manifest::Document;
pub use platform::{Platform, PlatformError};
pub use progress::{LayerInfo, LayerPhase, Progress, PullEvent};

/// Layers fetched at once per pull (Docker's default is 3).
pub const MAX_CONCURRENT_LAYERS: usize = 3;
/// Manifests and configs above this size are refused.
const MAX_DOCUMENT: u64 = 8 * 1024 * 1024;
/// Indexes pointing at indexes are followed this deep.
const MAX_INDEX_DEPTH: usize = 2;

/// Why a pull failed. The store holds no part of the image unless the error says so;
/// finished layers are kept for the next attempt.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{what} is malformed: {reason}")]
    BadManifest { what: String, reason: String },
    #[error(
        "{what} is a {media_type} manifest, which is not supported; push the image again with a current tool"
    )]
    UnsupportedManifest { what: String, media_type: String },
    #[error("{what} is not a container image (its config is {media_type})")]
    NotAnImage { what: String, media_type: String },
    #[error(
        "{what}: layer {digest} has media type {media_type}, which is not a tar layer we can unpack"
    )]
    UnsupportedLayer {
        what: String,
        digest: Digest,
        media_type: String,
    },
    #[error("{what} has no image for {wanted} (it has: {available}); choose one with --platform")]
    NoPlatform {
        what: String,
        wanted: String,
        available: String,
    },
    #[error("{what} is for {actual}, not {wanted}")]
    WrongPlatform {
        what: String,
        wanted: String,
        actual: String,
    },
    #[error("image config {config}: {reason}")]
    BadConfig { config: Digest, reason: String },
    #[error(
        "registry {registry} served a wrong blob for {digest}: {received} bytes, where the \
         manifest says {expected}; the registry or something between us is corrupt"
    )]
    BlobSize {
        registry: String,
        digest: Digest,
        expected: u64,
        received: String,
    },
    #[error("{source} (fetched from {registry})")]
    Layer {
        registry: String,
        #[source]
        source: UnpackError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] registry::AuthError),
    #[error("the layer unpack task failed: {0}; this is a bug")]
    Task(String),
}

impl PullError {
    /// True when the request is at fault (a name that does not exist, a refusal, a
    /// platform the image lacks, a registry serving bad content), false when the host is.
    pub fn is_client_error(&self) -> bool {
        match self {
            PullError::Store(_) | PullError::Task(_) => false,
            PullError::Layer { source, .. } => source.is_client_error(),
            _ => true,
        }
    }
}

/// What to pull.
#[derive(Clone, Debug)]
pub struct PullRequest {
    pub reference: Reference,
    /// Which image of an index; None is the host's platform.
    pub platform: Option<Platform>,
    /// Credentials for the reference's registry; None looks in the Docker config.
    pub credentials: Option<Credentials>,
}

/// The result of a pull.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub image: Image,
    /// The image manifest's digest.
    pub digest: Digest,
    /// False when every blob was already in the store.
    pub downloaded: bool,
}

/// Pulls into a store. One per daemon: it is what makes concurrent pulls share blobs.
pub struct Puller {
    store: Arc<ImageStore>,
    config: RegistryConfig,
    docker_config: Option<PathBuf>,
    flights: Flights,
}

impl Puller {
    /// `docker_config` is the Docker `config.json` read for credentials at each pull.
    pub fn new(
        store: Arc<ImageStore>,
        config: RegistryConfig,
        docker_config: Option<PathBuf>,
    ) -> Puller {
        Puller {
            store,
            config,
            docker_config,
            flights: Flights::default(),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Pulls the image, reporting each step to `progress`.
    pub async fn pull(
        &self,
        request: &PullRequest,
        progress: Progress,
    ) -> Result<Pulled, PullError> {
        let reference = &request.reference;
        let docker_config = match &self.docker_config {
            Some(path) => DockerConfig::load(path)?,
            None => DockerConfig::default(),
        };
        let endpoints = self.config.endpoints(reference);
        let mut last_error = None;
        for endpoint in &endpoints {
            let credentials = if endpoint.mirror {
                docker_config.credentials_for(&endpoint.host)
            } else {
                request
                    .credentials
                    .clone()
                    .or_else(|| docker_config.credentials_for(reference.domain()))
            };
            let remote = Remote::new(reference, endpoint, credentials.as_ref())?;
            match self.resolve(&remote, request).await {
                Ok(resolved) => return self.fetch(&remote, request, resolved, progress).await,
                Err(e) if endpoint.mirror => {
                    tracing::warn!(mirror = endpoint.host.as_str(), error = %e,
                        "the mirror could not serve the image; trying the next endpoint");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            PullError::Registry(RegistryError::Connect {
                registry: reference.domain().to_owned(),
                detail: "no endpoint to try".to_owned(),
            })
        }))
    }

    /// Finds the image manifest: by digest or tag, through indexes.
    async fn resolve(&self, remote: &Remote, request: &PullRequest) -> Result<Resolved, PullError> {
        let reference = &request.reference;
        let platform = request.platform.clone().unwrap_or_else(Platform::host);
        let mut target = match (reference.digest(), reference.tag()) {
            (Some(d), _) => Target::Digest(d.clone()),
            (None, Some(t)) => Target::Tag(t.to_owned()),
            (None, None) => Target::Tag("latest".to_owned()),
        };
        let mut index_digest = None;
        let mut expected_size = None;
        for _ in 0..=MAX_INDEX_DEPTH {
            let what = format!("{} ({target})", reference.repository());
            let (bytes, digest) = remote.manifest(&target, manifest::ACCEPT).await?;
            if bytes.len() as u64 > MAX_DOCUMENT {
                return Err(RegistryError::TooLarge {
                    registry: remote.endpoint().host.clone(),
                    what,
                    size: bytes.len() as u64,
                    limit: MAX_DOCUMENT,
                }
                .into());
            }
            if let Some(size) = expected_size
                && size != bytes.len() as u64
            {
                return Err(PullError::BadManifest {
                    what,
                    reason: format!("{} bytes where the index says {size}", bytes.len()),
                });
            }
            match manifest::parse(&bytes, &what)? {
                Document::Index(entries) => {
                    let entry = manifest::select(&entries, &platform, &what)?;
                    index_digest.get_or_insert(digest);
                    expected_size = Some(entry.blob.size);
                    target = Target::Digest(entry.blob.digest.clone());
                }
                Document::Manifest {
                    media_type,
                    config,
                    layers,
                } => {
                    return Ok(Resolved {
                        manifest: bytes.to_vec(),
                        digest,
                        media_type,
                        index_digest,
                        config,
                        layers,
                        platform,
                        explicit_platform: request.platform.is_some(),
                    });
                }
            }
        }
        Err(PullError::BadManifest {
            what: reference.to_string(),
            reason: format!("indexes nested deeper than {MAX_INDEX_DEPTH}"),
        })
    }

    async fn fetch(
        &self,
        remote: &Remote,
        request: &PullRequest,
        resolved: Resolved,
        progress: Progress,
    ) -> Result<Pulled, PullError> {
        let reference = &request.reference;
        let (config_bytes, config_fetched) = self.config_blob(remote, &resolved.config).await?;
        let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| PullError::BadConfig {
                config: resolved.config.digest.clone(),
                reason: format!("not an image config: {e}"),
            })?;
        let actual_platform = match config.variant() {
            Some(v) => format!("{}/{}/{v}", config.os(), config.architecture()),
            None => format!("{}/{}", config.os(), config.architecture()),
        };
        let config_platform_ok = resolved.platform.matches(
            &config.os().to_string(),
            &config.architecture().to_string(),
            config.variant().as_deref(),
        );
        if !config_platform_ok {
            if resolved.explicit_platform {
                return Err(PullError::WrongPlatform {
                    what: reference.to_string(),
                    wanted: resolved.platform.to_string(),
                    actual: actual_platform,
                });
            }
            tracing::warn!(image = %reference, platform = actual_platform.as_str(),
                "the image is not for this host's platform");
        }
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| d.parse::<Digest>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PullError::BadConfig {
                config: resolved.config.digest.clone(),
                reason: format!("rootfs.diff_ids: {e}"),
            })?;
        if diff_ids.len() != resolved.layers.len() {
            return Err(PullError::BadConfig {
                config: resolved.config.digest.clone(),
                reason: format!(
                    "it lists {} diff ids but the manifest has {} layers",
                    diff_ids.len(),
                    resolved.layers.len()
                ),
            });
        }
        progress(PullEvent::Resolved {
            reference: reference.to_string(),
            digest: resolved.digest.to_string(),
            index_digest: resolved.index_digest.as_ref().map(|d| d.to_string()),
            platform: actual_platform,
            endpoint: remote.endpoint().host.clone(),
            layers: resolved
                .layers
                .iter()
                .map(|l| LayerInfo {
                    digest: l.digest.to_string(),
                    size: l.size,
                })
                .collect(),
        });

        let store = Arc::clone(&self.store);
        let config_digest = resolved.config.digest.clone();
        let pinned = diff_ids.clone();
        let lease = blocking(move || store.begin_pull(&config_digest, &pinned)).await??;
        let lease = Arc::new(lease);

        let jobs = resolved
            .layers
            .iter()
            .zip(&diff_ids)
            .map(|(l, diff_id)| {
                let blob = LayerBlob {
                    digest: l.digest.clone(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                };
                self.layer(
                    remote,
                    Arc::clone(&lease),
                    blob,
                    diff_id.clone(),
                    progress.clone(),
                )
            })
            .collect::<Vec<_>>();
        let layers: Vec<(PulledLayer, bool)> = futures_util::stream::iter(jobs)
            .buffered(MAX_CONCURRENT_LAYERS)
            .try_collect()
            .await?;
        let name = reference.digest().is_none().then(|| reference.clone());
        // "Up to date" as Docker says it: nothing fetched, and the name already meant this.
        let already_named = {
            let (store, name, id) = (
                Arc::clone(&self.store),
                reference.to_string(),
                resolved.config.digest.to_string(),
            );
            blocking(move || store.resolve(&name).is_ok_and(|i| i.id == id)).await?
        };
        let downloaded =
            config_fetched || layers.iter().any(|(_, fetched)| *fetched) || !already_named;
        let manifest_digest = resolved.digest.clone();
        let pulled = PulledImage {
            manifest: resolved.manifest,
            manifest_digest: resolved.digest,
            manifest_media_type: resolved.media_type,
            config_digest: resolved.config.digest,
            layers: layers.into_iter().map(|(l, _)| l).collect(),
            name,
            index_digest: resolved.index_digest,
        };
        let committed = Arc::clone(&lease);
        let image = blocking(move || committed.commit(pulled)).await??;
        tracing::info!(image = %reference, id = %image.id, digest = %manifest_digest, downloaded, "pulled image");
        progress(PullEvent::Done {
            image: image.clone(),
            digest: manifest_digest.to_string(),
            downloaded,
        });
        Ok(Pulled {
            image,
            digest: manifest_digest,
            downloaded,
        })
    }

    /// The config: from the store if there, else fetched (once for concurrent pulls).
    async fn config_blob(
        &self,
        remote: &Remote,
        config: &manifest::Blob,
    ) -> Result<(Vec<u8>, bool), PullError> {
        if config.size > MAX_DOCUMENT {
            return Err(RegistryError::TooLarge {
                registry: remote.endpoint().host.clone(),
                what: format!("image config {}", config.digest),
                size: config.size,
                limit: MAX_DOCUMENT,
            }
            .into());
        }
        let _flight = self.flights.enter(&config.digest).await;
        let store = Arc::clone(&self.store);
        let digest = config.digest.clone();
        if let Some(bytes) = blocking(move || store.blob(&digest)).await?? {
            return Ok((bytes, false));
        }
        let bytes = remote
            .small_blob(&config.digest, "image config", MAX_DOCUMENT)
            .await?;
        if bytes.len() as u64 != config.size {
            return Err(PullError::BlobSize {
                registry: remote.endpoint().host.clone(),
                digest: config.digest.clone(),
                expected: config.size,
                received: bytes.len().to_string(),
            });
        }
        // Stored right away (it is verified), so a concurrent pull waiting on this flight
        // finds it instead of fetching it again.
        let store = Arc::clone(&self.store);
        let (data, digest) = (bytes.clone(), config.digest.clone());
        blocking(move || store.store_blob(&data, &digest)).await??;
        Ok((bytes, true))
    }

    /// One layer: present, or fetched and unpacked as it streams. Returns whether it was
    /// fetched.
    async fn layer(
        &self,
        remote: &Remote,
        lease: Arc<PullLease>,
        blob: LayerBlob,
        diff_id: Digest,
        progress: Progress,
    ) -> Result<(PulledLayer, bool), PullError> {
        let event = |phase, current| PullEvent::Layer {
            digest: blob.digest.to_string(),
            phase,
            current,
            total: blob.size,
            message: None,
        };
        progress(event(LayerPhase::Waiting, 0));
        let _flight = self.flights.enter(&blob.digest).await;
        let present = {
            let (lease, blob, diff_id) = (Arc::clone(&lease), blob.clone(), diff_id.clone());
            blocking(move || lease.present(&diff_id, &blob)).await?
        };
        if let Some(layer) = present {
            progress(event(LayerPhase::Exists, blob.size));
            return Ok((layer, false));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(layer::CHANNEL_DEPTH);
        let unpack = {
            let (blob, diff_id) = (blob.clone(), diff_id.clone());
            tokio::task::spawn_blocking(move || {
                lease.unpack(layer::ChannelReader::new(rx), &blob, &diff_id)
            })
        };
        let fed = layer::feed(remote, &blob, tx, &progress).await;
        let unpacked = unpack.await.map_err(|e| PullError::Task(e.to_string()))?;
        match (fed, unpacked) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(source)) => Err(PullError::Layer {
                registry: remote.endpoint().host.clone(),
                source,
            }),
            (Ok(_), Ok(layer)) => {
                progress(event(LayerPhase::Done, blob.size));
                Ok((layer, true))
            }
        }
    }
}

struct Resolved {
    manifest: Vec<u8>,
    digest: Digest,
    media_type: String,
    index_digest: Option<Digest>,
    config: manifest::Blob,
    layers: Vec<manifest::Blob>,
    platform: Platform,
    explicit_platform: bool,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PullError::Task(e.to_string()))
}

/// One fetch per blob at a time: a pull needing a blob another pull is fetching waits
/// for it, then finds it in the store.
#[derive(Default)]
struct Flights(Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>);

struct Flight<'a> {
    flights: &'a Flights,
    digest: Digest,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Flights {
    async fn enter(&self, digest: &Digest) -> Flight<'_> {
        let mutex = {
            let mut map = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(map.entry(digest.clone()).or_default())
        };
        Flight {
            flights: self,
            digest: digest.clone(),
            guard: Some(mutex.lock_owned().await),
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self
            .flights
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map
            .get(&self.digest)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.digest);
        }
    }
}

impl Endpoint {
    /// `http://host` or `https://host`, for messages.
    pub fn url(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}
