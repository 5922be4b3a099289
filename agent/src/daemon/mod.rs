//! `flynn-host daemon`: opens the state dir, the image store and the job
//! supervisor, then serves the API on TCP (token) and on a unix socket (root).

pub mod config;
mod identity;
pub mod upgrade;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::broadcast;

pub use config::{DaemonArgs, DaemonConfig};

use crate::api::{self, ApiState};
use crate::jobs::{JobManager, Paths};

/// How long a handing-over daemon lets open connections finish their requests.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The part of the drain left for closing idle keep-alive connections.
const IDLE_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long to wait for the image store's lock (held by a daemon handing over).
const STORE_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

pub async fn run(args: DaemonArgs, inherited: Option<upgrade::Inherited>) -> Result<()> {
    let config = args.resolve()?;
    crate::api::limits::raise_nofile();
    let state_dir = &config.state_dir;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    // Layers and logs are not for other users.
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("chmod {}", state_dir.display()))?;
    let host_id = identity::host_id(state_dir)?;
    let token = identity::token(state_dir, config.token.as_deref())?;
    // Captured now: after an upgrade in place, this path holds the new binary.
    let exe = std::env::current_exe().context("finding the flynn-host binary")?;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();

    // Before anything can see us (the pid file, the sockets): SIGUSR2's default
    // action would kill the daemon.
    let mut upgrade_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
            .context("installing the SIGUSR2 (upgrade) handler")?;
    let (tcp, unix) = match inherited {
        // Handed over by the previous daemon: it drains before we touch the state.
        Some(inherited) => inherited.take_over().await?,
        None => (bind_tcp(config.listen).await?, bind_unix(&config.socket)?),
    };

    let tmp_dir = state_dir.join("tmp");
    // Uploads interrupted by a crash are useless: start from an empty tmp dir.
    let _ = std::fs::remove_dir_all(&tmp_dir);
    std::fs::create_dir_all(&tmp_dir).with_context(|| format!("creating {}", tmp_dir.display()))?;
    let images = Arc::new(open_store(state_dir.join("images")).await?);
    let puller = Arc::new(image::Puller::new(
        images.clone(),
        config.registry.clone(),
        image::registry::DockerConfig::default_path(),
    ));
    let (events, _) = broadcast::channel(1024);
    // Endpoints of recorded jobs are kept (recovery releases those that are not
    // running); every other endpoint is cleared.
    let live = crate::jobs::recorded_ids(&state_dir.join("jobs"));
    // In a cluster the bridge's subnet is leased from etcd: bridge jobs wait for it.
    // Standalone, the bridge and NAT are set up beside the API, not before it.
    let cluster_file = crate::grid::membership::load(state_dir)?;
    let standalone_wanted =
        crate::grid::membership::Membership::standalone_wanted(&config.grid, &cluster_file);
    let (setter, network) = if standalone_wanted {
        config
            .network
            .validate()
            .map_err(|e| anyhow::anyhow!("the network configuration: {e}"))?;
        crate::jobs::NetSlot::pending("bridge and NAT rules")
    } else {
        crate::jobs::NetSlot::pending("subnet lease from the cluster")
    };
    let standalone = standalone_wanted.then(|| {
        let (cfg, live, setter) = (config.network.clone(), live.clone(), setter.clone());
        tokio::spawn(async move {
            match network::HostNetwork::open(cfg, &live).await {
                Ok(net) => {
                    tracing::info!("host network ready");
                    setter.set(Arc::new(net), false);
                }
                Err(e) => {
                    let why = format!("setting up the host network (bridge, NAT): {e}");
                    tracing::error!("{why}");
                    setter.fail(why);
                }
            }
        })
    });
    let network_view = network.clone();
    let jobs = JobManager::open(
        Paths {
            jobs: state_dir.join("jobs"),
            containers: state_dir.join("containers"),
            removed: state_dir.join("removed"),
        },
        images.clone(),
        network.clone(),
        exe.clone(),
        events.clone(),
        config.jobs,
    )
    .await
    .context("opening the job supervisor")?;
    jobs.set_log_defaults(config.log_opts.clone());
    // Before the grid: in a cluster its platform jobs get certificates of this CA.
    let tls = if config.tls {
        let tls = api::tls::ApiTls::open(state_dir, &host_id)?;
        tls.spawn_renewal();
        tracing::info!(pin = %tls.dir.pin().map(|p| p.to_string()).unwrap_or_default(), "the API is HTTPS off loopback");
        Some(Arc::new(tls))
    } else {
        None
    };
    let membership = crate::grid::membership::Membership::start(
        config.grid.clone(),
        cluster_file,
        crate::grid::membership::GridBoot {
            host_id: host_id.clone(),
            network: config.network.clone(),
            jobs: jobs.clone(),
            events: events.clone(),
            state_dir: state_dir.clone(),
            listen: config.listen,
            tls: tls.as_ref().map(|t| t.dir.clone()),
            slot: setter,
            net: network_view,
            live: live.clone(),
        },
        standalone,
    )
    .await?;
    write_pid_file(state_dir)?;

    tracing::info!(
        listen = %config.listen,
        socket = %config.socket.display(),
        state_dir = %state_dir.display(),
        host_id = %host_id,
        pid = std::process::id(),
        "flynn-host daemon ready"
    );
    let (draining, _) = tokio::sync::watch::channel(false);
    let state = Arc::new(ApiState {
        tls,
        jobs,
        images,
        puller,
        events,
        membership,
        probes: Default::default(),
        tmp_dir,
        state_dir: state_dir.clone(),
        host_id,
        token,
        started_at: chrono::Utc::now(),
        draining,
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (tcp_fd, unix_fd) = (tcp.as_raw_fd(), unix.as_raw_fd());
    let server = tokio::spawn(api::serve(tcp, unix, state.clone(), stop_rx));

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = upgrade_signal.recv() => {
                tracing::info!(exe = %exe.display(), "upgrade requested: starting the successor");
                let successor = match upgrade::spawn_successor(&exe, &argv, tcp_fd, unix_fd).await {
                    Ok(successor) => successor,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "upgrade failed");
                        continue;
                    }
                };
                let _ = stop.send(true);
                let connections = server.await.context("the API server task failed")?;
                // Streams end (their clients resume with the successor); requests in
                // flight finish. Connections are not told to close before they have
                // finished by themselves: one just accepted may not have sent its
                // request yet, and closing it would fail that request.
                let _ = state.draining.send(true);
                let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
                let idle_deadline = deadline - IDLE_CLOSE;
                while connections.open() > 0 && tokio::time::Instant::now() < idle_deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                // What is left are idle keep-alive connections: close them.
                connections.close_all();
                while connections.open() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                if connections.open() > 0 {
                    tracing::warn!(open = connections.open(), "connections still open after {DRAIN_TIMEOUT:?}; handing over anyway");
                }
                // Teardowns of stopped jobs' networks finish before the successor
                // opens the network state.
                state.jobs.all_detached().await;
                tracing::info!(successor = successor.pid(), "handing over to the successor; running jobs keep running");
                successor.go().await;
                return Ok(());
            }
            _ = &mut shutdown => {
                // Containers keep running under their shims; a new daemon re-adopts them.
                tracing::info!("shutting down; running jobs keep running");
                if let Some(grid) = state.membership.grid() {
                    grid.stop().await;
                }
                state.jobs.all_detached().await;
                let _ = std::fs::remove_file(&config.socket);
                return Ok(());
            }
        }
    }
}

/// Opens the image store, waiting while a daemon that hands over still holds it.
async fn open_store(dir: std::path::PathBuf) -> Result<image::ImageStore> {
    let deadline = std::time::Instant::now() + STORE_LOCK_TIMEOUT;
    loop {
        let attempt_dir = dir.clone();
        let opened = tokio::task::spawn_blocking(move || image::ImageStore::open(&attempt_dir))
            .await
            .context("opening the image store")?;
        match opened {
            Err(image::StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other.context("opening the image store"),
        }
    }
}

/// `<state>/daemon.pid`: which process serves this state dir now (it changes on upgrade).
fn write_pid_file(state_dir: &Path) -> Result<()> {
    let path = state_dir.join("daemon.pid");
    let pid = format!("{}\n", std::process::id());
    flynn_fsutil::write_atomic(&path, pid.as_bytes(), flynn_fsutil::Durability::Visible)
        .with_context(|| format!("writing {}", path.display()))
}

/// Binds the API's TCP address. A daemon started again right after its predecessor
/// died can be refused the address for a moment (EADDRINUSE, seen in the crash tests
/// on Linux 6.18 with only TIME-WAIT sockets left on the port once it was looked at):
/// it asks again for a few seconds before giving up, rather than leave the host
/// without its agent.
async fn bind_tcp(addr: std::net::SocketAddr) -> Result<TcpListener> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut warned = false;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                if !warned {
                    tracing::warn!(%addr, "the API address is in use; trying again for 5 s");
                    warned = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("listening on {addr} (is another flynn-host daemon running?)")
                });
            }
        }
    }
}

/// Binds the root-only unix socket: mode 0600 in a directory only root can enter,
/// and the accept loop checks the peer's uid as well.
fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket file left by a daemon that died: nobody listens on it any more.
    if std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).with_context(|| {
        format!(
            "listening on {} (is another flynn-host daemon running?)",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
