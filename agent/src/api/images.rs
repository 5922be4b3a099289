//! `/images` handlers.

use std::path::PathBuf;

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;

use super::error::is_no_space;
use super::{ApiError, ApiState, Body, Query, json, read_json};
use crate::model::{FetchRequest, ImageRemoved, ImportRequest};

pub async fn list(state: &ApiState) -> Result<Response<Body>, ApiError> {
    let store = state.images.clone();
    let images = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    json(StatusCode::OK, &images)
}

/// Imports an archive sent as the body (`application/x-tar`), or, with a JSON
/// body `{"path": ...}`, an archive or OCI layout directory on the daemon's host.
pub async fn import(state: &ApiState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (path, tag, upload) = if is_json {
        let request: ImportRequest = read_json(req).await?;
        // A path the kernel cannot take (a NUL byte) or that depends on the daemon's
        // working directory is the caller's mistake, not the daemon's failure.
        if request.path.contains('\0') || !request.path.starts_with('/') {
            return Err(ApiError::BadRequest(format!(
                "path {:?}: give an absolute path on the daemon's host, without NUL bytes",
                request.path
            )));
        }
        (PathBuf::from(request.path), request.tag, None)
    } else {
        let tag = Query::of(&req).get("tag").map(str::to_string);
        let upload = receive(state, req).await?;
        (upload.0.clone(), tag, Some(upload))
    };
    let tag = tag
        .map(|t| {
            t.parse::<image::Reference>()
                .map_err(|e| ApiError::BadRequest(format!("invalid tag {t:?}: {e}")))
        })
        .transpose()?;
    let store = state.images.clone();
    let result = tokio::task::spawn_blocking(move || store.import_named(&path, tag.as_ref()))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()));
    drop(upload);
    let images = result?.map_err(import_error)?;
    for imported in &images {
        state.jobs.emit_image("import", &imported.image.id);
    }
    json(StatusCode::OK, &images)
}

fn import_error(e: image::ImportError) -> ApiError {
    let message = format!("import failed: {e}");
    if caused_by_no_space(&e) {
        return ApiError::InsufficientStorage(format!("{message}; {NO_SPACE_HINT}"));
    }
    match &e {
        image::ImportError::Io { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            ApiError::BadRequest(message)
        }
        e if e.is_client_error() => ApiError::BadRequest(message),
        _ => ApiError::Internal(message),
    }
}

/// What to do when the state disk is full (nothing half-imported is kept).
pub const NO_SPACE_HINT: &str = "the daemon's state disk is full: nothing of this image was kept; free space (flynn-host rm old jobs, rmi unused images) or grow the disk, then retry";

/// Whether a full disk (or quota) is somewhere in the error's causes, however
/// deep the store wrapped it (ingest, unpack, metadata).
pub fn caused_by_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && is_no_space(io)
        {
            return true;
        }
        current = err.source();
    }
    false
}

/// An uploaded archive on disk; deleted when dropped.
struct Upload(PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn receive(state: &ApiState, req: Request<Incoming>) -> Result<Upload, ApiError> {
    spool(state, req.into_body(), "upload", "the uploaded archive").await
}

/// Writes `body` (an archive: an upload, or a peer's answer) to a file of the daemon's
/// tmp dir named `<prefix>-<id>.tar`, each chunk bounded by the upload's idle time.
async fn spool(
    state: &ApiState,
    mut body: Incoming,
    prefix: &str,
    what: &str,
) -> Result<Upload, ApiError> {
    let name = format!(
        "{prefix}-{}.tar",
        crate::jobs::new_id().map_err(ApiError::from)?
    );
    let upload = Upload(state.tmp_dir.join(name));
    let storage = |e: std::io::Error| {
        let message = format!(
            "receiving the archive into {}: {e}",
            state.tmp_dir.display()
        );
        if is_no_space(&e) {
            ApiError::InsufficientStorage(message)
        } else {
            ApiError::Internal(message)
        }
    };
    let mut file = tokio::fs::File::create(&upload.0).await.map_err(storage)?;
    while let Some(chunk) =
        super::limits::next_chunk(&mut body, super::limits::UPLOAD_IDLE, what).await?
    {
        file.write_all(&chunk).await.map_err(storage)?;
    }
    file.flush().await.map_err(storage)?;
    Ok(upload)
}

pub async fn remove(state: &ApiState, name: &str) -> Result<Response<Body>, ApiError> {
    let removed = state.jobs.remove_image(name).await?;
    json(
        StatusCode::OK,
        &ImageRemoved {
            untagged: removed.untagged,
            deleted: removed.deleted,
        },
    )
}

/// `GET /images/{ref}/archive`: the image as an OCI archive made of the blobs it was
/// imported from (`docker save`, and what `POST /images/fetch` on another host reads):
/// importing it anywhere gives the same image id and manifest digest.
pub async fn archive(state: &ApiState, name: &str) -> Result<Response<Body>, ApiError> {
    let store = state.images.clone();
    let wanted = name.to_string();
    let export = tokio::task::spawn_blocking(move || store.export(&wanted))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let (tx, response) = super::streaming("application/x-tar");
    let what = name.to_string();
    tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, tx.into_blocking());
        let result = export.write_to(&mut out);
        match (result, out.into_inner()) {
            (Ok(()), Ok(_)) => {}
            (Err(e), Ok(stream)) => {
                tracing::warn!(image = %what, error = %e, "exporting an image");
                stream.fail(e);
            }
            // The client went away: nothing to tell it.
            (_, Err(_)) => {}
        }
    });
    Ok(response)
}

/// One fetch at a time on this host: a second request for the same image then finds
/// it here, and two big transfers do not share the disk and the link.
static FETCHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `POST /images/fetch`: takes an image from another host of the cluster, with its
/// digests (see [`archive`]): how an image imported before this host joined, and that
/// no registry has, reaches it. The hosts are asked in turn until one has it; only
/// hosts that discovery lists are contacted (over HTTPS verified against the cluster's
/// CA, with this host's token), never an address the caller names.
pub async fn fetch(state: &ApiState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let request: FetchRequest = read_json(req).await?;
    if state.grid().is_none() {
        return Err(ApiError::Conflict(
            "this host is in no cluster: an image comes from another host of its cluster; \
             import the archive here instead (flynn-host import)"
                .into(),
        ));
    }
    let image = request.image.trim().to_string();
    if image.is_empty() || image.contains('\0') {
        return Err(ApiError::BadRequest(
            "image: give the image to fetch (name@sha256:DIGEST, a name or an id)".into(),
        ));
    }
    let _one = FETCHING.lock().await;
    if let Some(held) = resolve(state, &image).await? {
        return json(StatusCode::OK, &held);
    }
    let etcd = super::grid::etcd(state)?;
    let hosts = discovery::hosts::list(&etcd).await?;
    let peers: Vec<(String, String)> = if request.from.is_empty() {
        hosts
            .into_iter()
            .filter(|h| h.id != state.host_id)
            .filter_map(|h| Some((h.id, h.api?)))
            .collect()
    } else {
        request
            .from
            .iter()
            .filter_map(|id| {
                let h = hosts.iter().find(|h| h.id == *id)?;
                Some((h.id.clone(), h.api.clone()?))
            })
            .collect()
    };
    if peers.is_empty() {
        return Err(ApiError::Conflict(format!(
            "no other host of the cluster to fetch {image} from{}",
            if request.from.is_empty() {
                String::new()
            } else {
                format!(
                    " (none of {} is in discovery with an API address)",
                    request.from.join(", ")
                )
            }
        )));
    }
    let mut failures = Vec::new();
    for (id, api) in peers {
        match fetch_from(state, &api, &image).await {
            Ok(()) => {}
            Err(e) => {
                tracing::info!(image = %image, host = %id, error = %e, "fetching an image");
                failures.push(format!("{id}: {e}"));
                continue;
            }
        }
        match resolve(state, &image).await? {
            Some(held) => {
                tracing::info!(image = %image, from = %id, id = %held.id, "fetched an image");
                state.jobs.emit_image("import", &held.id);
                return json(StatusCode::OK, &held);
            }
            None => failures.push(format!(
                "{id}: its archive holds another image than {image}"
            )),
        }
    }
    Err(ApiError::Unavailable(format!(
        "no host could give {image}: {}",
        failures.join("; ")
    )))
}

/// The image `name` names here, if any.
async fn resolve(state: &ApiState, name: &str) -> Result<Option<image::Image>, ApiError> {
    let store = state.images.clone();
    let name = name.to_string();
    match tokio::task::spawn_blocking(move || store.resolve(&name))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    {
        Ok(image) => Ok(Some(image)),
        Err(image::StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Receives a peer's archive of `image` into a file, then imports it (which checks
/// every digest: a peer cannot slip in other content under the names it asks for).
async fn fetch_from(state: &ApiState, api: &str, image: &str) -> Result<(), String> {
    // The cluster's CA as this host holds it now (by its pin: a CA installed since
    // is a new trust, never a stale cached one).
    let trust = match &state.tls {
        Some(tls) => {
            let pin = tls.dir.pin().map_err(|e| format!("this host's CA: {e}"))?;
            flynn_client::TlsOptions::pinned(&pin.to_string())
        }
        None => flynn_client::TlsOptions::default(),
    };
    let client = flynn_client::Client::from_options_tls(Some(api), Some(&state.token), &trust)
        .map_err(|e| format!("{e:#}"))?;
    let path = format!("/images/{}/archive", flynn_client::encode(image));
    let response = client
        .send_json(hyper::Method::GET, &path, None::<&()>)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let upload = spool(state, response.into_body(), "fetch", "the peer's archive")
        .await
        .map_err(|e| e.to_string())?;
    let store = state.images.clone();
    let path = upload.0.clone();
    let imported = tokio::task::spawn_blocking(move || store.import_named(&path, None))
        .await
        .map_err(|e| e.to_string())?;
    drop(upload);
    imported
        .map(|_| ())
        .map_err(|e| import_error(e).to_string())
}
