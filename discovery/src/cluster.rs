//! The cluster's own record (`/flynn/cluster`: its id, made once, by the first
//! bootstrap) and the bootstrap's (`/flynn/bootstrap`: which steps of which run are
//! done), so a re-run knows what holds. No lease.

use chrono::{DateTime, Utc};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::error::DiscoveryError;
use crate::etcd::Etcd;
use crate::schema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// The hosts' addresses the first bootstrap built it from.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootstrapRecord {
    /// Step ids done, in order.
    pub done: Vec<String>,
    /// The hosts' addresses of the last run.
    #[serde(default)]
    pub hosts: Vec<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The cluster's record, created by this call if there is none; the one in etcd wins.
pub async fn ensure(
    etcd: &Etcd,
    proposed: &ClusterRecord,
) -> Result<ClusterRecord, DiscoveryError> {
    let key = schema::CLUSTER;
    let value = serde_json::to_vec(proposed).map_err(|e| DiscoveryError::Decode {
        key: key.into(),
        reason: e.to_string(),
    })?;
    let txn = Txn::new()
        .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then(vec![TxnOp::put(key, value, None)])
        .or_else(vec![TxnOp::get(key, None)]);
    let resp = etcd
        .client()
        .txn(txn)
        .await
        .map_err(DiscoveryError::etcd("creating the cluster record"))?;
    if resp.succeeded() {
        return Ok(proposed.clone());
    }
    for r in resp.op_responses() {
        if let etcd_client::TxnOpResponse::Get(g) = r
            && let Some(kv) = g.kvs().first()
        {
            return serde_json::from_slice(kv.value()).map_err(|e| DiscoveryError::Decode {
                key: key.into(),
                reason: e.to_string(),
            });
        }
    }
    Err(DiscoveryError::Decode {
        key: key.into(),
        reason: "the record exists but could not be read".into(),
    })
}

pub async fn bootstrap_record(etcd: &Etcd) -> Result<BootstrapRecord, DiscoveryError> {
    let resp = etcd
        .client()
        .get(schema::BOOTSTRAP, None)
        .await
        .map_err(DiscoveryError::etcd("reading the bootstrap record"))?;
    match resp.kvs().first() {
        Some(kv) => serde_json::from_slice(kv.value()).map_err(|e| DiscoveryError::Decode {
            key: schema::BOOTSTRAP.into(),
            reason: e.to_string(),
        }),
        None => Ok(BootstrapRecord::default()),
    }
}

pub async fn put_bootstrap_record(
    etcd: &Etcd,
    rec: &BootstrapRecord,
) -> Result<(), DiscoveryError> {
    let value = serde_json::to_vec(rec).map_err(|e| DiscoveryError::Decode {
        key: schema::BOOTSTRAP.into(),
        reason: e.to_string(),
    })?;
    etcd.client()
        .put(schema::BOOTSTRAP, value, None)
        .await
        .map_err(DiscoveryError::etcd("writing the bootstrap record"))?;
    Ok(())
}
