//! The host network as the job supervisor sees it: ready at once on a standalone host,
//! or once the cluster has leased this host its subnet (the bridge's subnet comes
//! from etcd, and etcd itself may be one of this host's jobs, on the host network).

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

#[derive(Clone)]
pub struct NetSlot {
    rx: watch::Receiver<Option<Ready>>,
}

/// Fills a pending [`NetSlot`].
pub struct NetSlotSetter(watch::Sender<Option<Ready>>);

impl NetSlotSetter {
    /// The network is up; `discovery_dns`: containers' resolv.conf names the bridge
    /// address (where the agent answers `*.discoverd` and forwards the rest).
    pub fn set(&self, net: Arc<HostNetwork>, discovery_dns: bool) {
        self.0.send_replace(Some(Ready { net, discovery_dns }));
    }
}

impl NetSlot {
    pub fn ready(net: Arc<HostNetwork>) -> NetSlot {
        let (_tx, rx) = watch::channel(Some(Ready {
            net,
            discovery_dns: false,
        }));
        NetSlot { rx }
    }

    pub fn pending() -> (NetSlotSetter, NetSlot) {
        let (tx, rx) = watch::channel(None);
        (NetSlotSetter(tx), NetSlot { rx })
    }

    /// The network, if it is up.
    pub fn get(&self) -> Option<Arc<HostNetwork>> {
        self.rx.borrow().as_ref().map(|r| r.net.clone())
    }

    async fn wait(&self) -> Result<Arc<HostNetwork>, NetworkError> {
        if let Some(n) = self.get() {
            return Ok(n);
        }
        tracing::info!("waiting for the host network (the cluster's subnet lease)");
        let mut rx = self.rx.clone();
        match tokio::time::timeout(READY_TIMEOUT, rx.wait_for(|r| r.is_some())).await {
            Ok(Ok(r)) => r
                .as_ref()
                .map(|r| r.net.clone())
                .ok_or_else(|| NetworkError::NotReady("it went away".into())),
            Ok(Err(_)) => Err(NetworkError::NotReady("the daemon is stopping".into())),
            Err(_) => Err(NetworkError::NotReady(format!(
                "no subnet from the cluster after {}s: is etcd reachable? (see the daemon log)",
                READY_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Checks published ports now if the network is up; otherwise `attach` does.
    pub fn check_ports(&self, ports: &[PortMapping]) -> Result<(), NetworkError> {
        match self.get() {
            Some(n) => n.check_ports(ports),
            None => Ok(()),
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
        let dns = self.rx.borrow().as_ref().is_some_and(|r| r.discovery_dns);
        match endpoint {
            Some(ep) if dns => vec![IpAddr::V4(ep.gateway)],
            _ => Vec::new(),
        }
    }
}
