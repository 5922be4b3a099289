//! Kernel modules. The image builder resolves the modules the appliance needs
//! and their dependencies from `modules.dep` at build time and writes them, in
//! load order, to `/lib/modules/<release>/flynn.load` (paths relative to that
//! directory). The init loads each with `finit_module(2)`; the files are
//! uncompressed (Debian's kernel is built with `CONFIG_MODULE_COMPRESS_NONE`).
//! A module the kernel already has (built in, or loaded) is not an error.
//!
//! One at a time: each costs ~35 ms under TCG (the kernel checks its signature
//! and relocates it), and loading on two vCPUs at once was measured slower
//! (3.6-6.7 s against 1.8-3.3 s for the list), as module loading synchronises
//! every CPU.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::kmod::{ModuleInitFlags, finit_module};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("reading the module list {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Loaded {
    pub loaded: usize,
    /// Modules that failed, with the reason (the boot goes on without them).
    pub failed: Vec<(String, String)>,
}

pub fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn load_all(root: &Path) -> Result<Loaded, ModuleError> {
    let dir = root.join("lib/modules").join(release());
    let list = dir.join("flynn.load");
    let text = std::fs::read_to_string(&list).map_err(|e| ModuleError::List {
        path: list.clone(),
        source: e,
    })?;
    let mut done = Loaded {
        loaded: 0,
        failed: Vec::new(),
    };
    for rel in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(rel);
        let result = match File::open(&path) {
            Err(e) => Err(e.to_string()),
            Ok(f) => match finit_module(&f, c"", ModuleInitFlags::empty()) {
                Ok(()) => Ok(true),
                Err(nix::errno::Errno::EEXIST) => Ok(false),
                Err(e) => Err(e.desc().to_string()),
            },
        };
        match result {
            Ok(true) => done.loaded += 1,
            Ok(false) => {}
            Err(e) => done.failed.push((rel.to_string(), e)),
        }
    }
    Ok(done)
}
