//! The host network as the job supervisor sees it: on a standalone host, once the
//! daemon has set up the bridge and NAT (in the background, so the API answers
//! first: on the appliance the kernel modules for them are still loading), or,
//! in a cluster, once the cluster has leased this host its subnet (the bridge's
//! subnet comes from etcd, and etcd itself may be one of this host's jobs, on
//! the host network).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use network::{Endpoint, HostNetwork, NetworkError, PortMapping};
use tokio::sync::watch;

/// How long a bridge job's start waits for the network before it fails.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The network once it is there, and whether containers get the discovery DNS.
#[derive(Clone)]
struct Ready {
    net: Arc<HostNetwork>,
    discovery_dns: bool,
}

/// Where the host network is.
enum State {
    /// Waiting for what the string names (for a job's error message).
    Pending(&'static str),
    Ready(Ready),
    Failed(String),
}

#[derive(Clone)]
pub struct NetSlot {
    rx: watch::Receiver<State>,
}

/// Fills a pending [`NetSlot`] (and empties it again when the host joins a cluster).
#[derive(Clone)]
pub struct NetSlotSetter(Arc<watch::Sender<State>>);

impl NetSlotSetter {
    /// The network is up; `discovery_dns`: containers' resolv.conf names the bridge
    /// address (where the agent answers `*.discoverd` and forwards the rest).
    pub fn set(&self, net: Arc<HostNetwork>, discovery_dns: bool) {
        self.0
            .send_replace(State::Ready(Ready { net, discovery_dns }));
    }

    /// The network is being replaced (a standalone host joins a cluster): jobs wait
    /// for `awaiting` again. The old network is dropped with its last reference.
    pub fn reset(&self, awaiting: &'static str) {
        self.0.send_replace(State::Pending(awaiting));
        tracing::info!("the host network is being replaced; bridge jobs wait for the {awaiting}");
    }

    /// The network could not be set up: bridge jobs fail with `why`.
    pub fn fail(&self, why: String) {
        self.0.send_replace(State::Failed(why));
    }
}

impl NetSlot {
    /// `awaiting`: what the network waits for, as a job's error names it.
    pub fn pending(awaiting: &'static str) -> (NetSlotSetter, NetSlot) {
        let (tx, rx) = watch::channel(State::Pending(awaiting));
        (NetSlotSetter(Arc::new(tx)), NetSlot { rx })
    }

    /// The network, if it is up.
    pub fn get(&self) -> Option<Arc<HostNetwork>> {
        match &*self.rx.borrow() {
            State::Ready(r) => Some(r.net.clone()),
            _ => None,
        }
    }

    async fn wait(&self) -> Result<Arc<HostNetwork>, NetworkError> {
        if let Some(n) = self.get() {
            return Ok(n);
        }
        let awaiting = match &*self.rx.borrow() {
            State::Pending(what) => *what,
            _ => "host network",
        };
        tracing::info!("waiting for the host network ({awaiting})");
        let mut rx = self.rx.clone();
        match tokio::time::timeout(
            READY_TIMEOUT,
            rx.wait_for(|s| !matches!(s, State::Pending(_))),
        )
        .await
        {
            Ok(Ok(s)) => match &*s {
                State::Ready(r) => Ok(r.net.clone()),
                State::Failed(why) => Err(NetworkError::NotReady(why.clone())),
                State::Pending(_) => Err(NetworkError::NotReady("it went away".into())),
            },
            Ok(Err(_)) => Err(NetworkError::NotReady("the daemon is stopping".into())),
            Err(_) => Err(NetworkError::NotReady(format!(
                "no {awaiting} after {}s (see the daemon log)",
                READY_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Checks published ports now if the network is up; otherwise `attach` does.
    pub fn check_ports(&self, ports: &[PortMapping]) -> Result<(), NetworkError> {
        match &*self.rx.borrow() {
            State::Ready(r) => r.net.check_ports(ports),
            State::Failed(why) => Err(NetworkError::NotReady(why.clone())),
            State::Pending(_) => Ok(()),
        }
    }

    pub async fn attach(&self, id: &str, ports: &[PortMapping]) -> Result<Endpoint, NetworkError> {
        self.wait().await?.attach(id, ports).await
    }

    pub async fn detach(&self, id: &str) -> Result<(), NetworkError> {
        self.wait().await?.detach(id).await
    }

    /// The nameservers of a job's resolv.conf: what it asked for, else the bridge
    /// address when the agent serves discovery DNS there, else none (the host's).
    pub fn job_dns(&self, requested: &[IpAddr], endpoint: Option<&Endpoint>) -> Vec<IpAddr> {
        if !requested.is_empty() {
            return requested.to_vec();
        }
        let dns = matches!(&*self.rx.borrow(), State::Ready(r) if r.discovery_dns);
        match endpoint {
            Some(ep) if dns => vec![IpAddr::V4(ep.gateway)],
            _ => Vec::new(),
        }
    }
}
