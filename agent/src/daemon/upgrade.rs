//! Zero-downtime upgrade: on SIGUSR2 the running daemon starts the binary at its
//! own path (which may have been replaced) as its successor and hands it the
//! listening sockets. Connections keep queueing in the kernel's backlog while
//! they change hands, so no request is refused:
//!
//! 1. old: spawn the successor with the TCP and unix listeners and one end of a
//!    socketpair (`FLYNN_UPGRADE_FDS=tcp,unix,ctl`);
//! 2. new: adopt the listeners, say `ready` (the binary runs and its config is
//!    good), then wait;
//! 3. old: stop accepting, end streams, let open connections finish their
//!    requests, say `go`, exit (releasing the image store's lock);
//! 4. new: wait for the old process to be gone (its locks on the image store and
//!    the network state go with it), open the state, re-adopt every container
//!    through its shim, serve.
//!
//! If the successor never says `ready`, the old daemon keeps serving.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub const ENV: &str = "FLYNN_UPGRADE_FDS";

/// How long the successor may take to say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the successor waits, after `go`, for the old process to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Sockets handed over by the previous daemon.
pub struct Inherited {
    pub tcp: std::net::TcpListener,
    pub unix: std::os::unix::net::UnixListener,
    ctl: std::os::unix::net::UnixStream,
}

/// Takes the handed-over sockets from the environment. Call it from `main`
/// before any thread exists (it edits the environment).
pub fn take_from_env() -> Result<Option<Inherited>> {
    let Some(value) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    // SAFETY: called from main() before the runtime or any other thread starts,
    // so nothing reads the environment concurrently.
    unsafe { std::env::remove_var(ENV) };
    let value = value.to_string_lossy().into_owned();
    let fds: Vec<RawFd> = value
        .split(',')
        .map(|f| f.parse::<RawFd>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow!("{ENV}={value:?} is not a list of descriptors"))?;
    let [tcp, unix, ctl] = fds[..] else {
        bail!("{ENV}={value:?} must name three descriptors: tcp,unix,ctl");
    };
    for fd in [tcp, unix, ctl] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
            .with_context(|| format!("{ENV}: descriptor {fd} is not open"))?;
    }
    // SAFETY: the previous daemon passed these descriptors to us for exactly this
    // use, they are open (checked above) and nothing else in this process owns them.
    let (tcp, unix, ctl) = unsafe {
        (
            std::net::TcpListener::from_raw_fd(tcp),
            std::os::unix::net::UnixListener::from_raw_fd(unix),
            std::os::unix::net::UnixStream::from_raw_fd(ctl),
        )
    };
    for fd in [tcp.as_raw_fd(), unix.as_raw_fd(), ctl.as_raw_fd()] {
        // Our own children (shims) must not inherit them.
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .context("setting close-on-exec on a handed-over socket")?;
    }
    tcp.set_nonblocking(true)?;
    unix.set_nonblocking(true)?;
    ctl.set_nonblocking(true)?;
    Ok(Some(Inherited { tcp, unix, ctl }))
}

impl Inherited {
    /// Tells the previous daemon we are ready, then waits until it has drained and
    /// let go of the state (`go`, or the socket closing because it died).
    pub async fn take_over(self) -> Result<(tokio::net::TcpListener, tokio::net::UnixListener)> {
        let tcp = tokio::net::TcpListener::from_std(self.tcp)?;
        let unix = tokio::net::UnixListener::from_std(self.unix)?;
        let ctl = tokio::net::UnixStream::from_std(self.ctl)?;
        // The socketpair's creator is the previous daemon. A pidfd taken now names
        // that very process, however late it exits.
        let predecessor = ctl
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|pid| runtime::shim::pidfd_open(pid).ok());
        let (read, mut write) = ctl.into_split();
        write
            .write_all(b"ready\n")
            .await
            .context("telling the previous daemon we are ready")?;
        let mut line = String::new();
        BufReader::new(read)
            .read_line(&mut line)
            .await
            .context("waiting for the previous daemon to hand over")?;
        tracing::info!(said = line.trim(), "the previous daemon handed over");
        // It says `go` just before it exits; its flocks on the state are released
        // only when it has.
        if let Some(pidfd) = predecessor {
            let exited = tokio::task::spawn_blocking(move || {
                use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
                use std::os::fd::AsFd;
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                let ms = u16::try_from(EXIT_TIMEOUT.as_millis()).unwrap_or(u16::MAX);
                poll(&mut fds, PollTimeout::from(ms))
            })
            .await;
            match exited {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) => tracing::warn!(
                    "the previous daemon is still there after {EXIT_TIMEOUT:?}; going on"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "waiting for the previous daemon to exit"),
                Err(e) => tracing::warn!(error = %e, "waiting for the previous daemon to exit"),
            }
        }
        Ok((tcp, unix))
    }
}

/// A successor that said `ready`.
pub struct Successor {
    pid: u32,
    ctl: tokio::net::UnixStream,
}

impl Successor {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the successor take over (we have drained and are about to exit).
    pub async fn go(mut self) {
        if let Err(e) = self.ctl.write_all(b"go\n").await {
            tracing::error!(error = %e, "telling the successor to go");
        }
    }
}

fn dup_inheritable(fd: RawFd) -> Result<OwnedFd> {
    // F_DUPFD makes a copy without close-on-exec: this one crosses the exec.
    let new = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD(3))
        .context("duplicating a listening socket for the successor")?;
    // SAFETY: fcntl just returned this new descriptor; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Starts `exe` with our arguments as the successor and waits for its `ready`.
pub async fn spawn_successor(
    exe: &Path,
    args: &[OsString],
    tcp: RawFd,
    unix: RawFd,
) -> Result<Successor> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().context("socketpair")?;
    let tcp = dup_inheritable(tcp)?;
    let unix = dup_inheritable(unix)?;
    let inheritable = dup_inheritable(theirs.as_raw_fd())?;
    // Only the successor may hold its end, or its death would never show as EOF.
    drop(theirs);
    let theirs = inheritable;
    let value = format!(
        "{},{},{}",
        tcp.as_raw_fd(),
        unix.as_raw_fd(),
        theirs.as_raw_fd()
    );
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args.iter().skip(1))
        .env(ENV, value)
        .stdin(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe; the successor leaves our session so it
    // outlives us and our terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting the successor {}", exe.display()))?;
    drop((tcp, unix, theirs));
    ours.set_nonblocking(true)?;
    let ctl = tokio::net::UnixStream::from_std(ours)?;
    let mut line = String::new();
    let mut reader = BufReader::new(ctl);
    let ready = tokio::time::timeout(READY_TIMEOUT, reader.read_line(&mut line)).await;
    match ready {
        Ok(Ok(_)) if line.trim() == "ready" => Ok(Successor {
            pid: child.id(),
            ctl: reader.into_inner(),
        }),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            Err(anyhow!(
                "the successor did not get ready ({}); still serving",
                match other {
                    Ok(Ok(_)) => format!("it said {:?}", line.trim()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer in {READY_TIMEOUT:?}"),
                }
            ))
        }
    }
}
