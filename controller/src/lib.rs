//! The controller (`flynn-host controller`, two instances of the platform, stateless):
//! apps, their releases and routes, over an HTTP API behind the cluster's controller
//! key. All state is in etcd through `discovery` (`discovery::apps`,
//! `discovery::routes`), so any instance answers any request and a killed instance
//! loses nothing.
//!
//! - Creating an app adds its default route, `<app>.<domain>` → service `<app>-web`.
//! - A release is immutable; `env` and `rollback` make or name another one, and the
//!   deploy is one etcd transaction that fails if another deploy won meanwhile.
//!
//! - An app's log (`logs.rs`) is read from a log aggregator found in discovery.
//!
//! Not yet here (next increments of the Layer 1 issue): formations and deploys
//! carried out through the scheduler's API, jobs and one-off jobs.

mod api;
pub mod cli;
pub mod logs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use api::Controller;

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Where the API is served.
    #[arg(long, default_value = "0.0.0.0:81")]
    pub listen: SocketAddr,
    /// etcd endpoints (http://HOST:PORT, comma-separated).
    #[arg(long, env = "FLYNN_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// The key clients give (`Authorization: Bearer KEY`), made at bootstrap.
    #[arg(long, env = "FLYNN_CONTROLLER_KEY", hide_env_values = true)]
    pub key: String,
    /// The cluster's domain: apps are routed at `<app>.<domain>`.
    #[arg(long, env = "FLYNN_DOMAIN", default_value = "cluster.local")]
    pub domain: String,
    /// The token the log aggregators want (the cluster's token they were given).
    #[arg(long, env = "FLYNN_LOGAGG_TOKEN", hide_env_values = true)]
    pub logagg_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the controller key must be at least 16 characters")]
    WeakKey,
}

/// Serves until the process is stopped (etcd that is away is waited for).
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    if args.key.len() < 16 {
        return Err(ControllerError::WeakKey);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ControllerError::Listen {
            addr: args.listen,
            source,
        })?;
    let etcd = loop {
        match discovery::Etcd::connect(&args.etcd, Duration::from_secs(3)).await {
            Ok(e) if e.ping().await.is_ok() => break e,
            Ok(_) => tracing::warn!("etcd does not answer yet"),
            Err(e) => tracing::warn!(error = %e, "connecting to etcd"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tracing::info!(listen = %args.listen, "controller serving");
    let mut controller = Controller::new(etcd, args.key, args.domain);
    controller.logagg_token = args.logagg_token;
    Arc::new(controller).serve(listener).await;
    Ok(())
}
