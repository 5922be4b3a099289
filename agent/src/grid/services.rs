//! The registry of instances this host wants in discovery (registered while their job
//! runs and passes its health check, re-registered whenever the host's lease changes),
//! and the health checks. Declarations are checked and parsed in
//! [`crate::model::services`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use discovery::{Etcd, Instance, Lease};
use tokio::sync::{Notify, watch};

use crate::model::{HealthCheck, HealthCheckKind, InstanceStatus};

/// One instance this host wants in discovery.
struct Wanted {
    instance: Instance,
    job_id: String,
    healthy: bool,
    /// In etcd under the current lease, as it is now.
    registered: bool,
}

/// The instances this host wants in discovery. The registrar ([`Registry::run`]) makes
/// etcd match it.
#[derive(Default)]
pub struct Registry {
    wanted: Mutex<HashMap<(String, String), Wanted>>,
    /// Instances to delete from etcd (their job stopped).
    gone: Mutex<Vec<(String, String)>>,
    changed: Notify,
    /// Told after every pass of the registrar.
    applied: Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Wanted>> {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds (or replaces) an instance; `healthy` false keeps it out until `set_healthy`.
    pub fn add(&self, instance: Instance, job_id: &str, healthy: bool) {
        let key = (instance.service.clone(), instance.id.clone());
        self.lock().insert(
            key,
            Wanted {
                instance,
                job_id: job_id.to_string(),
                healthy,
                registered: false,
            },
        );
        self.changed.notify_one();
    }

    pub fn set_healthy(&self, service: &str, id: &str, healthy: bool) {
        let mut w = self.lock();
        if let Some(e) = w.get_mut(&(service.to_string(), id.to_string()))
            && e.healthy != healthy
        {
            e.healthy = healthy;
            drop(w);
            self.changed.notify_one();
        }
    }

    /// Removes every instance of job `job_id`.
    pub fn remove_job(&self, job_id: &str) {
        let mut w = self.lock();
        let keys: Vec<(String, String)> = w
            .iter()
            .filter(|(_, e)| e.job_id == job_id)
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        for k in &keys {
            w.remove(k);
        }
        drop(w);
        self.gone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(keys);
        self.changed.notify_one();
    }

    /// Whether job `job_id` has instances here.
    pub fn has_job(&self, job_id: &str) -> bool {
        self.lock().values().any(|e| e.job_id == job_id)
    }

    /// Waits until every removal so far is out of etcd (or `limit` passes).
    pub async fn removals_applied(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let applied = self.applied.notified();
            if self
                .gone
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
            if tokio::time::timeout_at(deadline, applied).await.is_err() {
                return;
            }
        }
    }

    pub fn jobs(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().values().map(|e| e.job_id.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// What discovery has of this host's instances (of one job, or all).
    pub fn status(&self, job_id: Option<&str>) -> Vec<InstanceStatus> {
        let mut out: Vec<InstanceStatus> = self
            .lock()
            .values()
            .filter(|e| job_id.is_none_or(|j| j == e.job_id))
            .map(|e| InstanceStatus {
                service: e.instance.service.clone(),
                id: e.instance.id.clone(),
                addr: e.instance.addr.to_string(),
                healthy: e.healthy,
                registered: e.registered && e.healthy,
            })
            .collect();
        out.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        out
    }

    /// Makes etcd hold exactly the healthy wanted instances, on the current lease:
    /// at once on every change, and again after failures and lease changes.
    pub async fn run(&self, etcd: Etcd, mut lease: watch::Receiver<Option<Lease>>) {
        let mut current = *lease.borrow();
        loop {
            let failed = match current {
                Some(l) => self.apply(&etcd, l).await,
                None => false,
            };
            self.applied.notify_waiters();
            let retry = tokio::time::sleep(if failed {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(3600)
            });
            tokio::select! {
                _ = self.changed.notified() => {}
                changed = lease.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let new = *lease.borrow_and_update();
                    if new != current {
                        current = new;
                        // Everything goes onto the new lease.
                        for e in self.lock().values_mut() {
                            e.registered = false;
                        }
                    }
                }
                _ = retry => {}
            }
        }
    }

    /// One pass; true if something failed (to be retried).
    async fn apply(&self, etcd: &Etcd, lease: Lease) -> bool {
        let mut failed = false;
        let gone: Vec<(String, String)> =
            std::mem::take(&mut *self.gone.lock().unwrap_or_else(|p| p.into_inner()));
        for (svc, id) in gone {
            // Gone from `wanted` meanwhile and back again? Then leave it.
            if self.lock().contains_key(&(svc.clone(), id.clone())) {
                continue;
            }
            if let Err(e) = discovery::services::deregister(etcd, &svc, &id).await {
                tracing::warn!(service = %svc, instance = %id, error = %e, "deregistering; will retry");
                self.gone
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((svc, id));
                failed = true;
            }
        }
        let todo: Vec<(Instance, bool)> = self
            .lock()
            .values()
            .filter(|e| e.healthy != e.registered)
            .map(|e| (e.instance.clone(), e.healthy))
            .collect();
        for (inst, healthy) in todo {
            let r = if healthy {
                discovery::services::register(etcd, lease, &inst).await
            } else {
                discovery::services::deregister(etcd, &inst.service, &inst.id).await
            };
            match r {
                Ok(()) => {
                    tracing::info!(service = %inst.service, instance = %inst.id, addr = %inst.addr,
                        action = if healthy { "registered" } else { "deregistered (unhealthy)" }, "discovery");
                    if let Some(e) = self
                        .lock()
                        .get_mut(&(inst.service.clone(), inst.id.clone()))
                        && e.healthy == healthy
                    {
                        e.registered = healthy;
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %inst.service, instance = %inst.id, error = %e, "updating discovery; will retry");
                    failed = true;
                }
            }
        }
        failed
    }
}

/// Runs a health check until aborted, telling the registry each time the instance's
/// health changes. Starts unhealthy: an instance is announced once it first passes.
pub async fn health_loop(
    registry: std::sync::Arc<Registry>,
    service: String,
    id: String,
    addr: SocketAddr,
    check: HealthCheck,
) {
    let interval = Duration::from_millis(check.interval_ms.unwrap_or(1000));
    let timeout = Duration::from_millis(check.timeout_ms.unwrap_or(1000));
    let fall = check.fall.unwrap_or(2);
    let rise = check.rise.unwrap_or(1);
    let mut healthy = false;
    let (mut ok_run, mut bad_run) = (0u32, 0u32);
    loop {
        let result = tokio::time::timeout(timeout, probe(&check, addr)).await;
        let ok = match result {
            Ok(Ok(())) => true,
            Ok(Err(reason)) => {
                tracing::debug!(%service, instance = %id, %reason, "health check failed");
                false
            }
            Err(_) => false,
        };
        if ok {
            ok_run += 1;
            bad_run = 0;
        } else {
            bad_run += 1;
            ok_run = 0;
        }
        let now = if healthy {
            bad_run < fall
        } else {
            ok_run >= rise
        };
        if now != healthy {
            healthy = now;
            tracing::info!(%service, instance = %id, healthy, "health changed");
            registry.set_healthy(&service, &id, healthy);
        }
        tokio::time::sleep(interval).await;
    }
}

async fn probe(check: &HealthCheck, addr: SocketAddr) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    if check.kind == HealthCheckKind::Tcp {
        return Ok(());
    }
    let path = check.path.as_deref().unwrap_or("/");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header("user-agent", "flynn-host-health")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET {path}: {e}"));
    conn.abort();
    let status = resp?.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {path}: {status}"))
    }
}
