//! The control protocol's side in the monitor: clients of the control socket, their
//! requests and the replies.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{MsgFlags, send};
use nix::unistd::Pid;

use super::READ_CHUNK;
use super::event_loop::Monitor;
use super::handoff::Kind;
use crate::shim::protocol::{self, Request, Response, ShimState, Status};
use crate::shim::{diag, stdio, sys};

/// Connections beyond this are closed at once: a misbehaving client must not make the
/// shim grow without bound.
const MAX_CLIENTS: usize = 64;
const MAX_REQUEST_BYTES: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Reading its request line.
    Request,
    /// Asked for the exit status; answered in `finish`.
    Waiting,
    /// Attached to stdin: what it sends goes to the process.
    Stdin,
}

pub(super) struct Client {
    pub(super) stream: UnixStream,
    pub(super) request: Vec<u8>,
    pub(super) phase: Phase,
    /// The peer shut down its writing side (it may still read our answer).
    pub(super) read_closed: bool,
    pub(super) done: bool,
}
impl Monitor {
    pub(super) fn on_accept(&mut self) {
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

    pub(super) fn on_client(&mut self, i: usize, revents: PollFlags) {
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
pub(super) fn send_all(stream: &UnixStream, data: &[u8]) -> Result<(), Errno> {
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
