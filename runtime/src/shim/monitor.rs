//! The shim's long phase: supervise a started container until it exits.
//!
//! One thread, one `poll(2)`, no timers: the wake-ups are SIGCHLD (through a signalfd),
//! output on the container's two pipes, and control connections. When init has exited
//! the shim drains the pipes, reads the OOM counter, writes `exit.json`, removes the
//! control socket, answers the waiters, and only then deletes the container and exits:
//! waiters learn the exit as early as it is recorded. `shim.lock`, held until the process
//! ends, tells when the delete is over too ([`super::wait_shim_gone`]).

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{MsgFlags, send};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::protocol::{self, Request, Response, ShimState, Status};
use super::{JobFiles, MONITOR_ENV, ShimConfig, diag, error_chain, read_config, sys};
use crate::exit::{self, ExitStatus};
use crate::logs::{LogWriter, Stream};
use crate::{cgroup, container};

/// Connections beyond this are closed at once: a misbehaving client must not make the
/// shim grow without bound.
const MAX_CLIENTS: usize = 64;
const MAX_REQUEST_BYTES: usize = 4096;
const READ_CHUNK: usize = 64 * 1024;

/// What the creating phase hands to the monitoring phase, across exec.
pub struct Handoff {
    pub init: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub listener: OwnedFd,
    /// `shim.lock`, locked by this process: the lock survives exec as long as this
    /// descriptor stays open.
    pub lock: OwnedFd,
}

impl Handoff {
    /// `init:stdout:stderr:listener:lock:job_dir`. The job dir travels too (absolute), so
    /// the monitor does not depend on argv or on the working directory it was started from.
    fn encode(&self, job_dir: &Path) -> OsString {
        let mut value = OsString::from(format!(
            "{}:{}:{}:{}:{}:",
            self.init,
            self.stdout.as_raw_fd(),
            self.stderr.as_raw_fd(),
            self.listener.as_raw_fd(),
            self.lock.as_raw_fd()
        ));
        value.push(job_dir.as_os_str());
        value
    }

    fn decode(value: &OsStr) -> Result<(Handoff, PathBuf), String> {
        let malformed = || format!("malformed {MONITOR_ENV}={value:?}");
        let mut parts = value.as_bytes().splitn(6, |&b| b == b':');
        let mut nums = [0i32; 5];
        for n in nums.iter_mut() {
            *n = parts
                .next()
                .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok())
                .ok_or_else(malformed)?;
        }
        let job_dir = PathBuf::from(OsStr::from_bytes(parts.next().ok_or_else(malformed)?));
        if !job_dir.is_absolute() {
            return Err(malformed());
        }
        let [init, out, err, listener, lock] = nums;
        let mut fds = Vec::new();
        for raw in [out, err, listener, lock] {
            if raw <= 2 || !sys::is_open(raw) || fds.contains(&raw) {
                return Err(format!("{MONITOR_ENV}: descriptor {raw} is not usable"));
            }
            fds.push(raw);
        }
        // SAFETY: the four descriptors were checked to be open and distinct; the
        // pre-exec shim made exactly these inheritable and gave up its own handles on
        // them by exec'ing, so nothing else in this process owns them.
        let own = |raw| unsafe { OwnedFd::from_raw_fd(raw) };
        let handoff = Handoff {
            init: Pid::from_raw(init),
            stdout: own(out),
            stderr: own(err),
            listener: own(listener),
            lock: own(lock),
        };
        Ok((handoff, job_dir))
    }
}

/// How long the creating process watches for init's exit before re-executing into the
/// lean monitor. A container done by then is finished right here: the exec (a few
/// milliseconds of loading and relocating the binary) would only delay its exit status.
/// A longer-lived one has its first output read, and its first control requests
/// answered, that much later (nothing is lost: the pipes and the socket's backlog hold
/// them).
const REEXEC_GRACE_MS: u16 = 20;

/// Re-executes the shim binary into the monitoring phase, dropping libcontainer's memory,
/// unless init exits within [`REEXEC_GRACE_MS`]; if the exec is impossible, monitors in
/// this process instead.
pub fn hand_over(files: &JobFiles, handoff: Handoff) -> i32 {
    if exits_soon(handoff.init) {
        return run(files, handoff);
    }
    let err = reexec(&handoff, files.dir());
    diag(&format!(
        "cannot re-exec into the lean monitor ({err}); monitoring in-process"
    ));
    for fd in [
        &handoff.stdout,
        &handoff.stderr,
        &handoff.listener,
        &handoff.lock,
    ] {
        let _ = sys::set_inherit(fd, false);
    }
    // A failed exec may already have reset SIGPIPE to its default (fatal) action.
    container::ignore_sigpipe();
    run(files, handoff)
}

/// Whether init, our child, ends within the grace period. Does not reap it: a pidfd turns
/// readable when the process has exited.
fn exits_soon(init: Pid) -> bool {
    let Ok(pidfd) = sys::pidfd_open(init.as_raw()) else {
        return false;
    };
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(REEXEC_GRACE_MS)), Ok(n) if n > 0)
}

/// Only returns on failure.
fn reexec(h: &Handoff, job_dir: &Path) -> std::io::Error {
    for fd in [&h.stdout, &h.stderr, &h.listener, &h.lock] {
        if let Err(e) = sys::set_inherit(fd, true) {
            return std::io::Error::from(e);
        }
    }
    // /proc/self/exe is the binary this process runs, even if an upgrade replaced the
    // file since: the monitor is always the same version as the creator.
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(argv0) = args.next() {
        cmd.arg0(argv0);
    }
    cmd.args(args).env(MONITOR_ENV, h.encode(job_dir));
    cmd.exec()
}

/// Entry point of the re-executed shim. `job_dir` (from argv) is only a fallback: the
/// handoff carries the absolute path.
pub fn main_after_exec(job_dir: &Path, value: &OsStr) -> i32 {
    match Handoff::decode(value) {
        Ok((h, dir)) => run(&JobFiles::new(&dir), h),
        Err(msg) => {
            // Without the handed-over descriptors nobody can supervise the container:
            // better gone than running unobserved.
            diag(&format!("{msg}; killing the container"));
            if let Ok(cfg) = read_config(&JobFiles::new(job_dir))
                && let Err(e) = container::cleanup(&cfg.state_root, &cfg.container.id)
            {
                diag(&error_chain(&e));
            }
            1
        }
    }
}

fn run(files: &JobFiles, h: Handoff) -> i32 {
    let cfg = match read_config(files) {
        Ok(cfg) => cfg,
        Err(msg) => {
            diag(&format!("{msg}; killing the container"));
            let _ = kill(h.init, Signal::SIGKILL);
            let _ = waitpid(h.init, None);
            return 1;
        }
    };
    match Monitor::new(files, cfg, h) {
        Ok(mut m) => {
            m.run();
            m.finish()
        }
        Err((msg, init)) => {
            diag(&format!("{msg}; killing the container"));
            let _ = kill(init, Signal::SIGKILL);
            let _ = waitpid(init, None);
            1
        }
    }
}

struct Client {
    stream: UnixStream,
    request: Vec<u8>,
    /// Asked for the exit status; answered in `finish`.
    waiting: bool,
    /// The peer shut down its writing side (it may still read our answer).
    read_closed: bool,
    done: bool,
}

#[derive(Clone, Copy)]
enum Token {
    Child,
    Output(Stream),
    Listener,
    Client(usize),
}

struct Monitor {
    files: JobFiles,
    cfg: ShimConfig,
    init: Pid,
    /// How and when init ended; set once it has been reaped.
    status: Option<(WaitStatus, chrono::DateTime<chrono::Utc>)>,
    sigfd: SignalFd,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    listener: UnixListener,
    clients: Vec<Client>,
    log: Option<LogWriter>,
    log_failing: bool,
    buf: Vec<u8>,
    /// Held (never read) until the process exits.
    _lock: OwnedFd,
}

impl Monitor {
    fn new(files: &JobFiles, cfg: ShimConfig, h: Handoff) -> Result<Monitor, (String, Pid)> {
        let init = h.init;
        let fail = |what: &str, e: &dyn std::fmt::Display| (format!("{what}: {e}"), init);
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        // Blocked so that SIGCHLD is only ever seen through the signalfd. The init
        // process is never cloned from here, so it cannot inherit this mask.
        mask.thread_block()
            .map_err(|e| fail("cannot block SIGCHLD", &e))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| fail("cannot create a signalfd", &e))?;
        for fd in [&h.stdout, &h.stderr] {
            sys::set_nonblocking(fd).map_err(|e| fail("cannot make a pipe non-blocking", &e))?;
        }
        let listener = UnixListener::from(h.listener);
        listener
            .set_nonblocking(true)
            .map_err(|e| fail("cannot make the control socket non-blocking", &e))?;
        let log = match LogWriter::open(&cfg.log_path) {
            Ok(w) => Some(w),
            Err(e) => {
                // The container still runs; its output is read and dropped so that it
                // never blocks on a full pipe.
                diag(&format!("{e}; container output will be discarded"));
                None
            }
        };
        Ok(Monitor {
            files: files.clone(),
            cfg,
            init,
            status: None,
            sigfd,
            stdout: Some(h.stdout),
            stderr: Some(h.stderr),
            listener,
            clients: Vec::new(),
            log,
            log_failing: false,
            buf: vec![0; READ_CHUNK],
            _lock: h.lock,
        })
    }

    fn run(&mut self) {
        // Init may have exited before SIGCHLD was blocked: that signal is gone, the
        // zombie is not.
        self.reap();
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
                    Token::Output(stream) => self.on_output(stream),
                    Token::Listener => self.on_accept(),
                    Token::Client(i) => self.on_client(i, revents),
                }
            }
            self.clients.retain(|c| !c.done);
        }
    }

    fn wait_for_events(&self) -> Result<Vec<(Token, PollFlags)>, Errno> {
        let mut fds = Vec::with_capacity(4 + self.clients.len());
        let mut tokens = Vec::with_capacity(fds.capacity());
        fds.push(PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN));
        tokens.push(Token::Child);
        for (fd, stream) in [
            (&self.stdout, Stream::Stdout),
            (&self.stderr, Stream::Stderr),
        ] {
            if let Some(fd) = fd {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                tokens.push(Token::Output(stream));
            }
        }
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        tokens.push(Token::Listener);
        for (i, c) in self.clients.iter().enumerate() {
            // With no events requested, poll still reports the peer hanging up.
            let events = if c.read_closed {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
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
                    if pid == self.init =>
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

    /// Reads once from a stream; returns false when the stream is finished.
    fn read_output(&mut self, stream: Stream) -> bool {
        let fd = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        let Some(fd) = fd else { return false };
        match nix::unistd::read(fd.as_raw_fd(), &mut self.buf) {
            Ok(0) => {
                match stream {
                    Stream::Stdout => self.stdout = None,
                    Stream::Stderr => self.stderr = None,
                }
                false
            }
            Ok(n) => {
                if let Some(log) = &mut self.log {
                    let result = log.write(stream, &self.buf[..n]);
                    self.note_log_result(result);
                }
                true
            }
            Err(Errno::EAGAIN | Errno::EINTR) => false,
            Err(e) => {
                diag(&format!("cannot read container {stream:?}: {e}"));
                match stream {
                    Stream::Stdout => self.stdout = None,
                    Stream::Stderr => self.stderr = None,
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
                diag(&format!(
                    "cannot write the container log: {e}; dropping output"
                ));
                self.log_failing = true;
            }
            Ok(()) if self.log_failing => {
                diag("the container log is writable again");
                self.log_failing = false;
            }
            _ => {}
        }
    }

    fn on_output(&mut self, stream: Stream) {
        self.read_output(stream);
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
                        waiting: false,
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
        let Some(client) = self.clients.get_mut(i) else {
            return;
        };
        if !client.read_closed {
            let mut chunk = [0u8; 1024];
            match client.stream.read(&mut chunk) {
                Ok(0) => client.read_closed = true,
                Ok(n) if !client.waiting => client.request.extend_from_slice(&chunk[..n]),
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
        if client.waiting {
            client.done = hung_up;
            return;
        }
        let line_end = client.request.iter().position(|&b| b == b'\n');
        let request = match line_end {
            Some(n) => client.request[..n].to_vec(),
            // A request may also end with the client shutting down its side.
            None if client.read_closed => std::mem::take(&mut client.request),
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
        let reply = match serde_json::from_slice::<Request>(&request) {
            Ok(Request::Wait) => {
                client.waiting = true;
                return;
            }
            // Once reaped, init's pid may belong to someone else.
            Ok(Request::Signal { .. }) if self.status.is_some() => {
                error("the container has exited".into())
            }
            Ok(Request::Signal { signal }) => signal_init(self.init, signal),
            Ok(Request::State) => Response::State(ShimState {
                pid: self.init.as_raw(),
                status: if self.status.is_some() {
                    Status::Stopped
                } else {
                    Status::Running
                },
            }),
            Err(e) => error(format!(
                "invalid request: {e}; send one JSON line such as {{\"op\":\"state\"}}, \
                 {{\"op\":\"wait\"}} or {{\"op\":\"signal\",\"signal\":15}}"
            )),
        };
        let client = &mut self.clients[i];
        reply_and_close(client, &reply);
    }

    /// Everything after init's exit, in the order that lets waiters know as early as it
    /// is safe: output drained, OOM counter read, `exit.json` durable, socket gone, waiters
    /// answered; then the container deleted. Returns the shim's exit code.
    fn finish(mut self) -> i32 {
        // Every process of the container is gone (a PID namespace dies with its init), so
        // the pipes hold all there is left and then report EOF.
        for stream in [Stream::Stdout, Stream::Stderr] {
            while self.read_output(stream) {}
        }
        self.stdout = None;
        self.stderr = None;
        if let Some(log) = &mut self.log {
            let result = log.finish();
            self.note_log_result(result);
        }

        let id = self.cfg.container.id.clone();
        // The counter lives in the cgroup, so it must be read before the delete below.
        let oom_killed = match cgroup::oom_kill_count(&id) {
            Ok(n) => n > 0,
            Err(e) => {
                diag(&format!("cannot tell whether the OOM killer struck: {e}"));
                false
            }
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
        // connected while init was exiting, or before this process was listening, are
        // served now (a wait is answered below) when their request has arrived; the rest
        // see the connection close and read exit.json too.
        let _ = std::fs::remove_file(self.files.socket());
        self.on_accept();
        for i in 0..self.clients.len() {
            self.on_client(i, PollFlags::empty());
        }
        let Monitor {
            listener,
            clients,
            cfg,
            _lock,
            ..
        } = self;
        drop(listener);
        let reply = protocol::line(&Response::Exit { exit: status });
        for c in clients.iter().filter(|c| c.waiting && !c.done) {
            let _ = send_all(&c.stream, &reply);
        }
        drop(clients);

        // The waiters know; the agent tells the delete is over by shim.lock, held until
        // this process ends.
        if let Err(e) = container::delete_exited(&cfg.state_root, &id) {
            diag(&error_chain(&e));
            match cgroup::existing_dirs(&id) {
                Ok(left) if !left.is_empty() => diag(&format!("cgroups left behind: {left:?}")),
                _ => {}
            }
        }
        drop(_lock);
        0
    }
}

fn error(msg: String) -> Response {
    Response::Error { error: msg }
}

fn signal_init(init: Pid, signal: i32) -> Response {
    let Ok(sig) = Signal::try_from(signal) else {
        return error(format!(
            "invalid signal number {signal}: give a standard signal between 1 and 31"
        ));
    };
    // init is this process's unreaped child, so its pid cannot have been reused.
    match kill(init, sig) {
        Ok(()) => Response::Ok { ok: true },
        Err(e) => error(format!(
            "cannot send signal {signal} to the container's init (pid {init}): {e}"
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
        let raws = (a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd(), e.as_raw_fd());
        let h = Handoff {
            init: Pid::from_raw(42),
            stdout: a,
            stderr: b,
            listener: c,
            lock: e,
        };
        let value = h.encode(Path::new("/var/lib/flynn/jobs/a:b"));
        // The decoded handoff takes ownership of the same descriptors.
        std::mem::forget(h);
        let (back, dir) = Handoff::decode(&value).unwrap();
        assert_eq!(back.init, Pid::from_raw(42));
        assert_eq!(
            (
                back.stdout.as_raw_fd(),
                back.stderr.as_raw_fd(),
                back.listener.as_raw_fd(),
                back.lock.as_raw_fd()
            ),
            raws
        );
        assert_eq!(dir, Path::new("/var/lib/flynn/jobs/a:b"));

        for bad in [
            "",
            "1:2:3",
            "1:2:3:4:5:relative",
            "x:4:5:6:7:/j",
            "1:0:1:2:3:/j",
            "1:2:3:4:/j",
        ] {
            assert!(Handoff::decode(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }
}
