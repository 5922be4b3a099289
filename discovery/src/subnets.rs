//! The overlay's subnet leases: the shared configuration, claiming a subnet by
//! compare-and-swap, and listing who holds what.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use crate::error::DiscoveryError;
use crate::etcd::{Etcd, Lease};
use crate::model::{OverlayConfig, SubnetLease};
use crate::schema;

/// An IPv4 network (address with host bits clear, prefix length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Subnet {
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Subnet> {
        if len > 32 {
            return None;
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        (u32::from(addr) & !mask == 0).then_some(Subnet { addr, len })
    }

    /// The key segment: `a.b.c.d-len`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.addr, self.len)
    }

    fn from_key(k: &str) -> Option<Subnet> {
        let (a, l) = k.rsplit_once('-')?;
        Subnet::new(a.parse().ok()?, l.parse().ok()?)
    }

    /// The subnets of length `len` inside `self`, in order.
    pub fn split(&self, len: u8) -> impl Iterator<Item = Subnet> + use<> {
        let count: u64 = if len >= self.len && len <= 32 {
            1u64 << (len - self.len)
        } else {
            0
        };
        let base = u32::from(self.addr) as u64;
        let step = 1u64 << (32 - u32::from(len.min(32)));
        (0..count).filter_map(move |i| Subnet::new(Ipv4Addr::from((base + i * step) as u32), len))
    }

    pub fn contains(&self, other: &Subnet) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        other.len >= self.len && u32::from(other.addr) & mask == u32::from(self.addr)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Subnet {
    type Err = DiscoveryError;
    fn from_str(s: &str) -> Result<Subnet, DiscoveryError> {
        let bad = || {
            DiscoveryError::Config(format!(
                "{s:?} is not an IPv4 network such as 100.100.0.0/16"
            ))
        };
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        Subnet::new(a.parse().map_err(|_| bad())?, l.parse().map_err(|_| bad())?).ok_or_else(bad)
    }
}

impl OverlayConfig {
    pub fn validate(&self) -> Result<Subnet, DiscoveryError> {
        let net: Subnet = self.network.parse()?;
        if !(8..=30).contains(&self.subnet_len) || self.subnet_len <= net.len {
            return Err(DiscoveryError::Config(format!(
                "the subnet length /{} must be longer than the network's /{} and within /8-/30",
                self.subnet_len, net.len
            )));
        }
        if self.vni == 0 || self.vni >= 1 << 24 {
            return Err(DiscoveryError::Config(format!(
                "VNI {} is not in 1-16777215",
                self.vni
            )));
        }
        if self.port == 0 {
            return Err(DiscoveryError::Config(
                "the VXLAN port must not be 0".into(),
            ));
        }
        Ok(net)
    }
}

/// The cluster's overlay configuration: `wanted` if nobody set one yet (the first host
/// writes it), else the one stored. Hosts must agree, so a host asked for something
/// else gets the stored one (and a warning).
pub async fn overlay_config(
    etcd: &Etcd,
    wanted: &OverlayConfig,
) -> Result<OverlayConfig, DiscoveryError> {
    wanted.validate()?;
    let key = schema::OVERLAY_CONFIG;
    let value = serde_json::to_vec(wanted).map_err(|e| DiscoveryError::Config(e.to_string()))?;
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, None)])
        .or_else([TxnOp::get(key, None)]);
    let r = etcd
        .client()
        .txn(txn)
        .await
        .map_err(DiscoveryError::etcd("reading the overlay configuration"))?;
    if r.succeeded() {
        return Ok(wanted.clone());
    }
    for op in r.op_responses() {
        if let etcd_client::TxnOpResponse::Get(g) = op
            && let Some(kv) = g.kvs().first()
        {
            let stored: OverlayConfig =
                serde_json::from_slice(kv.value()).map_err(|e| DiscoveryError::Decode {
                    key: key.to_string(),
                    reason: e.to_string(),
                })?;
            stored.validate()?;
            if stored != *wanted {
                tracing::warn!(
                    ?stored,
                    ?wanted,
                    "the cluster already has another overlay configuration; using it"
                );
            }
            return Ok(stored);
        }
    }
    Err(DiscoveryError::Config(
        "the overlay configuration vanished while being read".into(),
    ))
}

/// Every live subnet lease.
pub async fn list(etcd: &Etcd) -> Result<Vec<SubnetLease>, DiscoveryError> {
    let (kvs, _) = etcd.get_prefix(schema::SUBNETS).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}

const MAX_ATTEMPTS: u32 = 32;

/// Claims a subnet for `host_id` on `lease` and returns it. In order of preference:
/// the subnet this host already holds, `preferred` (the host's cached one), one whose
/// owner record names this host, one nobody has owned, one a departed host owned.
/// `record` makes the stored lease for a subnet (it knows the host's address and how
/// its VTEP MAC is derived).
pub async fn claim(
    etcd: &Etcd,
    lease: Lease,
    cfg: &OverlayConfig,
    host_id: &str,
    preferred: Option<Subnet>,
    record: impl Fn(Subnet) -> SubnetLease,
) -> Result<Subnet, DiscoveryError> {
    let network = cfg.validate()?;
    schema::check_id("host id", host_id)?;
    for _ in 0..MAX_ATTEMPTS {
        let (live, _) = etcd.get_prefix(schema::SUBNETS).await?;
        let (owners, _) = etcd.get_prefix(schema::OWNERS).await?;
        let live: std::collections::HashMap<Subnet, (String, i64)> = live
            .iter()
            .filter_map(|kv| {
                let s = Subnet::from_key(kv.key_str().ok()?.strip_prefix(schema::SUBNETS)?)?;
                let l: SubnetLease = serde_json::from_slice(kv.value()).ok()?;
                Some((s, (l.host_id, kv.mod_revision())))
            })
            .collect();
        let owners: std::collections::HashMap<Subnet, (String, i64)> = owners
            .iter()
            .filter_map(|kv| {
                let s = Subnet::from_key(kv.key_str().ok()?.strip_prefix(schema::OWNERS)?)?;
                Some((s, (kv.value_str().ok()?.to_string(), kv.mod_revision())))
            })
            .collect();

        // Already ours (a restart within the lease, or a second claim): move it onto
        // this lease, unless it changed meanwhile.
        if let Some((s, (_, rev))) = live.iter().find(|(_, (h, _))| h == host_id) {
            let key = format!("{}{}", schema::SUBNETS, s.key());
            let txn = Txn::new()
                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev)])
                .and_then([put_lease(&key, &record(*s), lease)?]);
            if commit(etcd, txn, s).await? {
                return Ok(*s);
            }
            continue;
        }

        let free =
            |s: &Subnet| network.contains(s) && s.len == cfg.subnet_len && !live.contains_key(s);
        let owned_by = |s: &Subnet| owners.get(s).map(|(h, _)| h.as_str());
        let mut candidates: Vec<Subnet> = Vec::new();
        if let Some(p) = preferred.filter(|p| free(p) && owned_by(p).is_none_or(|h| h == host_id)) {
            candidates.push(p);
        }
        let all: Vec<Subnet> = network.split(cfg.subnet_len).collect();
        candidates.extend(
            all.iter()
                .filter(|s| free(s) && owned_by(s) == Some(host_id)),
        );
        candidates.extend(all.iter().filter(|s| free(s) && owned_by(s).is_none()));
        candidates.extend(
            all.iter()
                .filter(|s| free(s) && owned_by(s).is_some_and(|h| h != host_id)),
        );
        let Some(s) = candidates.first().copied() else {
            return Err(DiscoveryError::SubnetsExhausted {
                network: network.to_string(),
                len: cfg.subnet_len,
            });
        };
        let key = format!("{}{}", schema::SUBNETS, s.key());
        let owner_key = format!("{}{}", schema::OWNERS, s.key());
        let owner_cmp = match owners.get(&s) {
            None => Compare::create_revision(owner_key.as_str(), CompareOp::Equal, 0),
            Some((_, rev)) => Compare::mod_revision(owner_key.as_str(), CompareOp::Equal, *rev),
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                owner_cmp,
            ])
            .and_then([
                put_lease(&key, &record(s), lease)?,
                TxnOp::put(owner_key.as_str(), host_id, None),
            ]);
        if commit(etcd, txn, &s).await? {
            if let Some((prev, _)) = owners.get(&s).filter(|(h, _)| h != host_id) {
                tracing::info!(subnet = %s, previous = %prev, "took over the subnet of a departed host");
            }
            return Ok(s);
        }
    }
    Err(DiscoveryError::Contention(MAX_ATTEMPTS))
}

/// Gives a subnet back (the host leaves for good); its owner record goes too.
pub async fn release(etcd: &Etcd, subnet: Subnet) -> Result<(), DiscoveryError> {
    let txn = Txn::new().and_then([
        TxnOp::delete(format!("{}{}", schema::SUBNETS, subnet.key()), None),
        TxnOp::delete(format!("{}{}", schema::OWNERS, subnet.key()), None),
    ]);
    etcd.client()
        .txn(txn)
        .await
        .map_err(DiscoveryError::etcd(format!("releasing subnet {subnet}")))?;
    Ok(())
}

/// The subnet a lease key names.
pub fn subnet_of_key(key: &str) -> Option<Subnet> {
    Subnet::from_key(key.strip_prefix(schema::SUBNETS)?)
}

fn put_lease(key: &str, l: &SubnetLease, lease: Lease) -> Result<TxnOp, DiscoveryError> {
    let value = serde_json::to_vec(l).map_err(|e| DiscoveryError::Decode {
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    Ok(TxnOp::put(
        key,
        value,
        Some(PutOptions::new().with_lease(lease.id)),
    ))
}

async fn commit(etcd: &Etcd, txn: Txn, s: &Subnet) -> Result<bool, DiscoveryError> {
    let r = etcd
        .client()
        .txn(txn)
        .await
        .map_err(DiscoveryError::etcd(format!("claiming subnet {s}")))?;
    Ok(r.succeeded())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits() {
        let n: Subnet = "100.100.0.0/16".parse().unwrap();
        let subs: Vec<Subnet> = n.split(24).collect();
        assert_eq!(subs.len(), 256);
        assert_eq!(subs[3].to_string(), "100.100.3.0/24");
        assert!(n.contains(&subs[255]));
        assert_eq!(Subnet::from_key(&subs[3].key()), Some(subs[3]));
        assert!("100.100.0.1/16".parse::<Subnet>().is_err());
        let bad = OverlayConfig {
            subnet_len: 16,
            ..OverlayConfig::default()
        };
        assert!(bad.validate().is_err());
        OverlayConfig::default().validate().unwrap();
    }
}
