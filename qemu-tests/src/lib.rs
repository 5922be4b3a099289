//! Boots flynn-host under QEMU for tests: assembles an initramfs from host files
//! (our static binary, busybox, kernel modules, test images), starts a VM on the
//! Debian kernel, and reads its serial console.
//!
//! This crate only builds and drives VMs; what runs inside is decided by each
//! test (an init script it writes). It never touches the host's own networking:
//! a VM's network is QEMU's user-mode stack, or taps on a bridge inside a
//! network namespace the test creates ([`cluster`]).

pub mod cluster;
pub mod initramfs;
pub mod kernel;
pub mod machine;
pub mod vm;

pub use cluster::{Cluster, ClusterError, Netns};
pub use initramfs::Initramfs;
pub use kernel::Kernel;
pub use machine::{Appliance, Boot, Bus, Console, Disk, Firmware, Machine, Nic, Ready};
pub use vm::{Vm, VmConfig, console_tail};

use std::path::PathBuf;

/// Kernel modules flynn-host needs on a Debian kernel (dependencies are resolved by
/// [`Kernel::modules_with_deps`]): overlayfs for root filesystems; bridge and veth
/// for job networks; nf_tables with the expressions the host network's rules use
/// (conntrack, NAT, masquerade, fib).
pub const HOST_MODULES: &[&str] = &[
    "overlay",
    "bridge",
    "veth",
    "nf_tables",
    "nft_ct",
    "nft_nat",
    "nft_masq",
    "nft_chain_nat",
    "nft_fib_ipv4",
];

/// The workspace root (where `target/` and `fixtures/` are).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The statically linked flynn-host that goes into VM images.
/// `scripts/test.sh` builds it; `FLYNN_STATIC_BIN` overrides the path.
pub fn static_flynn_host() -> Result<PathBuf, String> {
    let path = match std::env::var_os("FLYNN_STATIC_BIN") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/x86_64-unknown-linux-gnu/appliance/flynn-host"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it with `bash scripts/build-static.sh` (scripts/test.sh \
             does), or set FLYNN_STATIC_BIN",
            path.display()
        ))
    }
}

/// Where the appliance images are (`buildroot/assemble.sh` writes them;
/// `FLYNN_APPLIANCE_OUT` overrides): `out/` at the workspace root.
pub fn appliance_out() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("FLYNN_APPLIANCE_OUT") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("out"),
    };
    for f in ["iso", "raw", "qcow2", "vmlinuz", "initramfs"] {
        let path = dir.join(format!("flynn-x86_64.{f}"));
        if !path.is_file() {
            return Err(format!(
                "{} is missing: build the images with `bash buildroot/assemble.sh` \
                 (scripts/test.sh does), or set FLYNN_APPLIANCE_OUT",
                path.display()
            ));
        }
    }
    Ok(dir)
}

/// Runs `cmd` to its end, reading its output, but kills it after `bound`: a test
/// command that hangs fails the test with what it printed so far, not the whole
/// suite by CI's own limit.
pub fn output_within(
    cmd: &mut std::process::Command,
    bound: std::time::Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut child = cmd
        // Its own process group, so that a kill reaches what it started too (a
        // child left holding the pipes would keep the readers below waiting).
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    // Read on threads so that a chatty command never blocks on a full pipe.
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + bound;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {:?}: {e}", cmd.get_program())),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok(std::process::Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "did not return within {bound:?} and was killed; it had printed:\n{}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}
