//! The grid's shared state in etcd: host membership, service discovery (instances,
//! leaders, watches) and the overlay network's subnet leases, over etcd's v3 API
//! (`etcd-client`).
//!
//! This crate owns the etcd schema and every read and write of it; nothing else in the
//! project builds an etcd key. It must not know about containers, jobs, links or HTTP:
//! the agent tells it what to register and shows what it reads. It never runs etcd and
//! never pretends to be one: all agreement (who holds a subnet, who leads a service) is
//! etcd's, through transactions and revisions.
//!
//! # Schema (all under [`schema::ROOT`], values are JSON)
//!
//! ```text
//! /flynn/hosts/<host-id>                      HostRecord, on the host's lease
//! /flynn/services/<service>/<instance-id>     Instance, on the registering host's lease
//! /flynn/overlay/config                       OverlayConfig (first writer wins, by CAS)
//! /flynn/overlay/subnets/<a.b.c.d>-<len>      SubnetLease, on the holding host's lease
//! /flynn/overlay/owners/<a.b.c.d>-<len>       host id of the last holder (no lease)
//! /flynn/routes/<id>                          Route (HTTP or TCP), no lease
//! /flynn/cluster                             ClusterRecord (its id; made once)
//! /flynn/bootstrap                           BootstrapRecord (steps done)
//! /flynn/formations/<app>/<type>             FormationRecord (the scheduler's wanted state)
//! /flynn/drain/<host-id>                      a host being drained
//! /flynn/apps/<name>                          App (names its current release), no lease
//! /flynn/releases/<app>/<id>                  Release (never changed once written)
//! ```
//!
//! **One lease per host.** Everything a host announces lives on its lease: when the
//! host's agent stops renewing it (killed, partitioned), etcd drops it all after the
//! TTL, and not before: a partitioned host is never forgotten sooner than its lease
//! allows. An instance leaves earlier only when it is deregistered (its job stopped,
//! or its health check failed).
//!
//! **Leaders.** A service's leader is its instance whose key has the lowest create
//! revision: etcd's own election rule (the election API's `Leader` is the key with the
//! lowest create revision under the election prefix), with the instance keys as the
//! candidates. So registering is campaigning, deregistering (or the lease expiring) is
//! resigning, the order is etcd's, and a leader keeps leading when it re-registers
//! (a put on an existing key keeps its create revision). [`Etcd::leader`] asks etcd's
//! election service; watchers compute the same rule from the keys they see.
//!
//! **Subnets.** A host claims a subnet by one transaction: its subnet key must not
//! exist and its owner key must be absent, ours, or unchanged since we read it. A host
//! that comes back (restart, partition healed, etcd restarted) claims the subnet its
//! owner key or its own cache names first, so it keeps its subnet; new hosts take
//! subnets nobody ever owned before reusing those of departed hosts.
//!
//! **Watches** ([`watch::PrefixWatch`]) read a prefix, then follow it from the next
//! revision; when the stream breaks (etcd restarted, compaction, partition) they read
//! again and report the difference, so a watcher never misses the end state.

pub mod apps;
pub mod cluster;
pub mod deploys;
pub mod error;
pub mod etcd;
pub mod formations;
pub mod hosts;
pub mod model;
pub mod routes;
pub mod schema;
pub mod services;
pub mod subnets;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watch;

pub use error::DiscoveryError;
pub use etcd::{Etcd, EtcdTls, KeepAlive, Lease, TLS_DIR_ENV};
pub use model::{
    HostRecord, HostResources, Instance, OverlayConfig, ServiceEvent, ServiceEventKind,
    ServiceState, SubnetLease,
};
pub use subnets::Subnet;
