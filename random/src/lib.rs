//! Random bytes from the kernel, taken as what they are for demands.
//!
//! Secrets (the API token) wait until the kernel's pool is initialised: the
//! blocking `getrandom(2)` makes the kernel run its CPU-jitter generator while it
//! waits (about a second under QEMU's TCG without RDRAND). Passive waits (polling
//! `/dev/random`, as the `getrandom` crate does in a static binary where it cannot
//! find glibc's wrapper) do not, and took minutes on an idle virtual machine.
//! Identifiers that must only be unique (job ids) never wait (`GRND_INSECURE`).
//!
//! Written on `libc::getrandom` rather than a crate: the crates that wrap it pick
//! their back end at build time and hide the flags this choice is about.

use std::io;

/// What the bytes are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Must not be guessable: waits for the kernel's pool.
    Secret,
    /// Must only be unique: never waits.
    Unique,
}

/// Whether the kernel's pool is initialised (a `Use::Secret` read would not wait).
pub fn pool_ready() -> bool {
    let mut b = [0u8; 1];
    getrandom(&mut b, libc::GRND_NONBLOCK).is_ok()
}

/// Fills `buf`.
pub fn fill(buf: &mut [u8], what: Use) -> io::Result<()> {
    let flags = match what {
        Use::Secret => 0,
        Use::Unique => libc::GRND_INSECURE,
    };
    match getrandom(buf, flags) {
        // Kernels before 5.6 have no GRND_INSECURE; their urandom never blocks.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && what == Use::Unique => {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")?.read_exact(buf)
        }
        r => r,
    }
}

/// `bytes` random bytes as lower-case hex.
pub fn hex(bytes: usize, what: Use) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf, what)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn getrandom(buf: &mut [u8], flags: libc::c_uint) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which is
        // valid, writable memory for that length.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_as_long_as_asked_and_differs() {
        let a = hex(16, Use::Unique).unwrap();
        let b = hex(16, Use::Secret).unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(
            pool_ready(),
            "a running Debian host has an initialised pool"
        );
    }
}
