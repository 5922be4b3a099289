//! Structure-aware fuzzing (proptest) of what the init reads from outside: the kernel
//! command line (`ip=` above all), user data and meta-data from a seed or the cloud, and
//! DHCP replies from whoever answers on the network. `PROPTEST_CASES` sets the number of
//! cases (256 by default; `scripts/fuzz.sh N` runs more).

use std::net::Ipv4Addr;

use proptest::prelude::*;

use crate::cmdline::{self, Cmdline, IpConfig};
use crate::settings::{self, Settings, Source};
use crate::{dhcp, net};

fn ip_field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
        "[0-9]{1,3}",
        "[a-z0-9.-]{1,20}",
        ".{0,12}",
        prop::sample::select(vec![
            "dhcp",
            "off",
            "none",
            "on",
            "any",
            "255.255.255.0",
            "255.0.255.0",
            "0.0.0.0",
            "255.255.255.255",
            "eth0",
            "a/b",
            "node_1",
            "-bad",
            "0",
            "33",
            "1.2.3.4/40",
        ])
        .prop_map(str::to_owned),
    ]
}

fn ip_value() -> impl Strategy<Value = String> {
    prop::collection::vec(ip_field(), 1..11).prop_map(|f| f.join(":"))
}

proptest! {
    #[test]
    fn kernel_command_line(line in ".{0,200}", ip in ip_value()) {
        let c = Cmdline::parse(&line);
        for (k, _) in c.flynn() {
            prop_assert!(!k.chars().any(char::is_whitespace));
        }
        let _ = cmdline::words(&format!("{line} ip={ip}"));
        match cmdline::parse_ip(Some(&ip)) {
            Ok(IpConfig::Static(s)) => {
                prop_assert!(s.prefix_len <= 32);
                prop_assert!(!s.address.is_unspecified() && !s.address.is_broadcast());
                if let Some(h) = &s.hostname {
                    prop_assert!(settings::valid_hostname(h), "host name {:?}", h);
                }
                if let Some(d) = &s.device {
                    prop_assert!(d.len() < 16 && !d.contains('/') && !d.contains(char::is_whitespace));
                }
                prop_assert!(s.dns.len() <= 2);
            }
            Ok(_) => {}
            Err(e) => prop_assert!(e.to_string().starts_with("ip=")),
        }
    }

    #[test]
    fn user_data_and_meta_data(
        lines in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "token", "flynn.token", "hostname", "ip", "debug", "log", "datasource",
                    "state", "peers", "bogus", "", " hostname ",
                ]),
                prop_oneof![ip_value(), ".{0,40}", "[0-9a-f]{20,64}"],
                any::<bool>(),
            ),
            0..10,
        ),
        meta in ".{0,80}",
    ) {
        let text: String = lines
            .iter()
            .map(|(k, v, eq)| if *eq { format!("{k}={v}\n") } else { format!("{k}{v}\n") })
            .collect();
        let mut s = Settings::default();
        let _ = s.apply_user_data(Source::Seed, &text);
        if let Some((h, _)) = &s.hostname {
            prop_assert!(settings::valid_hostname(h));
        }
        if let Some((t, _)) = &s.token {
            prop_assert!(flynn_client::validate_token(t).is_ok());
        }
        if let Some(h) = settings::meta_data_hostname(&format!("local-hostname: {meta}\n{meta}")) {
            prop_assert!(settings::valid_hostname(&h));
        }
    }
}

/// A DHCP option as it travels: code, length (which may lie) and data.
fn option() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        prop::sample::select(vec![
            0u8, 1, 3, 6, 12, 15, 28, 50, 51, 52, 53, 54, 55, 58, 59, 61, 81, 118, 119, 121, 255,
        ]),
        any::<u8>(),
    ];
    let text = prop_oneof![
        "[a-z0-9.-]{1,30}",
        Just("evil.example\nnameserver 6.6.6.6".to_owned()),
        Just("a b".to_owned()),
        ".{0,20}",
    ];
    let data = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        text.prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(|mut v| {
            v.resize(4, 0);
            v
        }),
    ];
    (code, data, prop::option::of(any::<u8>())).prop_map(|(code, data, lie)| {
        let mut out = vec![code];
        if code == 0 || code == 255 {
            return out;
        }
        let data = &data[..data.len().min(255)];
        out.push(lie.unwrap_or(data.len() as u8));
        out.extend_from_slice(data);
        out
    })
}

/// A BOOTREPLY with random fields and options (sometimes truncated, sometimes with the
/// `sname` and `file` fields overloaded with options).
fn reply() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<[u8; 4]>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..4),
        prop::collection::vec(option(), 0..12),
        prop::collection::vec(option(), 0..4),
        0usize..400,
        any::<bool>(),
    )
        .prop_map(|(yiaddr, hlen, noise, options, overload, cut, truncate)| {
            let mut b = vec![0u8; 236];
            b[0] = 2; // BOOTREPLY
            b[1] = 1;
            b[2] = hlen;
            b[4..8].copy_from_slice(&[0, 0, 0, 1]);
            b[16..20].copy_from_slice(&yiaddr);
            let over: Vec<u8> = overload.concat();
            let n = over.len().min(64);
            b[44..44 + n].copy_from_slice(&over[..n]);
            b.extend_from_slice(&[99, 130, 83, 99]);
            for o in &options {
                b.extend_from_slice(o);
            }
            b.extend_from_slice(&noise);
            if truncate {
                b.truncate(cut);
            }
            b
        })
}

proptest! {
    #[test]
    fn dhcp_replies(packet in reply()) {
        check_dhcp(&packet)?;
    }

    #[test]
    fn dhcp_random_bytes(packet in prop::collection::vec(any::<u8>(), 0..600)) {
        check_dhcp(&packet)?;
    }
}

/// What the init does with a datagram: decode, read a lease, write resolv.conf's text.
fn check_dhcp(packet: &[u8]) -> Result<(), TestCaseError> {
    let Some(msg) = dhcp::decode(packet) else {
        return Ok(());
    };
    let lease = dhcp::lease_from(&msg, Ipv4Addr::new(10, 0, 0, 1));
    prop_assert!(lease.prefix_len <= 32);
    if let Some(d) = &lease.domain {
        prop_assert!(settings::valid_domain(d), "domain {:?}", d);
    }
    if let Some(h) = &lease.hostname {
        prop_assert!(settings::valid_hostname(h), "host name {:?}", h);
    }
    let text = net::resolv_conf(&lease.dns, lease.domain.as_deref());
    let lines: Vec<&str> = text.lines().collect();
    prop_assert!(lines.len() <= 4);
    prop_assert!(
        lines
            .iter()
            .all(|l| l.starts_with("nameserver ") || l.starts_with("search ")),
        "{:?}",
        text
    );
    prop_assert!(lines.iter().filter(|l| l.starts_with("search ")).count() <= 1);
    Ok(())
}
