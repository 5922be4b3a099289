//! schemathesis (PyPI, installed by scripts/deps.sh) against a live daemon, from
//! `agent/openapi.json`: generated requests (valid ones and broken ones) to every
//! operation, with the token, and every check it has: no 5xx, status codes, content
//! types, headers and bodies as documented, broken input refused, 405 with `Allow`,
//! requests without the token refused. Then the daemon must still answer and its log
//! must hold no panic.
//!
//! The daemon runs in a network namespace of its own (the harness's), so requests to
//! pull from made-up registries or to probe made-up hosts go nowhere. No image is
//! imported: generated jobs are refused before anything (a volume's host directory, say)
//! would be created on this machine.
//!
//! Bounded for the suite: `FLYNN_SCHEMATHESIS_EXAMPLES` cases per operation in the fuzzing
//! phase (default 25), plus the examples and coverage phases; `scripts/fuzz.sh` runs more.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;

use common::Daemon;

fn schemathesis() -> PathBuf {
    let venv = std::env::var_os("FLYNN_VENV")
        .map_or_else(|| PathBuf::from("/var/tmp/flynn-venv"), PathBuf::from);
    let bin = venv.join("bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/deps.sh as root (it installs schemathesis into a venv)",
        bin.display()
    );
    bin
}

#[test]
fn schemathesis_finds_nothing() {
    let bin = schemathesis();
    let d = Daemon::start();
    let examples = std::env::var("FLYNN_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into());
    let report = d.state_dir().join("schemathesis");
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", d.netns))
        .arg("--")
        .arg(&bin)
        .arg("--config-file")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis.toml"))
        .arg("run")
        .arg(spec)
        .args(["--url", &d.url()])
        .args(["-H", &format!("Authorization: Bearer {}", d.token)])
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &examples])
        .args(["--seed", "23"])
        .args(["--request-timeout", "20"])
        .args(["--workers", "2"])
        // Streams that last as long as the client stays (events, watches, attach) are
        // covered by their own tests; here they would only time out.
        .args(["--exclude-path", "/events"])
        .args(["--exclude-path-regex", "/watch$|/attach$"])
        .arg("--report")
        .arg("junit")
        .arg("--report-dir")
        .arg(&report)
        // Its cache goes where the daemon's state goes, not into the source tree.
        .current_dir(d.state_dir())
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1")
        .output()
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The summary (operations tested, test cases, failures), for the log of the suite:
    // each heading's indented lines.
    let mut summary = Vec::new();
    let mut heading = false;
    for line in stdout.lines() {
        let trimmed = line.trim();
        if ["API Operations:", "Test cases:", "Failures:"].contains(&trimmed) {
            heading = true;
            summary.push(trimmed.to_owned());
        } else if heading && line.starts_with("  ") && !trimmed.is_empty() {
            summary.push(trimmed.to_owned());
        } else {
            heading = false;
        }
    }
    let _ = writeln!(std::io::stderr(), "schemathesis: {}", summary.join(" "));
    let log = d.log_text();
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}\ndaemon log tail:\n{}",
        common::tail(&log, 40)
    );
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    let (status, _) = d.http("GET", "/version", None);
    assert_eq!(status, 200, "the daemon stopped answering");
}

/// A raw request; returns the whole response head and body.
fn raw(d: &Daemon, method: &str, path: &str, body: &str) -> String {
    let mut s = d.connect().expect("connecting to the daemon");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        d.token,
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// What schemathesis found, each pinned so that it stays fixed.
#[test]
fn findings_stay_fixed() {
    let d = Daemon::start();
    // A 405 says which methods the resource has (RFC 9110).
    let r = raw(&d, "PUT", "/jobs", "");
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("allow: get, post\r\n"),
        "{r}"
    );
    let r = raw(&d, "PATCH", "/jobs/x/exec/y", "");
    assert!(r.to_ascii_lowercase().contains("allow: get\r\n"), "{r}");
    // Boolean query parameters are exactly true or false, as documented.
    for flag in ["1", "yes", "", "TRUE"] {
        let (status, body) = d.http("GET", &format!("/jobs?all={flag}"), None);
        assert_eq!(status, 400, "all={flag}: {body}");
    }
    assert_eq!(d.http("GET", "/jobs?all=false", None).0, 200);
    // Port 0 is no port.
    let (status, text) = d.http(
        "POST",
        "/host/probe/listen",
        Some(r#"{"port": 0, "nonce": "abcdefghabcdefgh", "timeout_ms": 10}"#),
    );
    assert_eq!(status, 400, "{text}");
    let (status, text) = d.http(
        "POST",
        "/host/probe/send",
        Some(r#"{"address": "127.0.0.1", "tcp_port": 0, "udp_port": 9, "nonce": "abcdefghabcdefgh"}"#),
    );
    assert_eq!(status, 400, "{text}");
    let (status, text) = d.http(
        "POST",
        "/jobs",
        Some(r#"{"image": "busybox", "ports": [{"host_port": 8080, "container_port": 0, "protocol": "tcp"}]}"#),
    );
    assert_eq!(status, 400, "{text}");
    // A path the kernel cannot take is the caller's mistake.
    for path in [r#""/tmp/a\u0000b""#, r#""relative/archive.tar""#] {
        let (status, text) = d.http(
            "POST",
            "/images/import",
            Some(&format!(r#"{{"path": {path}}}"#)),
        );
        assert_eq!(status, 400, "{path}: {text}");
    }
    // A join this host cannot make (here: no default route to take its cluster address
    // from, in the test's namespace) is refused before anything changes: it was a 500
    // that left the host half in cluster c1, refusing any other.
    let (status, text) = d.http(
        "PUT",
        "/cluster/join",
        Some(r#"{"cluster_id": "c1", "etcd": ["http://127.0.0.1:1"]}"#),
    );
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("--advertise"), "{text}");
    let (_, info) = d.http("GET", "/cluster", None);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["cluster_id"], serde_json::Value::Null, "{info}");
    let (status, text) = d.http(
        "PUT",
        "/cluster/join",
        Some(r#"{"cluster_id": "c2", "etcd": ["http://127.0.0.1:1"]}"#),
    );
    assert_eq!(status, 409, "{text}");
    assert!(!text.contains("this host is in cluster"), "{text}");
    assert!(!d.log_text().contains("panicked"));
}
