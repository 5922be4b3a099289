//! `/jobs/{id}/attach`, `/jobs/{id}/resize` and `/jobs/{id}/exec/...`.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::attach::{self, Target};
use super::{ApiError, ApiState, Body, Query, empty, json, read_json};
use crate::jobs::{exit_of, has_exited};
use crate::model::{ExecRequest, JobState};

pub fn attach(
    state: &ApiState,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let handle = state.jobs.get(id)?;
    let job = handle.snapshot();
    let mut rx = handle.subscribe();
    let exited: crate::api::tail::Until = Box::pin(async move {
        let _ = rx.wait_for(has_exited).await.map(|_| ());
    });
    let mut rx = handle.subscribe();
    let started: crate::api::tail::Until = Box::pin(async move {
        let _ = rx
            .wait_for(|j| j.state != JobState::Created)
            .await
            .map(|_| ());
    });
    attach::upgrade(
        state,
        req,
        Target {
            dir: state.jobs.job_dir(&job.id),
            log: state.jobs.log_path(&job.id),
            tty: job.config.tty,
            stdin: job.config.stdin,
            from_start: false,
            exited,
            started,
        },
    )
}

fn size(req: &Request<Incoming>) -> Result<(u16, u16), ApiError> {
    let query = Query::of(req);
    let rows = query.number::<u16>("h")?;
    let cols = query.number::<u16>("w")?;
    match (rows, cols) {
        (Some(r), Some(c)) if r > 0 && c > 0 => Ok((r, c)),
        _ => Err(ApiError::BadRequest(
            "resize needs h (rows) and w (columns), both positive".to_string(),
        )),
    }
}

pub async fn resize(
    state: &ApiState,
    id: &str,
    exec: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (rows, cols) = size(&req)?;
    let handle = state.jobs.get(id)?;
    state.jobs.resize(&handle, exec, rows, cols).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn create(
    state: &Arc<ApiState>,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let request: ExecRequest = read_json(req).await?;
    let handle = state.jobs.get(id)?;
    let exec = state.jobs.exec(&handle, request).await?;
    json(StatusCode::CREATED, &exec)
}

pub fn inspect(state: &ApiState, id: &str, exec_id: &str) -> Result<Response<Body>, ApiError> {
    let handle = state.jobs.get(id)?;
    json(StatusCode::OK, &state.jobs.exec_info(&handle.id, exec_id)?)
}

pub async fn wait(state: &ApiState, id: &str, exec_id: &str) -> Result<Response<Body>, ApiError> {
    let handle = state.jobs.get(id)?;
    json(
        StatusCode::OK,
        &state.jobs.exec_wait(&handle.id, exec_id).await?,
    )
}

pub fn attach_exec(
    state: &ApiState,
    id: &str,
    exec_id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let handle = state.jobs.get(id)?;
    let exec = state.jobs.exec_info(&handle.id, exec_id)?;
    let dir = state.jobs.exec_dir(&handle.id, exec_id)?;
    let wait_dir = dir.clone();
    attach::upgrade(
        state,
        req,
        Target {
            log: dir.join("log.json"),
            dir,
            tty: exec.config.tty,
            stdin: exec.config.stdin,
            from_start: true,
            exited: Box::pin(async move {
                let _ = exit_of(wait_dir).await;
            }),
            started: Box::pin(std::future::ready(())),
        },
    )
}
