//! The VXLAN overlay device and its entries, in a private network namespace (no packet
//! leaves it: the peers' underlay addresses are documentation addresses that nothing
//! is sent to, and the test only reads the kernel's tables).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::net::Ipv4Addr;

use network::overlay::{self, Overlay, OverlayConfig, Peer};
use network::{HostNetwork, Ipv4Net};

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn peer(subnet: &str, underlay: [u8; 4]) -> Peer {
    let subnet = net(subnet);
    Peer {
        subnet,
        underlay: Ipv4Addr::from(underlay),
        vtep_mac: overlay::vtep_mac(subnet),
    }
}

#[test]
fn vxlan_device_entries_follow_the_peer_list() {
    common::netns_test(|env| async move {
        let h = common::handle();
        // The underlay: one end of a veth pair with this host's address (this kernel
        // has no dummy links).
        h.link()
            .add(
                rtnetlink::LinkVeth::new("under0", "under1")
                    .mtu(1500)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        let idx = common::view().await.link("under0").unwrap().index;
        h.address()
            .add(idx, Ipv4Addr::new(192, 0, 2, 10).into(), 24)
            .execute()
            .await
            .unwrap();
        let mtu = overlay::underlay_mtu(Ipv4Addr::new(192, 0, 2, 10))
            .await
            .unwrap();
        assert_eq!(mtu, 1500);
        assert!(
            overlay::underlay_mtu(Ipv4Addr::new(192, 0, 2, 99))
                .await
                .is_err()
        );

        let cfg = OverlayConfig {
            device: overlay::DEFAULT_DEVICE.into(),
            vni: 1,
            port: 4789,
            local: Ipv4Addr::new(192, 0, 2, 10),
            subnet: net("100.100.1.0/24"),
            cluster: net("100.100.0.0/16"),
        };
        let ov = Overlay::open(cfg.clone(), mtu - overlay::VXLAN_OVERHEAD)
            .await
            .unwrap();
        let link = common::view().await.link("flynn.vx").unwrap().clone();
        assert_eq!(link.mtu, 1450);

        let a = peer("100.100.2.0/24", [192, 0, 2, 20]);
        let b = peer("100.100.3.0/24", [192, 0, 2, 30]);
        ov.sync(&[
            a.clone(),
            b.clone(),
            peer("100.100.1.0/24", [192, 0, 2, 10]),
        ])
        .await
        .unwrap();
        assert_eq!(ov.kernel_peers().await.unwrap(), vec![a.clone(), b.clone()]);
        // Idempotent.
        ov.sync(&[a.clone(), b.clone()]).await.unwrap();
        assert_eq!(ov.kernel_peers().await.unwrap(), vec![a.clone(), b.clone()]);
        // A host moved (new underlay address) and one left.
        let a2 = peer("100.100.2.0/24", [192, 0, 2, 21]);
        ov.sync(std::slice::from_ref(&a2)).await.unwrap();
        assert_eq!(ov.kernel_peers().await.unwrap(), vec![a2.clone()]);
        let routes = common::view().await.routes;
        let via = Some(Ipv4Addr::new(100, 100, 2, 0));
        assert!(
            routes.contains(&(Ipv4Addr::new(100, 100, 2, 0), 24, via)),
            "{routes:?}"
        );
        assert!(
            !routes.iter().any(|r| r.0 == Ipv4Addr::new(100, 100, 3, 0)),
            "{routes:?}"
        );

        // Opening again keeps the device (and so its entries).
        drop(ov);
        let ov = Overlay::open(cfg.clone(), 1450).await.unwrap();
        assert_eq!(ov.kernel_peers().await.unwrap(), vec![a2]);

        // The host network in a cluster: overlay traffic is neither masqueraded nor dropped.
        let mut ncfg = env.cfg.clone();
        ncfg.subnet = cfg.subnet;
        ncfg.cluster = Some(cfg.cluster);
        ncfg.mtu = Some(1450);
        let hn = HostNetwork::open(ncfg, &[]).await.unwrap();
        let counts = network::nft::rule_counts().unwrap();
        assert_eq!(counts.get("postrouting"), Some(&4), "{counts:?}");
        assert_eq!(counts.get("forward"), Some(&5), "{counts:?}");
        assert_eq!(counts.get("untracked"), Some(&1), "{counts:?}");
        hn.destroy().await.unwrap();
        ov.destroy().await.unwrap();
        assert!(common::view().await.link("flynn.vx").is_none());
    });
}
