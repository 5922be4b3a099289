//! Exhaustion: what a greedy client or job can take from the host, and what it
//! cannot. A slowloris client holding more half-sent requests than the API has
//! connection places; a thousand API calls at once; a fork bomb in a job with a
//! pids limit; a job's chatty output against `--log-opt max-size/max-file`; a full
//! state disk (a small tmpfs) under an import, a pull and a job's log. Each ends with the
//! daemon answering. Figures are printed (`--nocapture`). Needs root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;
#[path = "support/registry.rs"]
mod registry;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Daemon, fixtures, http_on};

/// Runs `f` on a thread inside the daemon's network namespace.
fn in_netns<T: Send + 'static>(d: &Daemon, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", d.netns);
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// `GET /version` on a fresh connection: the time it took and the status.
fn timed_version(d: &Daemon) -> (Duration, u16) {
    let started = Instant::now();
    let stream = d.connect().expect("connecting");
    let (status, _) = http_on(stream, "GET", "/version", None, Some(&d.token));
    (started.elapsed(), status)
}

#[test]
fn a_slowloris_client_cannot_hold_the_api() {
    raise_nofile();
    let d = Daemon::start();
    let addr = d.addr.clone();
    // More half-sent requests than the API has places for TCP connections (1024).
    const HELD: usize = 1200;
    let held: Vec<TcpStream> = in_netns(&d, move || {
        (0..HELD)
            .filter_map(|_| {
                let mut s = TcpStream::connect(&addr).ok()?;
                s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n").ok()?;
                Some(s)
            })
            .collect()
    });
    println!(
        "slowloris: {} connections held with half-sent headers",
        held.len()
    );
    assert!(
        held.len() >= 1100,
        "the kernel took only {} connections",
        held.len()
    );
    // A byte more on some of them, as a slowloris client does.
    for s in held.iter().take(100) {
        let _ = (&*s).write_all(b"X");
    }
    // A real client is served at once: it takes the place of a held connection.
    let (took, status) = timed_version(&d);
    println!("slowloris: a new client was served in {took:?}");
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Past the header time-out (10 s), the server has closed what it kept.
    std::thread::sleep(Duration::from_secs(12));
    let mut closed = 0;
    for mut s in held {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(_) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            Err(_) => {}
        }
    }
    println!("slowloris: {closed} held connections closed by the server after the header time-out");
    assert!(closed >= 1100, "{closed}");
    let (took, status) = timed_version(&d);
    assert_eq!(status, 200, "{took:?}");
}

#[test]
fn a_thousand_concurrent_calls_are_all_answered() {
    raise_nofile();
    let d = Daemon::start();
    d.import_busybox();
    let addr = d.addr.clone();
    let token = d.token.clone();
    let (statuses, took) = in_netns(&d, move || {
        let started = Instant::now();
        let paths = ["/version", "/jobs", "/images", "/host/status"];
        let mut streams: Vec<TcpStream> = (0..1000)
            .map(|i| {
                let mut s = TcpStream::connect(&addr).unwrap();
                let req = format!(
                    "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
                    paths[i % paths.len()]
                );
                s.write_all(req.as_bytes()).unwrap();
                s
            })
            .collect();
        let statuses: Vec<u16> = streams
            .iter_mut()
            .map(|s| {
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line).unwrap();
                line.split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        (statuses, started.elapsed())
    });
    let ok = statuses.iter().filter(|s| **s == 200).count();
    println!(
        "concurrency: {ok} of {} calls answered 200 in {took:?}",
        statuses.len()
    );
    assert_eq!(
        ok,
        1000,
        "{:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
}

#[test]
fn a_fork_bomb_with_a_pids_limit_leaves_the_api_answering() {
    let d = Daemon::start();
    d.import_busybox();
    let id = d.run_detached(&[
        "--pids-limit",
        "64",
        "busybox",
        "sh",
        "-c",
        "b() { b | b & }; b; sleep 3600",
    ]);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let (took, status) = timed_version(&d);
        assert_eq!(status, 200);
        let t = Instant::now();
        let (status, _) = d.http("GET", "/jobs", None);
        assert_eq!(status, 200);
        slowest = slowest.max(took).max(t.elapsed());
        calls += 2;
        std::thread::sleep(Duration::from_millis(100));
    }
    let job = d.inspect(&id);
    assert_eq!(job["state"], "running", "{job}");
    let pids = pids_current(&d, &id);
    println!("fork bomb: {calls} API calls, slowest {slowest:?}; the job holds {pids:?} pids");
    if let Some(p) = pids {
        assert!(p <= 64, "{p}");
    }
    assert!(slowest < Duration::from_secs(3), "{slowest:?}");
    d.ok(&["rm", "-f", &id]);
}

/// The job's `pids.current`, from its cgroup (v2 or v1), if it can be found.
fn pids_current(d: &Daemon, id: &str) -> Option<u64> {
    let pid = d.inspect(id)["pid"].as_i64()?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = match ctrl {
            "" => format!("/sys/fs/cgroup{path}/pids.current"),
            c if c.split(',').any(|c| c == "pids") => {
                format!("/sys/fs/cgroup/pids{path}/pids.current")
            }
            _ => continue,
        };
        if let Ok(text) = std::fs::read_to_string(&file) {
            return text.trim().parse().ok();
        }
    }
    None
}

fn log_files(d: &Daemon, id: &str) -> Vec<(String, u64)> {
    let dir = d.state_dir().join("jobs").join(id);
    let mut out: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("log.json"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn job_logs_rotate_by_max_size_and_max_file() {
    let d = Daemon::start();
    d.import_busybox();
    // 20 MB of output, then a last line.
    let id = d.run_detached(&[
        "--log-opt",
        "max-size=1m",
        "--log-opt",
        "max-file=3",
        "busybox",
        "sh",
        "-c",
        "yes 0123456789012345678901234567890123456789012345678 | head -c 20000000; echo the-last-line",
    ]);
    d.wait_until(&id, "the chatty job's exit", |j| j["state"] == "exited");
    let files = log_files(&d, &id);
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    println!("log rotation: 20 MB of output kept in {total} bytes: {files:?}");
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.iter().all(|(_, n)| *n <= 1 << 20), "{files:?}");
    let out = d.ok(&["logs", "--tail", "2", &id]);
    assert!(out.contains("the-last-line"), "{out}");
    assert_eq!(d.inspect(&id)["config"]["log_opts"]["max-size"], "1m");

    // Bad options are refused with what to give.
    let out = d.cli(&["run", "--log-opt", "max-size=lots", "busybox", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max-size") && err.contains("10m"), "{err}");

    // A follower goes on reading across rotations (a file every ~1000 lines; the
    // writer pauses now and then, as a follower that falls two files behind loses
    // the one between, as with Docker).
    let id = d.run_detached(&[
        "--log-opt",
        "max-size=64k",
        "--log-opt",
        "max-file=2",
        "busybox",
        "sh",
        "-c",
        "sleep 1; i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); [ $((i % 200)) -eq 0 ] && sleep 0.2; done; echo follow-end",
    ]);
    let out = d.ok(&["logs", "-f", &id]);
    assert!(out.contains("follow-end"), "{}", common::tail(&out, 3));
    assert!(out.contains("line-2999"));
}

#[test]
fn a_full_state_disk_gives_clear_errors_and_leaves_the_store_whole() {
    let d = Daemon::start_on_small_disk("24m");
    // The big image (busybox + 32 MiB) does not fit: a 507 that says what to do.
    let big = fixtures().join("big-oci");
    let (status, body) = d.http(
        "POST",
        "/images/import",
        Some(&format!(r#"{{"path": "{}"}}"#, big.display())),
    );
    println!("full disk: import answered {status}: {body}");
    assert_eq!(status, 507, "{body}");
    assert!(
        body.contains("No space") && body.contains("free space"),
        "{body}"
    );
    // Nothing half-imported is listed, and the store takes a fitting image after.
    let images = d.ok(&["images"]);
    assert!(!images.contains("big"), "{images}");

    // The same image pulled from a registry: the pull's stream ends in an error that
    // names the full disk, and nothing of it stays behind (no temp file, no layer
    // without its record).
    let reg = registry::Registry::start(&d.netns, "127.0.0.1", registry::Auth::None);
    reg.push(
        &format!("oci:{}:big", big.display()),
        "flynn/big:1",
        None,
        false,
    );
    let reference = format!("{}/flynn/big:1", reg.addr);
    let (status, text) = d.http(
        "POST",
        "/images/pull",
        Some(&format!(r#"{{"reference": "{reference}"}}"#)),
    );
    println!(
        "full disk: pull answered {status}, last event: {}",
        text.lines().last().unwrap_or("")
    );
    let last: serde_json::Value = if status == 200 {
        serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap()
    } else {
        serde_json::from_str(&text).unwrap()
    };
    let error = last["error"].as_str().unwrap_or_default();
    assert!(
        status == 507 || last["status"] == "error",
        "the pull did not fail: {status} {text}"
    );
    assert!(
        error.contains("No space") && error.contains("free space"),
        "{error}"
    );
    let images = d.ok(&["images"]);
    assert!(!images.contains("big"), "{images}");
    let store = d.state_dir().join("images");
    let tmp: Vec<_> = std::fs::read_dir(store.join("tmp"))
        .map(|r| r.collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "temp files left by the pull: {tmp:?}");
    for entry in std::fs::read_dir(store.join("layers")).unwrap() {
        let path = entry.unwrap().path();
        assert!(
            path.join("layer.json").is_file(),
            "a layer without its record: {}",
            path.display()
        );
    }
    d.import_busybox();
    let out = d.ok(&["run", "--rm", "busybox", "echo", "fits"]);
    assert!(out.contains("fits"), "{out}");

    // A job's log on a full disk: the job runs to its end, the daemon answers.
    let id = d.run_detached(&[
        "busybox",
        "sh",
        "-c",
        "yes 0123456789012345678901234567890123456789 | head -c 40000000; echo done",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = d.cli(&["inspect", &id]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("\"exited\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not exit: {text}\n{}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            common::tail(&d.log_text(), 20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(d.inspect(&id)["exit"]["exit_code"], 0);
    let (took, status) = timed_version(&d);
    println!("full disk: the API answered in {took:?} with the disk full");
    assert_eq!(status, 200);
    // Its log is readable (what fitted), and removing the job frees it, however
    // full the disk is; a new job logs again.
    let out = d.cli(&["logs", "--tail", "1", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.ok(&["rm", "-f", &id]);
    let out = d.ok(&["run", "--rm", "busybox", "echo", "after"]);
    assert!(out.contains("after"), "{out}");
}
