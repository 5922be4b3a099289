//! The git receiver (`flynn-host gitreceive`, two instances of the platform behind
//! the router's `git.<domain>` route): `git push` to the cluster builds the app with
//! buildpacks and rolls the build out.
//!
//! - `server.rs`: Git's smart HTTP protocol, by Debian's `git-http-backend` run as a
//!   CGI (`cgi.rs`), behind the controller key (HTTP basic auth, any user name);
//!   bare repositories per app, made on first use with our hooks. It also serves the
//!   build jobs their source and cache and takes their slug back (`/builds/ID/...`,
//!   the random id is the capability), serves slugs by digest (`/slugs/HEX.tgz`, the
//!   digest is the capability) and takes copies from its peers (cluster token).
//! - `hook.rs`: git runs `flynn-host gitreceive-hook pre-receive` inside the push: a
//!   push to `main`/`master` becomes a build job (the `flynn/slugbuilder` image,
//!   placed by the scheduler through the controller), whose log is the push's
//!   output; the slug is stored by digest here and on the peers, then a release
//!   (commit, buildpack, slug) is made and deployed. Any failure exits non-zero,
//!   so git refuses the push and its refs stay as they were; the running release is
//!   untouched. `post-receive` copies the repository and the build cache to the
//!   peers, so the next push sends only new objects whichever instance takes it.
//! - `store.rs`: the data directory.
//!
//! **Architecture invariant:** it knows the platform only through the controller's
//! API (apps, releases, one-off jobs) and the local agent's discovery; it writes no
//! etcd key and starts no job itself.

mod cgi;
pub mod hook;
pub mod procfile;
mod server;
mod store;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The service name in discovery; the slug URLs name it (`<name>.discoverd`).
pub const SERVICE: &str = "flynn-gitreceive";
/// The receiver's port (not a control port: build jobs on the bridge reach it).
pub const PORT: u16 = 1117;

fn default_image() -> String {
    format!("flynn/slugbuilder:{}", env!("CARGO_PKG_VERSION"))
}

#[derive(clap::Args, Debug, Clone)]
pub struct GitReceiveArgs {
    /// Where git clients (through the router) and build jobs reach it.
    #[arg(long, default_value = "0.0.0.0:1117")]
    pub listen: SocketAddr,
    /// Repositories, build caches, slugs.
    #[arg(long, default_value = "/var/lib/flynn-gitreceive")]
    pub data: PathBuf,
    /// The controller key: pushes give it as the HTTP password; builds use it.
    #[arg(long, env = "FLYNN_CONTROLLER_KEY", hide_env_values = true)]
    pub key: String,
    /// The controller (the local router's TCP route to the controllers).
    #[arg(
        long,
        env = "FLYNN_CONTROLLER_URL",
        default_value = "http://127.0.0.1:81"
    )]
    pub controller: String,
    /// The cluster's token: peers' copies, the local agent's discovery.
    #[arg(long, env = "FLYNN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The local agent.
    #[arg(long, env = "FLYNN_HOST", default_value = "http://127.0.0.1:1113")]
    pub agent: String,
    /// The image builds run in and slugs run on.
    #[arg(long, env = "FLYNN_SLUGBUILDER_IMAGE", default_value_t = default_image())]
    pub image: String,
    /// Debian's git-http-backend.
    #[arg(long, default_value = "/usr/lib/git-core/git-http-backend")]
    pub git_http_backend: PathBuf,
    /// The address build jobs reach this instance at (default: the address each
    /// push came in on).
    #[arg(long)]
    pub advertise: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum GitReceiveError {
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the controller key must be at least 16 characters")]
    WeakKey,
    #[error("the data directory {path}: {source}")]
    Data {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not executable: install Debian's git (git-http-backend)")]
    NoBackend(PathBuf),
}

/// Serves until the process is stopped.
pub async fn run(args: GitReceiveArgs) -> Result<(), GitReceiveError> {
    if args.key.len() < 16 {
        return Err(GitReceiveError::WeakKey);
    }
    if !args.git_http_backend.is_file() {
        return Err(GitReceiveError::NoBackend(args.git_http_backend.clone()));
    }
    let store = store::Store::open(&args.data).map_err(|source| GitReceiveError::Data {
        path: args.data.clone(),
        source,
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| GitReceiveError::Listen {
            addr: args.listen,
            source,
        })?;
    tracing::info!(listen = %args.listen, data = %args.data.display(), "git receiver serving");
    server::serve(
        listener,
        std::sync::Arc::new(server::Server::new(args, store)),
    )
    .await;
    Ok(())
}
