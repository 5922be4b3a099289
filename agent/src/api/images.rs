//! `/images` handlers.

use std::path::PathBuf;

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;

use super::error::is_no_space;
use super::{ApiError, ApiState, Body, Query, json, read_json};
use crate::model::{ImageRemoved, ImportRequest};

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
    let name = format!(
        "upload-{}.tar",
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
    let mut body = req.into_body();
    while let Some(chunk) = super::limits::next_chunk(
        &mut body,
        super::limits::UPLOAD_IDLE,
        "the uploaded archive",
    )
    .await?
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
