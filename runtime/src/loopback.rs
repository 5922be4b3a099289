//! Bringing up `lo` in a container's fresh network namespace, as Docker does: programs
//! expect 127.0.0.1 to work even in a container without any other network.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error("cannot open the network namespace of pid {pid}: {source}")]
    Open { pid: i32, source: std::io::Error },
    #[error("cannot enter the container's network namespace: {0}")]
    Enter(Errno),
    #[error("cannot bring up lo in the container's network namespace: {0}")]
    Up(Errno),
    #[error(
        "cannot return to the shim's own network namespace: {0}; \
         the shim keeps running in the container's"
    )]
    Return(Errno),
}

/// Sets IFF_UP on `lo` in the network namespace of process `pid`.
///
/// setns only moves the calling thread, which comes back before returning.
pub fn bring_up(pid: i32) -> Result<(), LoopbackError> {
    let own = File::open("/proc/thread-self/ns/net").map_err(|source| LoopbackError::Open {
        pid: std::process::id() as i32,
        source,
    })?;
    let target = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|source| LoopbackError::Open { pid, source })?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(LoopbackError::Enter)?;
    // A socket belongs to the namespace it was created in, so it is created in there.
    let result = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|sock| set_up(&sock, b"lo"))
    .map_err(LoopbackError::Up);
    setns(own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(LoopbackError::Return)?;
    result
}

fn set_up(sock: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    // SAFETY: ifreq is plain data (a name and a union of integers/addresses), for which
    // all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `sock` is an open socket and `req` a properly initialised ifreq that lives
    // across the call; SIOCGIFFLAGS only writes ifr_flags inside it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(rc)?;
    // SAFETY: SIOCGIFFLAGS just filled the ifru_flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads the ifreq.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(rc).map(drop)
}
