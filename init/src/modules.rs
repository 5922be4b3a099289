//! Kernel modules. The image carries the modules of `board/flynn/modules.list`
//! and their dependencies, indexed by `depmod` (`modules.dep`, `modules.alias`),
//! and two name lists written from it at build time: `flynn.boot` (loaded before
//! anything else) and `flynn.jobs` (job networking and overlayfs, loaded in the
//! background while the daemon starts). Drivers are loaded only for devices that
//! are there: their modaliases, read from sysfs at boot (coldplug) and from the
//! kernel's uevents afterwards (hotplug), are matched against `modules.alias`, as
//! udev and mdev do. File systems are loaded by the step that mounts one.
//!
//! Under TCG each module costs ~35 ms (signature check, relocation): loading the
//! 62 of the list eagerly took 1.7-2.2 s of the boot, most of it for hardware the
//! machine did not have (NVMe, ENA, e1000, ...) and for job networking, which
//! the API does not need to answer.
//!
//! One load at a time (a lock): loading on two vCPUs at once was measured slower
//! (3.6-6.7 s against 1.8-3.3 s for the list), as module loading synchronises
//! every CPU. The files are uncompressed (Debian builds its kernel with
//! `CONFIG_MODULE_COMPRESS_NONE`). A module the kernel already has (built in, or
//! loaded) is not an error.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use nix::kmod::{ModuleInitFlags, finit_module};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("reading the module index {path}: {source}")]
    Index {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("module {0} is neither in the image nor built into the kernel")]
    Unknown(String),
    #[error("loading module {module} ({file}): {reason}")]
    Load {
        module: String,
        file: String,
        reason: String,
    },
}

pub fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Module names are spelled with '-' or '_' interchangeably.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// What a batch of loads did.
#[derive(Default)]
pub struct Loaded {
    pub loaded: usize,
    /// Modules that failed, with the reason (the boot goes on without them).
    pub failed: Vec<String>,
}

impl Loaded {
    fn add(&mut self, r: Result<usize, ModuleError>) {
        match r {
            Ok(n) => self.loaded += n,
            Err(e) => self.failed.push(e.to_string()),
        }
    }
}

/// The image's module index.
pub struct Modules {
    dir: PathBuf,
    /// Module name → its file, and its dependencies' files in load order.
    deps: HashMap<String, (String, Vec<String>)>,
    /// (modalias pattern, module name), as in `modules.alias`.
    aliases: Vec<(CString, String)>,
    /// Files loaded (or found loaded); held while loading, so loads never overlap.
    done: Mutex<HashSet<String>>,
}

impl Modules {
    pub fn open(root: &Path) -> Result<Modules, ModuleError> {
        let dir = root.join("lib/modules").join(release());
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| ModuleError::Index { path, source })
        };
        let deps = parse_deps(&read("modules.dep")?);
        // An image without aliases still loads its lists; it only cannot coldplug.
        let aliases = read("modules.alias")
            .map(|t| parse_aliases(&t))
            .unwrap_or_default();
        Ok(Modules {
            dir,
            deps,
            aliases,
            done: Mutex::new(HashSet::new()),
        })
    }

    /// Loads `name` and its dependencies; returns how many were newly loaded.
    pub fn load(&self, name: &str) -> Result<usize, ModuleError> {
        let name = canonical(name);
        let Some((file, deps)) = self.deps.get(&name) else {
            if Path::new("/sys/module").join(&name).exists() {
                return Ok(0);
            }
            return Err(ModuleError::Unknown(name));
        };
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        let mut loaded = 0;
        for f in deps.iter().chain(std::iter::once(file)) {
            if done.contains(f) {
                continue;
            }
            let path = self.dir.join(f);
            let result = File::open(&path).map_err(|e| e.to_string()).and_then(|fd| {
                match finit_module(&fd, c"", ModuleInitFlags::empty()) {
                    Ok(()) => Ok(true),
                    Err(nix::errno::Errno::EEXIST) => Ok(false),
                    Err(e) => Err(e.desc().to_string()),
                }
            });
            match result {
                Ok(new) => {
                    loaded += usize::from(new);
                    done.insert(f.clone());
                }
                Err(reason) => {
                    return Err(ModuleError::Load {
                        module: name,
                        file: f.clone(),
                        reason,
                    });
                }
            }
        }
        Ok(loaded)
    }

    /// Loads every module named in the build-time list `file` (one per line).
    pub fn load_list(&self, file: &str) -> Loaded {
        let mut out = Loaded::default();
        let text = match std::fs::read_to_string(self.dir.join(file)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
            Err(source) => {
                out.failed.push(
                    ModuleError::Index {
                        path: self.dir.join(file),
                        source,
                    }
                    .to_string(),
                );
                return out;
            }
        };
        for name in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            out.add(self.load(name));
        }
        out
    }

    /// The modules whose aliases match a device's modalias.
    fn matching(&self, modalias: &str) -> Vec<&str> {
        let Ok(alias) = CString::new(modalias) else {
            return Vec::new();
        };
        self.aliases
            .iter()
            // SAFETY: both are valid NUL-terminated strings for the call's length.
            .filter(|(pat, _)| unsafe { libc::fnmatch(pat.as_ptr(), alias.as_ptr(), 0) } == 0)
            .map(|(_, m)| m.as_str())
            .collect()
    }

    /// Loads the drivers of the device whose modalias this is.
    pub fn for_device(&self, modalias: &str, out: &mut Loaded) {
        for m in self.matching(modalias) {
            out.add(self.load(m));
        }
    }

    /// Loads drivers for the devices in sysfs, again for the devices those
    /// drivers bring (a virtio PCI function's virtio device, a controller's
    /// disks), until a pass loads nothing new.
    pub fn coldplug(&self) -> Loaded {
        let mut out = Loaded::default();
        let mut seen = HashSet::new();
        loop {
            let before = out.loaded;
            for alias in device_modaliases() {
                if seen.insert(alias.clone()) {
                    self.for_device(&alias, &mut out);
                }
            }
            if out.loaded == before {
                return out;
            }
        }
    }
}

/// The index the init opened at boot, for the steps that load on demand.
static INDEX: OnceLock<Arc<Modules>> = OnceLock::new();

pub fn set_index(m: Arc<Modules>) {
    let _ = INDEX.set(m);
}

/// Loads what a step is about to use (a file system before its mount); a
/// failure is said on the console, and the step's own error follows if it
/// mattered.
pub fn demand(names: &[&str]) {
    let Some(m) = INDEX.get() else { return };
    for name in names {
        if let Err(e) = m.load(name) {
            super::say(format!("warning: {e}"));
        }
    }
}

/// `modules.dep` lines: `path: dep...`, each module's whole dependency closure,
/// to be inserted from its end.
fn parse_deps(text: &str) -> HashMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (file, deps) = line.split_once(':')?;
            let stem = file.rsplit('/').next()?.split(".ko").next()?;
            let deps = deps.split_whitespace().rev().map(str::to_string).collect();
            Some((canonical(stem), (file.to_string(), deps)))
        })
        .collect()
}

/// `modules.alias` lines: `alias PATTERN MODULE`.
fn parse_aliases(text: &str) -> Vec<(CString, String)> {
    text.lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace();
            (w.next()? == "alias").then_some(())?;
            let pat = CString::new(w.next()?).ok()?;
            Some((pat, canonical(w.next()?)))
        })
        .collect()
}

/// The modaliases of the devices in sysfs.
fn device_modaliases() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(buses) = std::fs::read_dir("/sys/bus") else {
        return out;
    };
    for bus in buses.flatten() {
        let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for dev in devices.flatten() {
            if let Ok(a) = std::fs::read_to_string(dev.path().join("modalias")) {
                let a = a.trim();
                if !a.is_empty() {
                    out.push(a.to_string());
                }
            }
        }
    }
    out.sort();
    out
}

/// Loads drivers for devices that appear from now on (a disk attached to a
/// running instance, a SCSI disk found after its controller's driver loaded),
/// from the kernel's uevents, for the life of the init. Started before
/// [`Modules::coldplug`], so no device falls between the two.
pub fn hotplug(modules: Arc<Modules>) -> std::io::Result<()> {
    use nix::sys::socket::{
        AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
    };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )?;
    // Group 1: the kernel's own uevents.
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &NetlinkAddr::new(0, 1),
    )?;
    std::thread::Builder::new()
        .name("hotplug".into())
        .spawn(move || {
            let mut buf = vec![0u8; 8192];
            loop {
                let n = match recv(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &mut buf,
                    nix::sys::socket::MsgFlags::empty(),
                ) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::ENOBUFS) => continue,
                    Err(_) => return,
                };
                if let Some(alias) = uevent_modalias(&buf[..n]) {
                    let mut out = Loaded::default();
                    modules.for_device(alias, &mut out);
                    for e in out.failed {
                        super::say(format!("warning: {e}"));
                    }
                }
            }
        })?;
    Ok(())
}

/// The MODALIAS of an `add` uevent (`ACTION@DEVPATH\0KEY=VALUE\0...`).
fn uevent_modalias(msg: &[u8]) -> Option<&str> {
    let mut fields = msg
        .split(|b| *b == 0)
        .filter_map(|f| std::str::from_utf8(f).ok());
    if !fields.next()?.starts_with("add@") {
        return None;
    }
    fields.find_map(|f| f.strip_prefix("MODALIAS="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first() {
        let deps = parse_deps(
            "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko\n\
             kernel/drivers/nvme/host/nvme-core.ko:\n",
        );
        let (file, d) = &deps["ext4"];
        assert_eq!(file, "kernel/fs/ext4/ext4.ko");
        assert_eq!(
            d,
            &[
                "kernel/lib/crc16.ko",
                "kernel/fs/mbcache.ko",
                "kernel/fs/jbd2/jbd2.ko"
            ]
        );
        assert!(deps["nvme_core"].1.is_empty());
    }

    #[test]
    fn aliases_match_modaliases() {
        let m = Modules {
            dir: PathBuf::new(),
            deps: HashMap::new(),
            aliases: parse_aliases(
                "# Aliases extracted from modules themselves.\n\
                 alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
                 alias virtio:d00000001v* virtio_net\n\
                 alias fs-ext4 ext4\n\
                 alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n",
            ),
            done: Mutex::new(HashSet::new()),
        };
        assert_eq!(
            m.matching("pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(m.matching("virtio:d00000001v00001AF4"), ["virtio_net"]);
        assert!(
            m.matching("pci:v00008086d000029C0sv00001AF4sd00001100bc06sc00i00")
                .is_empty()
        );
    }

    #[test]
    fn uevents_name_their_modalias() {
        let add = b"add@/devices/pci0000:00/0000:00:02.0\0ACTION=add\0SUBSYSTEM=pci\0MODALIAS=pci:v00001AF4d00001041sv*\0SEQNUM=7\0";
        assert_eq!(uevent_modalias(add), Some("pci:v00001AF4d00001041sv*"));
        let remove = b"remove@/devices/x\0ACTION=remove\0MODALIAS=pci:v1\0";
        assert_eq!(uevent_modalias(remove), None);
        assert_eq!(uevent_modalias(b"add@/devices/x\0ACTION=add\0"), None);
    }

    #[test]
    fn unknown_modules_are_errors() {
        let m = Modules {
            dir: PathBuf::new(),
            deps: HashMap::new(),
            aliases: Vec::new(),
            done: Mutex::new(HashSet::new()),
        };
        assert!(matches!(
            m.load("no-such-module-here"),
            Err(ModuleError::Unknown(n)) if n == "no_such_module_here"
        ));
    }
}
