//! Which cluster this host is in, and joining one while the daemon runs.
//!
//! The bootstrap drives a fresh host through its API: `PUT /cluster/etcd` makes it a
//! member of the cluster's etcd, `PUT /cluster/join` makes it join the grid with the
//! etcd endpoints, without a restart. Both are written to `<state>/cluster.json`
//! (durably: it is the host's identity in the cluster), which the daemon reads at
//! every start, so a rebooted host rejoins (and its etcd member comes back: it is a
//! job restarted always, with its data in a volume on the state disk) by itself.
//!
//! A host answers to one cluster: a request naming another cluster id is refused,
//! never applied over the first. Endpoints given to the daemon (`--etcd`, the config
//! file) win over the file: the operator said so.
//!
//! Joining at run time moves the host's bridge from the standalone subnet to the one
//! the cluster leases it, which cannot be done under running bridge jobs: the join is
//! refused while any job holds an address, and says which.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::config::{GridConfig, check_endpoints};
use super::{Boot, Grid, etcd_job};
use crate::api::ApiError;
use crate::jobs::{JobManager, NetSlot, NetSlotSetter};
use crate::model::{Changed, ClusterMembership, EtcdMemberRequest, Event, JoinRequest};

pub const FILE: &str = "cluster.json";

/// What starting the grid needs besides its settings, kept for a join at run time.
#[derive(Clone)]
pub struct GridBoot {
    pub host_id: String,
    pub network: network::NetworkConfig,
    pub jobs: Arc<JobManager>,
    pub events: broadcast::Sender<Event>,
    pub state_dir: PathBuf,
    pub listen: std::net::SocketAddr,
    /// The API's TLS (`None` with `--plain-http`): other hosts then reach the API
    /// over HTTPS.
    pub tls: Option<Arc<flynn_tls::TlsDir>>,
    pub slot: NetSlotSetter,
    /// The jobs' view of the network (to see whether bridge jobs hold addresses).
    pub net: NetSlot,
    /// Jobs whose network endpoints still exist at start-up (recorded jobs): the
    /// grid's network keeps them.
    pub live: Vec<String>,
}

pub struct Membership {
    path: PathBuf,
    settings: GridConfig,
    boot: GridBoot,
    /// The file's content; the lock also serializes the `PUT`s.
    file: tokio::sync::Mutex<ClusterMembership>,
    grid: OnceLock<Arc<Grid>>,
    /// The standalone network's set-up, which a join waits for before replacing it.
    standalone: Mutex<Option<JoinHandle<()>>>,
}

/// Reads `cluster.json` (absent: not in a cluster).
pub fn load(state_dir: &Path) -> anyhow::Result<ClusterMembership> {
    let path = state_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not valid ({e}): fix it, or remove it to leave the cluster",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClusterMembership::default()),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

impl Membership {
    /// `settings`: the grid's settings from flags and the config file, whose etcd
    /// endpoints (if any) win over the file's. Starts the grid when there are
    /// endpoints; otherwise the host is standalone and `standalone` is the task
    /// setting up its network.
    pub async fn start(
        mut settings: GridConfig,
        file: ClusterMembership,
        boot: GridBoot,
        standalone: Option<JoinHandle<()>>,
    ) -> anyhow::Result<Arc<Membership>> {
        if settings.etcd.is_empty() {
            settings.etcd = file.etcd.clone();
        }
        let m = Arc::new(Membership {
            path: boot.state_dir.join(FILE),
            settings,
            boot,
            file: tokio::sync::Mutex::new(file),
            grid: OnceLock::new(),
            standalone: Mutex::new(standalone),
        });
        if m.settings.joined() {
            m.start_grid(m.settings.clone(), m.boot.live.clone())
                .await?;
        }
        Ok(m)
    }

    /// Whether the daemon must set up a standalone network (it is not in a cluster).
    pub fn standalone_wanted(settings: &GridConfig, file: &ClusterMembership) -> bool {
        settings.etcd.is_empty() && file.etcd.is_empty()
    }

    pub fn grid(&self) -> Option<&Arc<Grid>> {
        self.grid.get()
    }

    async fn start_grid(&self, cfg: GridConfig, live: Vec<String>) -> anyhow::Result<()> {
        let b = &self.boot;
        let grid = Grid::start(
            cfg,
            Boot {
                host_id: b.host_id.clone(),
                network: b.network.clone(),
                live,
                slot: b.slot.clone(),
                jobs: b.jobs.clone(),
                events: b.events.clone(),
                state_dir: b.state_dir.clone(),
                listen: b.listen,
                tls: b.tls.clone(),
            },
        )
        .await?;
        // Only one start happens: the file lock serializes joins, and a joined host
        // is never started again.
        let _ = self.grid.set(grid);
        Ok(())
    }

    pub async fn info(&self) -> ClusterMembership {
        let mut m = self.file.lock().await.clone();
        m.etcd = self.effective_etcd(&m);
        m.joined = self.grid.get().is_some();
        m
    }

    fn effective_etcd(&self, file: &ClusterMembership) -> Vec<String> {
        match self.grid.get() {
            Some(_) if !self.settings.etcd.is_empty() => self.settings.etcd.clone(),
            _ => file.etcd.clone(),
        }
    }

    fn save(&self, m: &ClusterMembership) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec_pretty(m).map_err(|e| ApiError::Internal(e.to_string()))?;
        flynn_fsutil::write_atomic(&self.path, &bytes, flynn_fsutil::Durability::Durable)
            .map_err(|e| ApiError::Internal(format!("writing {}: {e}", self.path.display())))
    }

    fn same_cluster(file: &ClusterMembership, id: &str) -> Result<(), ApiError> {
        match &file.cluster_id {
            Some(have) if have != id => Err(ApiError::Conflict(format!(
                "this host is in cluster {have}, not {id}: it answers to one cluster (to move it, stop the daemon and remove {FILE} and its etcd data from the state dir)"
            ))),
            _ => Ok(()),
        }
    }

    /// `PUT /cluster/etcd`.
    pub async fn etcd_member(&self, req: EtcdMemberRequest) -> Result<Changed, ApiError> {
        check_member_request(&req)?;
        let platform = self.boot.tls.as_ref().map(|t| t.platform_dir());
        let mut file = self.file.lock().await;
        Self::same_cluster(&file, &req.cluster_id)?;
        match &file.etcd_member {
            Some(have) if *have == req => {
                let changed = etcd_job::ensure_member(
                    &self.boot.jobs,
                    &self.settings,
                    &self.boot.state_dir,
                    platform.as_deref(),
                    &req,
                )
                .await?;
                return Ok(Changed { changed });
            }
            Some(have) => {
                return Err(ApiError::Conflict(format!(
                    "this host already runs etcd member {} of a cluster of {} members; a bootstrap re-run must ask for the same members",
                    have.name,
                    have.members.len()
                )));
            }
            None => {}
        }
        if self.boot.jobs.get(etcd_job::JOB_NAME).is_ok() {
            return Err(ApiError::Conflict(format!(
                "this host already runs a job named {} (started with --run-etcd?): remove it to make this host a member of the cluster's etcd",
                etcd_job::JOB_NAME
            )));
        }
        let mut next = file.clone();
        next.cluster_id = Some(req.cluster_id.clone());
        next.etcd_member = Some(req.clone());
        self.save(&next)?;
        *file = next;
        etcd_job::ensure_member(
            &self.boot.jobs,
            &self.settings,
            &self.boot.state_dir,
            platform.as_deref(),
            &req,
        )
        .await?;
        Ok(Changed { changed: true })
    }

    /// `PUT /cluster/join`.
    pub async fn join(&self, req: JoinRequest) -> Result<Changed, ApiError> {
        check_cluster_id(&req.cluster_id)?;
        if req.etcd.is_empty() {
            return Err(ApiError::BadRequest(
                "no etcd endpoints: give the cluster's etcd client URLs".into(),
            ));
        }
        check_endpoints(&req.etcd).map_err(|e| ApiError::BadRequest(format!("{e:#}")))?;
        let mut file = self.file.lock().await;
        Self::same_cluster(&file, &req.cluster_id)?;
        if self.grid.get().is_some() {
            if file.cluster_id.is_none() {
                // Joined by the operator's flags: adopt the id, keep their endpoints.
                let mut next = file.clone();
                next.cluster_id = Some(req.cluster_id.clone());
                self.save(&next)?;
                *file = next;
            }
            return Ok(Changed { changed: false });
        }
        // What can make the grid refuse to start is checked before anything changes: a
        // join that failed after writing cluster.json left the host half in a cluster it
        // never reached, refusing every other (found by schemathesis).
        if self.settings.advertise.is_none() {
            match network::overlay::default_address().await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(ApiError::Conflict(
                        "this host has no default route to take its cluster address from: \
                         start the daemon with --advertise ADDRESS, then join"
                            .into(),
                    ));
                }
                Err(e) => {
                    return Err(ApiError::Internal(format!(
                        "finding this host's cluster address: {e}"
                    )));
                }
            }
        }
        // The standalone network must be set up (or have failed) before it is replaced.
        let task = self
            .standalone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        if let Some(net) = self.boot.net.get() {
            let held: Vec<String> = net.endpoints().into_iter().map(|(id, _)| id).collect();
            if !held.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "bridge jobs hold addresses on this host's standalone network ({}): stop them first; the bridge moves to the cluster's subnet when the host joins",
                    held.join(", ")
                )));
            }
        }
        let previous = file.clone();
        let mut next = file.clone();
        next.cluster_id = Some(req.cluster_id.clone());
        next.etcd = req.etcd.clone();
        self.save(&next)?;
        *file = next;
        // Jobs wait for the cluster's network from now on; the old one goes with the
        // last reference to it (its lock with it, before the grid opens the new one).
        self.boot.slot.reset("subnet lease from the cluster");
        let cfg = GridConfig {
            etcd: req.etcd,
            ..self.settings.clone()
        };
        if let Err(e) = self.start_grid(cfg, Vec::new()).await {
            // Not in the cluster after all: forget it, so that a join can be tried again
            // (to this cluster or another).
            self.save(&previous)?;
            *file = previous;
            return Err(ApiError::Internal(format!("joining the grid: {e:#}")));
        }
        tracing::info!(cluster = %req.cluster_id, "joined the cluster");
        Ok(Changed { changed: true })
    }
}

fn check_cluster_id(id: &str) -> Result<(), ApiError> {
    discovery::schema::check_id("cluster id", id).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn check_member_request(req: &EtcdMemberRequest) -> Result<(), ApiError> {
    check_cluster_id(&req.cluster_id)?;
    let bad = |m: String| Err(ApiError::BadRequest(m));
    if !(1..=7).contains(&req.members.len()) {
        return bad(format!(
            "{} etcd members: give 1 to 7 (1, 3 or 5 are the sizes that make sense)",
            req.members.len()
        ));
    }
    if !req.members.iter().any(|m| m.name == req.name) {
        return bad(format!("member {} is not in the member list", req.name));
    }
    for m in &req.members {
        discovery::schema::check_id("etcd member name", &m.name)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        check_endpoints(&[m.peer_url.clone(), m.client_url.clone()])
            .map_err(|e| ApiError::BadRequest(format!("member {}: {e:#}", m.name)))?;
    }
    // This host must be the member it is asked to be: etcd could not listen on
    // another host's address, and would restart forever.
    if let Some(me) = req.members.iter().find(|m| m.name == req.name) {
        let host = me
            .peer_url
            .split_once("://")
            .map(|(_, r)| r)
            .and_then(|r| r.rsplit_once(':'))
            .map(|(h, _)| h)
            .unwrap_or_default();
        let local = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| std::net::UdpSocket::bind((ip, 0)).is_ok());
        if !local {
            return bad(format!(
                "member {}'s peer URL {}: {host} is not an address of this host (ask each host to be its own member)",
                me.name, me.peer_url
            ));
        }
    }
    let mut names: Vec<&str> = req.members.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() != req.members.len() {
        return bad("two etcd members have the same name".into());
    }
    Ok(())
}
