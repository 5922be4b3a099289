//! `GET /host/status`.

use hyper::{Response, StatusCode};

use super::{ApiError, ApiState, Body, json};
use crate::host;
use crate::model::HostStatus;

pub fn status(state: &ApiState) -> Result<Response<Body>, ApiError> {
    let internal = |e: anyhow::Error| ApiError::Internal(format!("{e:#}"));
    let (jobs, promised) = state.jobs.usage();
    json(
        StatusCode::OK,
        &HostStatus {
            id: state.host_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: host::kernel(),
            cpus: host::cpus(),
            memory: host::memory().map_err(internal)?,
            disk: host::disk(&state.state_dir).map_err(internal)?,
            cgroup: host::cgroup_mode(),
            jobs,
            promised,
            started_at: state.started_at,
            cluster: state.grid().map(|g| g.cluster_status()),
        },
    )
}
