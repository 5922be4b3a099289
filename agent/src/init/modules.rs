//! Kernel modules. The image builder resolves the modules the appliance needs
//! and their dependencies from `modules.dep` at build time and writes them, in
//! load order, to `/lib/modules/<release>/flynn.load` (paths relative to that
//! directory). The init loads each with `finit_module(2)`; the files are
//! uncompressed (Debian's kernel is built with `CONFIG_MODULE_COMPRESS_NONE`).
//! A module the kernel already has (built in, or loaded) is not an error.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

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

/// Loads the list with `threads` workers. A module starts once every module it
/// depends on (per the `modules.dep` the image builder's depmod wrote) has been
/// tried: the kernel verifies each module's signature and relocates it, which
/// under TCG costs ~35 ms a module, and two of them go at once.
pub fn load_all(root: &Path, threads: usize) -> Result<Loaded, ModuleError> {
    let dir = root.join("lib/modules").join(release());
    let list = dir.join("flynn.load");
    let text = std::fs::read_to_string(&list).map_err(|e| ModuleError::List {
        path: list.clone(),
        source: e,
    })?;
    let order: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let wanted: HashSet<&str> = order.iter().map(String::as_str).collect();
    let dep_text = std::fs::read_to_string(dir.join("modules.dep")).unwrap_or_default();
    let deps: HashMap<String, Vec<String>> = dep_text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.trim().to_string(),
                d.split_whitespace()
                    .filter(|d| wanted.contains(d))
                    .map(str::to_string)
                    .collect(),
            )
        })
        .collect();
    let sched = Mutex::new(Sched {
        pending: order.clone(),
        done: HashSet::new(),
        result: Loaded {
            loaded: 0,
            failed: Vec::new(),
        },
    });
    let changed = Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| worker(&dir, &deps, &sched, &changed));
        }
    });
    Ok(sched.into_inner().unwrap_or_else(|p| p.into_inner()).result)
}

struct Sched {
    /// Not yet started, in load order.
    pending: Vec<String>,
    /// Tried (loaded, already there, or failed).
    done: HashSet<String>,
    result: Loaded,
}

fn worker(
    dir: &Path,
    deps: &HashMap<String, Vec<String>>,
    sched: &Mutex<Sched>,
    changed: &Condvar,
) {
    let lock = || sched.lock().unwrap_or_else(|p| p.into_inner());
    let mut guard = lock();
    loop {
        if guard.pending.is_empty() {
            return;
        }
        let ready = guard.pending.iter().position(|m| {
            deps.get(m)
                .is_none_or(|ds| ds.iter().all(|d| guard.done.contains(d)))
        });
        let Some(i) = ready else {
            guard = changed.wait(guard).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let rel = guard.pending.remove(i);
        drop(guard);
        let result = load_one(&dir.join(&rel));
        guard = lock();
        match result {
            Ok(true) => guard.result.loaded += 1,
            Ok(false) => {}
            Err(e) => guard.result.failed.push((rel.clone(), e)),
        }
        guard.done.insert(rel);
        changed.notify_all();
    }
}

/// Loads one module file: Ok(false) when the kernel already has it.
fn load_one(path: &Path) -> Result<bool, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    match finit_module(&file, c"", ModuleInitFlags::empty()) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EEXIST) => Ok(false),
        Err(e) => Err(e.desc().to_string()),
    }
}
