//! `/jobs` handlers.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use nix::sys::signal::Signal;

use super::{ApiError, ApiState, Body, Query, empty, json, read_json, streaming};
use crate::jobs::{JobError, has_been_removed, has_exited};
use crate::model::{ErrorBody, JobRequest};

/// `stop` without `?t=`: Docker's default grace period.
const DEFAULT_STOP_GRACE: u64 = 10;

pub async fn list(state: &ApiState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let query = Query::of(&req);
    let all = query.flag("all", false)?;
    // label=KEY=VALUE (repeatable): jobs carrying every one.
    let mut wanted = Vec::new();
    for l in query.all("label") {
        let (k, v) = l.split_once('=').ok_or_else(|| {
            ApiError::BadRequest(format!("label filter {l:?}: give label=KEY=VALUE"))
        })?;
        wanted.push((k, v));
    }
    let mut jobs: Vec<_> = state
        .jobs
        .list(all)
        .into_iter()
        .filter(|j| {
            wanted
                .iter()
                .all(|(k, v)| j.config.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    // Each job's instances too: the scheduler reads a rolling deploy's health here.
    if let Some(grid) = state.grid() {
        for job in &mut jobs {
            job.services = grid.instances_of(&job.id);
        }
    }
    json(StatusCode::OK, &jobs)
}

pub async fn create(
    state: &Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let mut request: JobRequest = read_json(req).await?;
    give_platform_tls(state, &mut request);
    let job = state.jobs.create(request).await?;
    json(StatusCode::CREATED, &job)
}

/// In a cluster, a host-network job is one of the platform's (scheduler,
/// controller, router, aggregators: the wall keeps bridge jobs off the control
/// plane, host-network jobs are outside it), and gets what it needs to reach
/// etcd's mutual TLS: the host's certificate, key and the cluster's CA, as a
/// read-only volume (`<state>/tls/platform`, no CA key), named by
/// `FLYNN_ETCD_TLS` and `FLYNN_TLS_DIR` (a platform service serving HTTPS). A job that mounts something there itself is left alone.
fn give_platform_tls(state: &ApiState, request: &mut JobRequest) {
    use crate::grid::etcd_job::TLS_MOUNT;
    let (Some(tls), Some(_)) = (&state.tls, state.grid()) else {
        return;
    };
    if request.network != crate::model::NetworkMode::Host
        || request.volumes.iter().any(|v| v.target == TLS_MOUNT)
    {
        return;
    }
    request.volumes.push(crate::model::Volume {
        source: tls.dir.platform_dir().to_string_lossy().into_owned(),
        target: TLS_MOUNT.into(),
        read_only: true,
    });
    // For etcd (discovery's client), and for a platform service's own HTTPS
    // (the scheduler's API): the same directory.
    for name in [discovery::TLS_DIR_ENV, "FLYNN_TLS_DIR"] {
        if !request
            .env
            .iter()
            .any(|e| e.starts_with(&format!("{name}=")))
        {
            request.env.push(format!("{name}={TLS_MOUNT}"));
        }
    }
}

pub fn inspect(state: &ApiState, id: &str) -> Result<Response<Body>, ApiError> {
    let mut job = state.jobs.get(id)?.snapshot();
    if let Some(grid) = state.grid() {
        job.services = grid.instances_of(&job.id);
    }
    json(StatusCode::OK, &job)
}

pub async fn start(state: &ApiState, id: &str) -> Result<Response<Body>, ApiError> {
    let handle = state.jobs.get(id)?;
    json(StatusCode::OK, &state.jobs.start(&handle).await?)
}

pub async fn stop(
    state: &ApiState,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let grace = Query::of(&req)
        .number::<u64>("t")?
        .unwrap_or(DEFAULT_STOP_GRACE);
    let handle = state.jobs.get(id)?;
    json(
        StatusCode::OK,
        &state.jobs.stop(&handle, Duration::from_secs(grace)).await?,
    )
}

pub async fn kill(
    state: &ApiState,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let signal = parse_signal(Query::of(&req).get("signal").unwrap_or("SIGKILL"))?;
    let handle = state.jobs.get(id)?;
    state.jobs.signal(&handle, signal).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Accepts "SIGTERM", "TERM", "term" or "15".
pub fn parse_signal(value: &str) -> Result<Signal, ApiError> {
    let invalid = || {
        ApiError::BadRequest(format!(
            "invalid signal {value:?}: give a name such as SIGTERM or KILL, or a number"
        ))
    };
    if let Ok(n) = value.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| invalid());
    }
    let upper = value.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| invalid())
}

pub async fn remove(
    state: &ApiState,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let force = Query::of(&req).flag("force", false)?;
    let handle = state.jobs.get(id)?;
    state.jobs.remove(&handle, force).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Answers with headers at once, then the exit once the job has exited, so a
/// client can subscribe before it starts the job and never miss the exit.
///
/// `condition=removed` answers only once the job has exited and been removed
/// (for auto-removed jobs; Docker's `wait --condition removed`).
pub fn wait(
    state: &ApiState,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let done: fn(&crate::model::Job) -> bool = match Query::of(&req).get("condition") {
        None | Some("exited" | "not-running") => has_exited,
        // A removal that failed answers too, with its reason: the daemon retries
        // it, and the caller (`run --rm`) gets the exit instead of waiting for ever.
        Some("removed") => |j| has_exited(j) && (has_been_removed(j) || j.removal_error.is_some()),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid condition {other:?}: use exited or removed"
            )));
        }
    };
    let handle = match state.jobs.get(id) {
        Ok(handle) => handle,
        // Removed already: its exit may still be on record.
        Err(e @ JobError::NotFound(_)) => {
            return match state.jobs.removed_exit(id) {
                Some(exit) => json(StatusCode::OK, &exit),
                None => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    let mut rx = handle.subscribe();
    let drained = state.drained();
    let (tx, response) = streaming("application/json");
    tokio::spawn(async move {
        let waited = tokio::select! {
            waited = rx.wait_for(done) => Some(waited.map(|job| {
                let mut exit = job.exit.clone();
                if let (Some(exit), Some(why)) = (&mut exit, &job.removal_error)
                    && exit.error.is_none()
                {
                    exit.error = Some(format!(
                        "the job exited but could not be removed: {why} (the daemon tries again)"
                    ));
                }
                exit
            })),
            // The client went away: stop waiting for it.
            _ = tx.closed() => return,
            // Handing over to a new daemon: a cut-short answer tells the client
            // to ask the new one.
            _ = drained => None,
        };
        let Some(waited) = waited else {
            tx.abort().await;
            return;
        };
        let body = match waited {
            Ok(exit) => match exit {
                Some(exit) => serde_json::to_vec(&exit),
                None => serde_json::to_vec(&ErrorBody {
                    error: "job has no exit status".to_string(),
                }),
            },
            Err(_) => serde_json::to_vec(&ErrorBody {
                error: "job was removed before it exited".to_string(),
            }),
        };
        if let Ok(body) = body {
            let _ = tx.send(Bytes::from(body)).await;
        }
    });
    Ok(response)
}
