//! Fixtures for the integration tests: a busybox rootfs per test, a job directory, and
//! helpers to run a container through the real shim binary.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runtime::logs::{self, LogEntry, Stream};
use runtime::shim::{self, CreatedShim, ShimClient, ShimConfig};
use runtime::{ContainerConfig, ExitStatus, NetworkMode, Resources};

pub const SHIM_EXE: &str = env!("CARGO_BIN_EXE_flynn-shim-test");

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    app:x:1000:1000:App:/home/app:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\n\
    app:x:1000:\n\
    audio:x:29:app\n\
    video:x:44:other,app\n";

pub struct Fixture {
    /// Keeps everything alive until the test ends.
    pub tmp: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub job_dir: PathBuf,
    pub state_root: PathBuf,
    pub log_path: PathBuf,
    pub id: String,
}

pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A root filesystem with busybox and every applet linked into /bin.
pub fn busybox_rootfs(root: &Path) {
    for dir in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "home/app",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = std::process::Command::new("/usr/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" && !applet.contains('/') {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), PASSWD).unwrap();
    std::fs::write(root.join("etc/group"), GROUP).unwrap();
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        busybox_rootfs(&rootfs);
        let job_dir = tmp.path().join("job");
        std::fs::create_dir(&job_dir).unwrap();
        let log_path = job_dir.join("log.json");
        Fixture {
            rootfs,
            job_dir,
            state_root: tmp.path().join("containers"),
            log_path,
            id: random_id(),
            tmp,
        }
    }

    pub fn container(&self, args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            id: self.id.clone(),
            rootfs: self.rootfs.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            cwd: String::new(),
            user: String::new(),
            hostname: String::new(),
            resources: Resources::default(),
            tty: false,
            stdin: false,
            network: NetworkMode::New,
            mounts: Vec::new(),
            security: Default::default(),
        }
    }

    pub fn shim_config(&self, container: ContainerConfig) -> ShimConfig {
        ShimConfig {
            container,
            state_root: self.state_root.clone(),
            log_path: self.log_path.clone(),
            log_rotation: None,
        }
    }

    pub async fn create(&self, container: ContainerConfig) -> CreatedShim {
        let cfg = self.shim_config(container);
        match shim::spawn(Path::new(SHIM_EXE), &self.job_dir, &cfg).await {
            Ok(created) => created,
            Err(e) => panic!("create failed: {e}\nshim.log: {}", self.shim_log()),
        }
    }

    /// Creates and starts the container; returns a connected client.
    pub async fn start(&self, container: ContainerConfig) -> ShimClient {
        let created = self.create(container).await;
        let pid = created.pid();
        let started = created.start().await.unwrap();
        assert_eq!(started, pid);
        ShimClient::connect(&self.job_dir).await.unwrap()
    }

    /// Waits for the exit of the started container of this job directory.
    pub async fn wait_exit(&self) -> ExitStatus {
        ShimClient::connect(&self.job_dir)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap()
    }

    /// Runs the container to completion.
    pub async fn run(&self, container: ContainerConfig) -> ExitStatus {
        let client = self.start(container).await;
        let status = client.wait().await.unwrap();
        self.assert_gone();
        status
    }

    pub fn logs(&self) -> Vec<LogEntry> {
        logs::read_all(&self.log_path).unwrap()
    }

    pub fn output(&self, stream: Stream) -> String {
        self.logs()
            .into_iter()
            .filter(|e| e.stream == stream)
            .map(|e| e.log)
            .collect()
    }

    pub fn stdout(&self) -> String {
        self.output(Stream::Stdout)
    }

    pub fn shim_log(&self) -> String {
        std::fs::read_to_string(self.job_dir.join("shim.log")).unwrap_or_default()
    }

    /// The cgroup file of this container in a v1 hierarchy (the test host is hybrid).
    pub fn cgroup_file(&self, controller: &str, file: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("flynn")
            .join(&self.id)
            .join(file)
    }

    /// Once the shim has finished, nothing of the container is left: no state dir, no
    /// cgroup in any hierarchy, no control socket. (Waiters hear of the exit before the
    /// shim deletes the container; `wait_shim_gone` waits for the delete.)
    pub fn assert_gone(&self) {
        shim::wait_shim_gone(&self.job_dir, Duration::from_secs(60)).unwrap();
        let state_dir = self.state_root.join(&self.id);
        assert!(!state_dir.exists(), "libcontainer state {state_dir:?} left");
        let dirs = runtime::cgroup::existing_dirs(&self.id).unwrap();
        assert!(dirs.is_empty(), "cgroups left: {dirs:?}");
        assert!(
            !self.job_dir.join("shim.sock").exists(),
            "control socket left"
        );
    }

    /// Waits (without any timing assertion) until the container has logged `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "container never logged {needle:?}; log: {text}\nshim.log: {}",
                self.shim_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A failed test must not leave its container running: kill whatever is left (the shim,
/// if alive, then records the exit and finishes).
impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = runtime::shim::cleanup(&self.state_root, &self.id);
    }
}

/// Whether process `pid` is alive (a zombie is not: it only waits for its parent).
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(_) => false,
    }
}

/// Waits until `pid` has died; a process that closed its descriptors is at most a few
/// instructions away from being a zombie.
pub fn wait_until_dead(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while is_alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until shim `pid` has re-executed itself into the lean monitor (it does so
/// after a short grace period when the container keeps running).
pub fn wait_for_monitor_exec(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ
            .split(|&b| b == 0)
            .any(|kv| kv.starts_with(shim::MONITOR_ENV.as_bytes()))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shim {pid} never re-executed into the monitor"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

impl Fixture {
    /// Runs `exec` in this fixture's (running) container through the exec shim.
    pub async fn exec(&self, exec: &runtime::ExecConfig) -> Result<i32, shim::ShimError> {
        shim::spawn_exec(Path::new(SHIM_EXE), &self.job_dir, exec, &self.state_root).await
    }

    pub fn exec_dir(&self, exec_id: &str) -> PathBuf {
        shim::exec_dir(&self.job_dir, exec_id)
    }

    /// The pids in the container's cgroup whose command is `comm`.
    pub fn processes_named(&self, comm: &str) -> Vec<i32> {
        let procs =
            std::fs::read_to_string(self.cgroup_file("memory", "cgroup.procs")).unwrap_or_default();
        procs
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .collect()
    }

    /// Waits until the container runs (or no longer runs) a process named `comm`.
    pub fn wait_for_process(&self, comm: &str, running: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.processes_named(comm).is_empty() == running {
            assert!(
                Instant::now() < deadline,
                "process {comm} never {}; log: {}",
                if running { "started" } else { "ended" },
                std::fs::read_to_string(&self.log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// An exec of `args` with everything else defaulted.
pub fn exec_config(exec_id: &str, args: &[&str]) -> runtime::ExecConfig {
    runtime::ExecConfig {
        exec_id: exec_id.to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![],
        cwd: None,
        user: None,
        tty: false,
        stdin: false,
    }
}

/// The output logged in `log` (a json-file log) for `stream`, concatenated.
pub fn log_output(log: &Path, stream: Stream) -> String {
    logs::read_all(log)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.stream == stream)
        .map(|e| e.log)
        .collect()
}

/// Waits (without any timing assertion) until the json-file log at `log` holds `needle`
/// in the output of the given stream.
pub fn wait_for_output(log: &Path, stream: Stream, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = log_output(log, stream);
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "never logged {needle:?}; output so far: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The executable a process runs.
pub fn exe_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}
