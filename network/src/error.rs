//! The crate's one error type: each variant says what failed and, where there is one,
//! what to do about it.

use std::io;
use std::path::PathBuf;

use crate::config::Ipv4Net;
use crate::nft::NftError;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The configuration cannot work.
    #[error("invalid network configuration: {0}")]
    Config(String),

    /// The host network is not set up yet (e.g. waiting for the cluster to lease
    /// this host its subnet).
    #[error("the host network is not ready: {0}")]
    NotReady(String),

    /// A job id that cannot name a namespace file.
    #[error("invalid job id {id:?} for networking: {reason}")]
    InvalidId { id: String, reason: &'static str },

    /// `attach` for a job that already has an endpoint.
    #[error("job {0} already has a network endpoint; detach it first")]
    AlreadyAttached(String),

    /// Another attach or detach of the same job is under way.
    #[error("the network of job {0} is being set up or torn down by another request")]
    Busy(String),

    /// Every address of the subnet is in use.
    #[error(
        "no free address left in {subnet} ({in_use} in use): remove jobs or configure a larger subnet"
    )]
    SubnetExhausted { subnet: Ipv4Net, in_use: usize },

    /// A host port another job already publishes.
    #[error("port {port} is already published by job {job}")]
    PortConflict { port: String, job: String },

    /// A host port some other process holds (or an address that is not local).
    #[error("port {port} is not available on this host: {source}")]
    PortUnavailable {
        port: String,
        #[source]
        source: io::Error,
    },

    /// The same host port twice in one request.
    #[error("port {0} is published twice in the same request")]
    DuplicatePort(String),

    /// The persisted subnet differs from the configured one while jobs still use it.
    #[error(
        "the network subnet changed from {old} to {new} while jobs {live:?} still use addresses of the old one: stop them first, or keep the old subnet"
    )]
    SubnetChanged {
        old: Ipv4Net,
        new: Ipv4Net,
        live: Vec<String>,
    },

    /// The configured bridge name belongs to a link that is not a bridge.
    #[error("{0} exists and is not a bridge: remove it or configure another bridge name")]
    NotABridge(String),

    /// A link, address or route request failed.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },

    /// Our nftables table could not be updated.
    #[error("nftables, {what}: {source}")]
    Nftables {
        what: &'static str,
        #[source]
        source: NftError,
    },

    /// Making or configuring a job's network namespace failed.
    #[error("network namespace of job {id}, {step}: {source}")]
    Namespace {
        id: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },

    /// A file or /proc/sys operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The state file cannot be read.
    #[error(
        "network state {} is unreadable: {reason}; move it away to start over (addresses of running jobs would then be forgotten)",
        path.display()
    )]
    State { path: PathBuf, reason: String },

    /// Another `HostNetwork` (another daemon) has the same state directory open.
    #[error(
        "the network state is in use by another process (lock {}): stop the other flynn-host first",
        .0.display()
    )]
    Locked(PathBuf),

    /// A step that talks to the kernel (netlink, a namespace thread, nftables) did not
    /// answer in time; what it had made was removed (or is named in the daemon's log).
    #[error(
        "{step} for job {id} did not finish within {}s: the kernel did not answer; see \
         the daemon's log (FLYNN_LOG=debug shows each step)",
        waited.as_secs()
    )]
    TimedOut {
        step: &'static str,
        id: String,
        waited: std::time::Duration,
    },

    /// A blocking task of ours did not finish.
    #[error("a background task of the host network failed: {0}")]
    Background(String),

    /// Several cleanup steps of `detach` failed; the first is kept.
    #[error(
        "cleaning up the network of job {id} (will be retried by the next detach or open): {first}"
    )]
    Cleanup {
        id: String,
        #[source]
        first: Box<NetworkError>,
    },
}

impl NetworkError {
    pub(crate) fn netlink(
        what: impl Into<String>,
    ) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
        let what = what.into();
        move |source| NetworkError::Netlink { what, source }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> NetworkError {
        let path = path.into();
        move |source| NetworkError::Io { what, path, source }
    }

    pub(crate) fn nft(what: &'static str) -> impl FnOnce(NftError) -> NetworkError {
        move |source| NetworkError::Nftables { what, source }
    }
}
