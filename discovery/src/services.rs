//! Service instances: register, deregister, list, leader, and watches that turn etcd
//! changes into up/down/update/leader events.

use std::collections::{BTreeMap, HashMap};

use etcd_client::PutOptions;
use tokio::sync::mpsc;

use crate::error::DiscoveryError;
use crate::etcd::{Etcd, Lease};
use crate::model::{Instance, ServiceEvent, ServiceEventKind, ServiceState};
use crate::schema;
use crate::watch::{Change, Entry, PrefixWatch};

/// Keeps `instance` in discovery on a lease of its own (`ttl`), for a process that
/// is not a job of an agent (whose instances live on the host's lease): registered
/// again on a new lease whenever the old one is lost. Runs until dropped.
pub async fn announce(etcd: Etcd, instance: Instance, ttl: std::time::Duration) {
    loop {
        let result: Result<(), DiscoveryError> = async {
            let lease = etcd.grant(ttl).await?;
            register(&etcd, lease, &instance).await?;
            tracing::info!(service = %instance.service, id = %instance.id, addr = %instance.addr, "registered in discovery");
            let mut keep = etcd.keep_alive(lease).await?;
            loop {
                tokio::time::sleep(ttl / 3).await;
                keep.renew().await?;
            }
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(service = %instance.service, error = %e, "keeping this instance in discovery");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Puts `instance` on `lease`. Registering again (same service and id) updates it in
/// place, keeping its place in the leader election.
pub async fn register(
    etcd: &Etcd,
    lease: Lease,
    instance: &Instance,
) -> Result<(), DiscoveryError> {
    schema::check_service(&instance.service)?;
    schema::check_id("instance id", &instance.id)?;
    let key = schema::instance(&instance.service, &instance.id);
    let value = serde_json::to_vec(instance).map_err(|e| DiscoveryError::Decode {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    etcd.client()
        .put(
            key.as_str(),
            value,
            Some(PutOptions::new().with_lease(lease.id)),
        )
        .await
        .map_err(DiscoveryError::etcd(format!("registering {key}")))?;
    Ok(())
}

/// Removes an instance; removing one that is not there is fine.
pub async fn deregister(etcd: &Etcd, service: &str, id: &str) -> Result<(), DiscoveryError> {
    let key = schema::instance(service, id);
    etcd.client()
        .delete(key.as_str(), None)
        .await
        .map_err(DiscoveryError::etcd(format!("deregistering {key}")))?;
    Ok(())
}

/// One service as it is now.
pub async fn list(etcd: &Etcd, service: &str) -> Result<ServiceState, DiscoveryError> {
    schema::check_service(service)?;
    let (kvs, revision) = etcd.get_prefix(&schema::service(service)).await?;
    let mut view = ServiceView::default();
    view.apply(Change::Snapshot {
        entries: kvs.iter().map(entry).collect(),
        revision,
    });
    Ok(view.state(service).unwrap_or_else(|| ServiceState {
        service: service.to_string(),
        instances: Vec::new(),
        leader: None,
        revision,
    }))
}

/// Every service that has an instance now, by name.
pub async fn list_all(etcd: &Etcd) -> Result<Vec<ServiceState>, DiscoveryError> {
    let (kvs, revision) = etcd.get_prefix(schema::SERVICES).await?;
    let mut view = ServiceView::default();
    view.apply(Change::Snapshot {
        entries: kvs.iter().map(entry).collect(),
        revision,
    });
    Ok(view.states())
}

/// The leader of `service` as etcd's election service names it (the candidate key with
/// the lowest create revision under the service's prefix).
pub async fn leader(etcd: &Etcd, service: &str) -> Result<Option<Instance>, DiscoveryError> {
    schema::check_service(service)?;
    let name = schema::service(service);
    let name = name.trim_end_matches('/');
    let mut election = etcd.client().election_client();
    match election.leader(name).await {
        Ok(r) => match r.kv() {
            Some(kv) => decode(&entry(kv)).map(Some),
            None => Ok(None),
        },
        // "election: no leader" is an error answer in etcd.
        Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => Ok(None),
        Err(e) => Err(DiscoveryError::etcd(format!(
            "asking for the leader of {service}"
        ))(e)),
    }
}

/// Watches `service` (or every service, with `None`): up events for what exists, the
/// leader, a `current` event, then every change as it happens, through etcd restarts.
/// The watch ends when the receiver is dropped.
pub fn watch(
    etcd: Etcd,
    service: Option<&str>,
) -> Result<mpsc::Receiver<ServiceEvent>, DiscoveryError> {
    let prefix = match service {
        Some(s) => {
            schema::check_service(s)?;
            schema::service(s)
        }
        None => schema::SERVICES.to_string(),
    };
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut w = PrefixWatch::new(etcd, prefix);
        let mut view = ServiceView::default();
        let mut first = true;
        loop {
            let change = tokio::select! {
                c = w.next() => c,
                _ = tx.closed() => return,
            };
            let snapshot = matches!(change, Change::Snapshot { .. });
            let mut events = view.apply(change);
            if snapshot && first {
                first = false;
                events.push(ServiceEvent {
                    kind: ServiceEventKind::Current,
                    service: String::new(),
                    instance: None,
                });
            }
            for ev in events {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// What a watcher knows: every instance by service, with its create revision (its place
/// in the election).
#[derive(Debug, Default, Clone)]
pub struct ServiceView {
    services: BTreeMap<String, HashMap<String, (Instance, i64)>>,
    leaders: HashMap<String, String>,
    revision: i64,
}

impl ServiceView {
    /// Applies a change and says what it meant.
    pub fn apply(&mut self, change: Change) -> Vec<ServiceEvent> {
        let mut events = Vec::new();
        let mut touched = Vec::new();
        match change {
            Change::Snapshot { entries, revision } => {
                self.revision = revision;
                let mut fresh: BTreeMap<String, HashMap<String, (Instance, i64)>> = BTreeMap::new();
                for e in &entries {
                    if let Ok(inst) = decode(e) {
                        fresh
                            .entry(inst.service.clone())
                            .or_default()
                            .insert(inst.id.clone(), (inst, e.create_revision));
                    }
                }
                for (svc, old) in &self.services {
                    let new = fresh.get(svc);
                    for (id, (inst, _)) in old {
                        if new.is_none_or(|n| !n.contains_key(id)) {
                            events.push(event(ServiceEventKind::Down, inst));
                            touched.push(svc.clone());
                        }
                    }
                }
                for (svc, new) in &fresh {
                    let old = self.services.get(svc);
                    let mut ordered: Vec<&(Instance, i64)> = new.values().collect();
                    ordered.sort_by_key(|(_, rev)| *rev);
                    for (inst, _) in ordered {
                        match old.and_then(|o| o.get(&inst.id)) {
                            None => events.push(event(ServiceEventKind::Up, inst)),
                            Some((prev, _)) if prev != inst => {
                                events.push(event(ServiceEventKind::Update, inst))
                            }
                            Some(_) => continue,
                        }
                        touched.push(svc.clone());
                    }
                }
                self.services = fresh;
            }
            Change::Put(e) => {
                self.revision = self.revision.max(e.mod_revision);
                let Ok(inst) = decode(&e) else {
                    tracing::warn!(key = %e.key, "ignoring an instance record that does not decode");
                    return events;
                };
                let svc = inst.service.clone();
                let map = self.services.entry(svc.clone()).or_default();
                let kind = match map.get(&inst.id) {
                    None => ServiceEventKind::Up,
                    Some((prev, _)) if *prev == inst => return events,
                    Some(_) => ServiceEventKind::Update,
                };
                events.push(event(kind, &inst));
                map.insert(inst.id.clone(), (inst, e.create_revision));
                touched.push(svc);
            }
            Change::Delete { key, revision } => {
                self.revision = self.revision.max(revision);
                if let Some((svc, id)) = schema::parse_instance(&key)
                    && let Some(map) = self.services.get_mut(svc)
                    && let Some((inst, _)) = map.remove(id)
                {
                    events.push(event(ServiceEventKind::Down, &inst));
                    if map.is_empty() {
                        self.services.remove(svc);
                    }
                    touched.push(svc.to_string());
                }
            }
        }
        touched.dedup();
        for svc in touched {
            let now = self.leader_of(&svc).cloned();
            let before = self.leaders.get(&svc);
            if now.as_ref().map(|i| &i.id) != before {
                match &now {
                    Some(inst) => {
                        self.leaders.insert(svc.clone(), inst.id.clone());
                        events.push(event(ServiceEventKind::Leader, inst));
                    }
                    None => {
                        self.leaders.remove(&svc);
                        events.push(ServiceEvent {
                            kind: ServiceEventKind::Leader,
                            service: svc.clone(),
                            instance: None,
                        });
                    }
                }
            }
        }
        events
    }

    fn leader_of(&self, service: &str) -> Option<&Instance> {
        self.services
            .get(service)?
            .values()
            .min_by_key(|(_, rev)| *rev)
            .map(|(i, _)| i)
    }

    /// One service, instances in election order.
    pub fn state(&self, service: &str) -> Option<ServiceState> {
        let map = self.services.get(service)?;
        let mut ordered: Vec<&(Instance, i64)> = map.values().collect();
        ordered.sort_by_key(|(_, rev)| *rev);
        Some(ServiceState {
            service: service.to_string(),
            leader: ordered.first().map(|(i, _)| i.id.clone()),
            instances: ordered.into_iter().map(|(i, _)| i.clone()).collect(),
            revision: self.revision,
        })
    }

    pub fn states(&self) -> Vec<ServiceState> {
        self.services.keys().filter_map(|s| self.state(s)).collect()
    }

    /// The instances of `service` (election order) and its leader, for DNS.
    pub fn lookup(&self, service: &str) -> (Vec<Instance>, Option<Instance>) {
        match self.state(service) {
            Some(st) => {
                let leader = st.instances.first().cloned();
                (st.instances, leader)
            }
            None => (Vec::new(), None),
        }
    }
}

fn event(kind: ServiceEventKind, inst: &Instance) -> ServiceEvent {
    ServiceEvent {
        kind,
        service: inst.service.clone(),
        instance: Some(inst.clone()),
    }
}

fn entry(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn decode(e: &Entry) -> Result<Instance, DiscoveryError> {
    serde_json::from_slice(&e.value).map_err(|err| DiscoveryError::Decode {
        key: e.key.clone(),
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(svc: &str, id: &str, port: u16) -> Instance {
        Instance {
            service: svc.into(),
            id: id.into(),
            addr: format!("100.100.1.2:{port}").parse().unwrap(),
            host_id: "h1".into(),
            job_id: None,
            meta: Default::default(),
            registered_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn put(i: &Instance, create: i64, rev: i64) -> Change {
        Change::Put(Entry {
            key: schema::instance(&i.service, &i.id),
            value: serde_json::to_vec(i).unwrap(),
            create_revision: create,
            mod_revision: rev,
            lease: 1,
        })
    }

    #[test]
    fn events_and_leaders() {
        let mut v = ServiceView::default();
        let a = inst("web", "a", 80);
        let b = inst("web", "b", 81);
        let ev = v.apply(put(&a, 5, 5));
        assert_eq!(
            ev.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [ServiceEventKind::Up, ServiceEventKind::Leader]
        );
        let ev = v.apply(put(&b, 6, 6));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, ServiceEventKind::Up);
        // Same record again: nothing.
        assert!(v.apply(put(&a, 5, 7)).is_empty());
        let mut a2 = a.clone();
        a2.meta.insert("k".into(), "v".into());
        let ev = v.apply(put(&a2, 5, 8));
        assert_eq!(ev[0].kind, ServiceEventKind::Update);
        let ev = v.apply(Change::Delete {
            key: schema::instance("web", "a"),
            revision: 9,
        });
        assert_eq!(
            ev.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [ServiceEventKind::Down, ServiceEventKind::Leader]
        );
        assert_eq!(ev[1].instance.as_ref().unwrap().id, "b");
        // A snapshot after a reconnection reports the difference only.
        let c = inst("web", "c", 82);
        let ev = v.apply(Change::Snapshot {
            entries: vec![Entry {
                key: schema::instance("web", "c"),
                value: serde_json::to_vec(&c).unwrap(),
                create_revision: 3,
                mod_revision: 3,
                lease: 1,
            }],
            revision: 20,
        });
        let kinds: Vec<_> = ev.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                ServiceEventKind::Down,
                ServiceEventKind::Up,
                ServiceEventKind::Leader
            ]
        );
        assert_eq!(v.state("web").unwrap().leader.as_deref(), Some("c"));
    }
}
