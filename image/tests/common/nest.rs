//! A jail for tests that unpack hostile layers: the work runs on a thread of its own that
//! has its own filesystem context and mount namespace and is chrooted into a temporary
//! directory. Whatever path a broken unpacker computes (`/etc/passwd`, `../../..`), that
//! thread's `/` (and that of the threads it starts) is the temporary directory, so a bug
//! shows up as a changed file inside it, never as a write to the host. (An earlier broken
//! build, tested without this, wrote files into the host's `/etc`.)
//!
//! A thread, not a forked child: the harness runs tests on several threads, and a child
//! forked while another thread held a lock (stdio, the allocator, the harness's own) can
//! wait on it forever: a CI run hung that way in `unpacking_random_bytes`.
//! `unshare(CLONE_FS | CLONE_NEWNS)` acts on the calling thread only, so the chroot stays
//! on the jail's thread and its children.

use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{chdir, chroot};

/// Runs `work` chrooted into `world` on a thread with a private filesystem context and
/// mount namespace, and re-raises its panic here (in the test). Inside `work`, `/` is
/// `world`.
pub fn in_jail(world: &Path, work: impl FnOnce() + Send) {
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(world);
                work();
            })
            .join()
    });
    if let Err(payload) = outcome {
        std::panic::resume_unwind(payload);
    }
}

fn enter(world: &Path) {
    unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS)
        .expect("unshare(CLONE_FS | CLONE_NEWNS): the jail needs root");
    // Nothing mounted in here may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    chroot(world).unwrap();
    chdir("/").unwrap();
}
