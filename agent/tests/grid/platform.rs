//! Layer 1 end to end on three netns hosts, everything real: the bootstrap builds
//! Layer 0 and the platform, then, with the `flynn` CLI only (and curl as the
//! user's browser), an app deployed from busybox with web=3 is served through every
//! host's router, spread over its jobs; a new release rolls out under a request
//! loop with no request failed; scaled to 0 the routers say 503, back to 3 they
//! serve; its lines from the three hosts are in `flynn log`; a TCP route works; a
//! websocket app (busybox nc running a shell echo server) answers its handshake and
//! echoes frames through every host's router; the controller's answers (jobs,
//! logs...) match controller/openapi.json; malformed requests get 4xx; a controller
//! instance killed leaves the CLI working; a host lost outright leaves the app
//! serving and its formation whole. Also through the CLI: `log -j` shows one job's
//! lines alone; `run -it` gives a one-off job a terminal (its size followed, its
//! exit code back); a scale-down from 3 to 1 under a request loop fails no request;
//! a sticky route keeps a client with its cookie on one job through every router;
//! a route with its own certificate (`--tls-cert/--tls-key`) is served with it on
//! every router's 443, and a pair that does not match is refused.

use std::process::Command;
use std::time::Duration;

use base64::Engine;

use crate::harness::{Cluster, Flynn, Terminal, sh, wait_for};

pub(crate) const TOKEN: &str = "platform-test-token-0123456789";
const PEERS: &str = "192.0.2.1,192.0.2.2,192.0.2.3";

/// A web process that says which job answered (`/name`) and its release's greeting.
const WEB: &str = "web=mkdir -p /tmp/w && echo $FLYNN_JOB_ID > /tmp/w/name && echo ${GREETING:-hello} > /tmp/w/greeting && echo serving as $FLYNN_JOB_ID && exec httpd -f -p $PORT -h /tmp/w";

fn cluster() -> Cluster {
    let c = Cluster::bare_shared(3, &["--cluster-ttl", "3"], TOKEN);
    for h in &c.hosts {
        h.import_platform_images();
    }
    c
}

/// Bootstraps with `--json`; the controller key.
pub(crate) fn bootstrap(c: &Cluster) -> String {
    let out = c
        .on_switch()
        .args(["bootstrap", "--peers", PEERS, "--timeout", "120", "--json"])
        .env("FLYNN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["step"] == "controller" && e["data"]["key"].is_string())
        .and_then(|e| e["data"]["key"].as_str().map(str::to_string))
        .expect("the controller step's key")
}

/// curl from the switch: (HTTP status, body); status 0 when no answer came.
pub(crate) fn curl(c: &Cluster, args: &[&str]) -> (u16, String) {
    curl_in(&c.switch, args)
}

fn curl_in(switch: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{switch}"))
        .args(["--", "curl", "-sS", "-m", "15", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// curl to the controller through host `n`'s router (port 81), over HTTPS
/// verified against the cluster's CA for the controller's name.
fn curl_controller(c: &Cluster, n: u8, args: &[&str], path: &str) -> (u16, String) {
    let ca = c.host(1).state.path().join("tls/platform/ca.pem");
    let name = "controller.cluster.local";
    let resolve = format!("{name}:81:192.0.2.{n}");
    let url = format!("https://{name}:81{path}");
    let mut all: Vec<&str> = vec!["--cacert", ca.to_str().unwrap(), "--resolve", &resolve];
    all.extend_from_slice(args);
    all.push(&url);
    curl(c, &all)
}

fn get_app(c: &Cluster, host: u8, path: &str) -> (u16, String) {
    curl(
        c,
        &[
            "-H",
            "Host: demo.cluster.local",
            &format!("http://192.0.2.{host}{path}"),
        ],
    )
}

/// Raw bytes to a host's port; the first line of the answer.
fn raw(c: &Cluster, host: u8, port: u16, bytes: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/192.0.2.{host}/{port}; printf '{bytes}' >&3; timeout 5 head -1 <&3"
    );
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.switch))
        .args(["--", "bash", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Hosts (by test number) running a job of `app`/`ty`, as `cluster ps` says.
fn hosts_running(c: &Cluster, via: u8, app: &str, ty: &str) -> Vec<(u8, String)> {
    let ids: Vec<(u8, String)> = (1..=3)
        .filter(|n| c.hosts[usize::from(*n) - 1].child.is_some())
        .map(|n| (n, c.host(n).id()))
        .collect();
    let out = c.host(via).cli(&["cluster", "ps", "--json"]);
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    jobs.iter()
        .filter(|j| j["app"] == app && j["process_type"] == ty && j["state"] == "running")
        .filter_map(|j| {
            let host = j["host"].as_str()?;
            let n = ids.iter().find(|(_, id)| id == host)?.0;
            Some((n, j["id"].as_str()?.to_string()))
        })
        .collect()
}

/// A websocket echo server in busybox: `nc -ll -e` runs `ws.sh` per connection; the
/// script comes in base64 through the environment (a release has no files).
const WS: &str =
    "web=echo \"$WS_SH\" | base64 -d > /tmp/ws.sh && exec nc -ll -p $PORT -e sh /tmp/ws.sh";

/// RFC 6455's example key and the accept a server must answer it with.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A websocket client on the switch (bash's /dev/tcp): the handshake through host
/// `host`'s router as `ws.cluster.local`, then one masked text frame `msg`; what
/// is wrong, if the 101, the accept or the echoed (unmasked) frame is not right.
fn websocket_echo(c: &Cluster, host: u8, msg: &str) -> Result<(), String> {
    let mask = [0x5a, host, 0xc3, msg.len() as u8];
    let mut frame = vec![0x81u8, 0x80 | msg.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(msg.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let escaped: String = frame.iter().map(|b| format!("\\x{b:02x}")).collect();
    let mut want = vec![0x81u8, msg.len() as u8];
    want.extend_from_slice(msg.as_bytes());
    let want: String = want.iter().map(|b| format!("{b:02x}")).collect();
    let script = format!(
        "exec 3<>/dev/tcp/192.0.2.{host}/80 || exit 1
printf 'GET /chat HTTP/1.1\\r\\nHost: ws.cluster.local\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\nSec-WebSocket-Key: {WS_KEY}\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n' >&3
while IFS= read -r -t 10 line <&3; do line=${{line%$'\\r'}}; printf '%s\\n' \"$line\"; [ -z \"$line\" ] && break; done
printf '{escaped}' >&3
printf 'echo: %s\\n' \"$(timeout 10 head -c {} <&3 | od -An -tx1 | tr -d ' \\n')\"",
        msg.len() + 2
    );
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.switch))
        .args(["--", "bash", "-c", &script])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lower = text.to_ascii_lowercase();
    if !text.starts_with("HTTP/1.1 101") {
        return Err(format!("no 101 from router {host}: {text}"));
    }
    if !lower.contains(&format!(
        "sec-websocket-accept: {}\n",
        WS_ACCEPT.to_ascii_lowercase()
    )) {
        return Err(format!("router {host}: not the accept for the key: {text}"));
    }
    if !text.contains(&format!("echo: {want}\n")) {
        return Err(format!(
            "router {host}: not the frame back ({want}): {text}"
        ));
    }
    Ok(())
}

#[test]
fn an_app_is_served_through_every_router_and_survives_a_lost_host() {
    let mut c = cluster();
    let key = bootstrap(&c);
    let f = Flynn::new(&c);
    f.add_cluster(&c, "default", 1, &key);
    f.ok(&["create", "demo"]);
    f.ok(&["-a", "demo", "release", "add", "busybox", "--process", WEB]);
    f.ok(&["-a", "demo", "scale", "web=3"]);

    // Every host's router serves the app, spread over the three jobs.
    let mut seen = std::collections::BTreeSet::new();
    wait_for(
        "the app through every router",
        Duration::from_secs(90),
        || {
            for n in 1..=3 {
                let (code, body) = get_app(&c, n, "/name");
                if code != 200 {
                    return false;
                }
                seen.insert(body.trim().to_string());
            }
            seen.len() == 3
        },
    );
    for _ in 0..10 {
        for n in 1..=3 {
            let (code, body) = get_app(&c, n, "/name");
            assert_eq!(code, 200, "router on host {n}: {body}");
        }
    }

    // Their logs, from the three hosts, through the controller and the aggregators.
    let web_jobs: Vec<String> = hosts_running(&c, 1, "demo", "web")
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(web_jobs.len(), 3);
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let out = f.run(&["-a", "demo", "log", "-t", "web"]);
        text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if web_jobs
            .iter()
            .all(|j| text.contains(&format!("serving as {j}")))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for j in &web_jobs {
        assert!(
            text.contains(&format!("serving as {j}")),
            "job {j} not in flynn log:\n{text}\nagent 1 log:\n{}\naggregators:\n{}",
            c.host(1)
                .log_text()
                .lines()
                .filter(|l| l.contains("logship") || l.contains("aggregator") || l.contains("WARN"))
                .collect::<Vec<_>>()
                .join("\n"),
            hosts_running(&c, 1, "logaggregator", "app")
                .iter()
                .map(
                    |(n, id)| String::from_utf8_lossy(&c.host(*n).cli(&["logs", id]).stdout)
                        .into_owned()
                )
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
    }

    // One job's lines alone: `log -j JOB` (lines read `TIME APP[TYPE.JOB]: text`).
    for one in &web_jobs {
        let out = f.ok(&["-a", "demo", "log", "-j", one]);
        assert!(out.contains(&format!("serving as {one}")), "{out}");
        assert!(
            out.lines()
                .all(|l| l.contains(&format!("demo[web.{one}]: "))),
            "log -j {one} shows other jobs' lines:\n{out}"
        );
        for other in web_jobs.iter().filter(|o| *o != one) {
            assert!(!out.contains(other.as_str()), "log -j {one}:\n{out}");
        }
    }

    // A one-off job followed through the controller's relay, over the same
    // HTTPS (the controller's name verified behind an address).
    assert_eq!(
        f.ok(&["-a", "demo", "run", "echo", "hello over TLS"]),
        "hello over TLS\n"
    );

    // `run -it`: a one-off job with a terminal, anywhere in the cluster, through
    // the controller's relay (attach and resize): its size is the user's, follows
    // a resize, and its exit code is the CLI's.
    let mut cmd = f.command();
    cmd.args(["-a", "demo", "run", "-it", "sh"]);
    let mut term = Terminal::spawn(cmd, 30, 100);
    let wait = Duration::from_secs(60);
    let mut at = term.expect(0, "# ", wait);
    term.type_keys("tty; stty size\r");
    at = term.expect(at, "/dev/pts/", wait);
    at = term.expect(at, "30 100", wait);
    at = term.expect(at, "# ", wait);
    term.resize(40, 120);
    std::thread::sleep(Duration::from_millis(500));
    term.type_keys("stty size\r");
    at = term.expect(at, "40 120", wait);
    term.type_keys("echo job-$((40+2))\r");
    term.expect(at, "job-42", wait);
    term.type_keys("exit 3\r");
    assert_eq!(term.wait(wait), Some(3), "{}", term.screen());

    // The controller's answers with a real cluster behind it (jobs from the
    // scheduler, lines from the aggregators) are as controller/openapi.json says.
    let doc = apidoc::Document::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../controller/openapi.json"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let auth = format!("Authorization: Bearer {key}");
    for (template, path) in [
        ("/apps/{app}", "/apps/demo"),
        ("/apps/{app}/releases", "/apps/demo/releases"),
        ("/apps/{app}/deploys", "/apps/demo/deploys"),
        ("/apps/{app}/formation", "/apps/demo/formation"),
        ("/apps/{app}/jobs", "/apps/demo/jobs"),
        ("/apps/{app}/routes", "/apps/demo/routes"),
        ("/apps", "/apps"),
    ] {
        let (code, body) = curl_controller(&c, 1, &["-H", &auth], path);
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        doc.check("GET", template, code, "application/json", &v)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(code, 200, "GET {path}: {body}");
        if template == "/apps/{app}/jobs" {
            let healthy = v
                .as_array()
                .into_iter()
                .flatten()
                .filter(|j| j["type"] == "web" && j["healthy"] == true)
                .count();
            assert_eq!(healthy, 3, "{v}");
        }
    }
    let (code, body) = curl_controller(&c, 1, &["-H", &auth], "/apps/demo/log?lines=20");
    assert_eq!(code, 200, "{body}");
    assert!(body.lines().count() > 0);
    for line in body.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        doc.check("GET", "/apps/{app}/log", 200, "application/x-ndjson", &v)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    // A new release (env set) rolled out under a request loop through a router:
    // no request fails, and at the end every answer is the new release's.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let switch = c.switch.clone();
    let looping = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (code, body) = curl_in(
                    &switch,
                    &[
                        "-H",
                        "Host: demo.cluster.local",
                        "http://192.0.2.2/greeting",
                    ],
                );
                if code == 200 {
                    ok += 1;
                } else {
                    failed.push(format!("{code} {body}"));
                }
            }
            (ok, failed)
        })
    };
    let out = f.ok(&[
        "-a",
        "demo",
        "env",
        "set",
        "GREETING=hi",
        "--timeout",
        "180",
    ]);
    assert!(out.contains("Deployed release"), "{out}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = looping.join().unwrap();
    assert!(ok > 10, "{ok} requests during the deploy");
    assert!(failed.is_empty(), "failed during the deploy: {failed:?}");
    for _ in 0..10 {
        for n in 1..=3 {
            assert_eq!(get_app(&c, n, "/greeting"), (200, "hi\n".to_string()));
        }
    }

    // A scale-down (3 to 1) under a request loop through every router: the jobs
    // that go leave discovery first and the routers let their requests finish,
    // so no request fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looping = {
        let (stop, switch) = (stop.clone(), c.switch.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut n = 0u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n = n % 3 + 1;
                let url = format!("http://192.0.2.{n}/greeting");
                let (code, body) = curl_in(&switch, &["-H", "Host: demo.cluster.local", &url]);
                if code == 200 {
                    ok += 1;
                } else {
                    failed.push(format!("router {n}: {code} {body}"));
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    f.ok(&["-a", "demo", "scale", "web=1"]);
    wait_for("one web job left", Duration::from_secs(60), || {
        hosts_running(&c, 1, "demo", "web").len() == 1
    });
    // The stopped jobs' drain and exit are behind us; a few more seconds on one job.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = looping.join().unwrap();
    assert!(ok > 10, "{ok} requests during the scale-down");
    assert!(
        failed.is_empty(),
        "failed during the scale-down ({ok} ok): {failed:?}"
    );
    println!("scale-down 3 to 1: {ok} requests through the routers, none failed");

    // Scaled to 0 the routers say 503; back to 3, they serve again.
    f.ok(&["-a", "demo", "scale", "web=0"]);
    wait_for("503 with no web job", Duration::from_secs(60), || {
        get_app(&c, 1, "/greeting").0 == 503
    });
    f.ok(&["-a", "demo", "scale", "web=3"]);
    wait_for("the app back", Duration::from_secs(90), || {
        (1..=3).all(|n| get_app(&c, n, "/greeting").0 == 200)
    });

    // A TCP route, on every host.
    f.ok(&["-a", "demo", "route", "add", "tcp", "--port", "3001"]);
    wait_for("the TCP route", Duration::from_secs(30), || {
        (1..=3).all(|n| curl(&c, &[&format!("http://192.0.2.{n}:3001/name")]).0 == 200)
    });

    // A sticky route added through the CLI: the first answer sets the cookie, and
    // with it every router sends the client to that one job.
    f.ok(&[
        "-a",
        "demo",
        "route",
        "add",
        "http",
        "sticky.example.com",
        "--sticky",
    ]);
    let sticky_get = |n: u8, cookie: Option<&str>| {
        let url = format!("http://192.0.2.{n}/name");
        let mut args = vec!["-i", "-H", "Host: sticky.example.com"];
        let header;
        if let Some(c) = cookie {
            header = format!("Cookie: {c}");
            args.extend(["-H", header.as_str()]);
        }
        args.push(&url);
        curl(&c, &args)
    };
    wait_for("the sticky route", Duration::from_secs(30), || {
        (1..=3).all(|n| sticky_get(n, None).0 == 200)
    });
    let split = |text: &str| -> (Option<String>, String) {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let cookie = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            if !name.eq_ignore_ascii_case("set-cookie") {
                return None;
            }
            value.trim().split(';').next().map(str::to_string)
        });
        (cookie, body.trim().to_string())
    };
    let (code, text) = sticky_get(1, None);
    assert_eq!(code, 200, "{text}");
    let (cookie, first) = split(&text);
    let cookie = cookie.unwrap_or_else(|| panic!("no cookie from a sticky route: {text}"));
    assert!(cookie.starts_with("_flynn_route="), "{cookie}");
    // Without the cookie the answers spread over the jobs...
    let mut unstuck = std::collections::BTreeSet::new();
    for _ in 0..10 {
        for n in 1..=3 {
            unstuck.insert(split(&sticky_get(n, None).1).1);
        }
    }
    assert!(
        unstuck.len() > 1,
        "no spread without the cookie: {unstuck:?}"
    );
    // ...with it, every answer of every router is the first job's.
    for _ in 0..10 {
        for n in 1..=3 {
            let (code, text) = sticky_get(n, Some(&cookie));
            assert_eq!(code, 200, "{text}");
            assert_eq!(split(&text).1, first, "router {n} with the cookie");
        }
    }

    // A route with its own certificate (the user's CA, not the cluster's),
    // served on every router's 443 for its name; a pair that does not match is
    // refused with the reason, and nothing is routed for it.
    let certs = tempfile::tempdir().unwrap();
    let user_ca = flynn_tls::Ca::generate("user").unwrap();
    let day = Duration::from_secs(86_400);
    let secure = user_ca
        .issue("secure", &["secure.example.com".to_string()], day)
        .unwrap();
    let other = user_ca
        .issue("other", &["secure.example.com".to_string()], day)
        .unwrap();
    let file = |name: &str, text: &str| {
        let p = certs.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (cert_f, key_f, other_key_f, ca_f) = (
        file("cert.pem", &secure.chain_pem),
        file("key.pem", &secure.key_pem),
        file("other.pem", &other.key_pem),
        file("ca.pem", &user_ca.cert_pem),
    );
    let out = f.run(&[
        "-a",
        "demo",
        "route",
        "add",
        "http",
        "secure.example.com",
        "--tls-cert",
        &cert_f,
        "--tls-key",
        &other_key_f,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the key does not go with the certificate"),
        "{err}"
    );
    f.ok(&[
        "-a",
        "demo",
        "route",
        "add",
        "http",
        "secure.example.com",
        "--tls-cert",
        &cert_f,
        "--tls-key",
        &key_f,
    ]);
    let https = |n: u8| {
        let resolve = format!("secure.example.com:443:192.0.2.{n}");
        curl(
            &c,
            &[
                "--cacert",
                &ca_f,
                "--resolve",
                &resolve,
                "https://secure.example.com/greeting",
            ],
        )
    };
    wait_for(
        "the route's certificate on every router",
        Duration::from_secs(30),
        || (1..=3).all(|n| https(n) == (200, "hi\n".to_string())),
    );

    // A websocket app: the handshake and frames both ways through every router.
    let script = base64::engine::general_purpose::STANDARD.encode(include_str!("ws.sh"));
    f.ok(&["create", "ws"]);
    f.ok(&[
        "-a",
        "ws",
        "release",
        "add",
        "busybox",
        "--env",
        &format!("WS_SH={script}"),
        "--process",
        WS,
    ]);
    f.ok(&["-a", "ws", "scale", "web=2"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while let Err(e) = (1..=3).try_for_each(|n| websocket_echo(&c, n, "ready?")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the websocket app through every router, after 90 s: {e}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for round in 0..3 {
        for n in 1..=3 {
            let msg = format!("hello {round} through router {n}");
            websocket_echo(&c, n, &msg).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    // Malformed requests get 4xx, and everything keeps serving.
    let line = raw(&c, 1, 80, "GARBAGE\\r\\n\\r\\n");
    assert!(line.starts_with("HTTP/1.1 400"), "router: {line:?}");
    let (code, body) = curl_controller(
        &c,
        2,
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {key}"),
            "-d",
            "{not json",
        ],
        "/apps",
    );
    assert_eq!(code, 400, "controller: {body}");
    assert!(body.contains("error"), "{body}");
    let (code, _) = curl_controller(&c, 2, &[], "/apps");
    assert_eq!(code, 401, "no key");
    assert_eq!(get_app(&c, 2, "/name").0, 200);

    // A controller instance killed: the CLI keeps working through the routers.
    let controllers = hosts_running(&c, 1, "controller", "web");
    assert_eq!(controllers.len(), 2, "{controllers:?}");
    let (on, job) = &controllers[0];
    c.host(*on).ok(&["kill", "-s", "KILL", job]);
    for _ in 0..10 {
        let apps = f.ok(&["apps"]);
        assert!(apps.contains("demo"), "{apps}");
    }

    // Host 3 lost outright: its link cut and every process of it killed.
    let lost = c.host(3).id();
    sh(&["ip", "-n", &c.switch, "link", "set", "p3", "down"]);
    c.host_mut(3).kill9();
    for pid in sh(&["ip", "netns", "pids", &c.host(3).netns]).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    // Requests through the routers left keep succeeding (a backend that does not
    // answer is retried elsewhere) while discovery drops host 3's jobs...
    for _ in 0..10 {
        for n in 1..=2 {
            let (code, body) = get_app(&c, n, "/name");
            assert_eq!(code, 200, "router on host {n} after the loss: {body}");
        }
    }
    // ...and the formation is whole again on the others.
    wait_for(
        "3 web jobs on hosts 1 and 2",
        Duration::from_secs(60),
        || {
            let on = hosts_running(&c, 1, "demo", "web");
            on.len() == 3 && on.iter().all(|(n, _)| *n != 3)
        },
    );
    assert!(!c.host(1).hosts().iter().any(|h| h["id"] == lost.as_str()));
    for _ in 0..10 {
        for n in 1..=2 {
            assert_eq!(get_app(&c, n, "/name").0, 200);
        }
    }
    assert!(f.ok(&["apps"]).contains("demo"));
    // The logs are still there (an aggregator may have been on host 3), and the
    // replacement job's too.
    let now: Vec<String> = hosts_running(&c, 1, "demo", "web")
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    wait_for(
        "every line in flynn log after the loss",
        Duration::from_secs(60),
        || {
            let out = f.run(&["-a", "demo", "log"]);
            let text = String::from_utf8_lossy(&out.stdout);
            web_jobs
                .iter()
                .chain(&now)
                .all(|j| text.contains(&format!("serving as {j}")))
        },
    );
}
