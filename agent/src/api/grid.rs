//! The grid's routes: `GET /cluster/hosts`, `GET /discovery/services[/{name}[/leader]]`
//! and `GET /discovery/services/{name}/watch` (server-sent events: up, down, update,
//! leader, current). Each asks etcd, through the grid this agent is part of.

use std::time::Duration;

use bytes::Bytes;
use discovery::{DiscoveryError, Etcd};
use hyper::{Response, StatusCode};

use super::{ApiError, ApiState, Body, json, streaming};

const KEEPALIVE: Duration = Duration::from_secs(15);

impl From<DiscoveryError> for ApiError {
    fn from(e: DiscoveryError) -> ApiError {
        let message = e.to_string();
        match e {
            DiscoveryError::InvalidName { .. } => ApiError::BadRequest(message),
            DiscoveryError::Etcd { .. } | DiscoveryError::Connect { .. } => {
                ApiError::Unavailable(message)
            }
            _ => ApiError::Internal(message),
        }
    }
}

pub(super) fn etcd(state: &ApiState) -> Result<Etcd, ApiError> {
    let grid = state.grid().ok_or_else(|| {
        ApiError::NotFound(
            "this host is not in a cluster: start the daemon with --etcd URL (or --run-etcd)"
                .into(),
        )
    })?;
    grid.etcd().cloned().ok_or_else(|| {
        ApiError::Unavailable("not connected to etcd yet (see the daemon log)".into())
    })
}

pub async fn hosts(state: &ApiState) -> Result<Response<Body>, ApiError> {
    let etcd = etcd(state)?;
    json(StatusCode::OK, &discovery::hosts::list(&etcd).await?)
}

pub async fn services(state: &ApiState) -> Result<Response<Body>, ApiError> {
    let etcd = etcd(state)?;
    json(StatusCode::OK, &discovery::services::list_all(&etcd).await?)
}

pub async fn service(state: &ApiState, name: &str) -> Result<Response<Body>, ApiError> {
    let etcd = etcd(state)?;
    json(
        StatusCode::OK,
        &discovery::services::list(&etcd, name).await?,
    )
}

pub async fn leader(state: &ApiState, name: &str) -> Result<Response<Body>, ApiError> {
    let etcd = etcd(state)?;
    match discovery::services::leader(&etcd, name).await? {
        Some(inst) => json(StatusCode::OK, &inst),
        None => Err(ApiError::NotFound(format!(
            "service {name} has no instances"
        ))),
    }
}

pub fn watch(state: &ApiState, name: &str) -> Result<Response<Body>, ApiError> {
    let etcd = etcd(state)?;
    let mut rx = discovery::services::watch(etcd, Some(name))?;
    let drained = state.drained();
    let (tx, response) = streaming("text/event-stream");
    tokio::spawn(async move {
        tokio::pin!(drained);
        if tx
            .send(Bytes::from_static(b": subscribed\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let frame = tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => match serde_json::to_string(&ev) {
                        Ok(data) => format!("event: {}\ndata: {data}\n\n", kind(&ev)),
                        Err(_) => continue,
                    },
                    None => return,
                },
                _ = tokio::time::sleep(KEEPALIVE) => ": keepalive\n\n".to_string(),
                _ = tx.closed() => return,
                _ = &mut drained => {
                    tx.abort().await;
                    return;
                }
            };
            if tx.send(Bytes::from(frame)).await.is_err() {
                return;
            }
        }
    });
    Ok(response)
}

fn kind(ev: &discovery::ServiceEvent) -> &'static str {
    use discovery::ServiceEventKind::*;
    match ev.kind {
        Up => "up",
        Down => "down",
        Update => "update",
        Leader => "leader",
        Current => "current",
    }
}
