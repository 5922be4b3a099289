//! Network namespace files: creating one without forking (a thread unshares its network
//! namespace and bind-mounts it), configuring the inside from that same thread, and
//! removing them.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use tokio::sync::oneshot;

use crate::rt::RtSocket;

/// The calling thread's own network namespace (not the process's: `/proc/self` would be
/// the main thread's).
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// A step of the namespace worker that failed, and why.
#[derive(Debug)]
pub(crate) struct StepError {
    pub step: &'static str,
    pub source: io::Error,
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> StepError {
    move |source| StepError { step, source }
}

fn errno_step(s: &'static str) -> impl FnOnce(nix::errno::Errno) -> StepError {
    move |e| StepError {
        step: s,
        source: io::Error::from_raw_os_error(e as i32),
    }
}

/// What the worker configures inside the namespace once `eth0` is there.
pub(crate) struct Inside {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// The host side of a namespace worker: a thread that made the namespace and waits to
/// configure it.
pub(crate) struct Worker {
    /// The new namespace (for `IFLA_NET_NS_FD`), once it is made and mounted.
    pub created: oneshot::Receiver<Result<OwnedFd, StepError>>,
    /// Send what to configure once the veth exists; dropping it makes the worker quit.
    pub go: mpsc::SyncSender<Inside>,
    /// The outcome of the configuration inside (including bringing `lo` up).
    pub done: oneshot::Receiver<Result<(), StepError>>,
    /// The thread itself: an attach that is cancelled leaves it running for a moment
    /// (it may still create and mount the namespace file), so whoever cleans up after
    /// that attach joins it first.
    pub thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts a thread that unshares its network namespace, bind-mounts it at `path`
/// (created, must not exist), brings `lo` up, hands back a descriptor of the namespace,
/// then waits for [`Inside`] and adds the address and default route to `eth0`.
///
/// The thread is spawned from the calling thread, so it starts in the caller's network
/// namespace and the new namespace is a sibling of nothing: it is simply new.
pub(crate) fn spawn(path: PathBuf) -> io::Result<Worker> {
    let (created_tx, created) = oneshot::channel();
    let (go, go_rx) = mpsc::sync_channel::<Inside>(1);
    let (done_tx, done) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("flynn-netns".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut sock = match make(&path) {
                Ok((fd, sock)) => {
                    if created_tx.send(Ok(fd)).is_err() {
                        return;
                    }
                    sock
                }
                Err(e) => {
                    let _ = created_tx.send(Err(e));
                    return;
                }
            };
            // While the host creates the veth.
            let lo = sock.loopback_up().map_err(step("bringing lo up"));
            let Ok(inside) = go_rx.recv() else { return };
            let result = lo.and_then(|()| configure(&mut sock, &inside));
            let _ = done_tx.send(result);
        })?;
    Ok(Worker {
        created,
        go,
        done,
        thread: Some(thread),
    })
}

fn make(path: &Path) -> Result<(OwnedFd, RtSocket), StepError> {
    // Only this thread moves: the rest of the process stays in its namespace.
    unshare(CloneFlags::CLONE_NEWNET).map_err(errno_step("unshare(CLONE_NEWNET)"))?;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(step("creating the namespace file"))?;
    if let Err(e) = mount(
        Some(THREAD_NETNS),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = fs::remove_file(path);
        return Err(errno_step("bind-mounting the namespace")(e));
    }
    let fd = fs::File::open(THREAD_NETNS)
        .map_err(step("opening the namespace"))?
        .into();
    let sock = RtSocket::new().map_err(step("opening rtnetlink in the namespace"))?;
    Ok((fd, sock))
}

fn configure(sock: &mut RtSocket, inside: &Inside) -> Result<(), StepError> {
    let eth0 = sock.link_index("eth0").map_err(step("finding eth0"))?;
    // Up before the address and route: a route via the gateway needs the link up.
    sock.link_up(eth0).map_err(step("bringing eth0 up"))?;
    sock.add_address(eth0, inside.ip, inside.prefix_len)
        .map_err(step("adding the address to eth0"))?;
    sock.add_default_route(inside.gateway)
        .map_err(step("adding the default route"))?;
    Ok(())
}

/// Unmounts and removes a namespace file. Missing or not mounted is fine.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    // A file can carry more than one mount if something mounted over ours; peel them all
    // (bounded, in case of a kernel that keeps answering success).
    for _ in 0..8 {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes `dir` a mount point with shared propagation, as `ip netns` does with
/// /run/netns: a namespace file unmounted here is then unmounted in every mount namespace
/// that was copied from ours meanwhile, so none of them keeps the namespace alive.
pub(crate) fn prepare_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            shared().map_err(|e| io::Error::from_raw_os_error(e as i32))
        }
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// Whether `path` is a mount point in our mount namespace (from /proc/self/mountinfo).
pub(crate) fn is_mount_point(path: &Path) -> io::Result<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let want = path.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(super::unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(super::unescape_mountinfo(r"/a\134"), r"/a\");
        assert_eq!(super::unescape_mountinfo("/plain"), "/plain");
    }
}
