//! The grid on this host (Layer 0 across hosts): joining etcd, the host's lease and
//! membership record, its overlay subnet and VXLAN device kept in step with every other
//! host's, the discovery instances of its jobs' declared services (with health
//! checks), and DNS for its containers.
//!
//! Start-up, in order (each step retried until it works, logged, never fatal): run etcd
//! as a job if asked (`--run-etcd`; host network, so it needs no subnet), connect, read
//! (or set) the overlay configuration, resume the lease kept in `grid.json` (a restart
//! within the TTL keeps the host's records alive) or grant one, claim the subnet
//! (the cached one first), open the host network with that subnet (bridge jobs wait in
//! [`crate::jobs::NetSlot`] until then), open the VXLAN device, announce the host. Then tasks keep
//! it so: the lease renewer (a lost lease, e.g. after etcd lost its data or a
//! partition longer than the TTL, is replaced and everything re-announced on the new
//! one), the overlay follower (subnet leases → kernel entries), the service view (for
//! DNS), the registrar (wanted instances → etcd), the job follower (job events →
//! wanted instances), the log shipper (`logship.rs`: every app job's lines to every
//! log aggregator), the DNS server and the host record refresher.

pub mod config;
pub mod dns;
pub(crate) mod etcd_job;
pub mod guard;
pub mod logship;
pub mod membership;
pub mod services;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use discovery::services::ServiceView;
use discovery::watch::{Change, PrefixWatch};
use discovery::{Etcd, HostRecord, Instance, Lease, Subnet, SubnetLease};
use network::overlay::{self, Overlay, Peer};
use network::{HostNetwork, Ipv4Net, NetworkConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, broadcast, watch};

pub use config::GridConfig;
pub use etcd_job::JOB_NAME as ETCD_JOB;

use crate::jobs::{JobManager, NetSlotSetter};
use crate::model::{
    ClusterStatus, Event, InstanceStatus, Job, NetworkMode, OverlayPeer, OverlayStatus,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a stopping job keeps running after its instances left etcd.
const DRAIN_PAUSE: Duration = Duration::from_millis(300);
/// How often the host record's resources are refreshed.
const REFRESH: Duration = Duration::from_secs(10);

/// What `grid.json` keeps across restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    lease: Option<i64>,
    subnet: Option<String>,
}

#[derive(Default)]
struct Status {
    connected: bool,
    last_error: Option<String>,
    subnet: Option<Subnet>,
    peers: Vec<Peer>,
    mtu: u32,
    dns: Option<SocketAddr>,
}

/// This host's part of the grid.
pub struct Grid {
    cfg: GridConfig,
    host_id: String,
    address: Ipv4Addr,
    api: Option<String>,
    etcd: OnceCell<Etcd>,
    overlay_cfg: OnceCell<discovery::OverlayConfig>,
    lease: watch::Sender<Option<Lease>>,
    status: Mutex<Status>,
    overlay: OnceCell<Overlay>,
    view: Arc<RwLock<ServiceView>>,
    registry: Arc<services::Registry>,
    checks: Mutex<HashMap<String, Vec<tokio::task::AbortHandle>>>,
    jobs: Arc<JobManager>,
    started_at: chrono::DateTime<chrono::Utc>,
    state_dir: PathBuf,
    /// Every long-running task of the grid (joining, lease renewal, overlay and
    /// service watches, the registry, job events, DNS): one owner, which
    /// [`Grid::stop`] ends.
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

/// The grid as the job supervisor's [`crate::jobs::Drain`] (weak: the supervisor
/// outlives no grid, and must not keep one alive).
struct Drainer(std::sync::Weak<Grid>);

impl crate::jobs::Drain for Drainer {
    fn drain<'a>(
        &'a self,
        job_id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if let Some(g) = self.0.upgrade() {
                g.drain_job(job_id).await;
            }
        })
    }
}

/// What start-up needs besides the grid's own configuration.
pub struct Boot {
    pub host_id: String,
    pub network: NetworkConfig,
    /// Jobs whose network endpoints still exist (for `HostNetwork::open`).
    pub live: Vec<String>,
    pub slot: NetSlotSetter,
    pub jobs: Arc<JobManager>,
    pub events: broadcast::Sender<Event>,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// The API's TLS, if it serves HTTPS off loopback.
    pub tls: Option<Arc<flynn_tls::TlsDir>>,
}

impl Grid {
    /// Resolves this host's address and starts joining in the background.
    pub async fn start(cfg: GridConfig, boot: Boot) -> Result<Arc<Grid>> {
        let address = match cfg.advertise {
            Some(a) => a,
            None => overlay::default_address()
                .await
                .context("finding this host's address")?
                .context("this host has no default route to take its cluster address from: give --advertise ADDRESS")?,
        };
        let (lease, _) = watch::channel(None);
        // Other hosts (and the scheduler) reach the API at the address it listens on,
        // or at the cluster address when it listens on every address.
        // HTTPS when the API serves it off loopback: the cluster's clients verify
        // it against the cluster's CA.
        let scheme = if boot.tls.is_some() { "https" } else { "http" };
        let api = match boot.listen.ip() {
            ip if ip.is_loopback() => None,
            ip if ip.is_unspecified() => {
                Some(format!("{scheme}://{address}:{}", boot.listen.port()))
            }
            _ => Some(format!("{scheme}://{}", boot.listen)),
        };
        let grid = Arc::new(Grid {
            cfg,
            host_id: boot.host_id.clone(),
            address,
            api,
            etcd: OnceCell::new(),
            overlay_cfg: OnceCell::new(),
            lease,
            status: Mutex::new(Status::default()),
            overlay: OnceCell::new(),
            view: Arc::new(RwLock::new(ServiceView::default())),
            registry: Arc::new(services::Registry::default()),
            checks: Mutex::new(HashMap::new()),
            jobs: boot.jobs.clone(),
            started_at: chrono::Utc::now(),
            state_dir: boot.state_dir.clone(),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
        });
        // Follow job events from now on, so no start or exit is missed meanwhile.
        let events = boot.events.subscribe();
        let ship_events = boot.events.subscribe();
        boot.jobs
            .set_drain(Arc::new(Drainer(Arc::downgrade(&grid))));
        let g = grid.clone();
        grid.spawn(async move { g.boot(boot, events, ship_events).await });
        Ok(grid)
    }

    /// Runs `task` for as long as the grid lives (until [`Grid::stop`]).
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Reap what has finished, so the set holds only live tasks.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Stops every task of the grid (the daemon is shutting down): the lease is no
    /// longer renewed and expires by itself, as a crashed host's would.
    pub async fn stop(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        tasks.shutdown().await;
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) {
        let msg = format!("{what}: {e}");
        let mut s = self.status();
        if s.last_error.as_deref() != Some(msg.as_str()) {
            tracing::warn!(error = %msg, "grid");
        }
        s.last_error = Some(msg);
    }

    /// Retries `f` every `every` until it succeeds.
    async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
        &self,
        what: &str,
        every: Duration,
        mut f: impl FnMut() -> F,
    ) -> T {
        loop {
            match f().await {
                Ok(v) => return v,
                Err(e) => self.error(what, e),
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn boot(
        self: Arc<Self>,
        boot: Boot,
        events: broadcast::Receiver<Event>,
        ship_events: broadcast::Receiver<Event>,
    ) {
        if self.cfg.run_etcd {
            self.retry("running etcd as a job", Duration::from_secs(2), || {
                let tls = boot.tls.as_ref().map(|t| t.platform_dir());
                etcd_job::ensure(&self.jobs, &self.cfg, self.address, &self.host_id, tls)
            })
            .await;
        }
        let endpoints = self.cfg.etcd.clone();
        let etcd = self
            .retry("connecting to etcd", Duration::from_secs(1), || async {
                // An HTTPS etcd (the bootstrap's) is reached with this host's
                // certificate, read afresh at each attempt (it may just have been
                // re-issued under the cluster's CA).
                let tls = match (
                    &boot.tls,
                    endpoints.iter().any(|e| e.starts_with("https://")),
                ) {
                    (Some(t), true) => Some(discovery::EtcdTls::from_dir(&t.platform_dir())?),
                    _ => None,
                };
                let e = Etcd::connect_tls(&endpoints, CONNECT_TIMEOUT, tls.as_ref()).await?;
                e.ping().await?;
                Ok::<_, discovery::DiscoveryError>(e)
            })
            .await;
        tracing::info!(etcd = %etcd.endpoints(), "connected to etcd");
        let _ = self.etcd.set(etcd.clone());
        let ocfg = self
            .retry(
                "reading the overlay configuration",
                Duration::from_secs(1),
                || discovery::subnets::overlay_config(&etcd, &self.cfg.overlay),
            )
            .await;
        let _ = self.overlay_cfg.set(ocfg.clone());
        let cache = self.read_cache();
        let resumed = match cache.lease {
            Some(id) => match etcd.resume(id, self.cfg.ttl).await {
                Ok(Some(l)) => {
                    tracing::info!(lease = %format!("{id:x}"), "resumed the lease of the previous agent");
                    Some(l)
                }
                Ok(None) => None,
                Err(e) => {
                    self.error("looking up the previous lease", e);
                    None
                }
            },
            None => None,
        };
        let preferred = cache.subnet.as_deref().and_then(|s| s.parse().ok());
        let (lease, subnet) = self.join(&etcd, &ocfg, resumed, preferred).await;
        self.lease.send_replace(Some(lease));
        {
            let mut s = self.status();
            s.connected = true;
            s.subnet = Some(subnet);
        }
        self.write_cache(lease, subnet);
        // Drained by its own power-off (flynn-init): back in the cluster, the host
        // takes jobs again. An operator's drain stays.
        let ended = self
            .retry(
                "ending this host's drain for its restart",
                Duration::from_secs(2),
                || discovery::formations::end_restart_drain(&etcd, &self.host_id),
            )
            .await;
        if ended {
            tracing::info!("takes jobs again: it drained itself before it last stopped");
        }

        let cluster: Ipv4Net = match ocfg.network.parse() {
            Ok(n) => n,
            Err(e) => {
                self.error("the cluster network", e);
                return;
            }
        };
        let subnet_net = match Ipv4Net::new(subnet.addr, subnet.len) {
            Some(n) => n,
            None => {
                self.error("the leased subnet", format!("{subnet} is not a network"));
                return;
            }
        };
        let mtu = match boot.network.mtu {
            Some(m) => m,
            None => {
                self.retry("reading the underlay's MTU", Duration::from_secs(2), || {
                    overlay::underlay_mtu(self.address)
                })
                .await
                    - overlay::VXLAN_OVERHEAD
            }
        };
        let ov = self
            .retry(
                "setting up the VXLAN device",
                Duration::from_secs(2),
                || {
                    Overlay::open(
                        overlay::OverlayConfig {
                            device: overlay::DEFAULT_DEVICE.to_string(),
                            vni: ocfg.vni,
                            port: ocfg.port,
                            local: self.address,
                            subnet: subnet_net,
                            cluster,
                        },
                        mtu,
                    )
                },
            )
            .await;
        let _ = self.overlay.set(ov);
        let net_cfg = NetworkConfig {
            subnet: subnet_net,
            cluster: Some(cluster),
            mtu: Some(mtu),
            ..boot.network.clone()
        };
        let net = self
            .retry(
                "setting up the host network",
                Duration::from_secs(5),
                || HostNetwork::open(net_cfg.clone(), &boot.live),
            )
            .await;
        let net = Arc::new(net);
        let (e, n, me) = (etcd.clone(), net.clone(), self.host_id.clone());
        self.spawn(guard::run(e, n, me, self.cfg.etcd.clone()));
        let dns_addr = SocketAddr::new(subnet_net.gateway().into(), 53);
        boot.slot.set(net, self.cfg.discovery_dns);
        {
            let mut s = self.status();
            s.mtu = mtu;
            if self.cfg.discovery_dns {
                s.dns = Some(dns_addr);
            }
        }
        tracing::info!(subnet = %subnet, address = %self.address, mtu, "joined the grid");

        let g = self.clone();
        let e = etcd.clone();
        self.spawn(async move { g.renew_loop(e, ocfg).await });
        let g = self.clone();
        let e = etcd.clone();
        self.spawn(async move { g.overlay_loop(e).await });
        let g = self.clone();
        let e = etcd.clone();
        self.spawn(async move { g.view_loop(e).await });
        let reg = self.registry.clone();
        let e = etcd.clone();
        let rx = self.lease.subscribe();
        self.spawn(async move { reg.run(e, rx).await });
        let g = self.clone();
        self.spawn(async move { g.follow_jobs(events).await });
        let ca = boot.tls.as_ref().map(|t| t.platform_dir().join("ca.pem"));
        let shipper = logship::Shipper::new(self.host_id.clone(), self.jobs.clone(), ca);
        let e = etcd.clone();
        self.spawn(async move { shipper.run(e, ship_events).await });
        let g = self.clone();
        self.spawn(async move { g.refresh_loop().await });
        if self.cfg.discovery_dns {
            let upstream = if self.cfg.dns_upstream.is_empty() {
                dns::upstreams_of(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
            } else {
                self.cfg.dns_upstream.clone()
            };
            let server = dns::DnsServer::new(self.view.clone(), upstream);
            let g = self.clone();
            self.spawn(async move {
                loop {
                    if let Err(e) = server.clone().serve(dns_addr).await {
                        g.error(&format!("serving DNS on {dns_addr}"), e);
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            });
        }
    }

    /// A lease and the subnet claimed on it. `first` is tried as the lease (e.g. the
    /// one resumed from the cache); whenever a claim fails (etcd away, or the lease
    /// expired meanwhile) a fresh lease is granted, so this cannot get stuck on a dead one.
    async fn join(
        &self,
        etcd: &Etcd,
        ocfg: &discovery::OverlayConfig,
        mut first: Option<Lease>,
        preferred: Option<Subnet>,
    ) -> (Lease, Subnet) {
        let address = self.address;
        loop {
            let lease = match first.take() {
                Some(l) => l,
                None => {
                    self.retry("getting a lease", Duration::from_secs(1), || {
                        etcd.grant(self.cfg.ttl)
                    })
                    .await
                }
            };
            let claimed =
                discovery::subnets::claim(etcd, lease, ocfg, &self.host_id, preferred, |s| {
                    SubnetLease {
                        subnet: s.to_string(),
                        host_id: self.host_id.clone(),
                        address,
                        vtep_mac: Ipv4Net::new(s.addr, s.len)
                            .map(|n| overlay::mac_string(overlay::vtep_mac(n)))
                            .unwrap_or_default(),
                    }
                })
                .await;
            match claimed {
                Ok(subnet) => {
                    if let Some(p) = preferred
                        && p != subnet
                    {
                        tracing::error!(had = %p, got = %subnet, "the cluster gave this host another subnet than before: restart the agent to move its bridge");
                    }
                    return (lease, subnet);
                }
                Err(e) => {
                    self.error("claiming an overlay subnet", e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Renews the lease every TTL/3. When etcd says it is gone, gets a new one and puts
    /// everything on it again (the subnet is claimed again: it is this host's by its
    /// owner record).
    async fn renew_loop(self: Arc<Self>, etcd: Etcd, ocfg: discovery::OverlayConfig) {
        let mut lease = match *self.lease.borrow() {
            Some(l) => l,
            None => return,
        };
        let every = (self.cfg.ttl / 3).max(Duration::from_millis(300));
        let mut keeper: Option<discovery::KeepAlive> = None;
        self.announce(&etcd, lease).await;
        loop {
            let lost = match keeper.as_mut() {
                None => match etcd.keep_alive(lease).await {
                    Ok(k) => {
                        keeper = Some(k);
                        continue;
                    }
                    Err(discovery::DiscoveryError::LeaseLost(_)) => true,
                    Err(e) => {
                        self.error("renewing the lease", e);
                        self.status().connected = false;
                        false
                    }
                },
                Some(k) => match k.renew().await {
                    Ok(_) => {
                        self.mark_connected();
                        tokio::time::sleep(every).await;
                        continue;
                    }
                    Err(discovery::DiscoveryError::LeaseLost(_)) => true,
                    Err(e) => {
                        self.error("renewing the lease", e);
                        self.status().connected = false;
                        keeper = None;
                        false
                    }
                },
            };
            if !lost {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            keeper = None;
            tracing::warn!(lease = %format!("{:x}", lease.id), "the host's lease is gone; joining again");
            let current = self.status().subnet;
            let (new_lease, subnet) = self.join(&etcd, &ocfg, None, current).await;
            lease = new_lease;
            self.write_cache(lease, subnet);
            self.lease.send_replace(Some(lease));
            self.status().connected = true;
            self.announce(&etcd, lease).await;
        }
    }

    fn mark_connected(&self) {
        let mut s = self.status();
        if !s.connected {
            tracing::info!("etcd answers again");
        }
        s.connected = true;
    }

    fn record(&self) -> HostRecord {
        let (jobs, _) = self.jobs.usage();
        let mem = crate::host::memory().ok();
        let disk = crate::host::disk(&self.state_dir).ok();
        HostRecord {
            id: self.host_id.clone(),
            address: self.address,
            api: self.api.clone(),
            tags: self.cfg.tags.clone(),
            resources: discovery::model::HostResources {
                cpus: crate::host::cpus(),
                memory_total: mem.as_ref().map_or(0, |m| m.total),
                memory_free: mem.as_ref().map_or(0, |m| m.free),
                disk_total: disk.as_ref().map_or(0, |d| d.total),
                disk_free: disk.as_ref().map_or(0, |d| d.free),
                jobs_running: jobs.running,
            },
            subnet: self.status().subnet.map(|s| s.to_string()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            updated_at: chrono::Utc::now(),
        }
    }

    async fn announce(&self, etcd: &Etcd, lease: Lease) {
        // One attempt: the refresher writes it again every few seconds, and the renewer
        // must not wait here on a lease that may be gone.
        let record = self.record();
        if let Err(e) = discovery::hosts::announce(etcd, lease, &record).await {
            self.error("announcing the host", e);
        }
    }

    async fn refresh_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REFRESH).await;
            let (Some(etcd), Some(lease)) = (self.etcd.get(), *self.lease.borrow()) else {
                continue;
            };
            if let Err(e) = discovery::hosts::announce(etcd, lease, &self.record()).await {
                tracing::debug!(error = %e, "refreshing the host record");
            }
        }
    }

    /// Keeps the VXLAN device's entries equal to the other hosts' subnet leases.
    async fn overlay_loop(self: Arc<Self>, etcd: Etcd) {
        let Some(ov) = self.overlay.get() else { return };
        let mut w = PrefixWatch::new(etcd, discovery::schema::SUBNETS);
        let mut leases: HashMap<String, SubnetLease> = HashMap::new();
        let mut dirty = false;
        loop {
            let change = if dirty {
                tokio::time::timeout(Duration::from_secs(1), w.next())
                    .await
                    .ok()
            } else {
                Some(w.next().await)
            };
            match change {
                Some(Change::Snapshot { entries, .. }) => {
                    leases = entries
                        .iter()
                        .filter_map(|e| {
                            Some((e.key.clone(), serde_json::from_slice(&e.value).ok()?))
                        })
                        .collect();
                }
                Some(Change::Put(e)) => match serde_json::from_slice(&e.value) {
                    Ok(l) => {
                        leases.insert(e.key, l);
                    }
                    Err(err) => {
                        tracing::warn!(key = %e.key, error = %err, "ignoring a subnet lease that does not decode")
                    }
                },
                Some(Change::Delete { key, .. }) => {
                    leases.remove(&key);
                }
                None => {}
            }
            let peers: Vec<Peer> = leases
                .values()
                .filter(|l| l.host_id != self.host_id)
                .filter_map(|l| {
                    let s: Subnet = l.subnet.parse().ok()?;
                    Some(Peer {
                        subnet: Ipv4Net::new(s.addr, s.len)?,
                        underlay: l.address,
                        vtep_mac: overlay::parse_mac(&l.vtep_mac)?,
                    })
                })
                .collect();
            match ov.sync(&peers).await {
                Ok(()) => {
                    dirty = false;
                    let mut s = self.status();
                    if s.peers != peers {
                        tracing::info!(peers = peers.len(), "overlay peers updated");
                    }
                    s.peers = peers;
                }
                Err(e) => {
                    dirty = true;
                    self.error("updating the overlay", e);
                }
            }
        }
    }

    /// Keeps the service view (what DNS answers from) current.
    async fn view_loop(self: Arc<Self>, etcd: Etcd) {
        let mut w = PrefixWatch::new(etcd, discovery::schema::SERVICES);
        loop {
            let c = w.next().await;
            self.view
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .apply(c);
        }
    }

    /// Job events → the instances this host wants in discovery.
    async fn follow_jobs(self: Arc<Self>, mut events: broadcast::Receiver<Event>) {
        self.resync_jobs();
        loop {
            match events.recv().await {
                Ok(ev) if ev.kind == "job" => match ev.action.as_str() {
                    "start" => {
                        if let Some(job) = &ev.job {
                            self.job_started(job);
                        }
                    }
                    "exit" | "remove" => self.job_gone(&ev.id),
                    _ => {}
                },
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed job events; checking every job");
                    self.resync_jobs();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn resync_jobs(&self) {
        let running = self.jobs.list(false);
        for id in self.registry.jobs() {
            if !running.iter().any(|j| j.id == id) {
                self.job_gone(&id);
            }
        }
        let known = self.registry.jobs();
        for job in running.iter().filter(|j| !known.contains(&j.id)) {
            self.job_started(job);
        }
    }

    fn job_started(&self, job: &Job) {
        if job.config.services.is_empty() {
            return;
        }
        self.job_gone(&job.id);
        let ip = match (job.config.network, &job.network) {
            (NetworkMode::Bridge, Some(n)) => n.ip,
            (NetworkMode::Host, _) => self.address,
            _ => {
                tracing::warn!(job = %job.id, "a job with services but no address: not registered");
                return;
            }
        };
        let mut handles = Vec::new();
        for d in &job.config.services {
            let addr = SocketAddr::new(ip.into(), d.port);
            let inst = Instance {
                service: d.name.clone(),
                id: format!("{}-{}", job.id, d.port),
                addr,
                host_id: self.host_id.clone(),
                job_id: Some(job.id.clone()),
                meta: d.meta.clone(),
                registered_at: chrono::Utc::now(),
            };
            let id = inst.id.clone();
            self.registry.add(inst, &job.id, d.check.is_none());
            if let Some(check) = d.check.clone() {
                let reg = self.registry.clone();
                let svc = d.name.clone();
                let h = tokio::spawn(services::health_loop(reg, svc, id, addr, check));
                handles.push(h.abort_handle());
            }
        }
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.id.clone(), handles);
    }

    /// Takes a job's instances out of discovery and waits until etcd has it and
    /// watchers (routers, DNS, clients) have had time to see it.
    async fn drain_job(&self, job_id: &str) {
        if !self.registry.has_job(job_id) {
            return;
        }
        self.job_gone(job_id);
        self.registry.removals_applied(Duration::from_secs(3)).await;
        // Watchers hear of a delete within milliseconds; this covers a busy router.
        tokio::time::sleep(DRAIN_PAUSE).await;
        tracing::debug!(job = %job_id, "drained from discovery");
    }

    fn job_gone(&self, job_id: &str) {
        if let Some(hs) = self
            .checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job_id)
        {
            for h in hs {
                h.abort();
            }
        }
        self.registry.remove_job(job_id);
    }

    fn read_cache(&self) -> Cache {
        std::fs::read(&self.cfg.cache)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_cache(&self, lease: Lease, subnet: Subnet) {
        let c = Cache {
            lease: Some(lease.id),
            subnet: Some(subnet.to_string()),
        };
        let r = serde_json::to_vec(&c)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                flynn_fsutil::write_atomic(&self.cfg.cache, &b, flynn_fsutil::Durability::Visible)
            });
        if let Err(e) = r {
            self.error(&format!("writing {}", self.cfg.cache.display()), e);
        }
    }

    /// etcd, once connected.
    pub fn etcd(&self) -> Option<&Etcd> {
        self.etcd.get()
    }

    /// The discovery instances of job `id`.
    pub fn instances_of(&self, id: &str) -> Vec<InstanceStatus> {
        self.registry.status(Some(id))
    }

    /// For `/host/status`.
    pub fn cluster_status(&self) -> ClusterStatus {
        let s = self.status();
        let lease = *self.lease.borrow();
        let overlay = match (self.overlay_cfg.get(), s.subnet) {
            (Some(o), Some(subnet)) => Some(OverlayStatus {
                network: o.network.clone(),
                subnet: subnet.to_string(),
                device: overlay::DEFAULT_DEVICE.to_string(),
                vni: o.vni,
                port: o.port,
                mtu: s.mtu,
                peers: s
                    .peers
                    .iter()
                    .map(|p| OverlayPeer {
                        subnet: p.subnet.to_string(),
                        address: p.underlay,
                        vtep_mac: overlay::mac_string(p.vtep_mac),
                    })
                    .collect(),
            }),
            _ => None,
        };
        ClusterStatus {
            etcd: self.cfg.etcd.clone(),
            connected: s.connected,
            address: self.address,
            lease: lease.map(|l| format!("{:x}", l.id)),
            lease_ttl_secs: self.cfg.ttl.as_secs(),
            last_error: s.last_error.clone(),
            overlay,
            dns: s.dns.map(|d| d.to_string()),
            instances: self.registry.status(None),
        }
    }
}
