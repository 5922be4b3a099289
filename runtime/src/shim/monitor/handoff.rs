//! The hand-off to the monitor: what the creating phase passes across exec, the
//! re-exec itself, and the re-executed monitor's entry point.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::event_loop::run;
use crate::shim::{JobFiles, MONITOR_BINARY, MONITOR_ENV, diag, read_config, sys};

/// The version of the handoff below. A monitor that reads another version runs the
/// creating shim's own binary instead ([`EXE_FD_ENV`]).
const HANDOFF_VERSION: &str = "2";

/// A descriptor of the creating shim's binary (`/proc/self/exe`, O_PATH), handed to the
/// monitor: if the monitor binary cannot read the handoff (a different version installed
/// beside an upgraded agent), it executes that binary, which can. The name and meaning of
/// this variable must never change.
const EXE_FD_ENV: &str = "FLYNN_SHIM_EXE_FD";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A container's init: the monitor deletes the container after its exit.
    Container,
    /// A process exec'd into a container: nothing to delete.
    Exec,
}

/// What the creating phase hands to the monitoring phase, across exec.
pub struct Handoff {
    pub kind: Kind,
    /// The supervised process, a child of this one.
    pub pid: Pid,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The pty master, with a terminal.
    pub terminal: Option<OwnedFd>,
    /// Where stdin input goes, if the process was started with stdin.
    pub stdin: Option<OwnedFd>,
    pub listener: OwnedFd,
    /// `shim.lock`, locked by this process: the lock survives exec as long as this
    /// descriptor stays open.
    pub lock: OwnedFd,
}

#[derive(Debug, PartialEq)]
enum DecodeError {
    /// Written by a shim of another version.
    Version(String),
    Malformed(String),
}

impl Handoff {
    fn fds(&self) -> impl Iterator<Item = &OwnedFd> {
        [&self.stdout, &self.stderr, &self.terminal, &self.stdin]
            .into_iter()
            .flatten()
            .chain([&self.listener, &self.lock])
    }

    /// `2:kind:pid:stdout:stderr:terminal:stdin:listener:lock:dir` (-1 for no
    /// descriptor). The directory travels too (absolute), so the monitor does not depend
    /// on argv or on the working directory it was started from.
    fn encode(&self, dir: &Path) -> OsString {
        let raw = |fd: &Option<OwnedFd>| fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        let kind = match self.kind {
            Kind::Container => "c",
            Kind::Exec => "e",
        };
        let mut value = OsString::from(format!(
            "{HANDOFF_VERSION}:{kind}:{}:{}:{}:{}:{}:{}:{}:",
            self.pid,
            raw(&self.stdout),
            raw(&self.stderr),
            raw(&self.terminal),
            raw(&self.stdin),
            self.listener.as_raw_fd(),
            self.lock.as_raw_fd()
        ));
        value.push(dir.as_os_str());
        value
    }

    fn decode(value: &OsStr) -> Result<(Handoff, PathBuf), DecodeError> {
        let malformed = || DecodeError::Malformed(format!("malformed {MONITOR_ENV}={value:?}"));
        let mut parts = value.as_bytes().splitn(10, |&b| b == b':');
        let version = parts.next().unwrap_or_default();
        if version != HANDOFF_VERSION.as_bytes() {
            return Err(DecodeError::Version(format!(
                "{MONITOR_ENV} has version {:?}, this monitor reads {HANDOFF_VERSION}",
                String::from_utf8_lossy(version)
            )));
        }
        let kind = match parts.next() {
            Some(b"c") => Kind::Container,
            Some(b"e") => Kind::Exec,
            _ => return Err(malformed()),
        };
        let mut nums = [0i32; 7];
        for n in nums.iter_mut() {
            *n = parts
                .next()
                .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok())
                .ok_or_else(malformed)?;
        }
        let dir = PathBuf::from(OsStr::from_bytes(parts.next().ok_or_else(malformed)?));
        if !dir.is_absolute() {
            return Err(malformed());
        }
        let [pid, out, err, terminal, stdin, listener, lock] = nums;
        if pid <= 0 {
            return Err(malformed());
        }
        let mut seen = Vec::new();
        for (raw, required) in [
            (out, false),
            (err, false),
            (terminal, false),
            (stdin, false),
            (listener, true),
            (lock, true),
        ] {
            if raw == -1 && !required {
                continue;
            }
            if raw <= 2 || !sys::is_open(raw) || seen.contains(&raw) {
                return Err(DecodeError::Malformed(format!(
                    "{MONITOR_ENV}: descriptor {raw} is not usable"
                )));
            }
            seen.push(raw);
        }
        // SAFETY: the descriptors were checked to be open and distinct; the pre-exec shim
        // made exactly these inheritable and gave up its own handles on them by exec'ing,
        // so nothing else in this process owns them.
        let own = |raw: RawFd| (raw != -1).then(|| unsafe { OwnedFd::from_raw_fd(raw) });
        let (Some(listener), Some(lock)) = (own(listener), own(lock)) else {
            return Err(malformed());
        };
        let handoff = Handoff {
            kind,
            pid: Pid::from_raw(pid),
            stdout: own(out),
            stderr: own(err),
            terminal: own(terminal),
            stdin: own(stdin),
            listener,
            lock,
        };
        Ok((handoff, dir))
    }
}

/// How long the creating process watches for the process's exit before re-executing into
/// the lean monitor. A process done by then is finished right here: the exec (a few
/// milliseconds of loading the binary) would only delay its exit status. A longer-lived
/// one has its first output read, and its first control requests answered, that much
/// later (nothing is lost: the pipes and the socket's backlog hold them).
const REEXEC_GRACE_MS: u16 = 20;

/// Re-executes into the monitoring phase, dropping libcontainer's memory, unless the
/// process exits within [`REEXEC_GRACE_MS`]; if the exec is impossible, monitors in this
/// process instead.
pub fn hand_over(files: &JobFiles, handoff: Handoff) -> i32 {
    if exits_soon(handoff.pid) {
        return run(files, handoff);
    }
    let err = reexec(&handoff, files.dir());
    diag(&format!(
        "cannot re-exec into the lean monitor ({err}); monitoring in-process"
    ));
    for fd in handoff.fds() {
        let _ = sys::set_inherit(fd, false);
    }
    // A failed exec may already have reset SIGPIPE to its default (fatal) action.
    sys::ignore_sigpipe();
    run(files, handoff)
}

/// Whether the process, our child, ends within the grace period. Does not reap it: a
/// pidfd turns readable when the process has exited.
fn exits_soon(pid: Pid) -> bool {
    let Ok(pidfd) = sys::pidfd_open(pid.as_raw()) else {
        return false;
    };
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(REEXEC_GRACE_MS)), Ok(n) if n > 0)
}

/// The lean monitor binary beside the running one, if installed.
fn monitor_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(MONITOR_BINARY);
    nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK).ok()?;
    path.is_file().then_some(path)
}

/// Only returns on failure.
fn reexec(h: &Handoff, dir: &Path) -> std::io::Error {
    for fd in h.fds() {
        if let Err(e) = sys::set_inherit(fd, true) {
            return std::io::Error::from(e);
        }
    }
    // Inheritable, for the fallback; the monitor closes it once it has read the handoff.
    let own_exe = nix::fcntl::open("/proc/self/exe", OFlag::O_PATH, Mode::empty()).ok();
    let handoff = h.encode(dir);
    let mut last_err = std::io::Error::other("no monitor binary");
    // /proc/self/exe is the binary this process runs, even if an upgrade replaced the
    // file since: the same version as the creator.
    let targets = monitor_binary()
        .into_iter()
        .chain([PathBuf::from("/proc/self/exe")]);
    for target in targets {
        let mut cmd = std::process::Command::new(&target);
        if let Some(argv0) = std::env::args_os().next() {
            cmd.arg0(argv0);
        }
        // `shim <DIR>` whatever this process was started as (a spare has no dir in argv).
        cmd.arg("shim").arg(dir).env(MONITOR_ENV, &handoff);
        if let Some(fd) = own_exe {
            cmd.env(EXE_FD_ENV, fd.to_string());
        }
        last_err = cmd.exec();
        diag(&format!("cannot execute {target:?}: {last_err}"));
    }
    if let Some(fd) = own_exe {
        let _ = nix::unistd::close(fd);
    }
    last_err
}

/// The descriptor of [`EXE_FD_ENV`], if any; the variable is removed so that it does not
/// reach anything this process starts.
fn take_exe_fd() -> Option<OwnedFd> {
    let raw: RawFd = std::env::var(EXE_FD_ENV).ok()?.parse().ok()?;
    // SAFETY: single-threaded at this point (the monitor's first steps), so nothing can
    // read the environment concurrently.
    unsafe { std::env::remove_var(EXE_FD_ENV) };
    if raw <= 2 || !sys::is_open(raw) {
        return None;
    }
    // SAFETY: the creator opened this descriptor for us and exec'd; nothing else in this
    // process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Entry point of the re-executed shim. `dir` (from argv) is only a fallback: the
/// handoff carries the absolute path.
pub fn main_after_exec(dir: &Path, value: &OsStr) -> i32 {
    let own_exe = take_exe_fd();
    match Handoff::decode(value) {
        Ok((h, dir)) => {
            drop(own_exe);
            run(&JobFiles::new(&dir), h)
        }
        Err(DecodeError::Version(msg)) => {
            // The creating shim's binary reads its own handoff. The descriptors stay
            // inheritable, the environment is unchanged.
            if let Some(exe) = &own_exe {
                let err = sys::exec_fd(exe);
                diag(&format!(
                    "{msg}; cannot run the creating shim's binary: {err}"
                ));
            } else {
                diag(&format!("{msg}, and the creating shim's binary is unknown"));
            }
            give_up(dir, value)
        }
        Err(DecodeError::Malformed(msg)) => {
            diag(&msg);
            give_up(dir, value)
        }
    }
}

/// Without the handed-over descriptors nobody can supervise the process: better gone
/// than running unobserved. Kills it (the pid is the third field; it is our unreaped
/// child, so it cannot have been reused) and, for a container, removes what is left.
fn give_up(dir: &Path, value: &OsStr) -> i32 {
    let pid = value
        .as_bytes()
        .split(|&b| b == b':')
        .nth(2)
        .and_then(|p| std::str::from_utf8(p).ok()?.parse::<i32>().ok())
        .filter(|&p| p > 0);
    diag("killing the supervised process");
    if let Some(pid) = pid {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid), None);
    }
    if let Ok(cfg) = read_config(&JobFiles::new(dir))
        && let Err(e) = crate::teardown::remove_exited(&cfg.state_root, &cfg.container.id, true)
    {
        diag(&e.to_string());
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_round_trip() {
        let (a, b) = sys::pipe().unwrap();
        let (c, e) = sys::pipe().unwrap();
        let (g, _unused) = sys::pipe().unwrap();
        let raws = (
            a.as_raw_fd(),
            b.as_raw_fd(),
            c.as_raw_fd(),
            e.as_raw_fd(),
            g.as_raw_fd(),
        );
        let h = Handoff {
            kind: Kind::Exec,
            pid: Pid::from_raw(42),
            stdout: None,
            stderr: Some(a),
            terminal: Some(b),
            stdin: Some(c),
            listener: e,
            lock: g,
        };
        let value = h.encode(Path::new("/var/lib/flynn/jobs/a:b"));
        // The decoded handoff takes ownership of the same descriptors.
        std::mem::forget(h);
        let (back, dir) = Handoff::decode(&value).unwrap();
        assert_eq!(back.kind, Kind::Exec);
        assert_eq!(back.pid, Pid::from_raw(42));
        assert!(back.stdout.is_none());
        let raw = |f: &Option<OwnedFd>| f.as_ref().unwrap().as_raw_fd();
        assert_eq!(
            (
                raw(&back.stderr),
                raw(&back.terminal),
                raw(&back.stdin),
                back.listener.as_raw_fd(),
                back.lock.as_raw_fd()
            ),
            raws
        );
        assert_eq!(dir, Path::new("/var/lib/flynn/jobs/a:b"));

        assert!(matches!(
            Handoff::decode(OsStr::new("1:2:3:4:5:/j")),
            Err(DecodeError::Version(_))
        ));
        for bad in [
            "2",
            "2:c:1:2:3",
            "2:x:1:-1:-1:-1:-1:5:6:/j",
            "2:c:1:-1:-1:-1:-1:5:6:relative",
            "2:c:0:-1:-1:-1:-1:5:6:/j",
            "2:c:x:-1:-1:-1:-1:5:6:/j",
            "2:c:1:-1:-1:-1:-1:-1:6:/j",
            "2:c:1:0:-1:-1:-1:5:6:/j",
            "2:c:1:-1:-1:-1:-1:1:2:/j",
        ] {
            assert!(
                matches!(
                    Handoff::decode(OsStr::new(bad)),
                    Err(DecodeError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }
}
