//! Routes and backends from etcd: a watch of `/flynn/routes/` rebuilds the route
//! table, a watch of `/flynn/services/` sets each service's backends. Both watches
//! read everything again after any break, so the router converges on etcd's state
//! whatever it missed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use discovery::Etcd;
use discovery::services::ServiceView;
use discovery::watch::{Change, PrefixWatch};

use crate::Router;
use crate::table::Table;

/// Follows the routes for as long as the router runs.
pub async fn follow_routes(etcd: Etcd, router: Arc<Router>) {
    let mut w = PrefixWatch::new(etcd, discovery::schema::ROUTES);
    let mut routes: BTreeMap<String, discovery::routes::Route> = BTreeMap::new();
    loop {
        match w.next().await {
            Change::Snapshot { entries, .. } => {
                routes = entries
                    .iter()
                    .filter_map(|e| {
                        Some((e.key.clone(), discovery::routes::decode(&e.key, &e.value)?))
                    })
                    .collect();
            }
            Change::Put(e) => match discovery::routes::decode(&e.key, &e.value) {
                Some(r) => {
                    routes.insert(e.key.clone(), r);
                }
                None => {
                    routes.remove(&e.key);
                }
            },
            Change::Delete { key, .. } => {
                routes.remove(&key);
            }
        }
        let list: Vec<_> = routes.values().cloned().collect();
        router.apply_routes(Table::new(&list));
    }
}

/// Follows every service's instances: the backends of a service are its instances'
/// addresses, as soon as discovery has them (and not a moment after they leave).
pub async fn follow_services(etcd: Etcd, router: Arc<Router>) {
    let mut w = PrefixWatch::new(etcd, discovery::schema::SERVICES);
    let view = Mutex::new(ServiceView::default());
    loop {
        let change = w.next().await;
        let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
        v.apply(change);
        let states = v.states();
        drop(v);
        let mut seen = Vec::new();
        for s in &states {
            let addrs: Vec<SocketAddr> = s.instances.iter().map(|i| i.addr).collect();
            router.proxy.backends.set(&s.service, &addrs);
            seen.push(s.service.clone());
        }
        for gone in router.proxy.backends.services() {
            if !seen.contains(&gone) {
                router.proxy.backends.set(&gone, &[]);
            }
        }
    }
}
