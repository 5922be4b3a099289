//! The floor of a container start, for `agent/benches/run-latency.sh`: the smallest
//! program that does the work no runtime can skip to run `/bin/true` in a container,
//! and nothing else. It makes a cgroup and moves the process into it, gives the process
//! new pid, mount, UTS, IPC and network namespaces, mounts `/proc`, pivots into the
//! root filesystem, execs, waits and removes the cgroup. No seccomp, no capability
//! drop, no `/dev`, no state on disk, no daemon and no shim: a start that takes this
//! long is as fast as this kernel allows; what a runtime takes beyond it is its own.
//!
//! Usage: `start-floor ROOTFS CGROUP_PARENT` (CGROUP_PARENT: a directory of a cgroup v2
//! mount, such as `/sys/fs/cgroup/unified`); the exit status is the container's.
#![allow(clippy::expect_used)]

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, chdir, execv, fork, pipe, pivot_root, read, write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, rootfs, parent] = &args[..] else {
        eprintln!("usage: start-floor ROOTFS CGROUP_PARENT");
        std::process::exit(2);
    };
    let cgroup = PathBuf::from(parent).join(format!("start-floor-{}", std::process::id()));
    std::fs::create_dir(&cgroup).expect("creating the cgroup");
    let (ready_r, ready_w) = pipe().expect("pipe");
    // The child is pid 1 of a new pid namespace.
    unshare(CloneFlags::CLONE_NEWPID).expect("unshare(CLONE_NEWPID)");
    // SAFETY: this program has one thread; the child only makes system calls and execs.
    let code = match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(ready_w);
            let mut b = [0u8; 1];
            // Wait until the parent has moved us into the cgroup (EOF is the signal).
            let _ = read(ready_r.as_raw_fd(), &mut b);
            child(Path::new(rootfs));
        }
        ForkResult::Parent { child } => {
            std::fs::write(cgroup.join("cgroup.procs"), child.as_raw().to_string())
                .expect("moving the child into the cgroup");
            let _ = write(&ready_w, b"");
            drop(ready_w);
            match waitpid(child, None).expect("waitpid") {
                WaitStatus::Exited(_, code) => code,
                _ => 128,
            }
        }
    };
    std::fs::remove_dir(&cgroup).expect("removing the cgroup");
    std::process::exit(code);
}

fn child(rootfs: &Path) -> ! {
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET,
    )
    .expect("unshare");
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).expect("rprivate");
    mount(
        Some(rootfs),
        rootfs,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .expect("binding the rootfs");
    mount(
        Some("proc"),
        &rootfs.join("proc"),
        Some("proc"),
        MsFlags::empty(),
        none,
    )
    .expect("mounting /proc");
    chdir(rootfs).expect("chdir");
    pivot_root(".", ".").expect("pivot_root");
    umount2(".", MntFlags::MNT_DETACH).expect("detaching the old root");
    chdir("/").expect("chdir /");
    let prog = CString::new("/bin/true").expect("no NUL");
    let _ = execv(&prog, std::slice::from_ref(&prog));
    std::process::exit(127);
}
