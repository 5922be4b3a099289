//! The image store: images and their names, on top of the content store (manifests and
//! configs) and the unpacked layers.
//!
//! On disk, under the root:
//! ```text
//! images.json             images and tags (replaced atomically)
//! blobs/sha256/<hex>      manifests, configs, and the layer blobs of imported images
//! layers/<hex>/diff/      unpacked layer (overlay lowerdir), <hex> = diff id
//! layers/<hex>/layer.json its diff id and size
//! pulls/<unique>.json     journals of unfinished pulls (see `pull`)
//! tmp/                    ingests and unpacks in progress (emptied by `open`)
//! trash/                  layers being deleted (emptied by `open`)
//! lock                    flock held while a store is open
//! ```

mod export;
mod import;
mod layers;
mod pull;
mod state;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use oci_spec::image::ImageConfiguration;

use crate::content::{ContentError, ContentStore};
use crate::digest::{Digest, is_sha256_hex};
use crate::reference::{Reference, ReferenceError};
use crate::{Image, Removed, fsutil, sys};
pub use export::Export;
use layers::Layers;
pub use pull::{JOURNAL_TTL, LayerBlob, PullLease, PulledImage, PulledLayer};
use state::{ImageRecord, STATE_FILE, State};

/// Shortest id prefix accepted, as in Docker.
const MIN_ID_PREFIX: usize = 4;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store: {op} {path} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the image store at {path} is in use by another process; stop it or use another directory"
    )]
    Locked { path: PathBuf },
    #[error(
        "the image metadata {path} is unreadable ({source}); restore it, or move it away to start \
         with an empty store"
    )]
    CorruptState {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Nothing matches the name or id (holds what was asked for).
    #[error("no such image: {0}")]
    NotFound(String),
    /// An id prefix matching several images.
    #[error("{0}")]
    Ambiguous(Ambiguity),
    #[error("{name:?} is neither an image reference nor an image id: {source}")]
    InvalidName {
        name: String,
        #[source]
        source: ReferenceError,
    },
    #[error("image {image} ({id}) is used by a container; remove the container first")]
    InUse { image: String, id: String },
    #[error("image {id}: layer {layer} is missing from the store; import the image again")]
    LayerMissing { id: String, layer: String },
    #[error("image {id}: the stored config is unreadable ({source}); import the image again")]
    BadConfig {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "image {image}: blob {blob} is not kept here (the image was pulled from a registry, \
         whose layers the store keeps only unpacked): pull it from that registry instead"
    )]
    BlobsNotKept { image: String, blob: String },
    #[error(transparent)]
    Content(#[from] ContentError),
}

/// An id prefix that matches several images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguity {
    pub prefix: String,
    /// Ids of the images it matches.
    pub matches: Vec<String>,
}

impl std::fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "image id prefix {:?} is ambiguous: it matches {}; give more characters",
            self.prefix,
            self.matches.join(", ")
        )
    }
}

/// How a name given to `resolve`/`remove` matched.
enum Via {
    /// A tag, by its full reference.
    Name(String),
    /// An id, id prefix or digest reference.
    Id,
}

struct Inner {
    state: State,
    /// Layers (`layer:<hex>`) and blobs (`blob:<hex>`) an import in progress relies on: not
    /// deleted even when no image lists them yet.
    pins: HashMap<String, usize>,
}

/// Images on local disk. `Send + Sync`; share it in an `Arc`. All methods block (file I/O,
/// unpacking): call them from a blocking thread in async code.
pub struct ImageStore {
    root: PathBuf,
    tmp: PathBuf,
    trash: PathBuf,
    state_path: PathBuf,
    content: ContentStore,
    layers: Layers,
    inner: Mutex<Inner>,
    /// One lock per layer being imported, so two imports sharing it unpack it once.
    layer_locks: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    /// Held (flock) for the store's lifetime.
    _lock: File,
}

/// Lock a mutex whether or not a panicking thread poisoned it: the protected state is
/// only ever replaced whole, after it was saved.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn blob_pin(d: &Digest) -> String {
    format!("blob:{}", d.hex())
}

fn layer_pin(d: &Digest) -> String {
    format!("layer:{}", d.hex())
}

/// Pins released on drop.
struct Pins<'a> {
    store: &'a ImageStore,
    keys: Vec<String>,
}

impl Pins<'_> {
    fn add(&mut self, key: String) {
        *lock(&self.store.inner).pins.entry(key.clone()).or_insert(0) += 1;
        self.keys.push(key);
    }
}

impl Drop for Pins<'_> {
    fn drop(&mut self) {
        self.store.unpin(&self.keys);
    }
}

impl ImageStore {
    /// Opens the store at `root`, creating it if needed, and makes it consistent after a
    /// crash: removes interrupted ingests and unpacks, finishes interrupted deletions, drops
    /// layers and blobs no image uses, and tags of missing images.
    pub fn open(root: &Path) -> Result<ImageStore, StoreError> {
        let io_err = |op, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { op, path, source }
        };
        fs::create_dir_all(root).map_err(io_err("creating", root))?;
        let tmp = root.join("tmp");
        let trash = root.join("trash");
        let layers_dir = root.join("layers");
        let pulls_dir = root.join(pull::PULLS_DIR);
        for dir in [&tmp, &trash, &layers_dir, &pulls_dir] {
            // 0700: layers hold setuid binaries that only containers should reach.
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("creating", dir)(e)),
            }
        }
        let lock_path = root.join("lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("opening", &lock_path))?;
        match sys::try_lock_exclusive(&lock_file) {
            Ok(()) => {}
            Err(nix::errno::Errno::EWOULDBLOCK) => {
                return Err(StoreError::Locked {
                    path: root.to_owned(),
                });
            }
            Err(e) => return Err(io_err("locking", &lock_path)(e.into())),
        }
        for dir in [&tmp, &trash] {
            empty_dir(dir).map_err(io_err("cleaning", dir))?;
        }
        let content = ContentStore::open(&root.join("blobs"), &tmp)?;
        let state_path = root.join(STATE_FILE);
        let state = State::load(&state_path).map_err(|source| StoreError::CorruptState {
            path: state_path.clone(),
            source,
        })?;
        let store = ImageStore {
            root: root.to_owned(),
            layers: Layers::new(layers_dir, tmp.clone(), trash.clone()),
            tmp,
            trash,
            state_path,
            content,
            inner: Mutex::new(Inner {
                state,
                pins: HashMap::new(),
            }),
            layer_locks: Mutex::new(HashMap::new()),
            _lock: lock_file,
        };
        store.recover()?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn recover(&self) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let before = inner.state.clone();
        let state = &mut inner.state;
        let images = state.images.clone();
        state.tags.retain(|name, id| {
            let keep = images.contains_key(id);
            if !keep {
                tracing::warn!(
                    name = name.as_str(),
                    id = id.as_str(),
                    "dropping a tag of a missing image"
                );
            }
            keep
        });
        let mut used_layers = HashSet::new();
        let mut used_blobs = HashSet::new();
        for record in state.images.values() {
            used_blobs.extend(record.blobs().cloned());
            for layer in &record.layers {
                used_layers.insert(layer.diff_id.hex().to_owned());
                if self.layers.info(&layer.diff_id).is_none() {
                    tracing::warn!(image = %record.id, layer = %layer.diff_id,
                        "a layer of this image is missing; import the image again to restore it");
                }
            }
        }
        // Unfinished pulls keep what they had fetched, to resume with it.
        let (journal_layers, journal_blobs) =
            self.journaled(&|config| state.images.contains_key(&config.to_string()));
        used_layers.extend(journal_layers);
        used_blobs.extend(journal_blobs);
        let entries = self.layers.entries().map_err(|source| StoreError::Io {
            op: "listing",
            path: self.layers.dir().to_owned(),
            source,
        })?;
        for name in entries {
            if is_sha256_hex(&name) && used_layers.contains(&name) {
                continue;
            }
            tracing::info!(layer = name.as_str(), "deleting a layer no image uses");
            match self.layers.trash_dir_entry(&name) {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(layer = name.as_str(), error = %e, "could not delete an unused layer")
                }
            }
        }
        for blob in self.content.list()? {
            if !used_blobs.contains(&blob) {
                tracing::info!(blob = %blob, "deleting a blob no image uses");
                self.content.delete(&blob)?;
            }
        }
        if inner.state != before {
            inner
                .state
                .save(&self.tmp, &self.state_path)
                .map_err(|source| StoreError::Io {
                    op: "saving",
                    path: self.state_path.clone(),
                    source,
                })?;
        }
        drop(inner);
        empty_dir(&self.trash).map_err(|source| StoreError::Io {
            op: "cleaning",
            path: self.trash.clone(),
            source,
        })
    }

    /// All images, ordered by id.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        let inner = lock(&self.inner);
        Ok(inner
            .state
            .images
            .values()
            .map(|r| inner.state.image(r))
            .collect())
    }

    /// Finds an image by reference (`busybox`, `me/tool:1.0`, `x@sha256:<manifest digest>`),
    /// full id (`sha256:<hex>`) or unique id prefix (at least 4 hex characters, with or
    /// without `sha256:`). A tag wins over an id prefix, as in Docker.
    pub fn resolve(&self, name_or_id: &str) -> Result<Image, StoreError> {
        let inner = lock(&self.inner);
        let (_, record) = find(&inner.state, name_or_id)?;
        Ok(inner.state.image(record))
    }

    fn record(&self, image: &Image) -> Result<ImageRecord, StoreError> {
        lock(&self.inner)
            .state
            .images
            .get(&image.id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(image.id.clone()))
    }

    /// The image's config (entrypoint, env, working dir, user...).
    pub fn config(&self, image: &Image) -> Result<ImageConfiguration, StoreError> {
        let record = self.record(image)?;
        let bytes = self.content.read(&record.id)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::BadConfig {
            id: image.id.clone(),
            source,
        })
    }

    /// The raw manifest bytes of the image, as stored.
    pub fn manifest(&self, image: &Image) -> Result<Vec<u8>, StoreError> {
        let record = self.record(image)?;
        Ok(self.content.read(&record.manifest_digest)?)
    }

    /// The unpacked layer directories, bottom layer first, ready to be overlay lowerdirs. A
    /// layer listed twice appears once, at its topmost position (the lower copy could never
    /// show through the upper one).
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, StoreError> {
        let record = self.record(image)?;
        let mut seen = HashSet::new();
        let mut dirs = Vec::with_capacity(record.layers.len());
        for layer in record.layers.iter().rev() {
            if !seen.insert(layer.diff_id.clone()) {
                continue;
            }
            let dir = self.layers.diff_dir(&layer.diff_id);
            if !dir.is_dir() {
                return Err(StoreError::LayerMissing {
                    id: image.id.clone(),
                    layer: layer.diff_id.to_string(),
                });
            }
            dirs.push(dir);
        }
        dirs.reverse();
        Ok(dirs)
    }

    /// Removes a name or an image, like `docker rmi`. Given a tag: untag it, and if it was
    /// the image's last name, delete the image. Given an id (or id prefix, or digest
    /// reference): untag every name and delete the image. Deleting refuses with
    /// [`StoreError::InUse`] when `in_use(image id)` is true; layers and blobs no other image
    /// uses are deleted with it.
    ///
    /// `in_use` is called with the store's lock held: it must not call back into the store.
    pub fn remove(
        &self,
        name_or_id: &str,
        in_use: &dyn Fn(&str) -> bool,
    ) -> Result<Removed, StoreError> {
        let mut inner = lock(&self.inner);
        let (id, via) = lookup(&inner.state, name_or_id)?;
        let names = inner.state.names_of(&id);
        let before = inner.state.clone();
        let mut removed = Removed::default();

        if let Via::Name(name) = &via
            && names.len() > 1
        {
            inner.state.tags.remove(name);
            removed.untagged.push(name.clone());
            self.save(&mut inner, before)?;
            return Ok(removed);
        }
        if in_use(&id) {
            let image = match via {
                Via::Name(name) => name,
                Via::Id => id.clone(),
            };
            return Err(StoreError::InUse { image, id });
        }
        for name in &names {
            inner.state.tags.remove(name);
        }
        removed.untagged = names;
        let Some(record) = inner.state.images.remove(&id) else {
            return Err(StoreError::NotFound(name_or_id.to_owned()));
        };
        removed.deleted.push(id.clone());

        let mut doomed_layers = Vec::new();
        for layer in &record.layers {
            if !inner.state.layer_used(&layer.diff_id, None)
                && !inner.pins.contains_key(&layer_pin(&layer.diff_id))
                && !doomed_layers.contains(&layer.diff_id)
            {
                doomed_layers.push(layer.diff_id.clone());
            }
        }
        let mut doomed_blobs = Vec::new();
        for blob in record.blobs() {
            if !inner.state.blob_used(blob, None)
                && !inner.pins.contains_key(&blob_pin(blob))
                && !doomed_blobs.contains(blob)
                && self.content.contains(blob)
            {
                doomed_blobs.push(blob.clone());
            }
        }
        // The metadata no longer lists the layers before they go: a crash in between leaves
        // unused layers (deleted by the next `open`), never an image missing a layer.
        self.save(&mut inner, before)?;
        let mut trashed = Vec::new();
        for diff_id in &doomed_layers {
            match self.layers.trash(diff_id) {
                Ok(Some(path)) => {
                    trashed.push(path);
                    removed.deleted.push(diff_id.to_string());
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(layer = %diff_id, error = %e,
                    "could not delete an unused layer; the next open of the store will"),
            }
        }
        for blob in &doomed_blobs {
            if let Err(e) = self.content.delete(blob) {
                tracing::warn!(blob = %blob, error = %e, "could not delete an unused blob");
            }
        }
        drop(inner);
        for path in trashed {
            if let Err(e) = fsutil::remove_any(&path) {
                tracing::warn!(path = %path.display(), error = %e,
                    "could not delete a trashed layer; the next open of the store will");
            }
        }
        Ok(removed)
    }

    /// Persists the in-memory state; on failure restores `before` so memory matches disk.
    fn save(&self, inner: &mut MutexGuard<'_, Inner>, before: State) -> Result<(), StoreError> {
        match inner.state.save(&self.tmp, &self.state_path) {
            Ok(()) => Ok(()),
            Err(source) => {
                inner.state = before;
                Err(StoreError::Io {
                    op: "saving",
                    path: self.state_path.clone(),
                    source,
                })
            }
        }
    }

    fn unpin(&self, keys: &[String]) {
        let mut inner = lock(&self.inner);
        for key in keys {
            if let Some(n) = inner.pins.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    inner.pins.remove(key);
                }
            }
        }
    }

    /// Runs `f` holding the layer's lock, so that two imports or pulls of one layer
    /// unpack it once.
    fn with_layer_lock<T>(&self, diff_id: &Digest, f: impl FnOnce() -> T) -> T {
        let lock_arc = Arc::clone(lock(&self.layer_locks).entry(diff_id.clone()).or_default());
        let result = {
            let _serialized = lock(&lock_arc);
            f()
        };
        let mut locks = lock(&self.layer_locks);
        // Only the map and this thread hold it: no one else is waiting, forget it.
        if Arc::strong_count(&lock_arc) == 2 {
            locks.remove(diff_id);
        }
        result
    }

    /// Only a complete layer is ever renamed into place; an incomplete one at a layer's
    /// place was damaged from outside. Moves it away rather than trust it.
    fn clear_damaged_layer(&self, diff_id: &Digest) -> Result<(), StoreError> {
        if !self.layers.occupied(diff_id) {
            return Ok(());
        }
        tracing::warn!(layer = %diff_id, "replacing a damaged layer directory");
        match self.layers.trash(diff_id) {
            Ok(Some(path)) => {
                if let Err(e) = fsutil::remove_any(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete a damaged layer");
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(source) => Err(StoreError::Io {
                op: "moving aside",
                path: self.layers.diff_dir(diff_id),
                source,
            }),
        }
    }

    fn pin(&self, keys: impl IntoIterator<Item = String>) -> Pins<'_> {
        let mut pins = Pins {
            store: self,
            keys: Vec::new(),
        };
        for key in keys {
            pins.add(key);
        }
        pins
    }
}

/// Deletes everything inside `dir`.
fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        fsutil::remove_any(&entry?.path())?;
    }
    Ok(())
}

/// Docker's lookup order: full id, then reference (tag or digest), then id prefix.
/// The id and record of the image `input` names ([`lookup`]).
fn find<'a>(state: &'a State, input: &str) -> Result<(String, &'a ImageRecord), StoreError> {
    let (id, _) = lookup(state, input)?;
    let record = state
        .images
        .get(&id)
        .ok_or_else(|| StoreError::NotFound(input.to_owned()))?;
    Ok((id, record))
}

fn lookup(state: &State, input: &str) -> Result<(String, Via), StoreError> {
    let not_found = || StoreError::NotFound(input.to_owned());
    if let Some(hex) = input.strip_prefix("sha256:") {
        if is_sha256_hex(hex) {
            return state
                .images
                .contains_key(input)
                .then(|| (input.to_owned(), Via::Id))
                .ok_or_else(not_found);
        }
        return by_prefix(state, input, hex);
    }
    let parsed = input.parse::<Reference>();
    if let Ok(reference) = &parsed {
        if let Some(digest) = reference.digest() {
            return state
                .images
                .values()
                .find(|r| r.manifest_digest == *digest || r.index_digests.contains(digest))
                .map(|r| (r.id.to_string(), Via::Id))
                .ok_or_else(not_found);
        }
        let full = reference.to_string();
        if let Some(id) = state.tags.get(&full) {
            return Ok((id.clone(), Via::Name(full)));
        }
    }
    let hex_like = input.len() >= MIN_ID_PREFIX
        && input.len() <= 64
        && input.bytes().all(|b| b.is_ascii_hexdigit());
    match parsed {
        _ if hex_like => by_prefix(state, input, &input.to_ascii_lowercase()),
        Ok(_) => Err(not_found()),
        Err(source) => Err(StoreError::InvalidName {
            name: input.to_owned(),
            source,
        }),
    }
}

fn by_prefix(state: &State, input: &str, hex: &str) -> Result<(String, Via), StoreError> {
    let valid = hex.len() >= MIN_ID_PREFIX
        && hex.len() <= 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !valid {
        return Err(StoreError::NotFound(input.to_owned()));
    }
    let matches: Vec<&String> = state
        .images
        .keys()
        .filter(|id| {
            id.strip_prefix("sha256:")
                .is_some_and(|h| h.starts_with(hex))
        })
        .collect();
    match matches.as_slice() {
        [] => Err(StoreError::NotFound(input.to_owned())),
        [one] => Ok(((*one).clone(), Via::Id)),
        many => Err(StoreError::Ambiguous(Ambiguity {
            prefix: input.to_owned(),
            matches: many.iter().map(|s| (*s).clone()).collect(),
        })),
    }
}
