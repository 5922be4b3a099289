//! A cluster of test hosts on one machine: a "switch" network namespace with a bridge
//! (and the test's etcd on it, 192.0.2.254), and one namespace per host joined to it by
//! a veth pair (192.0.2.N), each running its own agent with its own state dir. Every
//! address used is inside namespaces the harness made; the host's own interfaces are
//! never touched. Shared by the grid tests and the grid benchmark.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_flynn-host");
pub const ETCD_IP: &str = "192.0.2.254";

pub fn fixtures() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
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

/// The `flynn/host:<version>` image of the binary under test (built once per run).
pub fn host_image() -> PathBuf {
    static IMG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    IMG.get_or_init(|| {
        let dir = fixtures();
        let out = dir.join("flynn-host-docker.tar");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new("bash")
            .arg(root.join("fixtures/build-host-image.sh"))
            .arg(BIN)
            .arg(&out)
            .arg(env!("CARGO_PKG_VERSION"))
            .arg(&dir)
            .status()
            .expect("running fixtures/build-host-image.sh");
        assert!(status.success(), "building the flynn/host image failed");
        out
    })
    .clone()
}

/// The `flynn/slugbuilder:<version>` image (the git receiver, builds and slugs'
/// stack: `fixtures/build-stack-image.sh` on the host image; built once per run).
pub fn stack_image() -> PathBuf {
    static IMG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    IMG.get_or_init(|| {
        let host = host_image();
        let out = fixtures().join("slugbuilder-docker.tar");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new("bash")
            .arg(root.join("fixtures/build-stack-image.sh"))
            .arg(&host)
            .arg(&out)
            .arg(env!("CARGO_PKG_VERSION"))
            .status()
            .expect("running fixtures/build-stack-image.sh");
        assert!(
            status.success(),
            "building the flynn/slugbuilder image failed"
        );
        out
    })
    .clone()
}

/// Runs a command; panics with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn random_name(prefix: &str) -> String {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("random");
    format!(
        "{prefix}{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

pub fn new_netns(prefix: &str) -> String {
    let name = random_name(prefix);
    sh(&["ip", "netns", "add", &name]);
    sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
    name
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The test's etcd (Debian's), on the switch.
pub struct EtcdProc {
    child: Option<Child>,
    netns: String,
    pub data: tempfile::TempDir,
}

impl EtcdProc {
    pub fn start(netns: &str) -> EtcdProc {
        let data = tempfile::Builder::new()
            .prefix("flynn-etcd-")
            .tempdir_in("/var/tmp")
            .expect("etcd data dir");
        let mut e = EtcdProc {
            child: None,
            netns: netns.to_string(),
            data,
        };
        e.spawn();
        e
    }

    pub fn spawn(&mut self) {
        let client = format!("http://{ETCD_IP}:2379");
        let peer = format!("http://{ETCD_IP}:2380");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("etcd.log"))
            .expect("etcd log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "etcd", "--name", "test", "--data-dir"])
            .arg(self.data.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("etcd (Debian's etcd-server) must be installed: scripts/deps.sh");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills etcd and starts it again; `wipe`: with an empty data dir (everything lost).
    pub fn restart(&mut self, wipe: bool) {
        self.kill();
        if wipe {
            let _ = std::fs::remove_dir_all(self.data.path().join("data"));
        }
        self.spawn();
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One test host: a namespace on the switch, an agent in it.
pub struct Host {
    pub n: u8,
    pub netns: String,
    pub ip: String,
    pub state: tempfile::TempDir,
    /// Where the CLI reaches the API (inside the host's namespace).
    pub api: String,
    /// The daemon's `--listen`.
    pub listen: String,
    pub token: String,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    pub log: PathBuf,
}

impl Host {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(BIN)
            .args(["daemon", "--state-dir"])
            .arg(self.state.path())
            .args(["--listen", &self.listen])
            .arg("--socket")
            .arg(self.state.path().join("host.sock"))
            .args(["--advertise", &self.ip])
            // HTTPS off loopback, as on the appliance: the CLI here uses loopback,
            // hosts and the bootstrap verify each other against the cluster's CA.
            .args(&self.extra)
            .env("FLYNN_LOG", "info,flynn_host=debug")
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("starting the daemon"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A token given in the config file is not written to the state dir.
            if let Ok(t) = std::fs::read_to_string(self.state.path().join("token")) {
                self.token = t.trim().to_string();
            }
            if !self.token.is_empty() && self.cli(&["version"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon {} did not start:\n{}",
                self.n,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A power cut: the agent, its shims and their containers (found from the
    /// state dir, before anything is reparented), every other process in the
    /// host's namespace (its host-network jobs: etcd, a scheduler), all SIGKILLed,
    /// and its network gone, so peers get no reset and wait out their time-outs.
    pub fn power_cut(&mut self) {
        kill_processes_of(self.state.path());
        self.kill9();
        for pid in sh(&["ip", "netns", "pids", &self.netns]).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        sh(&["ip", "-n", &self.netns, "link", "set", "eth0", "down"]);
    }

    /// This host's jobs (finished ones too) that carry `label` (`K=V`), as its
    /// agent lists them; empty when it does not answer.
    pub fn jobs_labelled(&self, label: &str) -> Vec<serde_json::Value> {
        let (status, body) = self.api("GET", &format!("/jobs?all=true&label={label}"), None);
        if status != 200 {
            return Vec::new();
        }
        body.as_array().cloned().unwrap_or_default()
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(BIN)
            .env("FLYNN_HOST", format!("http://{}", self.api))
            .env("FLYNN_TOKEN", &self.token);
        cmd
    }

    /// Calls the API in the host's namespace: (HTTP status, JSON body or null).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "curl", "-sS", "-X", method, "-w", "\n%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {}", self.token)]);
        if let Some(b) = body {
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &b.to_string(),
            ]);
        }
        let out = cmd
            .arg(format!("http://{}{path}", self.api))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let status = code.trim().parse().unwrap_or(0);
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running flynn-host")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "host {}: flynn-host {args:?} failed ({:?})\nstdout: {}\nstderr: {}\nlog tail:\n{}",
            self.n,
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log_text(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("JSON from the CLI")
    }

    pub fn status(&self) -> serde_json::Value {
        self.json(&["status", "--json"])
    }

    /// The overlay subnet this host holds (once it has joined).
    pub fn subnet(&self) -> Option<String> {
        self.status()["cluster"]["overlay"]["subnet"]
            .as_str()
            .map(str::to_string)
    }

    /// Ids in `cluster hosts`.
    pub fn hosts(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["cluster", "hosts", "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    pub fn id(&self) -> String {
        std::fs::read_to_string(self.state.path().join("host-id"))
            .expect("host-id")
            .trim()
            .to_string()
    }

    /// Routes through the VXLAN device of this host, as `ip route` prints them.
    pub fn overlay_routes(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", &self.netns, "route", "show", "dev", "flynn.vx"])
            .output()
            .expect("ip route");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    pub fn import(&self, archive: &str) {
        let p = fixtures().join(archive);
        self.ok(&["import", p.to_str().expect("utf-8 path")]);
    }

    /// What a bootstrap runs on a host, as the appliance bakes it: etcd, the test
    /// image and `flynn/host` of the binary under test.
    pub fn import_platform_images(&self) {
        self.import("etcd-docker.tar");
        self.import("busybox-docker.tar");
        self.ok(&["import", host_image().to_str().expect("utf-8 path")]);
    }

    /// A running job's bridge address.
    pub fn ip_of(&self, job: &str) -> String {
        let v: Vec<serde_json::Value> =
            serde_json::from_str(&self.ok(&["inspect", job])).expect("inspect");
        v[0]["network"]["ip"]
            .as_str()
            .expect("a bridge address")
            .to_string()
    }

    /// Follows `discover watch SERVICE --json` in a thread; events arrive on the channel.
    pub fn watch(&self, service: &str) -> Watch {
        let mut child = self
            .command()
            .args(["discover", "watch", service, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("discover watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && tx.send((Instant::now(), v)).is_err()
                {
                    return;
                }
            }
        });
        Watch { child, rx }
    }
}

pub struct Watch {
    child: Child,
    rx: mpsc::Receiver<(Instant, serde_json::Value)>,
}

impl Watch {
    /// The next event matching `pred` (others are skipped), with when it arrived.
    pub fn until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> (Instant, serde_json::Value) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((t, v)) if pred(&v) => return (t, v),
                Ok(_) => {}
                Err(_) => panic!("watch: no {what} within {timeout:?}"),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn is_event(kind: &'static str, id: Option<&str>) -> impl Fn(&serde_json::Value) -> bool {
    let id = id.map(str::to_string);
    move |v| {
        v["kind"] == kind
            && id
                .as_ref()
                .is_none_or(|i| v["instance"]["id"] == i.as_str())
    }
}

/// How many clusters run at once. Each is several agents, an etcd and their jobs;
/// on a 2-core machine more than two at a time only turns the tests' bounds (a
/// lease's TTL, a heal within TTL + 5 s) into races with the load, and multiplies
/// the disk each host's images take.
const CLUSTER_SLOTS: u32 = 2;

static SLOTS: (std::sync::Mutex<u32>, std::sync::Condvar) = (
    std::sync::Mutex::new(CLUSTER_SLOTS),
    std::sync::Condvar::new(),
);

thread_local! {
    static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Slots held until dropped.
pub struct Slots(u32);

fn take_slots(n: u32) -> Slots {
    let (lock, cv) = &SLOTS;
    let mut free = lock.lock().unwrap_or_else(|e| e.into_inner());
    while *free < n {
        free = cv.wait(free).unwrap_or_else(|e| e.into_inner());
    }
    *free -= n;
    Slots(n)
}

impl Drop for Slots {
    fn drop(&mut self) {
        let (lock, cv) = &SLOTS;
        let mut free = lock.lock().unwrap_or_else(|e| e.into_inner());
        *free += self.0;
        if self.0 == CLUSTER_SLOTS {
            ALONE.with(|a| a.set(false));
        }
        cv.notify_all();
    }
}

/// For a test that times what it sees against a bound: no other cluster runs
/// while the returned guard lives (clusters this thread starts meanwhile take no
/// slot of their own).
pub fn alone() -> Slots {
    let s = take_slots(CLUSTER_SLOTS);
    ALONE.with(|a| a.set(true));
    s
}

pub struct Cluster {
    pub switch: String,
    pub etcd: EtcdProc,
    pub hosts: Vec<Host>,
    /// Hosts are started with `--etcd` (the test's etcd); otherwise they start
    /// standalone, listening on every address at 1113, for a bootstrap to join them.
    pub join_test_etcd: bool,
    /// The token every host is given in its config file, if any.
    pub shared_token: Option<String>,
    _slot: Option<Slots>,
}

impl Cluster {
    /// A switch, etcd on it, and `n` hosts with agents started with `extra` flags.
    pub fn start(n: u8, extra: &[&str]) -> Cluster {
        let slot = (!ALONE.with(|a| a.get())).then(|| take_slots(1));
        let switch = new_netns("flynn-sw-");
        sh(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            &switch,
            "addr",
            "add",
            &format!("{ETCD_IP}/24"),
            "dev",
            "br0",
        ]);
        sh(&["ip", "-n", &switch, "link", "set", "br0", "up"]);
        let etcd = EtcdProc::start(&switch);
        let mut c = Cluster {
            switch,
            etcd,
            hosts: Vec::new(),
            join_test_etcd: true,
            shared_token: None,
            _slot: slot,
        };
        for i in 1..=n {
            c.add_host(i, extra);
        }
        c
    }

    /// A switch and `n` standalone hosts (no etcd: the bootstrap makes it), each API
    /// on 192.0.2.N:1113 (and 127.0.0.1:1113 inside its namespace).
    pub fn bare(n: u8, extra: &[&str]) -> Cluster {
        let mut c = Cluster::start(0, &[]);
        c.join_test_etcd = false;
        c.etcd.kill();
        for i in 1..=n {
            c.add_host(i, extra);
        }
        c
    }

    /// Like [`Cluster::bare`], every host with the same API token (as a bootstrap
    /// wants them), given in its config file.
    pub fn bare_shared(n: u8, extra: &[&str], token: &str) -> Cluster {
        let mut c = Cluster::start(0, &[]);
        c.join_test_etcd = false;
        c.etcd.kill();
        c.shared_token = Some(token.to_string());
        for i in 1..=n {
            c.add_host(i, extra);
        }
        c
    }

    /// A command run in the switch's namespace (a machine that reaches every host).
    pub fn on_switch(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.switch))
            .arg("--")
            .arg(BIN);
        cmd
    }

    pub fn add_host(&mut self, i: u8, extra: &[&str]) {
        let netns = new_netns("flynn-h-");
        let port = format!("p{i}");
        let ip = format!("192.0.2.{i}");
        sh(&[
            "ip",
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
        sh(&[
            "ip", "-n", &netns, "route", "add", "default", "via", ETCD_IP,
        ]);
        // veth does no GRO by default, real NICs do: without it every VXLAN packet
        // is decapsulated on its own, which no real underlay makes us do.
        for (ns, dev) in [(&netns, "eth0"), (&self.switch, port.as_str())] {
            let net = format!("--net=/run/netns/{ns}");
            sh(&["nsenter", &net, "--", "ethtool", "-K", dev, "gro", "on"]);
        }
        let state = tempfile::Builder::new()
            .prefix("flynn-grid-")
            .tempdir_in("/var/tmp")
            .expect("state dir");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (api, listen) = if self.join_test_etcd {
            extra.extend(["--etcd".into(), format!("http://{ETCD_IP}:2379")]);
            let api = format!("127.0.0.1:{}", free_port());
            (api.clone(), api)
        } else {
            ("127.0.0.1:1113".to_string(), "0.0.0.0:1113".to_string())
        };
        let mut token = String::new();
        if let Some(t) = &self.shared_token {
            let cfg = state.path().join("config.json");
            std::fs::write(&cfg, serde_json::json!({ "token": t }).to_string()).expect("config");
            extra.extend(["--config".into(), cfg.to_string_lossy().into_owned()]);
            token = t.clone();
        }
        let mut h = Host {
            n: i,
            netns,
            ip,
            log: state.path().join("daemon.log"),
            state,
            api,
            listen,
            token,
            child: None,
            extra,
        };
        h.spawn();
        self.hosts.push(h);
    }

    pub fn host(&self, i: u8) -> &Host {
        &self.hosts[usize::from(i - 1)]
    }

    pub fn host_mut(&mut self, i: u8) -> &mut Host {
        &mut self.hosts[usize::from(i - 1)]
    }

    /// Waits until every host sees all `n` hosts and holds a subnet.
    pub fn wait_joined(&self, n: usize) {
        wait_for("every host to join", Duration::from_secs(30), || {
            self.hosts
                .iter()
                .all(|h| h.hosts().len() == n && h.subnet().is_some())
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if h.child.is_some() {
                let out = h.cli(&["ps", "-aq"]);
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = h.cli(&["rm", "-f", id]);
                }
            }
            h.kill9();
            // Shims outlive their agent by design: those of a host a test killed
            // (and of jobs `rm -f` did not end) would keep their containers running
            // after the state dir is gone.
            kill_processes_of(h.state.path());
            for m in mounts_under(h.state.path()) {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
            let _ = Command::new("ip").args(["netns", "del", &h.netns]).status();
        }
        self.etcd.kill();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .status();
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGKILLs every process whose command line names `dir` (a host's shims) and
/// everything below them (their containers).
pub fn kill_processes_of(dir: &Path) {
    let dir = dir.to_string_lossy().into_owned();
    let mut parent: Vec<(i32, i32)> = Vec::new();
    let mut roots: Vec<i32> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&dir) {
            roots.push(pid);
        }
        // The parent is the 4th field of stat, after the command in parentheses.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some(ppid) = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        {
            parent.push((pid, ppid));
        }
    }
    let mut doomed = roots.clone();
    while let Some(p) = roots.pop() {
        for &(child, _) in parent.iter().filter(|(_, pp)| *pp == p) {
            if !doomed.contains(&child) {
                doomed.push(child);
                roots.push(child);
            }
        }
    }
    for pid in doomed {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

/// A DNS server for names outside .discoverd, inside namespace `netns` on
/// 127.0.0.1:5353 (UDP): it answers every A query with 192.0.2.99.
pub fn fake_upstream(netns: &str) {
    let path = format!("/run/netns/{netns}");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let sock = std::net::UdpSocket::bind("127.0.0.1:5353").expect("bind 5353");
        let _ = tx.send(());
        let mut buf = [0u8; 1500];
        use hickory_proto::op::{Message, MessageType};
        use hickory_proto::rr::{RData, Record, rdata::A};
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::new();
            r.set_id(q.id()).set_message_type(MessageType::Response);
            for query in q.queries() {
                r.add_query(query.clone());
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A(std::net::Ipv4Addr::new(192, 0, 2, 99))),
                ));
            }
            if let Ok(b) = r.to_vec() {
                let _ = sock.send_to(&b, peer);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("fake upstream up");
}

/// Checks `body` against the schema `name` of agent/openapi.json.
pub fn check_schema(name: &str, body: &serde_json::Value) {
    apidoc::Document::load(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
        .and_then(|doc| doc.check_schema(name, body))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The `flynn` CLI (this binary under that name) run from the switch.
pub struct Flynn {
    dir: tempfile::TempDir,
    switch: String,
}

impl Flynn {
    pub fn new(c: &Cluster) -> Flynn {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(BIN, dir.path().join("flynn")).unwrap();
        Flynn {
            dir,
            switch: c.switch.clone(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.switch))
            .arg("--")
            .arg(self.dir.path().join("flynn"))
            .args(args)
            .env("FLYNNRC", self.dir.path().join("flynnrc"))
            .env_remove("FLYNN_APP")
            .output()
            .unwrap()
    }

    /// A program run on the switch in `cwd`, with this CLI's rc file (git, whose
    /// credential helper is this CLI).
    pub fn command_in(&self, cwd: &Path, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.switch))
            .arg("--")
            .arg(program)
            .current_dir(cwd)
            .env("FLYNNRC", self.dir.path().join("flynnrc"))
            .env_remove("FLYNN_APP");
        cmd
    }

    /// This CLI as a command on the switch, with its rc file.
    pub fn command(&self) -> Command {
        self.command_in(self.dir.path(), &self.path().to_string_lossy())
    }

    /// The path of this CLI (`flynn`, a symlink to the binary under test).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("flynn")
    }

    /// `flynn cluster add -p PIN NAME https://192.0.2.HOST:81 KEY`, the line the
    /// bootstrap prints (the controller through that host's router, verified by
    /// the cluster's pin: of host 1's CA file, read from its state directory so
    /// that a lost host 1 still gives it).
    pub fn add_cluster(&self, c: &Cluster, name: &str, host: u8, key: &str) -> String {
        let ca = std::fs::read_to_string(c.host(1).state.path().join("tls/platform/ca.pem"))
            .expect("host 1's CA file");
        let pin = flynn_tls::pin_of_pem(&ca).expect("a CA").to_string();
        self.ok(&[
            "cluster",
            "add",
            "-p",
            &pin,
            name,
            &format!("https://192.0.2.{host}:81"),
            key,
        ])
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "flynn {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The platform's controller, a process on the switch (a machine that reaches every
/// host and etcd), and the `flynn` CLI (this binary by that name) pointed at it.
pub struct Platform {
    pub dir: tempfile::TempDir,
    pub switch: String,
    pub url: String,
    child: Child,
}

pub const CONTROLLER_KEY: &str = "deploy-test-controller-key-0123";

impl Platform {
    /// A controller on the cluster's etcd (members on hosts 1-3, HTTPS) with its
    /// token, verifying the agents it calls against the cluster's CA (host 1's
    /// pin) and presenting host 1's certificate to etcd.
    pub fn start(c: &Cluster, token: &str, extra: &[&str]) -> Platform {
        let pin = c.host(1).ok(&["tls", "pin"]).trim().to_string();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(BIN, dir.path().join("flynn")).unwrap();
        let listen = format!("{ETCD_IP}:8181");
        let etcd: Vec<String> = c
            .hosts
            .iter()
            .take(3)
            .map(|h| format!("https://{}:2379", h.ip))
            .collect();
        let child = c
            .on_switch()
            .args(["controller", "--listen", &listen, "--etcd", &etcd.join(",")])
            .args(extra)
            .env("FLYNN_TOKEN", token)
            .env("FLYNN_TLS_PIN", &pin)
            // etcd wants a client certificate of the cluster's CA: host 1's.
            .env(
                "FLYNN_ETCD_TLS",
                c.host(1).state.path().join("tls/platform"),
            )
            .env("FLYNN_CONTROLLER_KEY", CONTROLLER_KEY)
            .env("FLYNN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("controller.log")).unwrap())
            .spawn()
            .unwrap();
        let p = Platform {
            dir,
            switch: c.switch.clone(),
            url: format!("http://{listen}"),
            child,
        };
        wait_for("the controller", Duration::from_secs(30), || {
            p.command()
                .args(["cluster", "add", "default", &p.url, CONTROLLER_KEY])
                .output()
                .is_ok_and(|o| o.status.success())
                && p.command()
                    .arg("apps")
                    .output()
                    .is_ok_and(|o| o.status.success())
        });
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    /// `flynn` in the switch's namespace.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.switch))
            .arg("--")
            .arg(self.dir.path().join("flynn"))
            .env("FLYNNRC", self.dir.path().join("flynnrc"))
            .env_remove("FLYNN_APP")
            .stdin(Stdio::null());
        cmd
    }

    pub fn flynn(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("running flynn")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.flynn(args);
        assert!(
            out.status.success(),
            "flynn {args:?} failed ({:?})\nstdout: {}\nstderr: {}\ncontroller log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log_text(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `flynn -a APP ps` as (id, type, state, release) rows.
    pub fn ps(&self, app: &str) -> Vec<(String, String, String, String)> {
        let out = self.flynn(&["-a", app, "ps"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5).then(|| {
                    (
                        f[0].to_string(),
                        f[1].to_string(),
                        f[3].to_string(),
                        f[4].to_string(),
                    )
                })
            })
            .collect()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A terminal for a CLI: the test holds the pty's master side and reads the
/// screen from it (as `tests/interactive.rs` drives `flynn-host run -it`).
pub struct Terminal {
    master: std::fs::File,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
    child: Child,
}

impl Terminal {
    /// Runs `cmd` with a new pty of `rows` x `cols` as its controlling terminal.
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> Terminal {
        use std::os::unix::process::CommandExt;
        let pty = nix::pty::openpty(None, None).expect("openpty");
        Terminal::size_of(&pty.master, rows, cols);
        let slave = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe; they make the pty
        // the child's controlling terminal (kept across nsenter's exec), so it
        // gets SIGWINCH as in a shell.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting the CLI on a pty");
        let master = std::fs::File::from(pty.master);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            master,
            seen,
            child,
        }
    }

    fn size_of(fd: &impl std::os::fd::AsRawFd, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads the winsize we pass; the fd is an open pty.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ");
    }

    /// The terminal is resized (the CLI gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        Terminal::size_of(&self.master, rows, cols);
    }

    pub fn type_keys(&mut self, keys: &str) {
        use std::io::Write;
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Waits (up to `within`) until the screen shows `text` after its first
    /// `after` bytes; where the text ends.
    pub fn expect(&self, after: usize, text: &str, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.screen();
            if let Some(at) = seen.get(after..).and_then(|s| s.find(text)) {
                return after + at + text.len();
            }
            assert!(
                Instant::now() < deadline,
                "never saw {text:?}; the terminal shows:\n{seen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn screen(&self) -> String {
        self.seen.lock().unwrap().clone()
    }

    /// The CLI's exit code, once it exits (within `within`).
    pub fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the CLI did not exit:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
