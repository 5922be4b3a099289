//! The bootstrap's routes: `GET /cluster`, `PUT /cluster/etcd`, `PUT /cluster/join`
//! (this host's membership), `GET /host/preflight` and the `/host/probe` routes (whether
//! it can take part, and whether two hosts reach each other).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{ApiError, ApiState, Body, json, read_json};
use crate::model::{EtcdMemberRequest, JobState, JoinRequest, Preflight};
use crate::preflight::ProbeError;

impl From<ProbeError> for ApiError {
    fn from(e: ProbeError) -> ApiError {
        let message = e.to_string();
        match e {
            ProbeError::BadRequest(_) => ApiError::BadRequest(message),
            ProbeError::Busy { .. } => ApiError::Conflict(message),
            ProbeError::NotFound(_) => ApiError::NotFound(message),
        }
    }
}

pub async fn info(state: &ApiState) -> Result<Response<Body>, ApiError> {
    json(StatusCode::OK, &state.membership.info().await)
}

// Both run to their end in a task of their own: a client that goes away (a killed
// bootstrap) must not cut a change between writing cluster.json and acting on it.

pub async fn etcd(state: &ApiState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let request: EtcdMemberRequest = read_json(req).await?;
    let m = state.membership.clone();
    let done = tokio::spawn(async move { m.etcd_member(request).await })
        .await
        .map_err(|e| ApiError::Internal(format!("the etcd member task failed: {e}")))?;
    json(StatusCode::OK, &done?)
}

pub async fn join(state: &ApiState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let request: JoinRequest = read_json(req).await?;
    let m = state.membership.clone();
    let done = tokio::spawn(async move { m.join(request).await })
        .await
        .map_err(|e| ApiError::Internal(format!("the join task failed: {e}")))?;
    json(StatusCode::OK, &done?)
}

pub async fn preflight(state: &ApiState) -> Result<Response<Body>, ApiError> {
    let etcd_running = state
        .jobs
        .get(crate::grid::ETCD_JOB)
        .is_ok_and(|h| h.snapshot().state == JobState::Running);
    // In the grid, the overlay's VXLAN device holds the port (sysfs may show another
    // network namespace than ours, so the grid says, not /sys/class/net).
    let vxlan_up = state.grid().is_some();
    let holders = crate::preflight::Holders {
        etcd_running,
        vxlan_up,
        probing_vxlan: state.probes.listening_on(4789),
    };
    let checks = tokio::task::spawn_blocking(move || crate::preflight::checks(&holders))
        .await
        .map_err(|e| ApiError::Internal(format!("the preflight task failed: {e}")))?;
    json(
        StatusCode::OK,
        &Preflight {
            host_id: state.host_id.clone(),
            checks,
            time_ms: chrono::Utc::now().timestamp_millis(),
        },
    )
}

pub async fn probe_listen(
    state: &Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let request = read_json(req).await?;
    state.probes.listen(request).await?;
    Ok(super::empty(StatusCode::NO_CONTENT))
}

pub fn probe_heard(state: &ApiState, nonce: &str) -> Result<Response<Body>, ApiError> {
    json(StatusCode::OK, &state.probes.heard(nonce)?)
}

pub async fn probe_send(req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let request = read_json(req).await?;
    json(StatusCode::OK, &crate::preflight::send(request).await?)
}

fn tls_of(state: &ApiState) -> Result<&Arc<super::tls::ApiTls>, ApiError> {
    state.tls.as_ref().ok_or_else(|| {
        ApiError::Conflict(
            "this daemon serves plain HTTP on every address (--plain-http): it has no TLS CA"
                .into(),
        )
    })
}

fn tls_info(tls: &super::tls::ApiTls) -> Result<crate::model::TlsInfo, ApiError> {
    let host = tls.dir.host();
    Ok(crate::model::TlsInfo {
        ca: tls.dir.ca_pem(),
        pin: tls
            .dir
            .pin()
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .to_string(),
        names: host.names,
        not_after: host.not_after.into(),
        cluster: tls.dir.is_cluster_ca(),
        proof: None,
    })
}

/// The longest nonce `?proof=` takes.
const MAX_NONCE: usize = 128;

/// `GET /cluster/tls/ca`, public: what a client compares its pin with; with
/// `?proof=NONCE`, the token's proof of the pin (see `flynn_tls::proof`), so a
/// client sharing the token trusts the pin before it sends the token.
pub fn tls_ca(state: &ApiState, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let tls = tls_of(state)?;
    let mut info = tls_info(tls)?;
    let query = super::Query::of(req);
    if let Some(nonce) = query.get("proof") {
        if nonce.is_empty()
            || nonce.len() > MAX_NONCE
            || !nonce
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(ApiError::BadRequest(format!(
                "proof: a nonce is 1 to {MAX_NONCE} letters, digits or '-'"
            )));
        }
        let pin = tls
            .dir
            .pin()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        info.proof = Some(flynn_tls::proof(&state.token, &pin, nonce));
    }
    json(StatusCode::OK, &info)
}

/// `GET /cluster/tls` (with the token): the host's CA with its key, for the
/// bootstrap to hand the cluster's CA to hosts that lack it. Every host holds
/// the key anyway (each renews its own certificate), and the token already
/// lets its holder run anything on the host.
pub fn tls_export(state: &ApiState) -> Result<Response<Body>, ApiError> {
    let ca = tls_of(state)?.dir.ca();
    json(
        StatusCode::OK,
        &crate::model::TlsInstall {
            ca_cert: ca.cert_pem,
            ca_key: ca.key_pem,
        },
    )
}

/// The most names one certificate of `POST /cluster/tls/issue` carries.
const MAX_ISSUE_NAMES: usize = 32;
/// Its shortest and longest life.
const MIN_ISSUE_LIFETIME: u64 = 60;
const MAX_ISSUE_LIFETIME: u64 = 365 * 24 * 3600;

/// `POST /cluster/tls/issue` (with the token): a certificate from the host's CA
/// for a platform service renewing its own (the routers' default one), so the
/// CA's key never leaves the hosts. The token already reads that key
/// (`GET /cluster/tls`): this gives its holder nothing more.
pub async fn tls_issue(
    state: &ApiState,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let request: crate::model::TlsIssue = read_json(req).await?;
    let tls = tls_of(state)?.clone();
    if request.names.is_empty() || request.names.len() > MAX_ISSUE_NAMES {
        return Err(ApiError::BadRequest(format!(
            "names: give 1 to {MAX_ISSUE_NAMES} DNS names or addresses"
        )));
    }
    if let Some(bad) = request.names.iter().find(|n| !issuable_name(n)) {
        return Err(ApiError::BadRequest(format!(
            "names: {bad:?} is not a DNS name (letters, digits, '-', '.', a leading '*.') or an IP address"
        )));
    }
    if !(MIN_ISSUE_LIFETIME..=MAX_ISSUE_LIFETIME).contains(&request.lifetime_secs) {
        return Err(ApiError::BadRequest(format!(
            "lifetime_secs: {MIN_ISSUE_LIFETIME} to {MAX_ISSUE_LIFETIME} seconds"
        )));
    }
    let common_name = request
        .common_name
        .clone()
        .unwrap_or_else(|| request.names[0].clone());
    // The document's grammar, exactly: 1 to 64 characters, no C0/C1 controls.
    if common_name.is_empty()
        || common_name.chars().count() > 64
        || common_name.chars().any(|c| c.is_control())
    {
        return Err(ApiError::BadRequest(
            "common_name: 1 to 64 characters, no control characters".into(),
        ));
    }
    let ca = tls.dir.ca();
    let lifetime = std::time::Duration::from_secs(request.lifetime_secs);
    let names = request.names.clone();
    let issued = tokio::task::spawn_blocking(move || ca.issue(&common_name, &names, lifetime))
        .await
        .map_err(|e| ApiError::Internal(format!("issuing a certificate: {e}")))?
        .map_err(|e| ApiError::BadRequest(format!("issuing a certificate: {e}")))?;
    json(
        StatusCode::OK,
        &crate::model::TlsIssued {
            chain: issued.chain_pem,
            key: issued.key_pem,
            not_after: issued.not_after.into(),
        },
    )
}

/// A name a certificate may carry, as the document's pattern says: a DNS name
/// of letters, digits and '-' (not first or last) in labels of 1 to 63, at
/// most 253 characters with a leading `*.` (an IPv4 address is one; rcgen
/// makes it an address).
fn issuable_name(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    name.len() <= 253
        && !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `PUT /cluster/tls`: the bootstrap hands the host the cluster's CA.
pub async fn tls_install(
    state: &ApiState,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let request: crate::model::TlsInstall = read_json(req).await?;
    let tls = tls_of(state)?.clone();
    let ca = flynn_tls::Ca::from_pem(&request.ca_cert, &request.ca_key)
        .map_err(|e| ApiError::BadRequest(format!("the cluster CA: {e}")))?;
    let names = super::tls::host_names();
    let dir = tls.dir.clone();
    let changed = tokio::task::spawn_blocking(move || dir.install_ca(ca, &names))
        .await
        .map_err(|e| ApiError::Internal(format!("installing the cluster CA: {e}")))?
        .map_err(|e| ApiError::Internal(format!("installing the cluster CA: {e}")))?;
    if changed {
        tracing::info!(pin = %tls.dir.pin().map(|p| p.to_string()).unwrap_or_default(), "installed the cluster's CA");
    }
    json(StatusCode::OK, &tls_info(&tls)?)
}
