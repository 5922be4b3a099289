//! How the appliance learns it should stop: the ACPI power button, which the
//! kernel's `button` driver reports as `KEY_POWER` on an evdev device (QEMU's
//! `system_powerdown`, a cloud's "stop instance"); signals (SIGTERM or SIGPWR:
//! power off, SIGINT: Ctrl-Alt-Del, reboot); and the end of the stop itself:
//! processes told, then killed, file systems unmounted, `reboot(2)`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: struct timeval (16 bytes), type, code, value.
const EVENT_SIZE: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    PowerOff,
    Reboot,
}

/// Whether an evdev device's key capability bitmap (sysfs `capabilities/key`:
/// hex words, most significant first) has `KEY_POWER`.
pub fn has_power_key(bitmap: &str) -> bool {
    let words: Vec<&str> = bitmap.split_whitespace().collect();
    let word = (KEY_POWER / 64) as usize;
    let bit = KEY_POWER % 64;
    words
        .len()
        .checked_sub(word + 1)
        .and_then(|i| u64::from_str_radix(words[i], 16).ok())
        .is_some_and(|w| w & (1 << bit) != 0)
}

/// The event devices that can send the power key.
pub fn power_buttons() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/class/input") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/capabilities/key"))
                .is_ok_and(|b| has_power_key(&b))
        })
        .map(|e| Path::new("/dev/input").join(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Watches each power button in a thread; a press sends on `tx`.
pub fn watch_buttons(tx: tokio::sync::mpsc::UnboundedSender<PathBuf>) -> Vec<PathBuf> {
    let buttons = power_buttons();
    for dev in &buttons {
        let (dev, tx) = (dev.clone(), tx.clone());
        std::thread::spawn(move || {
            let Ok(mut file) = std::fs::File::open(&dev) else {
                return;
            };
            let mut ev = [0u8; EVENT_SIZE];
            while file.read_exact(&mut ev).is_ok() {
                let kind = u16::from_ne_bytes([ev[16], ev[17]]);
                let code = u16::from_ne_bytes([ev[18], ev[19]]);
                let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
                if kind == EV_KEY
                    && code == KEY_POWER
                    && value == 1
                    && tx.send(dev.clone()).is_err()
                {
                    return;
                }
            }
        });
    }
    buttons
}

/// Reaps every exited child; returns their pids and statuses.
pub fn reap() -> Vec<(Pid, WaitStatus)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return out,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    out.push((pid, status));
                }
            }
        }
    }
}

fn no_children_left() -> bool {
    matches!(
        waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)),
        Err(nix::errno::Errno::ECHILD)
    )
}

/// Waits until `pid` has exited (reaping everything meanwhile), at most `timeout`.
pub fn wait_for(pid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if reap().iter().any(|(p, _)| *p == pid) || kill(pid, None).is_err() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Signals every other process; waits for them (at most `timeout`).
pub fn signal_all(signal: Signal, timeout: Duration) -> bool {
    let _ = kill(Pid::from_raw(-1), signal);
    let deadline = Instant::now() + timeout;
    loop {
        reap();
        if no_children_left() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes of the jobs: every process in a cgroup below the root one
/// (init, the daemon and the shims stay in the root cgroup; libcontainer puts
/// each container, and what is exec'd into it, in a cgroup of its own).
pub fn job_processes() -> Vec<Pid> {
    fn walk(dir: &Path, top: bool, out: &mut Vec<Pid>) {
        if !top {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            out.extend(
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .map(Pid::from_raw),
            );
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), false, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), true, &mut out);
    out
}

/// Stops the jobs' processes: SIGTERM, then SIGKILL after `grace`. Their shims
/// stay up meanwhile, so the last output is logged and each exit recorded.
/// Returns how many had to be killed.
pub fn stop_jobs(grace: Duration) -> usize {
    for pid in job_processes() {
        let _ = kill(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        reap();
        let left = job_processes();
        if left.is_empty() {
            return 0;
        }
        if Instant::now() >= deadline {
            for pid in &left {
                let _ = kill(*pid, Signal::SIGKILL);
            }
            let until = Instant::now() + Duration::from_secs(3);
            while !job_processes().is_empty() && Instant::now() < until {
                reap();
                std::thread::sleep(Duration::from_millis(20));
            }
            return left.len();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mount points at or under `root`, deepest first.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(root))
        .collect();
    points.sort();
    points.dedup();
    points.reverse();
    points
}

/// Unmounts everything under the state dir, then the state dir. Returns whether
/// the state file system itself was unmounted (or at least remounted read-only).
pub fn unmount_state(state: &Path) -> Result<(), String> {
    for point in mounts_under(state) {
        if point == state {
            continue;
        }
        if umount2(&point, MntFlags::empty()).is_err() {
            let _ = umount2(&point, MntFlags::MNT_DETACH);
        }
    }
    nix::unistd::sync();
    match umount2(state, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Still busy: a read-only remount also leaves the file system clean.
            mount(
                None::<&str>,
                state,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|r| format!("unmount: {e}; read-only remount: {r}"))
        }
    }
}

pub fn finish(stop: Stop) -> ! {
    nix::unistd::sync();
    let how = match stop {
        Stop::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        Stop::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
    };
    let err = nix::sys::reboot::reboot(how);
    super::say(format!("reboot(2) failed: {err:?}; halting here"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn power_key_bit() {
        // QEMU's ACPI power button: only KEY_POWER (bit 116 = word 1, bit 52).
        assert!(super::has_power_key("10000000000000 0"));
        assert!(!super::has_power_key("0"));
        assert!(!super::has_power_key("10000000000000"));
        // A keyboard has it among many others.
        assert!(super::has_power_key(
            "1000000000007 ff9f207ac14057ff febeffdfffefffff fffffffffffffffe"
        ));
    }
}
