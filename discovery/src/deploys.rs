//! The controller's deploys (`/flynn/deploys/<app>/<id>`): a new current release of
//! an app being rolled out by the scheduler, and how that ended. No lease: a
//! controller that dies leaves a pending deploy, which another one takes up.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::DiscoveryError;
use crate::etcd::Etcd;
use crate::schema;

/// Deploys kept per app (the oldest go).
const KEPT: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployState {
    /// The new release's jobs are starting, the old ones still serve.
    Pending,
    /// Every formation runs its count of healthy jobs of the new release and none of another.
    Complete,
    /// Not healthy within the time-out (rolled back), or superseded: `reason` says which.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    pub id: String,
    pub app: String,
    pub release: String,
    /// The release it replaces (where a failure goes back to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The app's `previous_release` before this deploy (restored by a roll-back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_previous: Option<String>,
    pub state: DeployState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long the new jobs have to get healthy.
    pub timeout_secs: u64,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

fn decode(key: &str, v: &[u8]) -> Result<Deploy, DiscoveryError> {
    serde_json::from_slice(v).map_err(|e| DiscoveryError::Decode {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Writes a deploy (new or changed); the app's oldest beyond the last 20 go.
pub async fn put(etcd: &Etcd, d: &Deploy) -> Result<(), DiscoveryError> {
    crate::apps::check_app(&d.app)?;
    schema::check_id("deploy id", &d.id)?;
    let key = schema::deploy(&d.app, &d.id);
    let value = serde_json::to_vec(d).map_err(|e| DiscoveryError::Decode {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    etcd.client()
        .put(key.as_str(), value, None)
        .await
        .map_err(DiscoveryError::etcd(format!("writing deploy {}", d.id)))?;
    let all = of_app(etcd, &d.app).await?;
    if all.len() > KEPT {
        for old in &all[..all.len() - KEPT] {
            if old.state != DeployState::Pending {
                let _ = etcd
                    .client()
                    .delete(schema::deploy(&old.app, &old.id), None)
                    .await;
            }
        }
    }
    Ok(())
}

pub async fn get(etcd: &Etcd, app: &str, id: &str) -> Result<Option<Deploy>, DiscoveryError> {
    let key = schema::deploy(app, id);
    let resp = etcd
        .client()
        .get(key.as_str(), None)
        .await
        .map_err(DiscoveryError::etcd(format!("reading deploy {id}")))?;
    resp.kvs()
        .first()
        .map(|kv| decode(&key, kv.value()))
        .transpose()
}

/// An app's deploys, oldest first.
pub async fn of_app(etcd: &Etcd, app: &str) -> Result<Vec<Deploy>, DiscoveryError> {
    let (kvs, _) = etcd.get_prefix(&schema::deploys(app)).await?;
    let mut v: Vec<Deploy> = kvs
        .iter()
        .filter_map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()).ok())
        .collect();
    v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(v)
}

/// Every app's pending deploys (a starting controller takes them up).
pub async fn pending(etcd: &Etcd) -> Result<Vec<Deploy>, DiscoveryError> {
    let (kvs, _) = etcd.get_prefix(schema::DEPLOYS).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()).ok())
        .filter(|d| d.state == DeployState::Pending)
        .collect())
}
