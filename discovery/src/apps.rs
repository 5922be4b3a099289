//! The controller's records: apps (`/flynn/apps/<name>`) and their releases
//! (`/flynn/releases/<app>/<id>`). No lease: they are the platform's desired state.
//! An app names its current release; a release is never changed once written (a new
//! environment or image is a new release), so a rollback is naming an older one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::error::DiscoveryError;
use crate::etcd::Etcd;
use crate::schema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The release deployed now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The release deployed before it (for a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_release: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

/// One process type of a release.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Process {
    /// The command (the image's when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// The port the process listens on (given to it as `$PORT`), registered in
    /// discovery as `<app>-<type>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Memory limit, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub id: String,
    pub app: String,
    pub image: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub processes: BTreeMap<String, Process>,
    pub created_at: DateTime<Utc>,
    /// Where the release came from, for people reading it: a git push records
    /// `git_commit`, `buildpack` and `slug` (sha256:HEX). Kept by env changes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

fn encode<T: Serialize>(key: &str, v: &T) -> Result<Vec<u8>, DiscoveryError> {
    serde_json::to_vec(v).map_err(|e| DiscoveryError::Decode {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, v: &[u8]) -> Result<T, DiscoveryError> {
    serde_json::from_slice(v).map_err(|e| DiscoveryError::Decode {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// App names are DNS labels (they become `<app>.<domain>` and service names).
pub fn check_app(name: &str) -> Result<(), DiscoveryError> {
    schema::check_service(name).map_err(|e| match e {
        DiscoveryError::InvalidName { value, reason, .. } => DiscoveryError::InvalidName {
            what: "app name",
            value,
            reason,
        },
        other => other,
    })
}

/// Creates an app; `Ok(false)` when one of that name exists.
pub async fn create(etcd: &Etcd, app: &App) -> Result<bool, DiscoveryError> {
    check_app(&app.name)?;
    let key = schema::app(&app.name);
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(key.as_str(), encode(&key, app)?, None)]);
    let resp = etcd
        .client()
        .txn(txn)
        .await
        .map_err(DiscoveryError::etcd(format!("creating app {}", app.name)))?;
    Ok(resp.succeeded())
}

pub async fn get(etcd: &Etcd, name: &str) -> Result<Option<App>, DiscoveryError> {
    let key = schema::app(name);
    let resp = etcd
        .client()
        .get(key.as_str(), None)
        .await
        .map_err(DiscoveryError::etcd(format!("reading app {name}")))?;
    resp.kvs()
        .first()
        .map(|kv| decode(&key, kv.value()))
        .transpose()
}

pub async fn list(etcd: &Etcd) -> Result<Vec<App>, DiscoveryError> {
    let (kvs, _) = etcd.get_prefix(schema::APPS).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()).ok())
        .collect())
}

/// Writes a new release and makes it the app's current one, in one transaction that
/// fails (`Ok(false)`) if the app changed meanwhile (another deploy won).
pub async fn deploy(etcd: &Etcd, app: &App, release: &Release) -> Result<bool, DiscoveryError> {
    let app_key = schema::app(&app.name);
    let rel_key = schema::release(&app.name, &release.id);
    let current = etcd
        .client()
        .get(app_key.as_str(), None)
        .await
        .map_err(DiscoveryError::etcd(format!("reading app {}", app.name)))?;
    let Some(kv) = current.kvs().first() else {
        return Ok(false);
    };
    let mut next: App = decode(&app_key, kv.value())?;
    if next.release.as_deref() != Some(release.id.as_str()) {
        next.previous_release = next.release.take();
        next.release = Some(release.id.clone());
    }
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            app_key.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then(vec![
            TxnOp::put(rel_key.as_str(), encode(&rel_key, release)?, None),
            TxnOp::put(app_key.as_str(), encode(&app_key, &next)?, None),
        ]);
    let resp = etcd
        .client()
        .txn(txn)
        .await
        .map_err(DiscoveryError::etcd(format!("deploying {}", app.name)))?;
    Ok(resp.succeeded())
}

/// Puts an app back on release `to` (with `previous` before it) after the deploy of
/// `failed` did not get healthy; `Ok(false)` when the app no longer runs `failed`
/// (another deploy came since: that one is left alone).
pub async fn revert(
    etcd: &Etcd,
    name: &str,
    failed: &str,
    to: &str,
    previous: Option<String>,
) -> Result<bool, DiscoveryError> {
    let key = schema::app(name);
    let current = etcd
        .client()
        .get(key.as_str(), None)
        .await
        .map_err(DiscoveryError::etcd(format!("reading app {name}")))?;
    let Some(kv) = current.kvs().first() else {
        return Ok(false);
    };
    let mut app: App = decode(&key, kv.value())?;
    if app.release.as_deref() != Some(failed) {
        return Ok(false);
    }
    app.release = Some(to.to_string());
    app.previous_release = previous;
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then(vec![TxnOp::put(key.as_str(), encode(&key, &app)?, None)]);
    let resp = etcd
        .client()
        .txn(txn)
        .await
        .map_err(DiscoveryError::etcd(format!("rolling {name} back")))?;
    Ok(resp.succeeded())
}

pub async fn release(etcd: &Etcd, app: &str, id: &str) -> Result<Option<Release>, DiscoveryError> {
    let key = schema::release(app, id);
    let resp = etcd
        .client()
        .get(key.as_str(), None)
        .await
        .map_err(DiscoveryError::etcd(format!("reading release {id}")))?;
    resp.kvs()
        .first()
        .map(|kv| decode(&key, kv.value()))
        .transpose()
}

/// An app's releases, oldest first.
pub async fn releases(etcd: &Etcd, app: &str) -> Result<Vec<Release>, DiscoveryError> {
    let (kvs, _) = etcd.get_prefix(&schema::releases(app)).await?;
    let mut v: Vec<Release> = kvs
        .iter()
        .filter_map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()).ok())
        .collect();
    v.sort_by(|a: &Release, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(v)
}

/// Removes an app, its releases, deploys, formations (its jobs stop) and routes.
pub async fn delete(etcd: &Etcd, name: &str) -> Result<(), DiscoveryError> {
    check_app(name)?;
    let routes = crate::routes::list(etcd).await?;
    let mut ops = vec![
        TxnOp::delete(schema::app(name), None),
        TxnOp::delete(
            schema::releases(name),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        ),
        TxnOp::delete(
            schema::deploys(name),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        ),
        TxnOp::delete(
            schema::formations_of(name),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        ),
    ];
    for r in routes.iter().filter(|r| r.app.as_deref() == Some(name)) {
        ops.push(TxnOp::delete(schema::route(&r.id), None));
    }
    etcd.client()
        .txn(Txn::new().and_then(ops))
        .await
        .map_err(DiscoveryError::etcd(format!("deleting app {name}")))?;
    Ok(())
}
