//! A QEMU virtual machine on the serial console: start it, read what it prints,
//! wait for markers, and make sure it is gone when the test ends.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("starting qemu-system-x86_64 (apt-get install qemu-system-x86): {0}")]
    Spawn(std::io::Error),
    #[error(
        "timed out after {timeout:?} waiting for {what:?}; console log: {log}; its end:\n{tail}"
    )]
    Timeout {
        what: String,
        timeout: Duration,
        log: String,
        /// The console's last lines (a guest's own log dump lands there).
        tail: String,
    },
    #[error("the VM exited before printing {what:?}; console log: {log}; its end:\n{tail}")]
    Exited {
        what: String,
        log: String,
        tail: String,
    },
}

pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line; `console=ttyS0` is added.
    pub append: String,
    pub memory_mb: u32,
    pub cpus: u32,
    /// Where the console is copied (kept for failed tests).
    pub console_log: PathBuf,
    /// More QEMU arguments (network, disks).
    pub extra: Vec<String>,
}

/// The last lines of a console, for an error message: enough for a guest's log dump.
pub fn console_tail(console: &str) -> String {
    const LINES: usize = 200;
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

/// Whether to use KVM: only when asked (`FLYNN_QEMU_KVM=1`) and /dev/kvm exists,
/// because on some hosts a KVM guest hangs; TCG always works.
pub fn use_kvm() -> bool {
    std::env::var("FLYNN_QEMU_KVM").is_ok_and(|v| v == "1")
        && std::path::Path::new("/dev/kvm").exists()
}

/// `-accel` and `-cpu` for KVM when [`use_kvm`], else TCG.
pub fn accel_args() -> Vec<String> {
    let (accel, cpu) = if use_kvm() {
        ("kvm", "host")
    } else {
        ("tcg", "max")
    };
    ["-accel", accel, "-cpu", cpu].map(String::from).to_vec()
}

struct Console {
    text: Mutex<(String, bool)>,
    changed: Condvar,
}

pub struct Vm {
    child: Child,
    console: Arc<Console>,
    log_path: PathBuf,
}

impl Vm {
    pub fn start(config: &VmConfig) -> Result<Vm, VmError> {
        let mut args: Vec<String> = [
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ]
        .map(String::from)
        .to_vec();
        args.extend(["-m".into(), config.memory_mb.to_string()]);
        args.extend(["-smp".into(), config.cpus.to_string()]);
        args.extend(["-kernel".into(), config.kernel.display().to_string()]);
        args.extend(["-initrd".into(), config.initrd.display().to_string()]);
        args.extend(["-append".into(), format!("console=ttyS0 {}", config.append)]);
        args.extend(accel_args());
        args.extend(config.extra.iter().cloned());
        Vm::spawn(None, &args, &config.console_log)
    }

    /// Starts `qemu-system-x86_64 ARGS` (inside network namespace `netns` when
    /// given, through `ip netns exec`), its serial console on stdout.
    pub fn spawn(netns: Option<&str>, args: &[String], console_log: &Path) -> Result<Vm, VmError> {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(VmError::Spawn)?;
        let console = Arc::new(Console {
            text: Mutex::new((String::new(), false)),
            changed: Condvar::new(),
        });
        let mut log = std::fs::File::create(console_log).ok();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = console.clone();
            let mut log = log.as_mut().and_then(|f| f.try_clone().ok());
            std::thread::spawn(move || pump(stream, &console, log.as_mut()));
        }
        drop(log.take());
        Ok(Vm {
            child,
            console,
            log_path: console_log.to_path_buf(),
        })
    }

    pub fn console(&self) -> String {
        self.lock().0.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (String, bool)> {
        self.console.text.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the console contains `needle`; returns the console so far.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, VmError> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock();
        loop {
            if guard.0.contains(needle) {
                return Ok(guard.0.clone());
            }
            if guard.1 {
                return Err(VmError::Exited {
                    what: needle.to_string(),
                    log: self.log_path.display().to_string(),
                    tail: console_tail(&guard.0),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VmError::Timeout {
                    what: needle.to_string(),
                    timeout,
                    log: self.log_path.display().to_string(),
                    tail: console_tail(&guard.0),
                });
            }
            guard = self
                .console
                .changed
                .wait_timeout(guard, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The console log's path.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// SIGKILL to QEMU (the machine stops at once, as on a power cut) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for a whole console line holding `needle`; returns that line (without
    /// its end) and the console so far.
    pub fn wait_for_line(
        &self,
        needle: &str,
        timeout: Duration,
    ) -> Result<(String, String), VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let console =
                self.wait_for(needle, deadline.saturating_duration_since(Instant::now()))?;
            if let Some(start) = console.find(needle) {
                let rest = &console[start..];
                if let Some(end) = rest.find('\n') {
                    let line = rest[..end].trim_end_matches('\r').to_string();
                    return Ok((line, console));
                }
            }
            if Instant::now() >= deadline {
                return Err(VmError::Timeout {
                    what: format!("the end of the line {needle:?}"),
                    timeout,
                    log: self.log_path.display().to_string(),
                    tail: console_tail(&console),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for QEMU to exit (the guest powered off); kills it after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(), VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return Err(VmError::Timeout {
                    what: "power-off".to_string(),
                    timeout,
                    log: self.log_path.display().to_string(),
                    tail: console_tail(&self.lock().0),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn pump(mut stream: Box<dyn Read + Send>, console: &Console, mut log: Option<&mut std::fs::File>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(log) = log.as_mut() {
            let _ = log.write_all(&buf[..n]);
        }
        let mut guard = console.text.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.push_str(&String::from_utf8_lossy(&buf[..n]));
        console.changed.notify_all();
    }
    let mut guard = console.text.lock().unwrap_or_else(|p| p.into_inner());
    guard.1 = true;
    console.changed.notify_all();
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
