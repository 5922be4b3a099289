//! The discovery crate against a real etcd (Debian's `etcd-server`), started on
//! 127.0.0.1 with a temporary data directory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use discovery::{
    Etcd, Instance, OverlayConfig, ServiceEventKind, Subnet, SubnetLease, hosts, services, subnets,
};

struct EtcdServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_etcd() -> EtcdServer {
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{c}");
    let peer = format!("http://127.0.0.1:{p}");
    let child = Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("t={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (Debian's etcd-server) must be installed: scripts/deps.sh");
    EtcdServer {
        child,
        url,
        _dir: dir,
    }
}

async fn connect(url: &str) -> Etcd {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(e) = Etcd::connect(&[url.to_string()], Duration::from_secs(2)).await
            && e.ping().await.is_ok()
        {
            return e;
        }
        assert!(Instant::now() < deadline, "etcd at {url} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn instance(svc: &str, id: &str, port: u16) -> Instance {
    Instance {
        service: svc.into(),
        id: id.into(),
        addr: format!("100.100.1.2:{port}").parse().unwrap(),
        host_id: "h1".into(),
        job_id: None,
        meta: Default::default(),
        registered_at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn services_leaders_watches_and_subnets() {
    let server = start_etcd();
    let etcd = connect(&server.url).await;
    let lease = etcd.grant(Duration::from_secs(2)).await.unwrap();

    // A watch started before anything exists sees the current marker, then changes.
    let mut w = services::watch(etcd.clone(), Some("web")).unwrap();
    let ev = w.recv().await.unwrap();
    assert_eq!(ev.kind, ServiceEventKind::Current);

    services::register(&etcd, lease, &instance("web", "a", 80))
        .await
        .unwrap();
    services::register(&etcd, lease, &instance("web", "b", 81))
        .await
        .unwrap();
    let kinds: Vec<_> = [
        w.recv().await.unwrap(),
        w.recv().await.unwrap(),
        w.recv().await.unwrap(),
    ]
    .iter()
    .map(|e| (e.kind, e.instance.as_ref().unwrap().id.clone()))
    .collect();
    assert_eq!(
        kinds,
        [
            (ServiceEventKind::Up, "a".to_string()),
            (ServiceEventKind::Leader, "a".to_string()),
            (ServiceEventKind::Up, "b".to_string())
        ]
    );
    let st = services::list(&etcd, "web").await.unwrap();
    assert_eq!(st.instances.len(), 2);
    assert_eq!(st.leader.as_deref(), Some("a"));
    // etcd's election service agrees on the leader.
    let l = services::leader(&etcd, "web").await.unwrap().unwrap();
    assert_eq!(l.id, "a");
    // Re-registering keeps the leadership (same key, same create revision).
    services::register(&etcd, lease, &instance("web", "a", 80))
        .await
        .unwrap();
    assert_eq!(
        services::leader(&etcd, "web").await.unwrap().unwrap().id,
        "a"
    );
    // Its record changed (registration time): an update, and no leader change.
    assert_eq!(w.recv().await.unwrap().kind, ServiceEventKind::Update);

    services::deregister(&etcd, "web", "a").await.unwrap();
    let down = w.recv().await.unwrap();
    assert_eq!(down.kind, ServiceEventKind::Down);
    let leader = w.recv().await.unwrap();
    assert_eq!(leader.kind, ServiceEventKind::Leader);
    assert_eq!(leader.instance.unwrap().id, "b");
    assert_eq!(
        services::leader(&etcd, "web").await.unwrap().unwrap().id,
        "b"
    );
    assert!(services::leader(&etcd, "nothing").await.unwrap().is_none());
    assert!(
        services::register(&etcd, lease, &instance("Bad.Name", "x", 1))
            .await
            .is_err()
    );

    // The lease expires: everything on it goes, and watchers hear it.
    let started = Instant::now();
    let down = tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(down.kind, ServiceEventKind::Down);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        services::list(&etcd, "web")
            .await
            .unwrap()
            .instances
            .is_empty()
    );

    // Subnets: two hosts get different ones, by CAS; a host coming back gets its own.
    let cfg = subnets::overlay_config(&etcd, &OverlayConfig::default())
        .await
        .unwrap();
    let other = OverlayConfig {
        vni: 7,
        ..OverlayConfig::default()
    };
    assert_eq!(subnets::overlay_config(&etcd, &other).await.unwrap(), cfg);
    let rec = |host: &'static str| {
        move |s: Subnet| SubnetLease {
            subnet: s.to_string(),
            host_id: host.into(),
            address: "192.0.2.1".parse().unwrap(),
            vtep_mac: "02:66:00:00:00:00".into(),
        }
    };
    let l1 = etcd.grant(Duration::from_secs(2)).await.unwrap();
    let l2 = etcd.grant(Duration::from_secs(30)).await.unwrap();
    let (s1, s2) = tokio::join!(
        subnets::claim(&etcd, l1, &cfg, "h1", None, rec("h1")),
        subnets::claim(&etcd, l2, &cfg, "h2", None, rec("h2")),
    );
    let (s1, s2) = (s1.unwrap(), s2.unwrap());
    assert_ne!(s1, s2);
    // Claiming again while holding it returns the same subnet.
    assert_eq!(
        subnets::claim(&etcd, l2, &cfg, "h2", None, rec("h2"))
            .await
            .unwrap(),
        s2
    );
    // h1's lease expires; a new host h3 does not take h1's subnet (it was owned)...
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(subnets::list(&etcd).await.unwrap().len(), 1);
    let l3 = etcd.grant(Duration::from_secs(30)).await.unwrap();
    let s3 = subnets::claim(&etcd, l3, &cfg, "h3", None, rec("h3"))
        .await
        .unwrap();
    assert!(s3 != s1 && s3 != s2);
    // ...and h1 coming back gets its old one, even without its cache.
    let l1 = etcd.grant(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        subnets::claim(&etcd, l1, &cfg, "h1", None, rec("h1"))
            .await
            .unwrap(),
        s1
    );

    // Hosts: announced on a lease, listed, gone with the lease.
    let lh = etcd.grant(Duration::from_secs(30)).await.unwrap();
    let host = discovery::HostRecord {
        id: "h1".into(),
        address: "192.0.2.1".parse().unwrap(),
        api: None,
        tags: [("zone".to_string(), "a".to_string())].into(),
        resources: Default::default(),
        subnet: Some(s1.to_string()),
        version: "test".into(),
        started_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    };
    hosts::announce(&etcd, lh, &host).await.unwrap();
    assert_eq!(hosts::list(&etcd).await.unwrap(), vec![host]);
    etcd.revoke(lh.id).await.unwrap();
    assert!(hosts::list(&etcd).await.unwrap().is_empty());
    // A revoked lease cannot be resumed or renewed.
    assert!(etcd.resume(lh.id, lh.ttl).await.unwrap().is_none());
    assert!(matches!(
        etcd.keep_alive(lh).await,
        Err(discovery::DiscoveryError::LeaseLost(_))
    ));
    let mut ka = etcd.keep_alive(l2).await.unwrap();
    assert!(ka.renew().await.unwrap() > Duration::from_secs(20));
}

#[tokio::test]
async fn a_drain_for_a_restart_ends_with_it_and_an_operators_drain_stays() {
    use discovery::formations;
    let server = start_etcd();
    let etcd = connect(&server.url).await;

    // A host drains itself for a power-off; its next start ends that drain.
    assert!(formations::drain_until_restart(&etcd, "h1").await.unwrap());
    assert_eq!(formations::draining(&etcd).await.unwrap(), vec!["h1"]);
    assert!(formations::end_restart_drain(&etcd, "h1").await.unwrap());
    assert!(formations::draining(&etcd).await.unwrap().is_empty());
    // Nothing to end on a host not drained.
    assert!(!formations::end_restart_drain(&etcd, "h1").await.unwrap());

    // An operator's drain is neither replaced by the power-off's nor ended by the
    // restart: the host stays out until the operator undoes it.
    formations::set_drain(&etcd, "h2", true).await.unwrap();
    assert!(!formations::drain_until_restart(&etcd, "h2").await.unwrap());
    assert!(!formations::end_restart_drain(&etcd, "h2").await.unwrap());
    assert_eq!(formations::draining(&etcd).await.unwrap(), vec!["h2"]);
    formations::set_drain(&etcd, "h2", false).await.unwrap();
    assert!(formations::draining(&etcd).await.unwrap().is_empty());

    // Bad ids are refused before any key is written.
    assert!(
        formations::drain_until_restart(&etcd, "../x")
            .await
            .is_err()
    );
}
