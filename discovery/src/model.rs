//! What is stored in etcd (JSON values) and what watchers are told.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A host's entry in the membership (`/flynn/hosts/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub id: String,
    /// The address other hosts reach this one at (the overlay's underlay address).
    pub address: Ipv4Addr,
    /// The agent's HTTP API, if it listens beyond loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    pub resources: HostResources,
    /// The overlay subnet this host holds, once it holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// When this record was last written.
    pub updated_at: DateTime<Utc>,
}

/// What a host has (from its `/host/status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostResources {
    pub cpus: u32,
    pub memory_total: u64,
    pub memory_free: u64,
    pub disk_total: u64,
    pub disk_free: u64,
    pub jobs_running: u64,
}

/// One instance of a service (`/flynn/services/<service>/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub service: String,
    pub id: String,
    /// Where clients connect.
    pub addr: SocketAddr,
    pub host_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    pub registered_at: DateTime<Utc>,
}

/// A service as read at one revision: instances in election order (the leader first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    pub service: String,
    pub instances: Vec<Instance>,
    /// The leader's instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The etcd revision this state was read at.
    pub revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceEventKind {
    /// An instance appeared.
    Up,
    /// An instance left (deregistered, unhealthy, or its host's lease expired).
    Down,
    /// An instance's record changed (address or metadata).
    Update,
    /// The leader changed; `instance` is the new leader, absent when there is none.
    Leader,
    /// Everything that existed when the watch started has been sent.
    Current,
}

/// One change of a watched service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEvent {
    pub kind: ServiceEventKind,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,
}

/// The overlay's shape, shared by every host (`/flynn/overlay/config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayConfig {
    /// The cluster network, e.g. `100.100.0.0/16`.
    pub network: String,
    /// Prefix length of each host's subnet.
    pub subnet_len: u8,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port.
    pub port: u16,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            network: "100.100.0.0/16".into(),
            subnet_len: 24,
            vni: 1,
            port: 4789,
        }
    }
}

/// Who holds a subnet and how to reach it (`/flynn/overlay/subnets/<subnet>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetLease {
    pub subnet: String,
    pub host_id: String,
    /// The host's underlay address: VXLAN packets for the subnet go there.
    pub address: Ipv4Addr,
    /// The MAC of the host's VXLAN device.
    pub vtep_mac: String,
}
