//! What the container shim and the exec shim both do before their process runs:
//! settle the detached process, bind the control socket, compile the seccomp filter,
//! report to the agent, and let go of the agent's stdio.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use nix::sys::stat::{Mode, umask};
use oci_spec::runtime::Spec;

use super::error::ShimSetupError;
use super::protocol::{self, Handshake};
use super::{JobFiles, diag, lock, sys};
use crate::seccomp::{Filter, Source};
use flynn_fsutil::Durability;

/// Puts the detached process in a predictable state: cwd "/" (libcontainer needs a cwd
/// that stays valid), umask 022, stderr to shim.log, `shim.lock` held (returned: it must
/// stay open for the shim's whole life), and shim.pid written.
pub(super) fn settle(files: &JobFiles) -> Result<OwnedFd, ShimSetupError> {
    let _ = std::env::set_current_dir("/");
    umask(Mode::from_bits_truncate(0o022));
    match OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(files.shim_log())
    {
        Ok(log) => {
            let _ = sys::redirect(2, &log);
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "cannot open shim log: {e}");
        }
    }
    let lock = lock::acquire(files)?;
    let pid = std::process::id().to_string();
    // Visible only: shim.pid is read only while this boot's processes live (a crash of
    // the host kills them anyway), so fsyncs would only add latency.
    if let Err(e) =
        flynn_fsutil::write_atomic(&files.shim_pid(), pid.as_bytes(), Durability::Visible)
    {
        diag(&format!("cannot write {:?}: {e}", files.shim_pid()));
    }
    Ok(lock)
}

/// The compiled filter for the spec's seccomp profile, from the host's cache when
/// possible.
pub(super) fn compile_seccomp(
    oci: &Spec,
    profile: Option<oci_spec::runtime::LinuxSeccomp>,
    cache: &Path,
) -> Result<Option<Filter>, ShimSetupError> {
    let Some(profile) = profile else {
        return Ok(None);
    };
    // The filter goes in after the capabilities are dropped, which only no_new_privileges
    // allows (build_spec always sets it).
    let nnp = oci.process().as_ref().and_then(|p| p.no_new_privileges());
    if nnp != Some(true) {
        return Err(ShimSetupError::SeccompWithoutNoNewPrivileges);
    }
    let (filter, source) =
        Filter::prepare(cache, &profile).map_err(|e| ShimSetupError::Seccomp(e.into()))?;
    if source == Source::Rebuilt {
        diag(&format!(
            "the cached seccomp filter in {cache:?} was corrupt; compiled and cached again"
        ));
    }
    Ok(Some(filter))
}

pub(super) fn bind_control_socket(files: &JobFiles) -> Result<UnixListener, ShimSetupError> {
    let path = files
        .check_socket_path()
        .map_err(|e| ShimSetupError::SocketPath(e.into()))?;
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(ShimSetupError::SocketInUse { path });
        }
        // Left by a shim that died: nothing listens on it any more.
        std::fs::remove_file(&path).map_err(|source| ShimSetupError::StaleSocket {
            path: path.clone(),
            source,
        })?;
    }
    UnixListener::bind(&path).map_err(|source| ShimSetupError::Listen { path, source })
}

/// Writes one handshake line to the agent; false if the agent is gone.
pub(super) fn report(msg: &Handshake) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(&protocol::line(msg)).is_ok() && out.flush().is_ok()
}

/// The agent reads our stdout to EOF; after the handshake nothing more comes from us.
pub(super) fn close_stdio() {
    match File::options().read(true).write(true).open("/dev/null") {
        Ok(null) => {
            let _ = sys::redirect(0, &null);
            let _ = sys::redirect(1, &null);
        }
        Err(e) => diag(&format!("cannot open /dev/null: {e}")),
    }
}
