//! The supervised process's standard streams: pipes, or a pseudo-terminal.
//!
//! Without a terminal, stdout and stderr are two pipes whose read ends the shim keeps,
//! and stdin is /dev/null or (with `stdin`) a pipe whose write end the shim keeps. With
//! a terminal, libcontainer's init (or exec'd process) opens a pty inside the container,
//! makes its slave the controlling terminal and stdin/stdout/stderr, and sends the master
//! over a unix socket (the "console socket", `tty.sock`) with SCM_RIGHTS; the shim reads
//! output from the master and writes input to it.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::stat::{SFlag, fstat, major, minor};

use super::error::ShimSetupError;
use super::{JobFiles, sys};
use crate::container::{Io, Stdio};

/// How long the shim waits for the pty master once libcontainer has created the
/// process. Init sends it before it reports ready, so it is already queued on the socket
/// by then; the bound only guards against a broken init.
const MASTER_TIMEOUT_MS: u16 = 5000;

/// The /dev/pts/ptmx device (TTYAUX major 5, minor 2): what every pty master is.
const PTMX: (u64, u64) = (5, 2);

/// The shim's ends of the process's streams, as the monitor uses them.
#[derive(Default)]
pub(super) struct ShimIo {
    /// Read ends of the output pipes (no terminal).
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The pty master (terminal): output is read from it, logged as stdout.
    pub terminal: Option<OwnedFd>,
    /// Where input goes, when the process was started with `stdin`: the write end of the
    /// stdin pipe, or a duplicate of the pty master.
    pub stdin: Option<OwnedFd>,
}

/// What the shim holds between preparing the streams and the process's creation.
pub(super) enum Pending {
    Ready(ShimIo),
    /// The console socket; the master arrives on it during the create.
    Terminal {
        listener: UnixListener,
        path: PathBuf,
        stdin: bool,
    },
}

/// Sets up the streams: returns libcontainer's side and the shim's.
pub(super) fn prepare(
    files: &JobFiles,
    tty: bool,
    stdin: bool,
) -> Result<(Io, Pending), ShimSetupError> {
    if tty {
        let path = files.tty_socket();
        // A leftover from a shim that died: nobody else uses this job dir's socket.
        match std::fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                return Err(ShimSetupError::StaleConsoleSocket { path, source });
            }
            _ => {}
        }
        let listener =
            UnixListener::bind(&path).map_err(|source| ShimSetupError::ConsoleListen {
                path: path.clone(),
                source,
            })?;
        return Ok((
            Io::Terminal {
                console_socket: path.clone(),
            },
            Pending::Terminal {
                listener,
                path,
                stdin,
            },
        ));
    }
    let pipe = |which| move |source| ShimSetupError::Pipe { which, source };
    let (stdout, stdout_w) = sys::pipe().map_err(pipe("stdout"))?;
    let (stderr, stderr_w) = sys::pipe().map_err(pipe("stderr"))?;
    let (process_stdin, shim_stdin) = if stdin {
        let (r, w) = sys::pipe().map_err(pipe("stdin"))?;
        (r, Some(w))
    } else {
        let null: OwnedFd = File::open("/dev/null")
            .map_err(ShimSetupError::DevNull)?
            .into();
        (null, None)
    };
    Ok((
        Io::Pipes(Stdio {
            stdin: process_stdin,
            stdout: stdout_w,
            stderr: stderr_w,
        }),
        Pending::Ready(ShimIo {
            stdout: Some(stdout),
            stderr: Some(stderr),
            terminal: None,
            stdin: shim_stdin,
        }),
    ))
}

impl Pending {
    /// After the create: for a terminal, takes the pty master from the console socket
    /// (and removes the socket).
    pub fn complete(self) -> Result<ShimIo, ShimSetupError> {
        match self {
            Pending::Ready(io) => Ok(io),
            Pending::Terminal {
                listener,
                path,
                stdin,
            } => {
                let master = receive_master(&listener);
                drop(listener);
                let _ = std::fs::remove_file(&path);
                let master = master?;
                let stdin = if stdin {
                    Some(
                        master
                            .try_clone()
                            .map_err(ShimSetupError::DuplicateMaster)?,
                    )
                } else {
                    None
                };
                Ok(ShimIo {
                    terminal: Some(master),
                    stdin,
                    ..ShimIo::default()
                })
            }
        }
    }

    /// The create failed: nothing will come.
    pub fn discard(self) {
        if let Pending::Terminal { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Accepts the connection libcontainer made to the console socket and takes the pty
/// master it sent.
fn receive_master(listener: &UnixListener) -> Result<OwnedFd, ShimSetupError> {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(MASTER_TIMEOUT_MS)) {
        Ok(0) => {
            return Err(ShimSetupError::TerminalTimeout {
                ms: MASTER_TIMEOUT_MS,
            });
        }
        Ok(_) => {}
        Err(e) => return Err(ShimSetupError::ConsoleWait(e)),
    }
    let (conn, _) = listener.accept().map_err(ShimSetupError::ConsoleAccept)?;
    // libcontainer sends the name of the device as data ("/dev/ptmx"), the master as
    // SCM_RIGHTS; one descriptor's worth of control space is all it can use.
    let mut name = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = loop {
        match recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    }
    .map_err(ShimSetupError::ConsoleReceive)?;
    let mut master = None;
    for cmsg in msg.cmsgs().map_err(ShimSetupError::ConsoleMessage)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            for raw in received {
                // SAFETY: the kernel installed this descriptor in our table for this
                // message (MSG_CMSG_CLOEXEC); nothing else owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                if master.is_none() {
                    master = Some(fd);
                }
            }
        }
    }
    let master = master.ok_or(ShimSetupError::NoTerminal)?;
    check_master(&master)?;
    Ok(master)
}

/// The descriptor must be a pty master: anything else would have the shim read or
/// write something that is not the container's terminal.
fn check_master(fd: &OwnedFd) -> Result<(), ShimSetupError> {
    let st = fstat(fd.as_raw_fd()).map_err(ShimSetupError::StatMaster)?;
    let is_chr = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
    if !is_chr || (major(st.st_rdev), minor(st.st_rdev)) != PTMX {
        return Err(ShimSetupError::NotPtyMaster {
            mode: st.st_mode,
            major: major(st.st_rdev),
            minor: minor(st.st_rdev),
        });
    }
    Ok(())
}

/// Sets the terminal's window size; the kernel sends SIGWINCH to its foreground group.
pub(super) fn set_window_size(master: &impl AsFd, rows: u16, cols: u16) -> Result<(), Errno> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one struct winsize from the pointer, which points to a
    // live, initialized value for the duration of the call.
    let rc = unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &size) };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_size_and_master_check_on_a_real_pty() {
        let pty = nix::pty::openpty(None, None).unwrap();
        check_master(&pty.master).unwrap();
        assert!(check_master(&pty.slave).is_err());
        set_window_size(&pty.master, 33, 101).unwrap();
        // SAFETY: winsize is plain integers, for which all zeroes is a valid value.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one struct winsize to a valid pointer.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_row, size.ws_col), (33, 101));
        let (r, _w) = sys::pipe().unwrap();
        assert!(set_window_size(&r, 1, 1).is_err());
    }
}
