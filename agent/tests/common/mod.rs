//! Shared harness for the agent's end-to-end tests: builds the fixture images
//! once, starts a real daemon on a free port with its own state dir, and runs
//! the real `flynn-host` binary as the CLI.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_flynn-host");

/// The fixture images (built by fixtures/build-images.sh on first use).
pub fn fixtures() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = match std::env::var_os("FLYNN_FIXTURES") {
            Some(dir) => PathBuf::from(dir),
            None => root.join("target").join("fixtures"),
        };
        let status = Command::new("bash")
            .arg(root.join("fixtures/build-images.sh"))
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .expect("running fixtures/build-images.sh");
        assert!(status.success(), "building the fixture images failed");
        out
    })
    .clone()
}

pub struct Daemon {
    pub child: Option<Child>,
    /// The binary the daemon runs (a copy, for upgrade tests).
    pub bin: PathBuf,
    /// The network namespace the daemon (and its CLI) run in: created by the test,
    /// so that the host's own networking is never touched.
    pub netns: String,
    pub state: tempfile::TempDir,
    pub addr: String,
    /// The API token (read from the state dir once the daemon is up).
    pub token: String,
    /// More daemon flags (e.g. `--config FILE`) and environment, kept across restarts.
    pub extra_args: Vec<String>,
    pub extra_env: Vec<(String, String)>,
    log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free port")
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_from(Path::new(BIN))
    }

    /// Starts a daemon running `bin` (which a test may replace to upgrade it).
    pub fn start_from(bin: &Path) -> Daemon {
        Daemon::start_with(bin, &[], &[])
    }

    /// Starts a daemon with more flags and environment (kept across restarts).
    pub fn start_with(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_listening(bin, "127.0.0.1", args, env)
    }

    /// `start_with`, the API listening on `ip` (e.g. 0.0.0.0: every address of the
    /// daemon's namespace, the jobs' bridge included); clients still use loopback.
    pub fn start_listening(bin: &Path, ip: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let addr = format!("{ip}:{}", free_port());
        Daemon::start_full(new_netns(), addr, bin, None, args, env)
    }

    /// A daemon whose state dir is a tmpfs of `size` (e.g. "24m"): a small disk
    /// to fill. Unmounted with the rest when the daemon is dropped.
    pub fn start_on_small_disk(size: &str) -> Daemon {
        let addr = format!("127.0.0.1:{}", free_port());
        Daemon::start_full(new_netns(), addr, Path::new(BIN), Some(size), &[], &[])
    }

    /// Starts a daemon listening on `addr` in `netns` (made by [`new_netns`],
    /// then given what the test needs, e.g. an address off loopback).
    pub fn start_in(
        netns: String,
        addr: String,
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::start_full(netns, addr, bin, None, args, env)
    }

    fn start_full(
        netns: String,
        addr: String,
        bin: &Path,
        tmpfs: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let state = tempfile::Builder::new()
            .prefix("flynn-test-")
            .tempdir_in("/var/tmp")
            .expect("creating a state dir");
        if let Some(size) = tmpfs {
            let ok = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0711"),
                    "flynn-small",
                ])
                .arg(state.path())
                .status()
                .expect("mount");
            assert!(ok.success(), "mounting a tmpfs on the state dir");
        }
        let mut daemon = Daemon {
            child: None,
            bin: bin.to_path_buf(),
            netns,
            // Beside a small disk, not on it: the test fills it.
            log: match tmpfs {
                Some(_) => state.path().with_extension("log"),
                None => state.path().join("daemon.log"),
            },
            state,
            addr,
            token: String::new(),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        daemon.spawn();
        daemon
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.state.path().join("host.sock")
    }

    /// Starts (or restarts) the daemon process on the same state dir and address.
    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    /// `spawn`, with more environment for the daemon (e.g. FLYNN_FAILPOINTS).
    pub fn spawn_with(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the daemon log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(&self.bin)
            .args(["daemon", "--state-dir"])
            .arg(self.state.path())
            .args(["--listen", &self.addr])
            .arg("--socket")
            .arg(self.socket())
            .args(&self.extra_args)
            .env("FLYNN_LOG", "debug")
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting the daemon");
        self.child = Some(child);
        // Ready means serving: the token is written, and a request is answered.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(token) = std::fs::read_to_string(self.state.path().join("token"))
                && let Some(stream) = connect_in(&self.netns, &self.addr)
                && probe_version(stream, token.trim())
            {
                self.token = token.trim().to_string();
                break;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none(),
                "daemon exited ({exited:?}) before serving; log:\n{}\nsockets in its namespace:\n{}",
                self.log_text(),
                self.listeners()
            );
            assert!(
                Instant::now() < deadline,
                "daemon did not start serving; log:\n{}\nsockets in its namespace:\n{}",
                self.log_text(),
                self.listeners()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ss -tanpe` in the daemon's network namespace: who holds its address when a
    /// restart cannot listen.
    fn listeners(&self) -> String {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "ss", "-tanpe"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("ss: {e}"))
    }

    /// The pid of the process serving now (it changes when the daemon upgrades).
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state.path().join("daemon.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    pub fn kill9(&mut self) {
        // A daemon that upgraded itself is no longer our child.
        if let Some(pid) = self.pid()
            && self.child.as_ref().map(|c| c.id() as i32) != Some(pid)
            && self.child.is_some()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the daemon to die by itself (a failpoint); panics after 20 s.
    pub fn wait_dead(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not die at its failpoint"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The CLI (`bin`), run in the daemon's network namespace, pointed at it.
    pub fn command_with(&self, bin: &Path) -> Command {
        // nsenter enters only the network namespace (`ip netns exec` would also
        // remount /sys, hiding the cgroup mounts).
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(bin)
            .env("FLYNN_HOST", self.url())
            .env("FLYNN_TOKEN", &self.token);
        cmd
    }

    pub fn command(&self) -> Command {
        self.command_with(Path::new(BIN))
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running flynn-host")
    }

    /// Runs the CLI and asserts it succeeded; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "flynn-host {args:?} failed ({:?})\nstdout: {}\nstderr: {}\ndaemon log tail:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log_text(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `run -d ARGS...`: the new job's id.
    pub fn run_detached(&self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        self.ok(&all).trim().to_string()
    }

    pub fn import_busybox(&self) {
        let archive = fixtures().join("busybox-docker.tar");
        self.ok(&["import", archive.to_str().expect("utf-8 path")]);
    }

    /// The record of a job, via `inspect`.
    pub fn inspect(&self, id: &str) -> serde_json::Value {
        let out = self.ok(&["inspect", id]);
        let mut all: Vec<serde_json::Value> = serde_json::from_str(&out).expect("inspect JSON");
        all.remove(0)
    }

    /// A raw HTTP/1.1 request with the token; returns (status, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.http_with(method, path, body, Some(&self.token))
    }

    /// A raw HTTP/1.1 request with the given token, if any.
    pub fn http_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, String) {
        let stream = self.connect().expect("connecting to the daemon");
        http_on(stream, method, path, body, token)
    }

    /// A TCP connection to the daemon, from inside its network namespace.
    pub fn connect(&self) -> Option<TcpStream> {
        connect_in(&self.netns, &self.addr)
    }

    /// Polls `inspect` until `pred` holds (for state the test itself caused).
    pub fn wait_until(&self, id: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The job may not exist yet (created by a command still starting).
            let out = self.cli(&["inspect", id]);
            let job = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
                .ok()
                .and_then(|mut all| (!all.is_empty()).then(|| all.remove(0)));
            if let Some(job) = &job
                && pred(job)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {job:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Leave nothing running: remove every job through the API.
            let out = self.cli(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.cli(&["rm", "-f", id]);
            }
        }
        self.kill9();
        if !self.log.starts_with(self.state.path()) {
            let _ = std::fs::remove_file(&self.log);
        }
        for mount in mounts_under(self.state.path()) {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// A fresh network namespace (`ip netns add`) with loopback up.
pub fn new_netns() -> String {
    let mut bytes = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("random");
    let name = format!(
        "flynn-t-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let ok = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .expect("ip netns add");
    assert!(ok.success(), "ip netns add {name}");
    let ok = Command::new("ip")
        .args(["-n", &name, "link", "set", "lo", "up"])
        .status()
        .expect("ip link");
    assert!(ok.success());
    name
}

/// Connects to `addr` from inside network namespace `netns`: the socket is made on a
/// thread that entered the namespace, and lives there wherever it is used.
pub fn connect_in(netns: &str, addr: &str) -> Option<TcpStream> {
    let path = format!("/run/netns/{netns}");
    let addr = addr.to_string();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).ok()?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        TcpStream::connect(&addr).ok()
    })
    .join()
    .ok()
    .flatten()
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Mount points at or under `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Whether `GET /version` answers 200 on `stream`. A readiness probe: a connection
/// that is reset or closed (a daemon killed a moment ago, or one still starting)
/// is "not yet", not a failure.
fn probe_version(mut stream: TcpStream, token: &str) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "GET /version HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line).is_ok()
        && status_line.split(' ').nth(1) == Some("200")
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
pub fn http_on(
    mut stream: TcpStream,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String) {
    let addr = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("sending");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let mut chunked = false;
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower == "transfer-encoding: chunked" {
            chunked = true;
        }
        if let Some(v) = lower.strip_prefix("content-length: ") {
            length = v.parse::<usize>().ok();
        }
    }
    let mut data = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size hex");
            if n == 0 {
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk).expect("chunk");
            data.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        data.resize(n, 0);
        reader.read_exact(&mut data).expect("body");
    } else {
        reader.read_to_end(&mut data).expect("body");
    }
    (status, String::from_utf8_lossy(&data).into_owned())
}

/// A subscription to `GET /events`, collected by a thread.
pub struct Events {
    seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Events {
    /// Subscribes and returns once the daemon says the subscription is live.
    pub fn subscribe(d: &Daemon) -> Events {
        let mut stream = d.connect().expect("connecting for events");
        write!(
            stream,
            "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            d.token
        )
        .expect("requesting events");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while !line.starts_with(": subscribed") {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("the event stream ended before it was live");
            }
        }
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if let Some(data) = line.strip_prefix("data: ")
                    && let Ok(event) = serde_json::from_str(data.trim())
                {
                    sink.lock().unwrap().push(event);
                }
            }
        });
        Events { seen }
    }

    /// Events so far for job `id` with `action`.
    pub fn of(&self, id: &str, action: &str) -> Vec<serde_json::Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["id"] == id && e["action"] == action)
            .cloned()
            .collect()
    }

    /// Waits until `n` events for `id` with `action` have been seen.
    pub fn wait_for(
        &self,
        id: &str,
        action: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.of(id, action);
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "saw {} of {n} {action} events for {id}",
                found.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
