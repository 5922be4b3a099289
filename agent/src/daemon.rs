//! `flynn-host daemon`: opens the state dir, the image store and the job
//! supervisor, then serves the API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::api::{self, ApiState};
use crate::jobs::{JobManager, Paths};

pub struct DaemonOptions {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
}

pub async fn run(options: DaemonOptions) -> Result<()> {
    let state_dir = &options.state_dir;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let tmp_dir = state_dir.join("tmp");
    // Uploads interrupted by a crash are useless: start from an empty tmp dir.
    let _ = std::fs::remove_dir_all(&tmp_dir);
    std::fs::create_dir_all(&tmp_dir).with_context(|| format!("creating {}", tmp_dir.display()))?;

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

    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("listening on {}", options.listen))?;
    tracing::info!(listen = %options.listen, state_dir = %state_dir.display(), "flynn-host daemon ready");
    let state = Arc::new(ApiState {
        jobs,
        images,
        events,
        tmp_dir,
    });
    tokio::select! {
        _ = api::serve(listener, state) => Ok(()),
        _ = shutdown_signal() => {
            // Containers keep running under their shims; a new daemon re-adopts them.
            tracing::info!("shutting down; running jobs keep running");
            Ok(())
        }
    }
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
