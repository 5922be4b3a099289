//! Block devices: what file system each holds (by reading its superblock; no
//! blkid), the state disk (found, formatted when blank, mounted) and seeds.
//!
//! The rule for the state disk, in order: an ext4 file system labelled
//! `FLYNN_STATE`; a GPT partition named `flynn-state` that is blank; a whole disk
//! without partitions that is blank. "Blank" means the first MiB is zeros, so
//! nothing with a partition table or a file system on it is ever formatted.
//! Anything else: tmpfs, said plainly on the console.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};

use super::settings::StateChoice;

pub const STATE_LABEL: &str = "FLYNN_STATE";
pub const STATE_PARTNAME: &str = "flynn-state";
const BLANK_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the state device {0} holds something that is not ext4 ({1}); refusing to format it (wipe it, or choose another with flynn.state=)"
    )]
    NotOurs(String, String),
    #[error("the state device {0} does not exist")]
    Missing(String),
    #[error("formatting {dev} with mke2fs: {reason}")]
    Mkfs { dev: String, reason: String },
    #[error("mounting {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        source: nix::Error,
    },
}

/// What a device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Ext4 { label: String },
    Vfat { label: String },
    Iso9660 { label: String },
    Blank,
    Other,
}

impl Content {
    pub fn describe(&self) -> String {
        match self {
            Content::Ext4 { label } => format!("ext4 {label:?}"),
            Content::Vfat { label } => format!("vfat {label:?}"),
            Content::Iso9660 { label } => format!("iso9660 {label:?}"),
            Content::Blank => "nothing (blank)".into(),
            Content::Other => "an unknown format".into(),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// Recognises the first bytes of a device (at least 36 KiB for iso9660, 1 MiB
/// for the blank test; shorter devices are judged on what they have).
pub fn classify(head: &[u8]) -> Content {
    let at = |off: usize, len: usize| head.get(off..off + len);
    // ext2/3/4: superblock at 1024, magic 0xEF53 at 0x38, label at 0x78.
    if at(1024 + 0x38, 2) == Some(&[0x53, 0xEF]) {
        return Content::Ext4 {
            label: text(at(1024 + 0x78, 16).unwrap_or_default()),
        };
    }
    // ISO 9660: primary volume descriptor at 32 KiB, volume id at +40.
    if at(32768, 6) == Some(b"\x01CD001") {
        return Content::Iso9660 {
            label: text(at(32768 + 40, 32).unwrap_or_default()),
        };
    }
    // FAT: boot signature, then the label where FAT32 or FAT12/16 keep it.
    if at(510, 2) == Some(&[0x55, 0xAA]) {
        if at(0x52, 5) == Some(b"FAT32") {
            return Content::Vfat {
                label: text(at(0x47, 11).unwrap_or_default()),
            };
        }
        if at(0x36, 3) == Some(b"FAT") {
            return Content::Vfat {
                label: text(at(0x2B, 11).unwrap_or_default()),
            };
        }
    }
    if head.len() >= 4096 && head.iter().all(|b| *b == 0) {
        return Content::Blank;
    }
    Content::Other
}

pub fn probe(dev: &Path) -> Result<Content, DiskError> {
    probe_first(dev, BLANK_BYTES)
}

/// Reads only `len` bytes: enough for labels (36 KiB), not for the blank test.
fn probe_first(dev: &Path, len: usize) -> Result<Content, DiskError> {
    let err = |e| DiskError::Read {
        path: dev.to_path_buf(),
        source: e,
    };
    let mut head = Vec::with_capacity(len);
    fs::File::open(dev)
        .map_err(err)?
        .take(len as u64)
        .read_to_end(&mut head)
        .map_err(err)?;
    Ok(classify(&head))
}

#[derive(Debug, Clone)]
pub struct BlockDev {
    pub name: String,
    pub path: PathBuf,
    /// GPT partition name (`PARTNAME` in sysfs), for partitions.
    pub partname: Option<String>,
    pub is_partition: bool,
    pub has_partitions: bool,
}

/// Disks and partitions, CD-ROMs included; loop and ram devices left out.
pub fn block_devices() -> Vec<BlockDev> {
    let Ok(entries) = fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    let mut devs: Vec<BlockDev> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram") {
                return None;
            }
            let sys = e.path();
            let uevent = fs::read_to_string(sys.join("uevent")).unwrap_or_default();
            let is_partition = sys.join("partition").exists();
            let partname = uevent
                .lines()
                .find_map(|l| l.strip_prefix("PARTNAME="))
                .map(str::to_string);
            let has_partitions = fs::read_dir(&sys)
                .map(|d| d.flatten().any(|c| c.path().join("partition").exists()))
                .unwrap_or(false);
            Some(BlockDev {
                path: PathBuf::from("/dev").join(&name),
                name,
                partname,
                is_partition,
                has_partitions,
            })
        })
        .collect();
    devs.sort_by(|a, b| a.name.cmp(&b.name));
    devs
}

fn is_disk_name(name: &str) -> bool {
    !name.starts_with("sr")
}

/// Disks may appear after their driver loaded (NVMe and SCSI probe in the
/// background): waits until one shows up, at most `timeout`.
pub fn wait_for_disks(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if block_devices().iter().any(|d| is_disk_name(&d.name)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where the state ended up.
#[derive(Debug)]
pub enum StateMount {
    Disk { dev: PathBuf, formatted: bool },
    Tmpfs { why: String },
}

impl StateMount {
    pub fn describe(&self, target: &Path) -> String {
        match self {
            StateMount::Disk { dev, formatted } => format!(
                "state on {} (ext4 {STATE_LABEL}{}), mounted on {}",
                dev.display(),
                if *formatted {
                    ", formatted now: it was blank"
                } else {
                    ""
                },
                target.display()
            ),
            StateMount::Tmpfs { why } => format!(
                "state on tmpfs at {} ({why}): it is lost at power-off",
                target.display()
            ),
        }
    }
}

fn mkfs(dev: &Path) -> Result<(), DiskError> {
    let mkfs_err = |reason: String| DiskError::Mkfs {
        dev: dev.display().to_string(),
        reason,
    };
    // Lazy inode table and journal init: the kernel finishes them in the background.
    let out = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", STATE_LABEL, "-m", "0"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(dev)
        .output()
        .map_err(|e| mkfs_err(format!("running mke2fs: {e}")))?;
    if !out.status.success() {
        return Err(mkfs_err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn mount_ext4(dev: &Path, target: &Path) -> Result<(), DiskError> {
    fs::create_dir_all(target).map_err(|e| DiskError::Read {
        path: target.to_path_buf(),
        source: e,
    })?;
    // ext4 asks the crypto API for crc32c, which modules.dep does not list.
    super::modules::demand(&["crc32c_generic", "ext4"]);
    mount(
        Some(dev),
        target,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|e| DiskError::Mount {
        what: dev.display().to_string(),
        target: target.to_path_buf(),
        source: e,
    })
}

fn mount_tmpfs(target: &Path, why: String) -> Result<StateMount, DiskError> {
    fs::create_dir_all(target).map_err(|e| DiskError::Read {
        path: target.to_path_buf(),
        source: e,
    })?;
    mount(
        Some("flynn-state"),
        target,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| DiskError::Mount {
        what: "tmpfs".into(),
        target: target.to_path_buf(),
        source: e,
    })?;
    Ok(StateMount::Tmpfs { why })
}

fn use_device(dev: &Path, target: &Path) -> Result<StateMount, DiskError> {
    let formatted = match probe(dev)? {
        Content::Ext4 { .. } => false,
        Content::Blank => {
            mkfs(dev)?;
            true
        }
        other => {
            return Err(DiskError::NotOurs(
                dev.display().to_string(),
                other.describe(),
            ));
        }
    };
    mount_ext4(dev, target)?;
    Ok(StateMount::Disk {
        dev: dev.to_path_buf(),
        formatted,
    })
}

/// Finds, formats if blank, and mounts the state disk on `target`.
pub fn mount_state(choice: &StateChoice, target: &Path) -> Result<StateMount, DiskError> {
    match choice {
        StateChoice::Tmpfs => mount_tmpfs(target, "flynn.state=tmpfs".into()),
        StateChoice::Device(dev) => {
            let dev = Path::new(dev);
            if !dev.exists() {
                wait_for_disks(Duration::from_secs(3));
                if !dev.exists() {
                    return Err(DiskError::Missing(dev.display().to_string()));
                }
            }
            use_device(dev, target)
        }
        StateChoice::Auto => {
            wait_for_disks(Duration::from_secs(2));
            let devs = block_devices();
            let mut contents = Vec::new();
            for d in devs.iter().filter(|d| is_disk_name(&d.name)) {
                match probe(&d.path) {
                    Ok(c) => contents.push((d, c)),
                    Err(e) => super::say(format!("skipping {}: {e}", d.path.display())),
                }
            }
            if let Some((d, _)) = contents
                .iter()
                .find(|(_, c)| matches!(c, Content::Ext4 { label } if label == STATE_LABEL))
            {
                return use_device(&d.path, target);
            }
            let blank_partition = contents.iter().find(|(d, c)| {
                d.is_partition
                    && *c == Content::Blank
                    && d.partname.as_deref() == Some(STATE_PARTNAME)
            });
            let blank_disk = contents
                .iter()
                .find(|(d, c)| !d.is_partition && !d.has_partitions && *c == Content::Blank);
            if let Some((d, _)) = blank_partition.or(blank_disk) {
                return use_device(&d.path, target);
            }
            let why = if contents.is_empty() {
                "no disk found".to_string()
            } else {
                format!(
                    "no {STATE_LABEL} file system and no blank disk or {STATE_PARTNAME} partition among {}",
                    contents
                        .iter()
                        .map(|(d, c)| format!("{} ({})", d.name, c.describe()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            mount_tmpfs(target, why)
        }
    }
}

/// The first device holding a vfat or iso9660 file system labelled `label`
/// (any case), CD-ROMs included.
pub fn find_labelled(label: &str) -> Option<(PathBuf, Content)> {
    block_devices().into_iter().find_map(|d| {
        let c = probe_first(&d.path, 40 * 1024).ok()?;
        match &c {
            Content::Vfat { label: l } | Content::Iso9660 { label: l }
                if l.eq_ignore_ascii_case(label) =>
            {
                Some((d.path, c))
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_superblocks() {
        let mut ext = vec![0u8; 4096];
        ext[1024 + 0x38] = 0x53;
        ext[1024 + 0x39] = 0xEF;
        ext[1024 + 0x78..1024 + 0x78 + 11].copy_from_slice(b"FLYNN_STATE");
        assert_eq!(
            classify(&ext),
            Content::Ext4 {
                label: "FLYNN_STATE".into()
            }
        );
        let mut iso = vec![0u8; 40000];
        iso[32768..32774].copy_from_slice(b"\x01CD001");
        iso[32768 + 40..32768 + 46].copy_from_slice(b"cidata");
        iso[32768 + 46..32768 + 72].fill(b' ');
        assert_eq!(
            classify(&iso),
            Content::Iso9660 {
                label: "cidata".into()
            }
        );
        let mut fat = vec![0u8; 4096];
        fat[510] = 0x55;
        fat[511] = 0xAA;
        fat[0x36..0x39].copy_from_slice(b"FAT");
        fat[0x2B..0x36].copy_from_slice(b"CIDATA     ");
        assert_eq!(
            classify(&fat),
            Content::Vfat {
                label: "CIDATA".into()
            }
        );
        assert_eq!(classify(&vec![0u8; 1 << 20]), Content::Blank);
        let mut other = vec![0u8; 1 << 20];
        other[70000] = 1;
        assert_eq!(classify(&other), Content::Other);
    }
}
