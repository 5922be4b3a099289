//! Jobs' endpoints on the host network: a namespace, a veth pair on the bridge, an
//! address and the published ports, made by [`HostNetwork::attach`] and removed by
//! [`HostNetwork::detach`], each step bounded in time; and the checks of what a
//! request asks for.

use std::collections::HashSet;
use std::fs;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::host::background;
use crate::port;
use crate::state::State;
use crate::{Endpoint, HostNetwork, NetworkError, PortMapping, link, netns};

impl HostNetwork {
    /// Gives job `id` a network namespace wired to the bridge: the namespace file
    /// `<netns_dir>/<id>`, a veth pair (host end attached to the bridge, `eth0` inside),
    /// the next free address (persisted before it is configured), `lo` and `eth0` up, a
    /// default route via the gateway, and the published ports (held and DNAT'd). On any
    /// error nothing is left behind.
    pub async fn attach(&self, id: &str, ports: &[PortMapping]) -> Result<Endpoint, NetworkError> {
        let started = Instant::now();
        validate_id(id)?;
        check_request(ports)?;
        self.join_orphan(id).await?;
        let ep = {
            let mut inner = self.lock();
            if inner.busy.contains(id) {
                return Err(NetworkError::Busy(id.to_string()));
            }
            if inner.state.endpoints.contains_key(id) {
                return Err(NetworkError::AlreadyAttached(id.to_string()));
            }
            conflicts(&inner.state, ports)?;
            let host_veth = veth_name(id);
            if inner
                .state
                .endpoints
                .values()
                .any(|e| e.host_veth == host_veth)
            {
                return Err(NetworkError::InvalidId {
                    id: id.to_string(),
                    reason: "its veth name collides with another job's; use another id",
                });
            }
            let mut held = Vec::with_capacity(ports.len());
            let mut resolved = Vec::with_capacity(ports.len());
            for p in ports {
                let (h, port) = port::hold(p).map_err(|source| NetworkError::PortUnavailable {
                    port: p.host_side(),
                    source,
                })?;
                held.push(h);
                resolved.push(PortMapping {
                    host_port: port,
                    ..p.clone()
                });
            }
            let subnet = self.cfg.subnet;
            let ip = inner
                .state
                .allocate(subnet)
                .ok_or(NetworkError::SubnetExhausted {
                    subnet,
                    in_use: inner.state.endpoints.len(),
                })?;
            let ep = Endpoint {
                netns: self.cfg.netns_dir.join(id),
                ip,
                prefix_len: subnet.prefix_len(),
                gateway: subnet.gateway(),
                mac: link::mac_string(link::mac_for(ip)),
                host_veth,
                bridge: self.cfg.bridge.clone(),
                mtu: self.mtu,
                ports: resolved,
            };
            inner.state.endpoints.insert(id.to_string(), ep.clone());
            inner.held.insert(id.to_string(), held);
            inner.busy.insert(id.to_string());
            ep
        };
        let _busy = Busy { net: self, id };
        let result = bounded(id, "setting up the network", self.wire(id, &ep)).await;
        if let Err(e) = &result {
            tracing::warn!(job = %id, error = %e, "attach failed; removing what it made");
            let teardown = bounded(
                id,
                "removing a failed network set-up",
                self.teardown(id, &ep),
            );
            if let Err(ce) = teardown.await {
                tracing::error!(job = %id, error = %ce, "cleaning up a failed attach");
            }
        }
        result?;
        tracing::debug!(
            job = %id,
            ip = %ep.ip,
            ports = ep.ports.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "attached"
        );
        Ok(ep)
    }

    /// Everything after the reservation: namespace, veth, inside configuration, rules.
    async fn wire(&self, id: &str, ep: &Endpoint) -> Result<(), NetworkError> {
        let ns_err = |step: &'static str| {
            let id = id.to_string();
            move |source: std::io::Error| NetworkError::Namespace { id, step, source }
        };
        // Left by a detach that failed half-way; the record was gone, the file was not.
        if fs::symlink_metadata(&ep.netns).is_ok() {
            netns::remove(&ep.netns).map_err(ns_err("removing a leftover namespace file"))?;
        }
        let mut worker =
            netns::spawn(ep.netns.clone()).map_err(ns_err("starting the namespace thread"))?;
        let _thread = ThreadGuard {
            net: self,
            id,
            thread: worker.thread.take(),
        };
        // The address must be on disk before it is configured; the file is written while
        // the namespace and the veth are being made.
        let persist = tokio::task::spawn_blocking(self.persist_job());
        let ns = worker
            .created
            .await
            .map_err(|_| ns_err("namespace thread")(std::io::Error::other("it ended early")))?
            .map_err(|e| ns_err(e.step)(e.source))?;
        let mac = link::mac_for(ep.ip);
        let mut created = link::create_veth(
            &self.handle,
            &ep.host_veth,
            self.bridge_index,
            ep.mtu,
            ns.as_fd(),
            mac,
        )
        .await;
        if let Err(e) = &created
            && link::errno(e) == Some(libc::EEXIST)
        {
            // A veth of this name left by an earlier failure: no live endpoint owns it
            // (names are checked against every endpoint above).
            tracing::warn!(job = %id, veth = %ep.host_veth, "removing a leftover veth");
            link::delete_by_name(&self.handle, &ep.host_veth)
                .await
                .map_err(NetworkError::netlink(format!(
                    "deleting leftover veth {}",
                    ep.host_veth
                )))?;
            created = link::create_veth(
                &self.handle,
                &ep.host_veth,
                self.bridge_index,
                ep.mtu,
                ns.as_fd(),
                mac,
            )
            .await;
        }
        created.map_err(NetworkError::netlink(format!(
            "creating veth {}",
            ep.host_veth
        )))?;
        drop(ns);
        persist.await.map_err(background)??;
        worker
            .go
            .send(netns::Inside {
                ip: ep.ip,
                prefix_len: ep.prefix_len,
                gateway: ep.gateway,
            })
            .map_err(|_| ns_err("namespace thread")(std::io::Error::other("it ended early")))?;
        // While the thread configures the inside.
        let hairpin = link::set_hairpin(&self.handle, &ep.host_veth)
            .await
            .map_err(NetworkError::netlink(format!(
                "setting hairpin mode on {}",
                ep.host_veth
            )));
        let inside = worker
            .done
            .await
            .map_err(|_| ns_err("namespace thread")(std::io::Error::other("it ended early")))?
            .map_err(|e| ns_err(e.step)(e.source));
        hairpin?;
        inside?;
        if !ep.ports.is_empty() {
            self.nft_job()()?;
        }
        Ok(())
    }

    /// Removes everything of job `id`: its port rules and held ports, its veth, its
    /// namespace file (unmounted and unlinked), then its address. Idempotent: a job
    /// without an endpoint is fine (leftovers by name are still removed).
    pub async fn detach(&self, id: &str) -> Result<(), NetworkError> {
        validate_id(id)?;
        self.join_orphan(id).await?;
        let ep = {
            let mut inner = self.lock();
            if inner.busy.contains(id) {
                return Err(NetworkError::Busy(id.to_string()));
            }
            let ep = inner.state.endpoints.get(id).cloned();
            if ep.is_some() {
                inner.busy.insert(id.to_string());
            }
            ep
        };
        let Some(ep) = ep else {
            return self.remove_leftovers(id, None).await;
        };
        let _busy = Busy { net: self, id };
        let started = Instant::now();
        let result = bounded(id, "tearing down the network", self.teardown(id, &ep)).await;
        tracing::debug!(job = %id, elapsed_us = started.elapsed().as_micros() as u64, ok = result.is_ok(), "detached");
        result
    }

    /// Tears down an endpoint in the safe order; the record (and so the address) goes
    /// last, and only if everything before it worked.
    pub(crate) async fn teardown(&self, id: &str, ep: &Endpoint) -> Result<(), NetworkError> {
        let mut first: Option<NetworkError> = None;
        let resync = {
            let mut inner = self.lock();
            inner.held.remove(id);
            let had_ports = match inner.state.endpoints.get_mut(id) {
                Some(e) if !e.ports.is_empty() => {
                    // Out of the rule set from now on (memory only until the record goes).
                    e.ports.clear();
                    true
                }
                _ => false,
            };
            had_ports || self.shared.rules_dirty.load(Ordering::Relaxed)
        };
        // Removing rules and removing a veth each wait for an RCU grace period in the
        // kernel (10-20 ms here): do them at the same time.
        let rules = resync.then(|| tokio::task::spawn_blocking(self.nft_job()));
        let veth = link::delete_by_name(&self.handle, &ep.host_veth).await;
        if let Some(rules) = rules
            && let Err(e) = rules.await.map_err(background).and_then(|r| r)
        {
            first.get_or_insert(e);
        }
        if let Err(e) = veth {
            first.get_or_insert(NetworkError::Netlink {
                what: format!("deleting veth {}", ep.host_veth),
                source: e,
            });
        }
        if let Err(e) = netns::remove(&ep.netns) {
            first.get_or_insert(NetworkError::Namespace {
                id: id.to_string(),
                step: "removing the namespace file",
                source: e,
            });
        }
        if let Some(first) = first {
            return Err(NetworkError::Cleanup {
                id: id.to_string(),
                first: Box::new(first),
            });
        }
        self.lock().state.endpoints.remove(id);
        self.persist_job()()
    }

    /// Removes what a job without a record may have left: its veth and namespace file.
    pub(crate) async fn remove_leftovers(
        &self,
        id: &str,
        veth: Option<&str>,
    ) -> Result<(), NetworkError> {
        let veth = veth.map(str::to_string).unwrap_or_else(|| veth_name(id));
        link::delete_by_name(&self.handle, &veth)
            .await
            .map_err(NetworkError::netlink(format!("deleting veth {veth}")))?;
        let path = self.cfg.netns_dir.join(id);
        netns::remove(&path).map_err(|source| NetworkError::Namespace {
            id: id.to_string(),
            step: "removing the namespace file",
            source,
        })
    }

    /// Namespace files and bridge ports that no kept endpoint owns (left by a crash
    /// between making them and recording them, or by hand).
    pub(crate) async fn remove_strays(&self, st: &State) -> Result<(), NetworkError> {
        let dir = &self.cfg.netns_dir;
        let entries = fs::read_dir(dir).map_err(NetworkError::io("listing", dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !st.endpoints.contains_key(&name) {
                tracing::info!(file = %entry.path().display(), "removing a stray namespace file");
                netns::remove(&entry.path()).map_err(NetworkError::io("removing", entry.path()))?;
            }
        }
        let veths: HashSet<&str> = st
            .endpoints
            .values()
            .map(|e| e.host_veth.as_str())
            .collect();
        let ports = link::ports_of(&self.handle, self.bridge_index)
            .await
            .map_err(NetworkError::netlink("listing the bridge's ports"))?;
        for p in ports {
            if !veths.contains(p.as_str()) {
                tracing::info!(veth = %p, "removing a stray port of the bridge");
                link::delete_by_name(&self.handle, &p)
                    .await
                    .map_err(NetworkError::netlink(format!("deleting veth {p}")))?;
            }
        }
        Ok(())
    }
}

/// Hands the namespace thread of an attach to `Inner::orphans` if it is still running
/// when the attach ends, however it ends (returned, failed, or its future dropped).
struct ThreadGuard<'a> {
    net: &'a HostNetwork,
    id: &'a str,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ThreadGuard<'_> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take()
            && !thread.is_finished()
        {
            self.net.lock().orphans.insert(self.id.to_string(), thread);
        }
    }
}

impl HostNetwork {
    /// Waits for the namespace thread a cancelled or failed attach of `id` left, if any.
    async fn join_orphan(&self, id: &str) -> Result<(), NetworkError> {
        let Some(thread) = self.lock().orphans.remove(id) else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            // A panic in that thread is already logged by the default hook; what it left
            // is removed by name below like any leftover.
            let _ = thread.join();
        })
        .await
        .map_err(background)
    }
}

/// Marks a job busy for as long as it lives. Dropping it clears the mark, also when the
/// future of `attach` or `detach` is dropped half-way: the job's record then stays (its
/// address reserved) and a later `detach` removes whatever was made.
struct Busy<'a> {
    net: &'a HostNetwork,
    id: &'a str,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.net.lock().busy.remove(self.id);
    }
}

/// Ports of one request that overlap each other.
pub(crate) fn check_request(ports: &[PortMapping]) -> Result<(), NetworkError> {
    for (i, p) in ports.iter().enumerate() {
        if p.container_port == 0 {
            return Err(NetworkError::Config(format!(
                "published port {p}: container port 0"
            )));
        }
        if ports[..i].iter().any(|q| q.overlaps(p)) {
            return Err(NetworkError::DuplicatePort(p.host_side()));
        }
    }
    Ok(())
}

/// Ports that another job already publishes.
pub(crate) fn conflicts(st: &State, ports: &[PortMapping]) -> Result<(), NetworkError> {
    for p in ports {
        for (id, ep) in &st.endpoints {
            if ep.ports.iter().any(|q| q.overlaps(p)) {
                return Err(NetworkError::PortConflict {
                    port: p.host_side(),
                    job: id.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Ids name files in `netns_dir`, so they are restricted to a safe alphabet.
fn validate_id(id: &str) -> Result<(), NetworkError> {
    let bad = |reason| {
        Err(NetworkError::InvalidId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() || id.len() > 128 {
        return bad("it must be 1-128 characters long");
    }
    if id.starts_with('.') {
        return bad("it must not start with '.'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// The host end's name: `fl` + 13 characters (interface names have at most 15). Agent
/// job ids are lowercase hex, whose first 13 characters are used as they are (so `ip
/// link` shows which job a veth is for); other ids are hashed (FNV-1a, 52 bits).
fn veth_name(id: &str) -> String {
    if id.len() >= 13
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return format!("fl{}", &id[..13]);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fl{:013x}", h >> 12)
}

/// How long one attach or detach may take: milliseconds normally, seconds on an
/// emulated machine; past this the kernel (or a thread of ours) is not answering.
const STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `fut` within [`STEP_TIMEOUT`], or [`NetworkError::TimedOut`] naming `step`.
async fn bounded<T>(
    id: &str,
    step: &'static str,
    fut: impl std::future::Future<Output = Result<T, NetworkError>>,
) -> Result<T, NetworkError> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(NetworkError::TimedOut {
            step,
            id: id.to_string(),
            waited: STEP_TIMEOUT,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_differ() {
        let a = veth_name("0123456789abcdef0123456789abcdef");
        assert_eq!(a, "fl0123456789abc");
        for id in ["a", "job-1", "job-2", "ABCDEF0123456789", "x.y_z"] {
            let n = veth_name(id);
            assert_eq!(n.len(), 15, "{n}");
            assert!(n.starts_with("fl"));
        }
        assert_ne!(veth_name("job-1"), veth_name("job-2"));
    }

    #[test]
    fn ids_are_checked() {
        for good in ["a", "0123456789abcdef0123456789abcdef", "job-1.x_y"] {
            validate_id(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129), ".hidden"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_duplicates_are_refused() {
        let p: Vec<PortMapping> = ["8080:80", "127.0.0.1:8080:81"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let e = check_request(&p).unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:8080/tcp"), "{e}");
        let ok: Vec<PortMapping> = ["8080:80", "8080:80/udp", "80", "81"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        check_request(&ok).unwrap();
    }

    #[test]
    fn host_network_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<HostNetwork>();
    }
}
