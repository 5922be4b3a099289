//! The shim's long phase: supervise a started process (a container's init, or a process
//! exec'd into a container) until it exits.
//!
//! One thread, one `poll(2)`, no timers: the wake-ups are SIGCHLD (through a signalfd),
//! output on the process's pipes or terminal, room in its stdin, and control connections.
//! When the process has exited the shim drains its output, (for a container) reads the
//! OOM counter, writes `exit.json`, removes the control socket, answers the waiters, and
//! only then (for a container) deletes the container and exits: waiters learn the exit as
//! early as it is recorded. `shim.lock`, held until the process ends, tells when the
//! delete is over too ([`super::wait_shim_gone`]).
//!
//! This module must not reach libcontainer (nor tokio): it is all the lean monitor
//! binary (`flynn-shim-monitor`) runs, and the linker keeps only what it reaches.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{MsgFlags, send};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::protocol::{self, Request, Response, ShimState, Status};
use super::{JobFiles, MONITOR_BINARY, MONITOR_ENV, diag, read_config, stdio, sys};
use crate::cgroup;
use crate::exit::{self, ExitStatus};
use crate::logs::{LogWriter, Stream};

/// Connections beyond this are closed at once: a misbehaving client must not make the
/// shim grow without bound.
const MAX_CLIENTS: usize = 64;
const MAX_REQUEST_BYTES: usize = 4096;
const READ_CHUNK: usize = 64 * 1024;
/// Input accepted from the stdin client but not yet taken by the process. When full, the
/// shim stops reading the client (which then blocks): backpressure, not memory growth.
const STDIN_BUFFER: usize = 64 * 1024;

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

fn run(files: &JobFiles, h: Handoff) -> i32 {
    let pid = h.pid;
    match Monitor::new(files, h) {
        Ok(mut m) => {
            m.run();
            m.finish()
        }
        Err(msg) => {
            diag(&format!("{msg}; killing the supervised process"));
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            1
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading its request line.
    Request,
    /// Asked for the exit status; answered in `finish`.
    Waiting,
    /// Attached to stdin: what it sends goes to the process.
    Stdin,
}

struct Client {
    stream: UnixStream,
    request: Vec<u8>,
    phase: Phase,
    /// The peer shut down its writing side (it may still read our answer).
    read_closed: bool,
    done: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    Stdout,
    Stderr,
    Terminal,
}

impl Source {
    /// Docker logs a terminal's output as stdout.
    fn stream(self) -> Stream {
        match self {
            Source::Stderr => Stream::Stderr,
            Source::Stdout | Source::Terminal => Stream::Stdout,
        }
    }
}

#[derive(Clone, Copy)]
enum Token {
    Child,
    Output(Source),
    StdinWritable,
    Listener,
    Client(usize),
}

/// The process's stdin, when it was started with one.
struct Stdin {
    /// The pipe's write end or the pty master; `None` once closed.
    fd: Option<OwnedFd>,
    /// A terminal: never closed by a client leaving (a terminal has no EOF).
    terminal: bool,
    pending: Vec<u8>,
    attached: bool,
    /// The client left: close the pipe once `pending` is written.
    eof: bool,
}

impl Stdin {
    fn room(&self) -> usize {
        STDIN_BUFFER.saturating_sub(self.pending.len())
    }

    fn wants_writable(&self) -> bool {
        self.fd.is_some() && !self.pending.is_empty()
    }

    /// Writes what it can without blocking; closes the pipe when the client has left and
    /// everything is written, or when the process cannot take input any more.
    fn flush(&mut self) {
        let Some(fd) = &self.fd else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match nix::unistd::write(fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                // EPIPE: the process closed its stdin (SIGPIPE is ignored here); EIO: the
                // terminal has no process left. Input has nowhere to go.
                Err(_) => {
                    self.pending = Vec::new();
                    self.fd = None;
                    return;
                }
            }
        }
        if self.eof && !self.terminal {
            self.fd = None;
        }
        if self.pending.capacity() > STDIN_BUFFER {
            self.pending.shrink_to(4096);
        }
    }
}

struct Monitor {
    files: JobFiles,
    kind: Kind,
    /// For a container: its id and libcontainer's state root, to delete it.
    container: Option<(String, PathBuf)>,
    pid: Pid,
    /// How and when the process ended; set once it has been reaped.
    status: Option<(WaitStatus, chrono::DateTime<chrono::Utc>)>,
    sigfd: SignalFd,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    terminal: Option<OwnedFd>,
    /// The terminal still gives output (it reports EIO once no process has it open; the
    /// master stays open for resizes).
    terminal_open: bool,
    stdin: Option<Stdin>,
    listener: UnixListener,
    clients: Vec<Client>,
    log: Option<LogWriter>,
    log_failing: bool,
    buf: Vec<u8>,
    /// Held (never read) until the process exits.
    _lock: OwnedFd,
}

impl Monitor {
    fn new(files: &JobFiles, h: Handoff) -> Result<Monitor, String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        let (container, log_path) = match h.kind {
            Kind::Container => {
                let cfg = read_config(files)?;
                (Some((cfg.container.id, cfg.state_root)), cfg.log_path)
            }
            Kind::Exec => (None, files.log()),
        };
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        // Blocked so that SIGCHLD is only ever seen through the signalfd. The supervised
        // process is never cloned from here, so it cannot inherit this mask.
        mask.thread_block()
            .map_err(|e| fail("cannot block SIGCHLD", &e))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| fail("cannot create a signalfd", &e))?;
        for fd in [&h.stdout, &h.stderr, &h.terminal, &h.stdin]
            .into_iter()
            .flatten()
        {
            sys::set_nonblocking(fd).map_err(|e| fail("cannot make a stream non-blocking", &e))?;
        }
        let listener = UnixListener::from(h.listener);
        listener
            .set_nonblocking(true)
            .map_err(|e| fail("cannot make the control socket non-blocking", &e))?;
        let log = match LogWriter::open(&log_path) {
            Ok(w) => Some(w),
            Err(e) => {
                // The process still runs; its output is read and dropped so that it
                // never blocks on a full pipe.
                diag(&format!("{e}; output will be discarded"));
                None
            }
        };
        let terminal_open = h.terminal.is_some();
        let stdin = h.stdin.map(|fd| Stdin {
            fd: Some(fd),
            terminal: terminal_open,
            pending: Vec::new(),
            attached: false,
            eof: false,
        });
        Ok(Monitor {
            files: files.clone(),
            kind: h.kind,
            container,
            pid: h.pid,
            status: None,
            sigfd,
            stdout: h.stdout,
            stderr: h.stderr,
            terminal: h.terminal,
            terminal_open,
            stdin,
            listener,
            clients: Vec::new(),
            log,
            log_failing: false,
            // Capacity only: pages are touched as reads fill them, so a quiet process
            // costs no 64 KiB of zeroes.
            buf: Vec::with_capacity(READ_CHUNK),
            _lock: h.lock,
        })
    }

    /// What is supervised, for messages.
    fn what(&self) -> &'static str {
        match self.kind {
            Kind::Container => "container",
            Kind::Exec => "process",
        }
    }

    fn run(&mut self) {
        // The process may have exited before SIGCHLD was blocked: that signal is gone,
        // the zombie is not.
        self.reap();
        if self.status.is_none() {
            sys::drop_clean_file_pages();
        }
        while self.status.is_none() {
            let ready = match self.wait_for_events() {
                Ok(ready) => ready,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    diag(&format!("poll failed: {e}"));
                    continue;
                }
            };
            for (token, revents) in ready {
                match token {
                    Token::Child => self.on_sigchld(),
                    Token::Output(source) => {
                        self.read_output(source);
                    }
                    Token::StdinWritable => {
                        if let Some(stdin) = &mut self.stdin {
                            stdin.flush();
                        }
                    }
                    Token::Listener => self.on_accept(),
                    Token::Client(i) => self.on_client(i, revents),
                }
            }
            self.sweep();
        }
    }

    /// Forgets finished clients; a stdin client whose stdin is gone is finished too.
    fn sweep(&mut self) {
        let stdin_gone = self.stdin.as_ref().is_none_or(|s| s.fd.is_none());
        for c in &mut self.clients {
            if c.phase == Phase::Stdin && stdin_gone {
                c.done = true;
            }
        }
        if let Some(stdin) = &mut self.stdin {
            stdin.attached = self
                .clients
                .iter()
                .any(|c| c.phase == Phase::Stdin && !c.done);
        }
        self.clients.retain(|c| !c.done);
    }

    fn wait_for_events(&self) -> Result<Vec<(Token, PollFlags)>, Errno> {
        let mut fds = Vec::with_capacity(6 + self.clients.len());
        let mut tokens = Vec::with_capacity(fds.capacity());
        fds.push(PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN));
        tokens.push(Token::Child);
        let terminal = self.terminal.as_ref().filter(|_| self.terminal_open);
        for (fd, source) in [
            (self.stdout.as_ref(), Source::Stdout),
            (self.stderr.as_ref(), Source::Stderr),
            (terminal, Source::Terminal),
        ] {
            if let Some(fd) = fd {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                tokens.push(Token::Output(source));
            }
        }
        if let Some(stdin) = self.stdin.as_ref().filter(|s| s.wants_writable())
            && let Some(fd) = &stdin.fd
        {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
            tokens.push(Token::StdinWritable);
        }
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        tokens.push(Token::Listener);
        let stdin_room = self.stdin.as_ref().map_or(0, Stdin::room);
        for (i, c) in self.clients.iter().enumerate() {
            let events = match c.phase {
                // A full stdin buffer: not even polled (a hung-up peer would otherwise
                // wake us in a loop), so its data waits in the socket: backpressure.
                Phase::Stdin if stdin_room == 0 => continue,
                // With no events requested, poll still reports the peer hanging up.
                _ if c.read_closed => PollFlags::empty(),
                _ => PollFlags::POLLIN,
            };
            fds.push(PollFd::new(c.stream.as_fd(), events));
            tokens.push(Token::Client(i));
        }
        poll(&mut fds, PollTimeout::NONE)?;
        Ok(fds
            .iter()
            .zip(tokens)
            .filter_map(|(fd, token)| fd.revents().filter(|r| !r.is_empty()).map(|r| (token, r)))
            .collect())
    }

    fn on_sigchld(&mut self) {
        while let Ok(Some(_)) = self.sigfd.read_signal() {}
        self.reap();
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                    if pid == self.pid =>
                {
                    self.status = Some((status, chrono::Utc::now()));
                }
                // Some other child (there should be none): reaped and forgotten.
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    diag(&format!("waitpid failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Reads once from an output; returns false when there is nothing more to read now.
    fn read_output(&mut self, source: Source) -> bool {
        let fd = match source {
            Source::Stdout => self.stdout.as_ref(),
            Source::Stderr => self.stderr.as_ref(),
            Source::Terminal => self.terminal.as_ref().filter(|_| self.terminal_open),
        };
        let Some(fd) = fd else { return false };
        match sys::read_into(fd, &mut self.buf, READ_CHUNK) {
            Ok(n) if n > 0 => {
                if let Some(log) = &mut self.log {
                    let result = log.write(source.stream(), &self.buf);
                    self.note_log_result(result);
                }
                true
            }
            Err(Errno::EAGAIN | Errno::EINTR) => false,
            // EOF; a terminal says EIO once no process has it open any more.
            other => {
                if let Err(e) = other
                    && !(source == Source::Terminal && e == Errno::EIO)
                {
                    diag(&format!("cannot read {source:?}: {e}"));
                }
                match source {
                    Source::Stdout => self.stdout = None,
                    Source::Stderr => self.stderr = None,
                    Source::Terminal => self.terminal_open = false,
                }
                false
            }
        }
    }

    /// Reports log write failures once per episode, not once per line: a full disk must
    /// not also fill shim.log.
    fn note_log_result(&mut self, result: std::io::Result<()>) {
        match result {
            Err(e) if !self.log_failing => {
                diag(&format!("cannot write the log: {e}; dropping output"));
                self.log_failing = true;
            }
            Ok(()) if self.log_failing => {
                diag("the log is writable again");
                self.log_failing = false;
            }
            _ => {}
        }
    }

    fn on_accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.clients.push(Client {
                        stream,
                        request: Vec::new(),
                        phase: Phase::Request,
                        read_closed: false,
                        done: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        diag(&format!("cannot accept a control connection: {e}"));
                    }
                    return;
                }
            }
        }
    }

    fn on_client(&mut self, i: usize, revents: PollFlags) {
        if self.clients.get(i).is_some_and(|c| c.phase == Phase::Stdin) {
            self.on_stdin_client(i, revents);
            return;
        }
        let Some(client) = self.clients.get_mut(i) else {
            return;
        };
        if !client.read_closed {
            let mut chunk = [0u8; 1024];
            match client.stream.read(&mut chunk) {
                Ok(0) => client.read_closed = true,
                Ok(n) if client.phase == Phase::Request => {
                    client.request.extend_from_slice(&chunk[..n])
                }
                // Anything a waiter sends after its request is ignored.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => client.done = true,
            }
        }
        if client.done {
            return;
        }
        let hung_up = revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
        if client.phase == Phase::Waiting {
            client.done = hung_up;
            return;
        }
        let line_end = client.request.iter().position(|&b| b == b'\n');
        let (request, rest) = match line_end {
            Some(n) => (
                client.request[..n].to_vec(),
                client.request[n + 1..].to_vec(),
            ),
            // A request may also end with the client shutting down its side.
            None if client.read_closed => (std::mem::take(&mut client.request), Vec::new()),
            None if client.request.len() > MAX_REQUEST_BYTES => {
                let reply = error(format!(
                    "request longer than {MAX_REQUEST_BYTES} bytes without a newline"
                ));
                reply_and_close(client, &reply);
                return;
            }
            None => {
                client.done = hung_up;
                return;
            }
        };
        if request.iter().all(u8::is_ascii_whitespace) {
            client.done = true;
            return;
        }
        let exited = self.status.is_some();
        let reply = match serde_json::from_slice::<Request>(&request) {
            Ok(Request::Wait) => {
                let client = &mut self.clients[i];
                client.phase = Phase::Waiting;
                client.request = Vec::new();
                return;
            }
            // Once reaped, the pid may belong to someone else.
            Ok(Request::Signal { .. }) if exited => {
                error(format!("the {} has exited", self.what()))
            }
            Ok(Request::Signal { signal }) => signal_process(self.pid, signal),
            Ok(Request::State) => Response::State(ShimState {
                pid: self.pid.as_raw(),
                status: if exited {
                    Status::Stopped
                } else {
                    Status::Running
                },
            }),
            Ok(Request::Stdin) => match self.attach_stdin(i, rest) {
                Ok(()) => return,
                Err(reply) => reply,
            },
            Ok(Request::Resize { rows, cols }) => self.resize(rows, cols),
            Err(e) => error(format!(
                "invalid request: {e}; send one JSON line such as {{\"op\":\"state\"}}, \
                 {{\"op\":\"wait\"}}, {{\"op\":\"signal\",\"signal\":15}}, \
                 {{\"op\":\"stdin\"}} or {{\"op\":\"resize\",\"rows\":24,\"cols\":80}}"
            )),
        };
        let client = &mut self.clients[i];
        reply_and_close(client, &reply);
    }

    /// Makes client `i` the stdin client (replying ok), with `rest` (what it sent after
    /// its request line) as its first input. Returns the error reply otherwise.
    fn attach_stdin(&mut self, i: usize, rest: Vec<u8>) -> Result<(), Response> {
        let process = self.what();
        if self.status.is_some() {
            return Err(error(format!("the {process} has exited")));
        }
        let what = match self.kind {
            Kind::Container => "job",
            Kind::Exec => "exec",
        };
        let Some(stdin) = &mut self.stdin else {
            return Err(error(format!("the {what} was started without stdin")));
        };
        if stdin.attached {
            return Err(error("stdin is already attached".into()));
        }
        if stdin.fd.is_none() {
            return Err(error(format!(
                "the {process}'s stdin is closed (a client detached, or the process closed it)"
            )));
        }
        let client = &mut self.clients[i];
        if send_all(&client.stream, &protocol::line(&Response::Ok { ok: true })).is_err() {
            client.done = true;
            return Ok(());
        }
        client.phase = Phase::Stdin;
        client.request = Vec::new();
        stdin.attached = true;
        stdin.pending.extend_from_slice(&rest);
        stdin.flush();
        if client.read_closed {
            self.detach_stdin(i);
        }
        Ok(())
    }

    fn on_stdin_client(&mut self, i: usize, revents: PollFlags) {
        let (Some(stdin), Some(client)) = (&mut self.stdin, self.clients.get_mut(i)) else {
            return;
        };
        let room = stdin.room().min(READ_CHUNK);
        if room == 0 {
            return;
        }
        let left = match sys::read_into(&client.stream, &mut self.buf, room) {
            Ok(0) => true,
            Ok(_) => {
                stdin.pending.extend_from_slice(&self.buf);
                stdin.flush();
                false
            }
            Err(Errno::EAGAIN | Errno::EINTR) => revents.contains(PollFlags::POLLERR),
            Err(_) => true,
        };
        if left {
            self.detach_stdin(i);
        }
    }

    /// The stdin client left: a pipe is closed once its input is written (the process
    /// reads EOF); a terminal stays as it is.
    fn detach_stdin(&mut self, i: usize) {
        if let Some(c) = self.clients.get_mut(i) {
            c.done = true;
        }
        if let Some(stdin) = &mut self.stdin {
            stdin.attached = false;
            if !stdin.terminal {
                stdin.eof = true;
                stdin.flush();
            }
        }
    }

    fn resize(&self, rows: u16, cols: u16) -> Response {
        let Some(terminal) = &self.terminal else {
            return error(format!(
                "the {} has no terminal: only a process started with tty can be resized",
                self.what()
            ));
        };
        match stdio::set_window_size(terminal, rows, cols) {
            Ok(()) => Response::Ok { ok: true },
            Err(e) => error(format!("cannot resize the terminal: {e}")),
        }
    }

    /// Everything after the process's exit, in the order that lets waiters know as early
    /// as it is safe: output drained, OOM counter read, `exit.json` durable, socket gone,
    /// waiters answered; then the container deleted. Returns the shim's exit code.
    fn finish(mut self) -> i32 {
        // A container's processes are all gone (a PID namespace dies with its init), so
        // its pipes hold all there is left. An exec'd process may have left children
        // holding its output: what they have written so far is read, not more.
        for source in [Source::Stdout, Source::Stderr, Source::Terminal] {
            while self.read_output(source) {}
        }
        self.stdout = None;
        self.stderr = None;
        self.stdin = None;
        if let Some(log) = &mut self.log {
            let result = log.finish();
            self.note_log_result(result);
        }

        // The counter lives in the cgroup, so it must be read before the delete below.
        let oom_killed = match &self.container {
            Some((id, _)) => match cgroup::oom_kill_count(id) {
                Ok(n) => n > 0,
                Err(e) => {
                    diag(&format!("cannot tell whether the OOM killer struck: {e}"));
                    false
                }
            },
            None => false,
        };
        let (wait_status, reaped_at) = self
            .status
            .unwrap_or((WaitStatus::StillAlive, chrono::Utc::now()));
        let mut status = ExitStatus::from_wait(wait_status, oom_killed);
        status.finished_at = reaped_at;
        if let Err(e) = exit::write(&self.files.exit_status(), &status) {
            diag(&e.to_string());
        }

        // From here on, new clients find no socket and read exit.json instead. Those that
        // connected while the process was exiting, or before this process was listening,
        // are served now (a wait is answered below) when their request has arrived; the
        // rest see the connection close and read exit.json too.
        let _ = std::fs::remove_file(self.files.socket());
        self.on_accept();
        for i in 0..self.clients.len() {
            if self.clients[i].phase != Phase::Stdin {
                self.on_client(i, PollFlags::empty());
            }
        }
        let Monitor {
            listener,
            clients,
            container,
            terminal,
            _lock,
            ..
        } = self;
        drop(listener);
        drop(terminal);
        let reply = protocol::line(&Response::Exit { exit: status });
        for c in clients
            .iter()
            .filter(|c| c.phase == Phase::Waiting && !c.done)
        {
            let _ = send_all(&c.stream, &reply);
        }
        drop(clients);

        // The waiters know; the agent tells the delete is over by shim.lock, held until
        // this process ends.
        if let Some((id, state_root)) = container
            && let Err(e) = crate::teardown::remove_exited(&state_root, &id, true)
        {
            diag(&format!(
                "cannot delete container {id}: {e}; the agent's cleanup will retry"
            ));
        }
        drop(_lock);
        0
    }
}

fn error(msg: String) -> Response {
    Response::Error { error: msg }
}

fn signal_process(pid: Pid, signal: i32) -> Response {
    let Ok(sig) = Signal::try_from(signal) else {
        return error(format!(
            "invalid signal number {signal}: give a standard signal between 1 and 31"
        ));
    };
    // The process is this one's unreaped child, so its pid cannot have been reused.
    match kill(pid, sig) {
        Ok(()) => Response::Ok { ok: true },
        Err(e) => error(format!(
            "cannot send signal {signal} to the process (pid {pid}): {e}"
        )),
    }
}

fn reply_and_close(client: &mut Client, reply: &Response) {
    let _ = send_all(&client.stream, &protocol::line(reply));
    client.done = true;
}

/// Writes a short reply without blocking and without SIGPIPE; a client that does not
/// read its (tiny) answer loses it.
fn send_all(stream: &UnixStream, data: &[u8]) -> Result<(), Errno> {
    let mut sent = 0;
    while sent < data.len() {
        match send(
            stream.as_raw_fd(),
            &data[sent..],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    let _ = (&*stream).flush();
    Ok(())
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
