//! The host network against the real kernel: real netlink, real namespaces and nftables,
//! each test inside a network namespace of its own (see `common`). Needs root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::time::Instant;

use common::*;
use network::{Endpoint, HostNetwork, NetworkError, PortMapping, nft};

fn ports(specs: &[&str]) -> Vec<PortMapping> {
    specs.iter().map(|s| s.parse().unwrap()).collect()
}

fn rule_counts() -> BTreeMap<String, usize> {
    nft::rule_counts().unwrap()
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

#[test]
fn open_sets_up_bridge_table_and_sysctls_and_is_idempotent() {
    netns_test(|env| async move {
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        assert_eq!(net.mtu(), 1500, "no default route: 1500");
        let v = view().await;
        let br = v.link("flynnbr0").expect("bridge created");
        assert!(br.up);
        assert_eq!(br.mtu, 1500);
        assert_eq!(br.mac, "02:66:0a:58:00:01", "fixed MAC from the gateway");
        assert_eq!(v.addrs_of("flynnbr0"), vec![(GATEWAY, 24)]);
        assert!(nft::table_exists().unwrap());
        let counts = rule_counts();
        let want: BTreeMap<String, usize> = [
            ("prerouting", 1),
            ("output", 1),
            ("postrouting", 3),
            ("forward", 4),
            ("untracked", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(counts, want);
        assert_eq!(sysctl("/proc/sys/net/ipv4/ip_forward"), "1");
        assert_eq!(
            sysctl("/proc/sys/net/ipv4/conf/flynnbr0/route_localnet"),
            "1"
        );
        assert!(env.cfg.state_dir.join("ipam.json").exists());
        drop(net);

        // Again, on the running system: nothing doubles, nothing changes.
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let v2 = view().await;
        assert_eq!(v2.addrs_of("flynnbr0"), vec![(GATEWAY, 24)]);
        assert_eq!(
            v2.link("flynnbr0").unwrap().index,
            br.index,
            "the bridge was kept"
        );
        assert_eq!(rule_counts(), want);
        assert_eq!(v2.links.len(), v.links.len());

        net.destroy().await.unwrap();
        assert!(view().await.link("flynnbr0").is_none());
        assert!(!nft::table_exists().unwrap());
        assert!(mounts_under(&env.dir).is_empty());
    });
}

#[test]
fn mtu_follows_the_default_route_and_a_stale_bridge_address_is_replaced() {
    netns_test(|env| async move {
        outside(&env.dir, 1400, true).await;
        // A bridge left with another address (say, an earlier subnet).
        let h = handle();
        h.link()
            .add(rtnetlink::LinkBridge::new("flynnbr0").build())
            .execute()
            .await
            .unwrap();
        let idx = view().await.link("flynnbr0").unwrap().index;
        h.address()
            .add(idx, Ipv4Addr::new(172, 31, 0, 1).into(), 16)
            .execute()
            .await
            .unwrap();
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        assert_eq!(net.mtu(), 1400);
        let v = view().await;
        assert_eq!(v.link("flynnbr0").unwrap().mtu, 1400);
        assert_eq!(v.addrs_of("flynnbr0"), vec![(GATEWAY, 24)]);
        let ep = net.attach("a", &[]).await.unwrap();
        assert_eq!(ep.mtu, 1400);
        assert_eq!(view_of(&ep.netns).link("eth0").unwrap().mtu, 1400);
        net.destroy().await.unwrap();
    });
}

#[test]
fn open_refuses_a_link_that_is_not_a_bridge() {
    netns_test(|env| async move {
        let h = handle();
        h.link()
            .add(rtnetlink::LinkVeth::new("flynnbr0", "other0").build())
            .execute()
            .await
            .unwrap();
        let e = HostNetwork::open(env.cfg.clone(), &[]).await.err().unwrap();
        assert!(matches!(e, NetworkError::NotABridge(_)), "{e}");
    });
}

#[test]
fn attach_configures_the_namespace() {
    netns_test(|env| async move {
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let a = net.attach("a", &[]).await.unwrap();
        let b = net.attach("b", &[]).await.unwrap();
        assert_ne!(a.ip, b.ip);
        assert!(env.cfg.subnet.contains(a.ip) && env.cfg.subnet.contains(b.ip));
        assert_ne!(a.ip, GATEWAY);
        assert_eq!(net.endpoint("a"), Some(a.clone()));
        assert_eq!(net.endpoint("nope"), None);
        assert_eq!(a.netns, env.cfg.netns_dir.join("a"));
        assert_eq!(a.gateway, GATEWAY);
        assert_eq!(a.prefix_len, 24);

        let host = view().await;
        let bridge = host.link("flynnbr0").unwrap().index;
        for ep in [&a, &b] {
            let hv = host.link(&ep.host_veth).expect("host veth");
            assert!(hv.up);
            assert_eq!(hv.controller, Some(bridge), "attached to the bridge");
            let inside = view_of(&ep.netns);
            let names: Vec<&str> = inside.links.iter().map(|l| l.name.as_str()).collect();
            assert_eq!(names, vec!["lo", "eth0"], "{names:?}");
            assert!(inside.link("lo").unwrap().up);
            let eth0 = inside.link("eth0").unwrap();
            assert!(eth0.up);
            assert_eq!(eth0.mac, ep.mac);
            assert_eq!(eth0.mtu, 1500);
            assert_eq!(inside.addrs_of("eth0"), vec![(ep.ip, 24)]);
            assert!(
                inside
                    .routes
                    .contains(&(Ipv4Addr::UNSPECIFIED, 0, Some(GATEWAY))),
                "default route: {:?}",
                inside.routes
            );
        }
        let e = net.attach("a", &[]).await.unwrap_err();
        assert!(matches!(e, NetworkError::AlreadyAttached(_)), "{e}");
        let e = net.attach("../x", &[]).await.unwrap_err();
        assert!(matches!(e, NetworkError::InvalidId { .. }), "{e}");
        net.destroy().await.unwrap();
    });
}

#[test]
fn endpoints_talk_to_each_other_by_ip() {
    netns_test(|env| async move {
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let a = net.attach("a", &[]).await.unwrap();
        let b = net.attach("b", &[]).await.unwrap();
        let port = tcp_server(Some(&a.netns), SocketAddrV4::new(a.ip, 0), 1);
        let seen = tcp_peer_from(&b.netns, SocketAddrV4::new(a.ip, port)).unwrap();
        assert_eq!(seen, b.ip, "no NAT on the bridge");
        net.destroy().await.unwrap();
    });
}

#[test]
fn egress_is_masqueraded() {
    netns_test(|env| async move {
        let out = outside(&env.dir, 1500, true).await;
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let a = net.attach("a", &[]).await.unwrap();
        let port = tcp_server(Some(&out), SocketAddrV4::new(OUTSIDE_ADDR, 0), 1);
        let seen = tcp_peer_from(&a.netns, SocketAddrV4::new(OUTSIDE_ADDR, port)).unwrap();
        assert_eq!(seen, HOST_ADDR, "the outside sees the host's address");
        // The outside cannot reach a job directly (only published ports): route to the
        // subnet through the host and try.
        in_netns(&out, || {
            runtime().block_on(async {
                handle()
                    .route()
                    .add(
                        rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                            .destination_prefix(Ipv4Addr::new(10, 88, 0, 0), 24)
                            .gateway(HOST_ADDR)
                            .build(),
                    )
                    .execute()
                    .await
                    .unwrap()
            })
        });
        let port = tcp_server(Some(&a.netns), SocketAddrV4::new(a.ip, 0), 1);
        assert!(
            tcp_peer_from(&out, SocketAddrV4::new(a.ip, port)).is_err(),
            "forward drop"
        );
        net.destroy().await.unwrap();
    });
}

#[test]
fn published_ports_answer_from_everywhere() {
    netns_test(|env| async move {
        let out = outside(&env.dir, 1500, true).await;
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let a = net
            .attach(
                "a",
                &ports(&["8080:80", "5353:53/udp", "90", "127.0.0.1:7070:70"]),
            )
            .await
            .unwrap();
        let b = net.attach("b", &[]).await.unwrap();
        assert_eq!(rule_counts().get("published"), Some(&4));
        let chosen = a.ports[2].host_port;
        assert_ne!(chosen, 0, "a host port was chosen: {:?}", a.ports);
        assert_eq!(net.endpoint("a").unwrap().ports[2].host_port, chosen);
        tcp_server(
            Some(&a.netns),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
            6,
        );
        tcp_server(
            Some(&a.netns),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 90),
            1,
        );
        tcp_server(
            Some(&a.netns),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 70),
            1,
        );
        udp_server(
            Some(&a.netns),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 53),
            1,
        );

        // The host itself, on 127.0.0.1 (masqueraded to the gateway: route_localnet).
        let seen = tcp_peer(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)).unwrap();
        assert_eq!(seen, GATEWAY);
        // The host itself, on its own addresses (source kept).
        assert_eq!(
            tcp_peer(SocketAddrV4::new(HOST_ADDR, 8080)).unwrap(),
            HOST_ADDR
        );
        assert_eq!(tcp_peer(SocketAddrV4::new(GATEWAY, 8080)).unwrap(), GATEWAY);
        // Another host: the client's address is kept.
        let seen = tcp_peer_from(&out, SocketAddrV4::new(HOST_ADDR, 8080)).unwrap();
        assert_eq!(seen, OUTSIDE_ADDR);
        // Hairpin: another job through the host's address (masqueraded, so replies come
        // back through conntrack).
        let seen = tcp_peer_from(&b.netns, SocketAddrV4::new(HOST_ADDR, 8080)).unwrap();
        assert_eq!(seen, GATEWAY);
        // ... and the job itself.
        let seen = tcp_peer_from(&a.netns, SocketAddrV4::new(HOST_ADDR, 8080)).unwrap();
        assert_eq!(seen, GATEWAY);
        // A chosen host port, UDP, and an address-bound port.
        assert_eq!(
            tcp_peer(SocketAddrV4::new(HOST_ADDR, chosen)).unwrap(),
            HOST_ADDR
        );
        assert_eq!(
            udp_peer(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5353)).unwrap(),
            GATEWAY
        );
        assert_eq!(
            tcp_peer(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7070)).unwrap(),
            GATEWAY
        );
        assert!(
            tcp_peer_from(&out, SocketAddrV4::new(HOST_ADDR, 7070)).is_err(),
            "bound to 127.0.0.1 only"
        );

        net.detach("a").await.unwrap();
        assert_eq!(rule_counts().get("published"), None);
        assert!(tcp_peer(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)).is_err());
        net.destroy().await.unwrap();
    });
}

#[test]
fn port_conflicts_are_refused_and_ports_are_held() {
    netns_test(|env| async move {
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        net.check_ports(&ports(&["8080:80"])).unwrap();
        net.attach("a", &ports(&["8080:80", "5353:53/udp"]))
            .await
            .unwrap();

        for spec in ["8080:81", "127.0.0.1:8080:81", "5353:53/udp"] {
            let e = net.check_ports(&ports(&[spec])).unwrap_err();
            assert!(
                matches!(&e, NetworkError::PortConflict { job, .. } if job == "a"),
                "{spec}: {e}"
            );
            let e2 = net.attach("b", &ports(&[spec])).await.unwrap_err();
            assert_eq!(e.to_string(), e2.to_string());
        }
        let e = net
            .check_ports(&ports(&["8080:81"]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "port 0.0.0.0:8080/tcp is already published by job a");
        // Another protocol on the same number is fine.
        net.check_ports(&ports(&["8080:80/udp"])).unwrap();
        // The port is held: nobody else can bind it.
        assert!(TcpListener::bind("0.0.0.0:8080").is_err());
        assert!(TcpListener::bind("127.0.0.1:8080").is_err());
        assert!(std::net::UdpSocket::bind("0.0.0.0:5353").is_err());

        // A port taken by another process.
        let _l = TcpListener::bind("127.0.0.1:9090").unwrap();
        let e = net.check_ports(&ports(&["9090:80"])).unwrap_err();
        assert!(matches!(e, NetworkError::PortUnavailable { .. }), "{e}");
        assert!(e.to_string().contains("0.0.0.0:9090/tcp"), "{e}");
        let before = view().await.links.len();
        let e = net
            .attach("b", &ports(&["80:80", "9090:80"]))
            .await
            .unwrap_err();
        assert!(matches!(e, NetworkError::PortUnavailable { .. }), "{e}");
        assert_eq!(net.endpoint("b"), None);
        assert_eq!(view().await.links.len(), before, "no veth left");
        assert!(!env.cfg.netns_dir.join("b").exists());
        assert!(
            TcpListener::bind("0.0.0.0:80").is_ok(),
            "port 80 was released"
        );
        // An address that is not local.
        let e = net
            .check_ports(&ports(&["192.0.2.77:8081:80"]))
            .unwrap_err();
        assert!(matches!(e, NetworkError::PortUnavailable { .. }), "{e}");
        // Twice in one request.
        let e = net.check_ports(&ports(&["81:80", "81:81"])).unwrap_err();
        assert!(matches!(e, NetworkError::DuplicatePort(_)), "{e}");

        net.detach("a").await.unwrap();
        assert!(
            TcpListener::bind("0.0.0.0:8080").is_ok(),
            "released on detach"
        );
        net.attach("b", &ports(&["8080:80"])).await.unwrap();
        net.destroy().await.unwrap();
    });
}

#[test]
fn exhaustion_is_a_clear_error_and_leaves_nothing() {
    netns_test(|mut env| async move {
        env.cfg.subnet = "10.99.0.0/29".parse().unwrap();
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let mut ips = Vec::new();
        for i in 0..5 {
            ips.push(net.attach(&format!("j{i}"), &[]).await.unwrap().ip);
        }
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 5);
        let links = view().await.links.len();
        let e = net.attach("j5", &ports(&["8080:80"])).await.unwrap_err();
        assert!(matches!(e, NetworkError::SubnetExhausted { .. }), "{e}");
        assert!(e.to_string().contains("10.99.0.0/29"), "{e}");
        assert_eq!(view().await.links.len(), links);
        assert!(
            TcpListener::bind("0.0.0.0:8080").is_ok(),
            "the port was not kept"
        );
        net.detach("j2").await.unwrap();
        let ep = net.attach("j5", &[]).await.unwrap();
        assert_eq!(ep.ip, Ipv4Addr::new(10, 99, 0, 4), "the freed address");
        net.destroy().await.unwrap();
    });
}

#[test]
fn attach_detach_cycles_leave_nothing_behind() {
    netns_test(|env| async move {
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let baseline = view().await;
        let mut attach_plain = Vec::new();
        let mut detach_plain = Vec::new();
        let mut attach_ports = Vec::new();
        let mut detach_ports = Vec::new();
        for i in 0..50 {
            let id = format!("{i:032x}");
            let with_ports = i % 2 == 1;
            let p = if with_ports {
                ports(&["8080:80", "53/udp"])
            } else {
                vec![]
            };
            let t = Instant::now();
            let ep = net.attach(&id, &p).await.unwrap();
            let ta = t.elapsed().as_micros();
            assert!(ep.netns.exists());
            let t = Instant::now();
            net.detach(&id).await.unwrap();
            let td = t.elapsed().as_micros();
            if with_ports {
                attach_ports.push(ta);
                detach_ports.push(td);
            } else {
                attach_plain.push(ta);
                detach_plain.push(td);
            }
            // Idempotent.
            net.detach(&id).await.unwrap();
        }
        let after = view().await;
        let names = |v: &NsView| v.links.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&after), names(&baseline), "no veth left");
        assert_eq!(after.addrs, baseline.addrs, "no address left");
        assert_eq!(
            fs::read_dir(&env.cfg.netns_dir).unwrap().count(),
            0,
            "no namespace file left"
        );
        assert_eq!(
            mounts_under(&env.cfg.netns_dir),
            Vec::<String>::new(),
            "no mount left"
        );
        assert_eq!(rule_counts().get("published"), None, "no rule left");
        assert!(net.endpoints().is_empty());
        let st: serde_json::Value =
            serde_json::from_slice(&fs::read(env.cfg.state_dir.join("ipam.json")).unwrap())
                .unwrap();
        assert_eq!(st["endpoints"], serde_json::json!({}));
        for (what, v) in [
            ("attach, no ports", &attach_plain),
            ("detach, no ports", &detach_plain),
            ("attach, 2 ports", &attach_ports),
            ("detach, 2 ports", &detach_ports),
        ] {
            let (med, p90, max) = stats(v);
            eprintln!(
                "{what}: median {med} us, p90 {p90} us, max {max} us ({} runs)",
                v.len()
            );
        }
        net.destroy().await.unwrap();
    });
}

#[test]
fn reopen_keeps_live_endpoints_and_frees_the_others() {
    netns_test(|env| async move {
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let a = net.attach("a", &ports(&["8080:80"])).await.unwrap();
        let b = net.attach("b", &ports(&["8081:80"])).await.unwrap();
        tcp_server(
            Some(&a.netns),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
            2,
        );
        assert_eq!(
            tcp_peer(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)).unwrap(),
            GATEWAY
        );
        let host = view().await;
        let a_veth = host.link(&a.host_veth).unwrap().index;
        // A crash: no detach, no cleanup.
        drop(net);
        assert!(
            TcpListener::bind("0.0.0.0:8080").is_ok(),
            "holders went with the process"
        );

        let net = HostNetwork::open(env.cfg.clone(), &["a".to_string()])
            .await
            .unwrap();
        assert_eq!(net.endpoint("a"), Some(a.clone()), "re-adopted");
        assert_eq!(net.endpoint("b"), None);
        let host = view().await;
        assert_eq!(
            host.link(&a.host_veth).unwrap().index,
            a_veth,
            "a's veth untouched"
        );
        assert!(host.link(&b.host_veth).is_none(), "b's veth removed");
        assert!(a.netns.exists());
        assert!(!b.netns.exists(), "b's namespace file removed");
        assert_eq!(view_of(&a.netns).addrs_of("eth0"), vec![(a.ip, 24)]);
        assert_eq!(rule_counts().get("published"), Some(&1), "only a's rule");
        assert!(
            TcpListener::bind("0.0.0.0:8080").is_err(),
            "a's port held again"
        );
        assert!(TcpListener::bind("0.0.0.0:8081").is_ok(), "b's port free");
        assert_eq!(
            tcp_peer(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)).unwrap(),
            GATEWAY
        );
        let st: serde_json::Value =
            serde_json::from_slice(&fs::read(env.cfg.state_dir.join("ipam.json")).unwrap())
                .unwrap();
        let recorded: Vec<&str> = st["endpoints"]
            .as_object()
            .unwrap()
            .values()
            .map(|e| e["ip"].as_str().unwrap())
            .collect();
        assert_eq!(
            recorded,
            vec![a.ip.to_string().as_str()],
            "b's address freed"
        );
        let saved: Endpoint = serde_json::from_value(st["endpoints"]["a"].clone()).unwrap();
        assert_eq!(saved, a);

        // b's address comes back into use once the allocator goes round.
        let mut seen_b_ip = false;
        for i in 0..260 {
            let id = format!("c{i}");
            let ep = net.attach(&id, &[]).await;
            match ep {
                Ok(ep) => {
                    assert_ne!(ep.ip, a.ip);
                    if ep.ip == b.ip {
                        seen_b_ip = true;
                        break;
                    }
                    net.detach(&id).await.unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(seen_b_ip);
        net.destroy().await.unwrap();
    });
}

#[test]
fn open_removes_strays_and_rebuilds_a_damaged_table() {
    netns_test(|env| async move {
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let a = net.attach("a", &ports(&["8080:80"])).await.unwrap();
        drop(net);
        // A namespace file nobody recorded, and the table deleted by someone.
        make_netns(&env.cfg.netns_dir.join("stray"));
        nft::delete_table().unwrap();
        let net = HostNetwork::open(env.cfg.clone(), &["a".to_string()])
            .await
            .unwrap();
        assert!(!env.cfg.netns_dir.join("stray").exists());
        assert_eq!(rule_counts().get("published"), Some(&1));
        assert_eq!(net.endpoint("a"), Some(a));
        // Deleted again while running: the next port change rebuilds it.
        nft::delete_table().unwrap();
        net.attach("b", &ports(&["8081:80"])).await.unwrap();
        assert_eq!(rule_counts().get("published"), Some(&2));
        assert_eq!(rule_counts().get("forward"), Some(&4));
        net.destroy().await.unwrap();
        assert!(mounts_under(&env.dir).is_empty());
    });
}

#[test]
fn a_changed_subnet_is_refused_while_jobs_use_the_old_one() {
    netns_test(|mut env| async move {
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        net.attach("a", &[]).await.unwrap();
        drop(net);
        env.cfg.subnet = "10.77.0.0/24".parse().unwrap();
        let e = HostNetwork::open(env.cfg.clone(), &["a".to_string()])
            .await
            .err()
            .unwrap();
        assert!(matches!(e, NetworkError::SubnetChanged { .. }), "{e}");
        // Without live jobs on it, the new subnet takes over.
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        assert!(!env.cfg.netns_dir.join("a").exists());
        assert_eq!(
            view().await.addrs_of("flynnbr0"),
            vec![(Ipv4Addr::new(10, 77, 0, 1), 24)]
        );
        let ep = net.attach("b", &[]).await.unwrap();
        assert_eq!(ep.ip, Ipv4Addr::new(10, 77, 0, 2));
        net.destroy().await.unwrap();
    });
}

#[test]
fn a_second_open_on_the_same_state_is_refused() {
    netns_test(|env| async move {
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let e = HostNetwork::open(env.cfg.clone(), &[]).await.err().unwrap();
        assert!(matches!(e, NetworkError::Locked(_)), "{e}");
        assert!(e.to_string().contains("stop the other flynn-host"), "{e}");
        drop(net);
        HostNetwork::open(env.cfg.clone(), &[])
            .await
            .unwrap()
            .destroy()
            .await
            .unwrap();
    });
}

#[test]
fn an_unreadable_state_is_set_aside_only_when_nothing_is_live() {
    netns_test(|env| async move {
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let a = net.attach("a", &[]).await.unwrap();
        drop(net);
        let path = env.cfg.state_dir.join("ipam.json");
        fs::write(&path, b"{\"endpoints\": tru").unwrap();
        let e = HostNetwork::open(env.cfg.clone(), &["a".to_string()])
            .await
            .err()
            .unwrap();
        assert!(matches!(e, NetworkError::State { .. }), "{e}");
        assert!(e.to_string().contains("move it away"), "{e}");
        // After a reboot nothing is live: start afresh; a's leftovers go as strays.
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        assert!(env.cfg.state_dir.join("ipam.json.unreadable").exists());
        assert!(!a.netns.exists());
        assert!(view().await.link(&a.host_veth).is_none());
        net.destroy().await.unwrap();
    });
}

#[test]
fn a_cancelled_attach_is_cleaned_up_by_detach() {
    netns_test(|env| async move {
        let net = HostNetwork::open(env.cfg.clone(), &[]).await.unwrap();
        let baseline = view().await.links.len();
        for (i, us) in [0u64, 50, 200, 500, 1000, 2000, 5000]
            .into_iter()
            .enumerate()
        {
            let id = format!("c{i}");
            let p = ports(&["8080:80"]);
            let _ = tokio::time::timeout(std::time::Duration::from_micros(us), net.attach(&id, &p))
                .await;
            // Whatever the attach got to, detach removes it, and the port is free again.
            net.detach(&id).await.unwrap();
            assert_eq!(net.endpoint(&id), None);
            assert_eq!(
                view().await.links.len(),
                baseline,
                "after a cancel at {us} us"
            );
            assert_eq!(
                fs::read_dir(&env.cfg.netns_dir).unwrap().count(),
                0,
                "at {us} us"
            );
            assert!(TcpListener::bind("0.0.0.0:8080").is_ok(), "at {us} us");
            assert_eq!(rule_counts().get("published"), None, "at {us} us");
        }
        // The namespace threads of cancelled attaches have ended (nothing mounted late).
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(fs::read_dir(&env.cfg.netns_dir).unwrap().count(), 0);
        net.destroy().await.unwrap();
    });
}
