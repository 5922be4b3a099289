//! The monitor's poll loop: one thread, one `poll(2)`, until the process has exited;
//! then what follows its exit ([`Monitor::finish`]).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::READ_CHUNK;
use super::control::{Client, Phase, send_all};
use super::handoff::{Handoff, Kind};
use crate::cgroup;
use crate::exit::{self, ExitStatus};
use crate::logs::{LogWriter, Stream};
use crate::shim::error::{ShimSetupError, Source as ErrorSource};
use crate::shim::protocol::{self, Response};
use crate::shim::{JobFiles, diag, read_config, sys};

/// Input accepted from the stdin client but not yet taken by the process. When full, the
/// shim stops reading the client (which then blocks): backpressure, not memory growth.
const STDIN_BUFFER: usize = 64 * 1024;

pub(super) fn run(files: &JobFiles, h: Handoff) -> i32 {
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
pub(super) struct Stdin {
    /// The pipe's write end or the pty master; `None` once closed.
    pub(super) fd: Option<OwnedFd>,
    /// A terminal: never closed by a client leaving (a terminal has no EOF).
    pub(super) terminal: bool,
    pub(super) pending: Vec<u8>,
    pub(super) attached: bool,
    /// The client left: close the pipe once `pending` is written.
    pub(super) eof: bool,
}

impl Stdin {
    pub(super) fn room(&self) -> usize {
        STDIN_BUFFER.saturating_sub(self.pending.len())
    }

    fn wants_writable(&self) -> bool {
        self.fd.is_some() && !self.pending.is_empty()
    }

    /// Writes what it can without blocking; closes the pipe when the client has left and
    /// everything is written, or when the process cannot take input any more.
    pub(super) fn flush(&mut self) {
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

pub(super) struct Monitor {
    pub(super) files: JobFiles,
    pub(super) kind: Kind,
    /// For a container: its id and libcontainer's state root, to delete it.
    pub(super) container: Option<(String, PathBuf)>,
    pub(super) pid: Pid,
    /// How and when the process ended; set once it has been reaped.
    pub(super) status: Option<(WaitStatus, chrono::DateTime<chrono::Utc>)>,
    pub(super) sigfd: SignalFd,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
    pub(super) terminal: Option<OwnedFd>,
    /// The terminal still gives output (it reports EIO once no process has it open; the
    /// master stays open for resizes).
    pub(super) terminal_open: bool,
    pub(super) stdin: Option<Stdin>,
    pub(super) listener: UnixListener,
    pub(super) clients: Vec<Client>,
    pub(super) log: Option<LogWriter>,
    pub(super) log_failing: bool,
    pub(super) buf: Vec<u8>,
    /// Held (never read) until the process exits.
    pub(super) _lock: OwnedFd,
}

impl Monitor {
    fn new(files: &JobFiles, h: Handoff) -> Result<Monitor, ShimSetupError> {
        let fail =
            |what: &'static str, source: ErrorSource| ShimSetupError::Monitor { what, source };
        let (container, log_path, rotation) = match h.kind {
            Kind::Container => {
                let cfg = read_config(files)?;
                (
                    Some((cfg.container.id, cfg.state_root)),
                    cfg.log_path,
                    cfg.log_rotation,
                )
            }
            Kind::Exec => (None, files.log(), None),
        };
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        // Blocked so that SIGCHLD is only ever seen through the signalfd. The supervised
        // process is never cloned from here, so it cannot inherit this mask.
        mask.thread_block()
            .map_err(|e| fail("cannot block SIGCHLD", e.into()))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| fail("cannot create a signalfd", e.into()))?;
        for fd in [&h.stdout, &h.stderr, &h.terminal, &h.stdin]
            .into_iter()
            .flatten()
        {
            sys::set_nonblocking(fd)
                .map_err(|e| fail("cannot make a stream non-blocking", e.into()))?;
        }
        let listener = UnixListener::from(h.listener);
        listener
            .set_nonblocking(true)
            .map_err(|e| fail("cannot make the control socket non-blocking", e.into()))?;
        let log = match LogWriter::open_rotating(&log_path, rotation) {
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
    pub(super) fn what(&self) -> &'static str {
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
