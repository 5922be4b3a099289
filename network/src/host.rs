//! The host side of the job network: the bridge, forwarding, our nftables table,
//! the state file and its lock, brought up (and repaired) by [`HostNetwork::open`],
//! and the snapshots applied on blocking threads. Jobs' endpoints are in
//! `endpoint.rs`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};

use crate::endpoint::{check_request, conflicts};
use crate::port::{self, HeldPort};
use crate::state::{self, State};
use crate::{Endpoint, NetworkConfig, NetworkError, PortMapping, link, netns, nft};

/// The host's network for jobs. `Send + Sync`: share it (e.g. in an `Arc`) and call it
/// from any task.
pub struct HostNetwork {
    pub(crate) cfg: NetworkConfig,
    pub(crate) mtu: u32,
    pub(crate) bridge_index: u32,
    pub(crate) handle: rtnetlink::Handle,
    pub(crate) inner: Mutex<Inner>,
    /// `state_dir/lock`, held exclusively while this value lives: two instances on one
    /// state (say, an old and a new daemon during an upgrade) would undo each other's
    /// work, each taking the other's endpoints for leftovers.
    pub(crate) _lock: Flock<fs::File>,
    /// What blocking work on other threads (state file writes, nftables batches) needs.
    pub(crate) shared: Arc<Shared>,
}

/// State-file writes and nftables updates are snapshots of `Inner` taken under its lock
/// with a generation number, then applied on a blocking thread (so they can overlap
/// with netlink work). Each kind is applied in generation order: a snapshot older than
/// one already applied is dropped, since the newer one contains its changes.
pub(crate) struct Shared {
    pub(crate) state_path: PathBuf,
    pub(crate) persisted: Mutex<u64>,
    pub(crate) nft_applied: Mutex<u64>,
    /// The last update of the published-port rules failed: the next teardown must try
    /// again even if its own job publishes nothing.
    pub(crate) rules_dirty: AtomicBool,
}

impl Shared {
    pub(crate) fn apply<E>(
        slot: &Mutex<u64>,
        generation: u64,
        f: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut applied = slot.lock().unwrap_or_else(|p| p.into_inner());
        if generation <= *applied {
            return Ok(());
        }
        f()?;
        *applied = generation;
        Ok(())
    }
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) state: State,
    /// Sockets holding each job's published host ports.
    pub(crate) held: HashMap<String, Vec<HeldPort>>,
    /// Jobs whose attach or detach is under way; `endpoint()` does not show them.
    pub(crate) busy: HashSet<String>,
    /// Generation of the last snapshot taken (see [`Shared`]).
    pub(crate) generation: u64,
    /// Namespace threads of attaches that did not run to the end (cancelled or failed),
    /// by job: `detach` and the next `attach` of the job join them before touching its
    /// namespace file, which such a thread may still be creating.
    pub(crate) orphans: HashMap<String, std::thread::JoinHandle<()>>,
    /// Other hosts' control ports, closed to jobs (see [`HostNetwork::set_control_peers`]).
    pub(crate) control_peers: Vec<(std::net::Ipv4Addr, Vec<u16>)>,
}

const SYSCTL_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl HostNetwork {
    /// Brings up the bridge (created if missing; gateway address, MTU, up), enables IPv4
    /// forwarding, replaces our nftables table with one built from the state, and loads
    /// the IPAM state. `live` lists the jobs whose endpoints still exist: the endpoints
    /// of all others are removed (namespace files, veths, rules) and their addresses
    /// freed. Safe to call after a crash, and again on a running system.
    pub async fn open(cfg: NetworkConfig, live: &[String]) -> Result<HostNetwork, NetworkError> {
        let started = Instant::now();
        cfg.validate().map_err(NetworkError::Config)?;
        fs::create_dir_all(&cfg.state_dir).map_err(NetworkError::io(
            "creating the state directory",
            &cfg.state_dir,
        ))?;
        let lock = lock_state(&cfg.state_dir)?;
        netns::prepare_dir(&cfg.netns_dir).map_err(NetworkError::io(
            "preparing the namespace directory",
            &cfg.netns_dir,
        ))?;

        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(NetworkError::io("opening rtnetlink", "netlink"))?;
        tokio::spawn(conn);

        let mtu = match cfg.mtu {
            Some(m) => m,
            None => link::default_route_mtu(&handle)
                .await
                .map_err(NetworkError::netlink("reading the default route's MTU"))?
                .unwrap_or(1500),
        };
        let bridge_index = ensure_bridge(&handle, &cfg, mtu).await?;
        enable_sysctl(Path::new(SYSCTL_FORWARD))?;
        // The host's own 127.0.0.1 connections to published ports are DNAT'd into the
        // bridge; without this the kernel drops them as martians.
        enable_sysctl(
            &Path::new("/proc/sys/net/ipv4/conf")
                .join(&cfg.bridge)
                .join("route_localnet"),
        )?;
        // Jobs have no IPv6, and the wall (`nft/guard.rs`, a `table ip`) sees only IPv4:
        // with IPv6 on the bridge, a job could reach a host service listening on `[::]`
        // at the bridge's link-local address. Off, the kernel drops IPv6 the bridge
        // receives; frames between jobs are still bridged. A kernel without IPv6 has
        // no such file and nothing to close.
        let ipv6 = Path::new("/proc/sys/net/ipv6/conf")
            .join(&cfg.bridge)
            .join("disable_ipv6");
        if ipv6.exists() {
            enable_sysctl(&ipv6)?;
        }

        let state_path = cfg.state_dir.join(state::STATE_FILE);
        let live: HashSet<&str> = live.iter().map(String::as_str).collect();
        let mut st = load_state(&state_path, &cfg, &live)?;

        let net = HostNetwork {
            cfg,
            mtu,
            bridge_index,
            handle,
            inner: Mutex::new(Inner::default()),
            _lock: lock,
            shared: Arc::new(Shared {
                state_path,
                persisted: Mutex::new(0),
                nft_applied: Mutex::new(0),
                rules_dirty: AtomicBool::new(false),
            }),
        };

        net.forget_gone(&mut st, &live).await;
        if let Err(e) = net.remove_strays(&st).await {
            tracing::error!(error = %e, "removing stray namespace files and veths");
        }
        {
            let mut inner = net.lock();
            inner.state = st;
        }
        net.hold_ports();
        net.persist_job()()?;
        net.table_job()()?;
        tracing::info!(
            bridge = %net.cfg.bridge,
            subnet = %net.cfg.subnet,
            mtu,
            endpoints = net.lock().state.endpoints.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "host network ready"
        );
        Ok(net)
    }

    /// Endpoints of jobs that are gone: removes what is left of them, then forgets
    /// them; warns of live jobs without one.
    async fn forget_gone(&self, st: &mut State, live: &HashSet<&str>) {
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut st.endpoints)
            .into_iter()
            .partition(|(id, _)| live.contains(id.as_str()));
        st.endpoints = keep.into_iter().collect();
        for (id, ep) in gone {
            tracing::info!(job = %id, ip = %ep.ip, "freeing the network of a job that is gone");
            if let Err(e) = self.remove_leftovers(&id, Some(&ep.host_veth)).await {
                // Its address stays reserved until a later detach or open succeeds.
                tracing::error!(job = %id, error = %e, "cannot remove the network of a job that is gone");
                st.endpoints.insert(id, ep);
            }
        }
        for id in live {
            if !st.endpoints.contains_key(*id) {
                tracing::warn!(job = %id, "a live job has no network endpoint on record");
            }
        }
    }

    /// Checks published ports before a job is created: against each other, against the
    /// ports of other jobs, and against the rest of the host (by binding each host port
    /// once). The error names the port.
    pub fn check_ports(&self, ports: &[PortMapping]) -> Result<(), NetworkError> {
        check_request(ports)?;
        conflicts(&self.lock().state, ports)?;
        for p in ports.iter().filter(|p| p.host_port != 0) {
            port::hold(p).map_err(|source| NetworkError::PortUnavailable {
                port: p.host_side(),
                source,
            })?;
        }
        Ok(())
    }

    /// The endpoint of job `id`, if it has one (and its attach has finished).
    pub fn endpoint(&self, id: &str) -> Option<Endpoint> {
        let inner = self.lock();
        if inner.busy.contains(id) {
            return None;
        }
        inner.state.endpoints.get(id).cloned()
    }

    /// Every endpoint, by job id.
    pub fn endpoints(&self) -> Vec<(String, Endpoint)> {
        let inner = self.lock();
        inner
            .state
            .endpoints
            .iter()
            .filter(|(id, _)| !inner.busy.contains(*id))
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect()
    }

    /// The configuration in force, with the MTU resolved.
    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    /// The MTU of the bridge and every veth.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Binds the published ports of every endpoint that has none held yet. `open` calls
    /// it; call it again when a port could not be bound then (e.g. once the previous
    /// daemon of an upgrade has exited). Returns the ports still not held.
    pub fn hold_ports(&self) -> Vec<String> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut missing = Vec::new();
        for (id, ep) in &inner.state.endpoints {
            if ep.ports.is_empty() || inner.busy.contains(id) {
                continue;
            }
            let held = inner.held.entry(id.clone()).or_default();
            if held.len() == ep.ports.len() {
                continue;
            }
            held.clear();
            for p in &ep.ports {
                match port::hold(p) {
                    Ok((h, _)) => held.push(h),
                    Err(e) => {
                        tracing::warn!(job = %id, port = %p.host_side(), error = %e, "cannot hold a published port");
                        missing.push(p.host_side());
                    }
                }
            }
            if held.len() != ep.ports.len() {
                // All or nothing per job, so the next call tries again.
                held.clear();
            }
        }
        missing
    }

    /// Removes everything this crate made: every endpoint, our nftables table, the
    /// bridge, the state file, and the namespace directory's mount. For tests and
    /// uninstall; IPv4 forwarding is left as it is (something else may need it).
    pub async fn destroy(self) -> Result<(), NetworkError> {
        let ids: Vec<(String, Endpoint)> =
            self.lock().state.endpoints.clone().into_iter().collect();
        for (id, ep) in ids {
            self.teardown(&id, &ep).await?;
        }
        {
            let _g = self
                .shared
                .nft_applied
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            nft::delete_table().map_err(NetworkError::nft("deleting our table"))?;
        }
        link::delete_by_name(&self.handle, &self.cfg.bridge)
            .await
            .map_err(NetworkError::netlink(format!(
                "deleting bridge {}",
                self.cfg.bridge
            )))?;
        let state_path = self.cfg.state_dir.join(state::STATE_FILE);
        match fs::remove_file(&state_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NetworkError::io("removing", state_path)(e)),
        }
        let dir = &self.cfg.netns_dir;
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                netns::remove(&entry.path()).map_err(NetworkError::io("removing", entry.path()))?;
            }
        }
        if netns::is_mount_point(dir).unwrap_or(false) {
            nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
                NetworkError::io("unmounting", dir)(std::io::Error::from_raw_os_error(e as i32))
            })?;
        }
        Ok(())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock cannot leave Inner half-updated in a
        // way that matters more than stopping the daemon would.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot of the state for the state file, and the work that writes it (run it
    /// here, or on a blocking thread).
    pub(crate) fn persist_job(&self) -> impl FnOnce() -> Result<(), NetworkError> + Send + 'static {
        let (generation, data) = {
            let mut inner = self.lock();
            inner.generation += 1;
            (inner.generation, inner.state.to_bytes())
        };
        let shared = self.shared.clone();
        move || {
            Shared::apply(&shared.persisted, generation, || {
                state::write(&shared.state_path, &data).map_err(NetworkError::io(
                    "writing the network state",
                    shared.state_path.clone(),
                ))
            })
        }
    }

    /// A snapshot of the rule set: every published port with its endpoint's address.
    pub(crate) fn ruleset(&self) -> (u64, nft::Ruleset) {
        let mut inner = self.lock();
        inner.generation += 1;
        let mut published = Vec::new();
        for (id, ep) in &inner.state.endpoints {
            for p in &ep.ports {
                published.push((p.clone(), ep.ip, id.clone()));
            }
        }
        let rs = nft::Ruleset {
            bridge: self.cfg.bridge.clone(),
            subnet: self.cfg.subnet,
            cluster: self.cfg.cluster,
            published,
            control: nft::ControlPlane {
                ports: self.cfg.control_ports.clone(),
                udp_ports: self.cfg.control_udp_ports.clone(),
                peers: inner.control_peers.clone(),
            },
        };
        (inner.generation, rs)
    }

    /// Closes the control ports of other hosts (address, TCP ports) to this host's
    /// jobs, in place of the list given before; the table is rebuilt only if the list
    /// changed. The grid calls it with the hosts it learns from discovery.
    pub async fn set_control_peers(
        &self,
        mut peers: Vec<(std::net::Ipv4Addr, Vec<u16>)>,
    ) -> Result<(), NetworkError> {
        peers.sort();
        {
            let mut inner = self.lock();
            if inner.control_peers == peers {
                return Ok(());
            }
            inner.control_peers = peers;
        }
        tokio::task::spawn_blocking(self.table_job())
            .await
            .map_err(background)?
    }

    /// The other hosts' control ports closed to jobs now.
    pub fn control_peers(&self) -> Vec<(std::net::Ipv4Addr, Vec<u16>)> {
        self.lock().control_peers.clone()
    }

    /// The work that rewrites the published-port rules from a snapshot taken now (the
    /// whole table if it is gone).
    pub(crate) fn nft_job(&self) -> impl FnOnce() -> Result<(), NetworkError> + Send + 'static {
        let (generation, rs) = self.ruleset();
        let shared = self.shared.clone();
        move || {
            let result = Shared::apply(&shared.nft_applied, generation, || {
                match rs.replace_published() {
                    Ok(()) => Ok(()),
                    Err(e) if e.errno() == Some(libc::ENOENT) => {
                        tracing::warn!("our nftables table was gone; rebuilding it");
                        rs.replace_table()
                            .map_err(NetworkError::nft("rebuilding our table"))
                    }
                    Err(e) => Err(NetworkError::nft("updating published ports")(e)),
                }
            });
            shared.rules_dirty.store(result.is_err(), Ordering::Relaxed);
            result
        }
    }

    /// The work that replaces the whole table from a snapshot taken now.
    pub(crate) fn table_job(&self) -> impl FnOnce() -> Result<(), NetworkError> + Send + 'static {
        let (generation, rs) = self.ruleset();
        let shared = self.shared.clone();
        move || {
            Shared::apply(&shared.nft_applied, generation, || {
                rs.replace_table()
                    .map_err(NetworkError::nft("replacing our table"))
            })
        }
    }
}

/// A blocking task that did not finish (it panicked, or the runtime is shutting down).
pub(crate) fn background(e: tokio::task::JoinError) -> NetworkError {
    NetworkError::Background(e.to_string())
}

/// Finds or creates the bridge and gives it the gateway address, MTU and up.
async fn ensure_bridge(
    h: &rtnetlink::Handle,
    cfg: &NetworkConfig,
    mtu: u32,
) -> Result<u32, NetworkError> {
    let name = &cfg.bridge;
    let gateway = cfg.subnet.gateway();
    let existing = link::by_name(h, name)
        .await
        .map_err(NetworkError::netlink(format!("looking up bridge {name}")))?;
    let l = match existing {
        Some(l) => {
            if !link::is_bridge(&l) {
                return Err(NetworkError::NotABridge(name.clone()));
            }
            if link::mtu(&l) != Some(mtu) {
                tracing::info!(bridge = %name, mtu, "setting the bridge's MTU");
            }
            link::set_up_mtu(h, l.header.index, mtu)
                .await
                .map_err(NetworkError::netlink(format!("bringing bridge {name} up")))?;
            l
        }
        None => {
            tracing::info!(bridge = %name, mtu, "creating the bridge");
            link::create_bridge(h, name, mtu, link::mac_for(gateway))
                .await
                .map_err(NetworkError::netlink(format!("creating bridge {name}")))?;
            link::by_name(h, name)
                .await
                .map_err(NetworkError::netlink(format!("looking up bridge {name}")))?
                .ok_or_else(|| {
                    NetworkError::Config(format!(
                        "bridge {name} vanished right after it was created"
                    ))
                })?
        }
    };
    let index = l.header.index;
    link::ensure_only_address(h, index, gateway, cfg.subnet.prefix_len())
        .await
        .map_err(NetworkError::netlink(format!(
            "setting the address of bridge {name}"
        )))?;
    Ok(index)
}

/// Takes `state_dir/lock` (see [`HostNetwork::_lock`]); fails at once if it is taken.
fn lock_state(dir: &Path) -> Result<Flock<fs::File>, NetworkError> {
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(NetworkError::io("opening", &path))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| match e {
        nix::errno::Errno::EWOULDBLOCK => NetworkError::Locked(path.clone()),
        e => NetworkError::io("locking", &path)(std::io::Error::from_raw_os_error(e as i32)),
    })
}

/// Writes "1" to a /proc/sys file unless it already holds it.
fn enable_sysctl(path: &Path) -> Result<(), NetworkError> {
    let cur = fs::read_to_string(path).map_err(NetworkError::io("reading", path))?;
    if cur.trim() != "1" {
        tracing::info!(setting = %path.display(), "enabling");
        fs::write(path, b"1").map_err(NetworkError::io("writing", path))?;
    }
    Ok(())
}

/// The IPAM state on disk, checked against the configuration: an unreadable file
/// is moved aside when no live job needs it; a changed subnet is refused while
/// live jobs have addresses in the old one.
fn load_state(
    state_path: &Path,
    cfg: &NetworkConfig,
    live: &HashSet<&str>,
) -> Result<State, NetworkError> {
    let mut st = match state::load(state_path) {
        Ok(st) => st,
        // Nothing live needs the old records (after a reboot, say): keep the file for
        // a post-mortem and start afresh; leftovers are found by name below.
        Err(reason) if live.is_empty() => {
            let aside = state_path.with_extension("json.unreadable");
            tracing::error!(file = %state_path.display(), %reason, aside = %aside.display(),
                "the network state is unreadable; starting with an empty one");
            fs::rename(state_path, &aside)
                .map_err(NetworkError::io("moving aside", &state_path))?;
            State::default()
        }
        Err(reason) => {
            return Err(NetworkError::State {
                path: state_path.to_path_buf(),
                reason,
            });
        }
    };
    if let Some(old) = st.subnet
        && old != cfg.subnet
    {
        let still: Vec<String> = st
            .endpoints
            .keys()
            .filter(|id| live.contains(id.as_str()))
            .cloned()
            .collect();
        if !still.is_empty() {
            return Err(NetworkError::SubnetChanged {
                old,
                new: cfg.subnet,
                live: still,
            });
        }
        st.last = None;
    }
    st.subnet = Some(cfg.subnet);
    Ok(st)
}
