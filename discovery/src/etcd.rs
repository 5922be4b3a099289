//! The connection to etcd and the host's lease.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, LeaseKeepAliveStream, LeaseKeeper,
    TlsOptions,
};

use crate::error::DiscoveryError;

/// A connection to an etcd cluster. Cheap to clone; every clone shares the channel,
/// which reconnects by itself when etcd comes back.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    endpoints: String,
    /// Held by every clone: the endpoint follower ends when the last one goes.
    _followed: Arc<()>,
}

/// How often the endpoints of a cluster of several members are checked.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// A member that does not accept a TCP connection within this is taken as down.
const REACH_TIMEOUT: Duration = Duration::from_millis(400);

/// A granted lease: everything a host announces is put on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: Duration,
}

/// Where a client finds its etcd TLS files when it is not given them: a
/// directory with `ca.pem` (the cluster's CA), `cert.pem` (a certificate of that
/// CA, then the CA) and `key.pem`. The agent sets it for the platform's
/// host-network jobs, with that directory mounted read-only.
pub const TLS_DIR_ENV: &str = "FLYNN_ETCD_TLS";

/// The client side of etcd's mutual TLS: the CA the members' certificates are
/// verified against, and the client certificate presented to them (etcd runs
/// with `--client-cert-auth`: no certificate, no connection).
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: String,
    /// The client certificate, then its CA (PEM).
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never goes to a log.
        f.debug_struct("EtcdTls").finish_non_exhaustive()
    }
}

impl EtcdTls {
    /// The files of `dir` (see [`TLS_DIR_ENV`]).
    pub fn from_dir(dir: &std::path::Path) -> Result<EtcdTls, DiscoveryError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| DiscoveryError::TlsFile {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(EtcdTls {
            ca_pem: read("ca.pem")?,
            cert_pem: read("cert.pem")?,
            key_pem: read("key.pem")?,
        })
    }

    /// The directory named by [`TLS_DIR_ENV`], if it is set.
    pub fn from_env() -> Result<Option<EtcdTls>, DiscoveryError> {
        match std::env::var_os(TLS_DIR_ENV) {
            Some(dir) if !dir.is_empty() => EtcdTls::from_dir(std::path::Path::new(&dir)).map(Some),
            _ => Ok(None),
        }
    }

    fn options(&self) -> TlsOptions {
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

impl Etcd {
    /// Connects to `endpoints` (`http://host:port` or `https://host:port` each),
    /// with the TLS files [`TLS_DIR_ENV`] names for HTTPS. Fails when none answers
    /// within `timeout`.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Etcd, DiscoveryError> {
        let tls = if endpoints.iter().any(|e| e.starts_with("https://")) {
            EtcdTls::from_env()?
        } else {
            None
        };
        Etcd::connect_tls(endpoints, timeout, tls.as_ref()).await
    }

    /// As [`Etcd::connect`], with `tls` for HTTPS endpoints (all or none of them
    /// must be HTTPS).
    pub async fn connect_tls(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<&EtcdTls>,
    ) -> Result<Etcd, DiscoveryError> {
        let joined = endpoints.join(",");
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            // HTTP/2 pings find a dead or partitioned server even on an idle watch.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if endpoints.iter().any(|e| e.starts_with("https://")) {
            let tls = tls.ok_or_else(|| DiscoveryError::NoTls(joined.clone(), TLS_DIR_ENV))?;
            opts = opts.with_tls(tls.options());
        }
        let client = Client::connect(endpoints, Some(opts))
            .await
            .map_err(|source| DiscoveryError::Connect {
                endpoints: joined.clone(),
                source,
            })?;
        let followed = Arc::new(());
        if endpoints.len() > 1 {
            tokio::spawn(follow_endpoints(
                client.clone(),
                endpoints.to_vec(),
                Arc::downgrade(&followed),
            ));
        }
        Ok(Etcd {
            client,
            endpoints: joined,
            _followed: followed,
        })
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Asks etcd whether it answers (a status call).
    pub async fn ping(&self) -> Result<(), DiscoveryError> {
        self.client
            .clone()
            .status()
            .await
            .map(|_| ())
            .map_err(DiscoveryError::etcd("asking for its status"))
    }

    /// A new lease of `ttl` (whole seconds, at least 1).
    pub async fn grant(&self, ttl: Duration) -> Result<Lease, DiscoveryError> {
        let secs = ttl.as_secs().max(1) as i64;
        let r = self
            .client
            .clone()
            .lease_grant(secs, None)
            .await
            .map_err(DiscoveryError::etcd("granting a lease"))?;
        Ok(Lease {
            id: r.id(),
            ttl: Duration::from_secs(r.ttl().max(1) as u64),
        })
    }

    /// The lease `id` if etcd still has it (e.g. kept by an agent before it restarted).
    pub async fn resume(&self, id: i64, ttl: Duration) -> Result<Option<Lease>, DiscoveryError> {
        let r = self
            .client
            .clone()
            .lease_time_to_live(id, None)
            .await
            .map_err(DiscoveryError::etcd(format!("looking up lease {id:x}")))?;
        Ok((r.ttl() > 0).then_some(Lease { id, ttl }))
    }

    pub async fn revoke(&self, id: i64) -> Result<(), DiscoveryError> {
        match self.client.clone().lease_revoke(id).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(DiscoveryError::etcd(format!("revoking lease {id:x}"))(e)),
        }
    }

    /// Starts renewing `lease`; call [`KeepAlive::renew`] every `ttl / 3`.
    pub async fn keep_alive(&self, lease: Lease) -> Result<KeepAlive, DiscoveryError> {
        match self.client.clone().lease_keep_alive(lease.id).await {
            Ok((keeper, stream)) => Ok(KeepAlive {
                lease,
                keeper,
                stream,
            }),
            Err(e) if is_not_found(&e) => Err(DiscoveryError::LeaseLost(lease.id)),
            Err(e) => Err(DiscoveryError::etcd(format!(
                "renewing lease {:x}",
                lease.id
            ))(e)),
        }
    }

    /// Every key-value under `prefix`, and the revision they were read at.
    pub async fn get_prefix(
        &self,
        prefix: &str,
    ) -> Result<(Vec<etcd_client::KeyValue>, i64), DiscoveryError> {
        let mut r = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(DiscoveryError::etcd(format!("reading {prefix}")))?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        Ok((r.take_kvs(), rev))
    }
}

/// Renews a lease. Dropping it stops renewing (the lease then expires after its TTL).
pub struct KeepAlive {
    lease: Lease,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl KeepAlive {
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// One renewal: sends it and waits for the answer (at most the TTL). `LeaseLost`
    /// means etcd no longer has the lease: everything on it is gone.
    pub async fn renew(&mut self) -> Result<Duration, DiscoveryError> {
        let id = self.lease.id;
        let what = || format!("renewing lease {id:x}");
        self.keeper
            .keep_alive()
            .await
            .map_err(DiscoveryError::etcd(what()))?;
        let answer = tokio::time::timeout(self.lease.ttl, self.stream.message()).await;
        match answer {
            Err(_) => Err(DiscoveryError::Etcd {
                what: what(),
                source: etcd_client::Error::LeaseKeepAliveError("no answer".into()),
            }),
            Ok(Err(e)) => Err(DiscoveryError::etcd(what())(e)),
            Ok(Ok(None)) => Err(DiscoveryError::Etcd {
                what: what(),
                source: etcd_client::Error::LeaseKeepAliveError("the stream ended".into()),
            }),
            Ok(Ok(Some(r))) if r.ttl() <= 0 => Err(DiscoveryError::LeaseLost(id)),
            Ok(Ok(Some(r))) => Ok(Duration::from_secs(r.ttl() as u64)),
        }
    }
}

/// etcd's "requested lease not found", from the server or the client.
pub(crate) fn is_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
        _ => false,
    }
}

/// Keeps the client's balanced channel to the members that accept connections.
/// The channel itself keeps sending a share of requests to a member that is down
/// (each fails with a connect error: etcd-client's balancer does not drop failed
/// endpoints), so with one member of three down, reads and writes that the other
/// two could serve failed at random. A member that refuses or does not answer a
/// TCP connection is taken out of the channel, and put back once it accepts again;
/// the last reachable ones are never taken out (with none, nothing could succeed
/// anyway, and the channel's own reconnects find the first member back).
async fn follow_endpoints(client: Client, endpoints: Vec<String>, alive: Weak<()>) {
    let mut out: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive.strong_count() == 0 {
            return;
        }
        let mut checks = tokio::task::JoinSet::new();
        for (i, e) in endpoints.iter().enumerate() {
            let e = e.clone();
            checks.spawn(async move { (i, reachable(&e).await) });
        }
        let mut up = vec![false; endpoints.len()];
        while let Some(Ok((i, ok))) = checks.join_next().await {
            up[i] = ok;
        }
        if !up.iter().any(|u| *u) {
            continue;
        }
        for (e, ok) in endpoints.iter().zip(&up) {
            if !ok && !out.contains(e) {
                match client.remove_endpoint(e).await {
                    Ok(()) => {
                        tracing::info!(endpoint = %e, "etcd member unreachable: not sending it requests");
                        out.insert(e.clone());
                    }
                    Err(err) => {
                        tracing::debug!(endpoint = %e, error = %err, "removing an etcd endpoint")
                    }
                }
            } else if *ok && out.contains(e) {
                match client.add_endpoint(e).await {
                    Ok(()) => {
                        tracing::info!(endpoint = %e, "etcd member reachable again");
                        out.remove(e);
                    }
                    Err(err) => {
                        tracing::debug!(endpoint = %e, error = %err, "adding an etcd endpoint back")
                    }
                }
            }
        }
    }
}

/// Whether `url` (`http://host:port`) accepts a TCP connection.
async fn reachable(url: &str) -> bool {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    matches!(
        tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(authority)).await,
        Ok(Ok(_))
    )
}
