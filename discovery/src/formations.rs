//! What the scheduler keeps running: formations (`/flynn/formations/<app>/<type>`) and
//! hosts being drained (`/flynn/drain/<host-id>`). No lease: they are wanted state.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

pub use scheduler::{Restart, UnknownRestart};

use crate::error::DiscoveryError;
use crate::etcd::Etcd;
use crate::schema;

/// One process type of an app, and how many jobs of it to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormationRecord {
    pub app: String,
    pub process_type: String,
    pub image: String,
    /// The command (the image's when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Service declarations, as the agent's `JobRequest.services` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<serde_json::Value>,
    /// Memory promised to (and the limit of) each job, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Jobs wanted (on each matching host when `omni`).
    pub count: u32,
    #[serde(default)]
    pub omni: bool,
    /// Host tags every job's host must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// `host` for the platform's own jobs; bridge otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The release its jobs run (label `flynn.release`): when it changes, the
    /// scheduler replaces the jobs of the old one by a rolling deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Which exited jobs the scheduler replaces (`always`, `on-failure`, `never`).
    /// Records written before it existed have none: `always`, their rule then.
    #[serde(default)]
    pub restart: Restart,
}

impl FormationRecord {
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        crate::apps::check_app(&self.app)?;
        schema::check_service(&self.process_type)?;
        if self.image.trim().is_empty() {
            return Err(DiscoveryError::InvalidName {
                what: "formation image",
                value: String::new(),
                reason: "a formation needs an image",
            });
        }
        Ok(())
    }
}

pub async fn put(etcd: &Etcd, f: &FormationRecord) -> Result<(), DiscoveryError> {
    f.validate()?;
    let key = schema::formation(&f.app, &f.process_type);
    let value = serde_json::to_vec(f).map_err(|e| DiscoveryError::Decode {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    etcd.client()
        .put(key.as_str(), value, None)
        .await
        .map_err(DiscoveryError::etcd(format!(
            "writing formation {}/{}",
            f.app, f.process_type
        )))?;
    Ok(())
}

pub async fn delete(etcd: &Etcd, app: &str, process_type: &str) -> Result<bool, DiscoveryError> {
    let resp = etcd
        .client()
        .delete(schema::formation(app, process_type), None)
        .await
        .map_err(DiscoveryError::etcd(format!(
            "deleting formation {app}/{process_type}"
        )))?;
    Ok(resp.deleted() > 0)
}

pub async fn list(etcd: &Etcd) -> Result<Vec<FormationRecord>, DiscoveryError> {
    let (kvs, _) = etcd.get_prefix(schema::FORMATIONS).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| match serde_json::from_slice::<FormationRecord>(kv.value()) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "skipping a formation that does not decode");
                None
            }
        })
        .collect())
}

/// One app's formations.
pub async fn of_app(etcd: &Etcd, app: &str) -> Result<Vec<FormationRecord>, DiscoveryError> {
    crate::apps::check_app(app)?;
    let (kvs, _) = etcd.get_prefix(&schema::formations_of(app)).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<FormationRecord>(kv.value()).ok())
        .collect())
}

pub async fn set_drain(etcd: &Etcd, host: &str, on: bool) -> Result<(), DiscoveryError> {
    schema::check_id("host id", host)?;
    let key = schema::drain(host);
    let r = if on {
        etcd.client()
            .put(key.as_str(), b"{}".to_vec(), None)
            .await
            .map(|_| ())
    } else {
        etcd.client().delete(key.as_str(), None).await.map(|_| ())
    };
    r.map_err(DiscoveryError::etcd(format!(
        "marking host {host} for draining"
    )))
}

/// The value of a drain a host put on itself for a power-off or reboot: it ends when
/// the host's agent starts again ([`end_restart_drain`]), where an operator's
/// drain (`{}`) stays until undone.
const UNTIL_RESTART: &[u8] = br#"{"until_restart":true}"#;

/// Drains `host` until its agent starts again; `Ok(false)` when it is drained
/// already (an operator's drain, kept as it is, so the restart does not end it).
pub async fn drain_until_restart(etcd: &Etcd, host: &str) -> Result<bool, DiscoveryError> {
    schema::check_id("host id", host)?;
    let key = schema::drain(host);
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(key.as_str(), UNTIL_RESTART.to_vec(), None)]);
    let resp = etcd
        .client()
        .txn(txn)
        .await
        .map_err(DiscoveryError::etcd(format!(
            "marking host {host} for draining until it restarts"
        )))?;
    Ok(resp.succeeded())
}

/// Ends the drain `host` put on itself before it stopped, if that is the drain in
/// place; `Ok(true)` when one was ended. An operator's drain is left alone.
pub async fn end_restart_drain(etcd: &Etcd, host: &str) -> Result<bool, DiscoveryError> {
    schema::check_id("host id", host)?;
    let key = schema::drain(host);
    let what = || format!("ending host {host}'s drain for its restart");
    let resp = etcd
        .client()
        .get(key.as_str(), None)
        .await
        .map_err(DiscoveryError::etcd(what()))?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(false);
    };
    if kv.value() != UNTIL_RESTART {
        return Ok(false);
    }
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then(vec![TxnOp::delete(key.as_str(), None)]);
    let resp = etcd
        .client()
        .txn(txn)
        .await
        .map_err(DiscoveryError::etcd(what()))?;
    Ok(resp.succeeded())
}

/// Hosts being drained.
pub async fn draining(etcd: &Etcd) -> Result<Vec<String>, DiscoveryError> {
    let (kvs, _) = etcd.get_prefix(schema::DRAIN).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| {
            String::from_utf8_lossy(kv.key())
                .strip_prefix(schema::DRAIN)
                .map(str::to_string)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stored_before_the_restart_policy_reads_as_always() {
        let old = r#"{"app":"demo","process_type":"web","image":"busybox","count":2}"#;
        let f: FormationRecord = serde_json::from_str(old).unwrap();
        assert_eq!(f.restart, Restart::Always);
        let mut f = f;
        f.restart = Restart::OnFailure;
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["restart"], "on-failure");
        let back: FormationRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, f);
        let bad =
            r#"{"app":"demo","process_type":"web","image":"busybox","count":2,"restart":"no"}"#;
        assert!(serde_json::from_str::<FormationRecord>(bad).is_err());
    }
}
