//! `flynn-host daemon`: opens the state dir, the image store and the job
//! supervisor, then serves the API on TCP (token) and on a unix socket (root).

pub mod config;
mod identity;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::broadcast;

pub use config::{DaemonArgs, DaemonConfig};

use crate::api::{self, ApiState};
use crate::jobs::{JobManager, Paths};

pub async fn run(args: DaemonArgs) -> Result<()> {
    let config = args.resolve()?;
    let state_dir = &config.state_dir;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    // Layers and logs are not for other users.
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("chmod {}", state_dir.display()))?;
    let tmp_dir = state_dir.join("tmp");
    // Uploads interrupted by a crash are useless: start from an empty tmp dir.
    let _ = std::fs::remove_dir_all(&tmp_dir);
    std::fs::create_dir_all(&tmp_dir).with_context(|| format!("creating {}", tmp_dir.display()))?;
    let host_id = identity::host_id(state_dir)?;
    let token = identity::token(state_dir, config.token.as_deref())?;

    let tcp = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let unix = bind_unix(&config.socket)?;

    let images_dir = state_dir.join("images");
    let images = Arc::new(
        tokio::task::spawn_blocking(move || image::ImageStore::open(&images_dir))
            .await
            .context("opening the image store")?
            .context("opening the image store")?,
    );
    let (events, _) = broadcast::channel(1024);
    let exe = std::env::current_exe().context("finding the flynn-host binary for shims")?;
    let jobs = JobManager::open(
        Paths {
            jobs: state_dir.join("jobs"),
            containers: state_dir.join("containers"),
        },
        images.clone(),
        exe,
        events.clone(),
    )
    .await
    .context("opening the job supervisor")?;

    tracing::info!(
        listen = %config.listen,
        socket = %config.socket.display(),
        state_dir = %state_dir.display(),
        host_id = %host_id,
        "flynn-host daemon ready"
    );
    let state = Arc::new(ApiState {
        jobs,
        images,
        events,
        tmp_dir,
        state_dir: state_dir.clone(),
        host_id,
        token,
        started_at: chrono::Utc::now(),
    });
    tokio::select! {
        _ = api::serve_tcp(tcp, state.clone()) => Ok(()),
        _ = api::serve_unix(unix, state) => Ok(()),
        _ = shutdown_signal() => {
            // Containers keep running under their shims; a new daemon re-adopts them.
            tracing::info!("shutting down; running jobs keep running");
            let _ = std::fs::remove_file(&config.socket);
            Ok(())
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
