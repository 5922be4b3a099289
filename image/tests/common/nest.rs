//! A jail for tests that unpack hostile layers: the work runs in a forked child that has
//! its own mount namespace and is chrooted into a temporary directory. Whatever path a
//! broken unpacker computes (`/etc/passwd`, `../../..`), the child's `/` is the temporary
//! directory, so a bug shows up as a changed file inside it, never as a write to the host.
//! (An earlier broken build, tested without this, wrote files into the host's `/etc`.)

use std::io::{Read, Write};
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, chdir, chroot, fork, pipe};

/// Runs `work` chrooted into `world` in a forked child with a private mount namespace, and
/// panics here (in the test) with the child's panic message if it failed. Inside `work`,
/// `/` is `world`.
pub fn in_jail(world: &Path, work: impl FnOnce()) {
    let (read_end, write_end) = pipe().unwrap();
    // SAFETY: the child only runs this test's code and then `_exit`s; glibc resets the
    // allocator's locks in the child, and the test harness's other threads (absent in the
    // child) hold nothing the child needs.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(read_end);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                enter(world);
                work();
            }));
            let code = match outcome {
                Ok(()) => 0,
                Err(payload) => {
                    let message = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "the jailed test panicked".to_owned());
                    let mut pipe = std::fs::File::from(write_end);
                    let _ = pipe.write_all(message.as_bytes());
                    1
                }
            };
            // SAFETY: ends the child without running the parent's atexit handlers or
            // destructors twice.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut message = String::new();
            let mut pipe = std::fs::File::from(read_end);
            pipe.read_to_string(&mut message).unwrap();
            match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, 0) => {}
                status => panic!("in the jail ({status:?}): {message}"),
            }
        }
    }
}

fn enter(world: &Path) {
    unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS): the jail needs root");
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
