//! Host membership: each host's record on its lease.

use etcd_client::PutOptions;

use crate::error::DiscoveryError;
use crate::etcd::{Etcd, Lease};
use crate::model::HostRecord;
use crate::schema;

/// Writes (or rewrites) a host's record on `lease`.
pub async fn announce(etcd: &Etcd, lease: Lease, host: &HostRecord) -> Result<(), DiscoveryError> {
    schema::check_id("host id", &host.id)?;
    let key = schema::host(&host.id);
    let value = serde_json::to_vec(host).map_err(|e| DiscoveryError::Decode {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    etcd.client()
        .put(
            key.as_str(),
            value,
            Some(PutOptions::new().with_lease(lease.id)),
        )
        .await
        .map_err(DiscoveryError::etcd(format!("announcing host {}", host.id)))?;
    Ok(())
}

/// Removes a host's record (it is leaving on purpose).
pub async fn withdraw(etcd: &Etcd, id: &str) -> Result<(), DiscoveryError> {
    etcd.client()
        .delete(schema::host(id), None)
        .await
        .map_err(DiscoveryError::etcd(format!("withdrawing host {id}")))?;
    Ok(())
}

/// Every host whose lease is alive, by id. Records that do not decode are skipped
/// (and logged): one bad writer must not hide the others.
pub async fn list(etcd: &Etcd) -> Result<Vec<HostRecord>, DiscoveryError> {
    let (kvs, _) = etcd.get_prefix(schema::HOSTS).await?;
    let mut hosts: Vec<HostRecord> = kvs
        .iter()
        .filter_map(|kv| match serde_json::from_slice(kv.value()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "skipping a host record that does not decode");
                None
            }
        })
        .collect();
    hosts.sort_by(|a: &HostRecord, b| a.id.cmp(&b.id));
    Ok(hosts)
}
