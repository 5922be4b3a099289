//! The API's TLS, against a real daemon in a network namespace of its own with an
//! address off loopback (a veth pair inside it): HTTPS there, verified by the CA file
//! or the pin; a wrong CA or pin refused before any request; plain HTTP there
//! answered with what to do; plain HTTP on loopback still served; and the host
//! certificate renewed under the running daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BIN, Daemon, new_netns};

const OFF_LOOPBACK: &str = "10.251.0.1";

fn ok(cmd: &mut Command) {
    let status = cmd.status().expect("running ip");
    assert!(status.success(), "{cmd:?}");
}

/// A daemon listening on every address of a namespace that has one off loopback;
/// its certificate lives `lifetime` seconds.
fn daemon(lifetime: &str) -> Daemon {
    let netns = new_netns();
    // A veth pair with both ends inside (the dummy module may be missing).
    let made = Command::new("ip")
        .args([
            "-n", &netns, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ])
        .status();
    if !made.is_ok_and(|s| s.success()) {
        let _ = Command::new("ip").args(["netns", "del", &netns]).status();
        panic!("ip link add d0 type veth in {netns} failed");
    }
    ok(Command::new("ip").args(["-n", &netns, "link", "set", "d1", "up"]));
    ok(Command::new("ip").args([
        "-n",
        &netns,
        "addr",
        "add",
        &format!("{OFF_LOOPBACK}/24"),
        "dev",
        "d0",
    ]));
    ok(Command::new("ip").args(["-n", &netns, "link", "set", "d0", "up"]));
    Daemon::start_in(
        netns,
        "0.0.0.0:1113".into(),
        std::path::Path::new(BIN),
        &[],
        &[("FLYNN_TLS_CERT_LIFETIME", lifetime)],
    )
}

/// `flynn-host ARGS` against `host`, with `env` (FLYNN_TLS_PIN, FLYNN_TLS_CA).
fn cli(d: &Daemon, host: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    d.command()
        .env("FLYNN_HOST", host)
        .env_remove("FLYNN_TLS_PIN")
        .env_remove("FLYNN_TLS_CA")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("running flynn-host")
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[ignore = "needs root (network namespaces)"]
fn https_off_loopback_with_the_ca_or_pin_and_refused_with_wrong_ones() {
    let d = daemon("3600");
    let https = format!("https://{OFF_LOOPBACK}:1113");
    let plain_loopback = "http://127.0.0.1:1113";

    // Plain HTTP on loopback: as before; the pin is public.
    let out = cli(&d, plain_loopback, &[], &["tls", "pin"]);
    assert!(out.status.success(), "{}", text(&out));
    let pin = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(pin.len(), 44, "{pin}");
    let out = cli(&d, plain_loopback, &[], &["ps"]);
    assert!(out.status.success(), "{}", text(&out));

    // HTTPS with the pin, and with the CA file.
    let out = cli(&d, &https, &[("FLYNN_TLS_PIN", &pin)], &["ps"]);
    assert!(out.status.success(), "{}", text(&out));
    let ca = d.state_dir().join("tls/ca.pem");
    let out = cli(
        &d,
        &https,
        &[("FLYNN_TLS_CA", ca.to_str().unwrap())],
        &["ps"],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The flags say the same as the environment.
    let out = cli(&d, &https, &[], &["--tls-pin", &pin, "tls", "show"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(OFF_LOOPBACK),
        "{}",
        text(&out)
    );

    // Another CA, as a file and as a pin: refused, and the error says why.
    let dir = tempfile::tempdir().unwrap();
    let wrong = flynn_tls::Ca::generate("wrong").unwrap();
    let wrong_file = dir.path().join("wrong.pem");
    std::fs::write(&wrong_file, &wrong.cert_pem).unwrap();
    let out = cli(
        &d,
        &https,
        &[("FLYNN_TLS_CA", wrong_file.to_str().unwrap())],
        &["ps"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "{}",
        text(&out)
    );
    let wrong_pin = wrong.pin().unwrap().to_string();
    let out = cli(&d, &https, &[("FLYNN_TLS_PIN", &wrong_pin)], &["ps"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pinned"),
        "{}",
        text(&out)
    );
    // No trust at all for https: told what to give (root's default is the
    // host's /var/lib/flynn/tls/ca.pem, which this test's daemon does not use).
    if !std::path::Path::new("/var/lib/flynn/tls/ca.pem").exists() {
        let out = cli(&d, &https, &[], &["ps"]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--tls-pin"),
            "{}",
            text(&out)
        );
    }

    // Plain HTTP off loopback: a 400 that says to use HTTPS.
    let out = cli(&d, &format!("http://{OFF_LOOPBACK}:1113"), &[], &["ps"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTPS"),
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs root (network namespaces)"]
fn the_certificate_rotates_without_a_restart() {
    let d = daemon("4");
    let https = format!("https://{OFF_LOOPBACK}:1113");
    let pin =
        String::from_utf8_lossy(&cli(&d, "http://127.0.0.1:1113", &[], &["tls", "pin"]).stdout)
            .trim()
            .to_string();
    let expiry = || {
        let out = cli(
            &d,
            &https,
            &[("FLYNN_TLS_PIN", &pin)],
            &["tls", "show", "--json"],
        );
        assert!(out.status.success(), "{}", text(&out));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        info["not_after"].as_str().unwrap().to_string()
    };
    let first = expiry();
    let pid = d.pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if expiry() != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not renewed after 20 s; log:\n{}",
            d.log_text()
        );
    }
    assert_eq!(d.pid(), pid, "the daemon restarted");
    // Calls keep working across renewals, with the same pin.
    let out = cli(&d, &https, &[("FLYNN_TLS_PIN", &pin)], &["ps"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `flynn_host::client::first_contact` to `authority` from inside `netns`.
fn first_contact_in(
    netns: &str,
    authority: &str,
    token: &str,
) -> Result<String, flynn_host::client::FirstContactFailure> {
    let (netns, authority, token) = (
        format!("/run/netns/{netns}"),
        authority.to_string(),
        token.to_string(),
    );
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(flynn_host::client::first_contact(
                &authority,
                &token,
                "test-nonce-1",
            ))
    })
    .join()
    .unwrap()
}

#[test]
#[ignore = "needs root (network namespaces)"]
fn a_first_contact_trusts_the_pin_the_token_vouches_for_and_a_cluster_ca_is_installed() {
    let d = daemon("3600");
    let authority = format!("{OFF_LOOPBACK}:1113");
    let pin = d.ok(&["tls", "pin"]).trim().to_string();
    // The token's proof of the pin, over TLS, with no token sent: the host's pin.
    let got = first_contact_in(&d.netns, &authority, &d.token).unwrap();
    assert_eq!(got, pin);
    // Another token: the proof does not match, and the caller is told.
    match first_contact_in(&d.netns, &authority, "another-token-0123456789") {
        Err(flynn_host::client::FirstContactFailure::Token(_)) => {}
        other => panic!("a wrong token was not refused: {other:?}"),
    }
    // The CA with its key needs the token; the public route does not.
    assert_eq!(d.http_with("GET", "/cluster/tls", None, None).0, 401);
    let (code, body) = d.http_with("GET", "/cluster/tls/ca?proof=a%20b", None, None);
    assert_eq!(code, 400, "{body}");
    let (code, body) = d.http("GET", "/cluster/tls", None);
    assert_eq!(code, 200, "{body}");
    let own: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(own["ca_key"].as_str().unwrap().contains("PRIVATE KEY"));
    let (_, info) = d.http_with("GET", "/cluster/tls/ca", None, None);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["cluster"], false, "{info}");

    // A cluster CA installed: marked, the host's pin is the cluster's, the
    // platform files follow, and installing it again changes nothing.
    let cluster = flynn_tls::Ca::generate("cluster").unwrap();
    let install = serde_json::json!({"ca_cert": cluster.cert_pem, "ca_key": cluster.key_pem});
    let (code, body) = d.http("PUT", "/cluster/tls", Some(&install.to_string()));
    assert_eq!(code, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cluster_pin = cluster.pin().unwrap().to_string();
    assert_eq!(info["pin"], cluster_pin.as_str());
    assert_eq!(info["cluster"], true);
    let cert = std::fs::read_to_string(d.state_dir().join("tls/platform/cert.pem")).unwrap();
    assert!(
        cert.ends_with(&cluster.cert_pem),
        "the platform files follow the CA"
    );
    assert_eq!(
        first_contact_in(&d.netns, &authority, &d.token).unwrap(),
        cluster_pin
    );
    let (code, again) = d.http("PUT", "/cluster/tls", Some(&install.to_string()));
    assert_eq!(code, 200, "{again}");
    assert_eq!(
        std::fs::read_to_string(d.state_dir().join("tls/platform/cert.pem")).unwrap(),
        cert,
        "the same CA again re-issued the certificate"
    );
}
