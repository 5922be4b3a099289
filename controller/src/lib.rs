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
//! - A new current release (release add, env, rollback) is a deploy (`deploy.rs`):
//!   the app's formations get the release, the scheduler rolls the jobs over, and
//!   the deploy is followed to complete, or failed and rolled back after its
//!   time-out. Counts are set with `PUT /apps/{app}/formation`; jobs are read from
//!   the scheduler and one-off jobs placed by it, their job routes relayed to their
//!   host's agent (`proxy.rs`).

mod api;

/// The bound of one etcd request (and of the connection's set-up).
const ETCD_TIMEOUT: Duration = Duration::from_secs(10);
pub mod cli;
mod deploy;
mod import;
pub mod logs;
mod pin;
mod proxy;
pub mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use api::Controller;
pub use routes::{Endpoint, ROUTES};

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
    /// The cluster's API token (for the scheduler and the agents): without it, deploys
    /// only write records and jobs cannot be listed or run.
    #[arg(long, env = "FLYNN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds a deploy's new jobs have to get healthy before it is rolled back (an
    /// app's meta `deploy_timeout` or a request's `?timeout=` override it).
    #[arg(long, default_value_t = api::DEFAULT_DEPLOY_TIMEOUT)]
    pub deploy_timeout: u64,
    /// The controller's certificate chain (PEM text), of the cluster's CA: with
    /// it, connections off loopback are HTTPS only. The bootstrap issues it.
    #[arg(long, env = "FLYNN_CONTROLLER_TLS_CERT", hide_env_values = true)]
    pub tls_cert: Option<String>,
    /// Its key (PEM text).
    #[arg(long, env = "FLYNN_CONTROLLER_TLS_KEY", hide_env_values = true)]
    pub tls_key: Option<String>,
    /// The host's agent (with --token), which re-issues the certificate from
    /// the cluster's CA two thirds into its life.
    #[arg(long, env = "FLYNN_HOST")]
    pub agent: Option<String>,
    /// The ports users' TCP routes may take (FIRST-LAST): one outside is refused,
    /// so apps cannot take the routers' own ports or the hosts' services.
    #[arg(long, env = "FLYNN_TCP_ROUTE_PORTS", default_value_t = discovery::routes::TcpPortRange::DEFAULT)]
    pub tcp_route_ports: discovery::routes::TcpPortRange,
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
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
}

/// Serves until the process is stopped (etcd that is away is waited for).
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    if args.key.len() < 16 {
        return Err(ControllerError::WeakKey);
    }
    let agent = match (&args.agent, &args.token) {
        (Some(a), Some(t)) => match flynn_client::Client::from_options(Some(a), Some(t)) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "the agent given: the certificate will not be renewed");
                None
            }
        },
        _ => None,
    };
    let acceptor = tls::from_args(args.tls_cert.as_deref(), args.tls_key.as_deref(), agent)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ControllerError::Listen {
            addr: args.listen,
            source,
        })?;
    // Each etcd request gets ETCD_TIMEOUT: a deploy's transaction on a loaded host
    // (three TCG appliances on two cores, in the cluster test) took over 3 s.
    let etcd = loop {
        match discovery::Etcd::connect(&args.etcd, ETCD_TIMEOUT).await {
            Ok(e) if e.ping().await.is_ok() => break e,
            Ok(_) => tracing::warn!("etcd does not answer yet"),
            Err(e) => tracing::warn!(error = %e, "connecting to etcd"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tracing::info!(listen = %args.listen, https = acceptor.is_some(), "controller serving");
    // The aggregators' TLS is verified as the agents' is: the cluster's pin
    // (FLYNN_TLS_PIN, set by the bootstrap) or a CA file.
    let mut controller = Controller::new(etcd, args.key, args.domain)
        .with_cluster(args.token, args.deploy_timeout)
        .with_tls(acceptor)
        .with_ca_pem(args.tls_cert.as_deref().and_then(tls::ca_of_chain))
        .with_logs_trust(flynn_client::TlsOptions::from_env())
        .with_tcp_ports(args.tcp_route_ports);
    controller.logagg_token = args.logagg_token;
    let c = Arc::new(controller);
    c.resume_deploys().await;
    c.serve(listener).await;
    Ok(())
}
