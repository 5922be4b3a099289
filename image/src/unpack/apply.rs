//! The writing half of an unpack: apply tar entries to a layer directory.
//!
//! Every path is resolved by the kernel inside the layer root (`openat2` with
//! `RESOLVE_IN_ROOT`), only the parent directory is ever resolved that way, and the final
//! component is then handled with `*at` syscalls that do not follow it. So whatever the tar
//! says, nothing outside the root is created, linked, changed or removed.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use tar::EntryType;

use super::UnpackError;
use super::path::{self, Escapes};
use crate::sys;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Overlayfs reads its own state from these; an image must not smuggle them into a lowerdir.
const RESERVED_XATTR_PREFIX: &str = "trusted.overlay.";
const XATTR_PAX_PREFIX: &[u8] = b"SCHILY.xattr.";
/// Bound on symlinks followed while creating missing parents, like the kernel's MAXSYMLINKS.
const MAX_LINK_HOPS: usize = 40;
const COPY_BUF: usize = 256 * 1024;

/// Metadata of one entry, with PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Applies entries to one layer root. Not `Send`: it lives on the writer thread.
pub(super) struct Applier<'a> {
    root: BorrowedFd<'a>,
    layer: &'a str,
    /// The parent directory of the previous entry: tar streams list siblings together, so
    /// most entries reuse it instead of resolving their path again.
    parent_cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Set once all entries are in: creating children changes a directory's mtime.
    dir_times: Vec<(Vec<u8>, TimeSpec, TimeSpec)>,
    /// Opaque markers, applied at the end so their order in the tar does not matter.
    opaque_dirs: Vec<Vec<u8>>,
    buf: Vec<u8>,
}

impl<'a> Applier<'a> {
    pub(super) fn new(root: BorrowedFd<'a>, layer: &'a str) -> Applier<'a> {
        Applier {
            root,
            layer,
            parent_cache: None,
            dir_times: Vec::new(),
            opaque_dirs: Vec::new(),
            buf: vec![0u8; COPY_BUF],
        }
    }

    fn entry_err(
        &self,
        entry: &[u8],
        op: &'static str,
        source: impl Into<io::Error>,
    ) -> UnpackError {
        UnpackError::Entry {
            layer: self.layer.to_owned(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            op,
            source: source.into(),
        }
    }

    fn invalid(&self, entry: &[u8], reason: &'static str) -> UnpackError {
        UnpackError::InvalidEntry {
            layer: self.layer.to_owned(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason,
        }
    }

    fn tar_err(&self, source: io::Error) -> UnpackError {
        UnpackError::Tar {
            layer: self.layer.to_owned(),
            source,
        }
    }

    /// Applies one entry.
    pub(super) fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let raw_name = entry.path_bytes().into_owned();
        let components = path::clean(&raw_name).map_err(|Escapes| UnpackError::PathEscapes {
            layer: self.layer.to_owned(),
            entry: String::from_utf8_lossy(&raw_name).into_owned(),
        })?;
        let is_dir = kind == EntryType::Directory
            || (kind == EntryType::Regular && raw_name.ends_with(b"/"));

        let Some((name, parent)) = components.split_last() else {
            if is_dir {
                let meta = self.meta(entry, &raw_name)?;
                return self.apply_root_dir(&raw_name, &meta);
            }
            tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(&raw_name),
                "skipping a non-directory entry naming the layer root");
            return Ok(());
        };
        let name: &[u8] = name;

        if name.starts_with(WHITEOUT_PREFIX) {
            return self.apply_whiteout(&raw_name, parent, name);
        }

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse if !is_dir => {
                let meta = self.meta(entry, &raw_name)?;
                self.create_file(entry, &raw_name, parent, name, &meta)
            }
            _ if is_dir => {
                let meta = self.meta(entry, &raw_name)?;
                self.create_dir(&raw_name, &components, &meta)
            }
            EntryType::Symlink => {
                let meta = self.meta(entry, &raw_name)?;
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.invalid(&raw_name, "symlink without a target"))?;
                self.create_symlink(&raw_name, parent, name, &target, &meta)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.invalid(&raw_name, "hardlink without a target"))?;
                self.create_hardlink(&raw_name, &components, &target)
            }
            EntryType::Fifo => {
                let meta = self.meta(entry, &raw_name)?;
                self.create_fifo(&raw_name, parent, name, &meta)
            }
            EntryType::Char | EntryType::Block => {
                // Device nodes in an image would hand the container host devices; the runtime
                // creates the devices a container may use.
                tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(&raw_name),
                    "skipping device node entry");
                Ok(())
            }
            other => {
                tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(&raw_name),
                    kind = ?other, "skipping tar entry of unsupported type");
                Ok(())
            }
        }
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw_name: &[u8],
    ) -> Result<Meta, UnpackError> {
        let header = entry.header();
        let bad = |_| self.invalid(raw_name, "unreadable numeric header field");
        let mode = header.mode().map_err(bad)?;
        let uid = header.uid().map_err(bad)?;
        let gid = header.gid().map_err(bad)?;
        let mtime = header.mtime().map_err(bad)?;
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(self.invalid(raw_name, "uid or gid does not fit in 32 bits"));
        };
        let secs = i64::try_from(mtime).unwrap_or(i64::MAX);
        let mut meta = Meta {
            mode: mode & 0o7777,
            uid,
            gid,
            atime: TimeSpec::new(secs, 0),
            mtime: TimeSpec::new(secs, 0),
            xattrs: Vec::new(),
        };
        if let Some(exts) = entry.pax_extensions().map_err(|e| self.tar_err(e))? {
            for ext in exts {
                let ext = ext.map_err(|e| self.tar_err(e))?;
                let key = ext.key_bytes();
                if let Some(xattr) = key.strip_prefix(XATTR_PAX_PREFIX) {
                    match std::str::from_utf8(xattr) {
                        Ok(xattr) => meta
                            .xattrs
                            .push((xattr.to_owned(), ext.value_bytes().to_vec())),
                        Err(_) => return Err(self.invalid(raw_name, "xattr name is not UTF-8")),
                    }
                } else if key == b"mtime" {
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        meta.mtime = t;
                        meta.atime = t;
                    }
                } else if key == b"atime"
                    && let Some(t) = parse_pax_time(ext.value_bytes())
                {
                    meta.atime = t;
                }
            }
        }
        Ok(meta)
    }

    /// Opens (creating it if needed) the directory holding an entry.
    fn parent(&mut self, raw_name: &[u8], parent: &[&[u8]]) -> Result<Rc<OwnedFd>, UnpackError> {
        let key = path::join(parent);
        if let Some((cached, fd)) = &self.parent_cache
            && *cached == key
        {
            return Ok(Rc::clone(fd));
        }
        let fd = match self.open_dir_in_root(&key) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                self.mkdir_all(raw_name, parent)?;
                self.open_dir_in_root(&key)
                    .map_err(|e| self.entry_err(raw_name, "opening the parent directory", e))?
            }
            Err(e) => return Err(self.entry_err(raw_name, "opening the parent directory", e)),
        };
        let fd = Rc::new(fd);
        self.parent_cache = Some((key, Rc::clone(&fd)));
        Ok(fd)
    }

    fn open_dir_in_root(&self, rel: &[u8]) -> Result<OwnedFd, Errno> {
        if rel.is_empty() {
            return sys::openat(
                self.root,
                b".",
                OFlag::O_PATH | OFlag::O_DIRECTORY,
                Mode::empty(),
            );
        }
        flynn_fsutil::open_in_root(self.root, rel, OFlag::O_PATH | OFlag::O_DIRECTORY)
    }

    /// Creates missing parents (mode 0755, like Docker). A dangling symlink on the way is
    /// followed the way the container will see it, inside the root.
    fn mkdir_all(&mut self, raw_name: &[u8], parent: &[&[u8]]) -> Result<(), UnpackError> {
        let mut wanted: Vec<Vec<u8>> = parent.iter().map(|c| c.to_vec()).collect();
        let mut hops = 0;
        let mut i = 0;
        while i < wanted.len() {
            let prefix: Vec<&[u8]> = wanted[..=i].iter().map(Vec::as_slice).collect();
            match self.open_dir_in_root(&path::join(&prefix)) {
                Ok(_) => {
                    i += 1;
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(self.entry_err(raw_name, "creating parent directories", e)),
            }
            let above = self
                .open_dir_in_root(&path::join(&prefix[..i]))
                .map_err(|e| self.entry_err(raw_name, "creating parent directories", e))?;
            let component = wanted[i].clone();
            match nix::sys::stat::mkdirat(
                Some(raw(above.as_fd())),
                component.as_slice(),
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) => i += 1,
                Err(Errno::EEXIST) => {
                    // Not openable yet present: a symlink whose target is missing.
                    let target = sys::readlinkat(above.as_fd(), &component)
                        .map_err(|e| self.entry_err(raw_name, "creating parent directories", e))?;
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(self.entry_err(
                            raw_name,
                            "creating parent directories",
                            Errno::ELOOP,
                        ));
                    }
                    let mut next = path::resolve_link_in_root(&wanted[..i], &target);
                    next.extend_from_slice(&wanted[i + 1..]);
                    wanted = next;
                    i = 0;
                }
                Err(e) => return Err(self.entry_err(raw_name, "creating parent directories", e)),
            }
        }
        Ok(())
    }

    /// Removes whatever is at `dir/name` (a directory with its contents), without following it.
    fn remove_existing(&mut self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
        // The cached parent could be inside what is removed; never write into a removed dir.
        self.parent_cache = None;
        let st = nix::sys::stat::fstatat(Some(raw(dir)), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            remove_tree_at(dir, name)
        } else {
            nix::unistd::unlinkat(Some(raw(dir)), name, UnlinkatFlags::NoRemoveDir)
        }
    }

    fn create_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw_name: &[u8],
        parent: &[&[u8]],
        name: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let dir = self.parent(raw_name, parent)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let mode = Mode::from_bits_truncate(0o600);
        let fd = match sys::openat(dir.as_fd(), name, flags, mode) {
            Err(Errno::EEXIST) => {
                self.remove_existing(dir.as_fd(), name)
                    .map_err(|e| self.entry_err(raw_name, "replacing an existing entry", e))?;
                sys::openat(dir.as_fd(), name, flags, mode)
            }
            other => other,
        }
        .map_err(|e| self.entry_err(raw_name, "creating the file", e))?;
        let mut file = File::from(fd);
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.tar_err(e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| self.entry_err(raw_name, "writing file data", e))?;
        }
        // chown clears setuid/setgid and file capabilities, so it goes first.
        self.set_owner_mode(file.as_fd(), raw_name, meta)?;
        self.set_xattrs_fd(file.as_fd(), raw_name, meta)?;
        nix::sys::stat::futimens(raw(file.as_fd()), &meta.atime, &meta.mtime)
            .map_err(|e| self.entry_err(raw_name, "setting times", e))
    }

    fn set_owner_mode(
        &self,
        fd: BorrowedFd<'_>,
        raw_name: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        nix::unistd::fchown(
            raw(fd),
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| self.entry_err(raw_name, "changing ownership", e))?;
        nix::sys::stat::fchmod(raw(fd), Mode::from_bits_truncate(meta.mode))
            .map_err(|e| self.entry_err(raw_name, "changing the mode", e))
    }

    fn create_dir(
        &mut self,
        raw_name: &[u8],
        components: &[&[u8]],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let Some((name, parent)) = components.split_last() else {
            return self.apply_root_dir(raw_name, meta);
        };
        let dir = self.parent(raw_name, parent)?;
        let mode = Mode::from_bits_truncate(0o700);
        match nix::sys::stat::mkdirat(Some(raw(dir.as_fd())), *name, mode) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let st = nix::sys::stat::fstatat(
                    Some(raw(dir.as_fd())),
                    *name,
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| self.entry_err(raw_name, "inspecting the existing entry", e))?;
                if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
                    self.remove_existing(dir.as_fd(), name)
                        .map_err(|e| self.entry_err(raw_name, "replacing an existing entry", e))?;
                    nix::sys::stat::mkdirat(Some(raw(dir.as_fd())), *name, mode)
                        .map_err(|e| self.entry_err(raw_name, "creating the directory", e))?;
                }
            }
            Err(e) => return Err(self.entry_err(raw_name, "creating the directory", e)),
        }
        let fd = sys::openat(
            dir.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| self.entry_err(raw_name, "opening the new directory", e))?;
        self.set_owner_mode(fd.as_fd(), raw_name, meta)?;
        self.set_xattrs_fd(fd.as_fd(), raw_name, meta)?;
        let key = path::join(components);
        self.dir_times.push((key.clone(), meta.atime, meta.mtime));
        // Its children usually come next: they will find their parent already open.
        self.parent_cache = Some((key, Rc::new(fd)));
        Ok(())
    }

    fn apply_root_dir(&mut self, raw_name: &[u8], meta: &Meta) -> Result<(), UnpackError> {
        let fd = sys::openat(
            self.root,
            b".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| self.entry_err(raw_name, "opening the layer root", e))?;
        self.set_owner_mode(fd.as_fd(), raw_name, meta)?;
        self.set_xattrs_fd(fd.as_fd(), raw_name, meta)?;
        self.dir_times.push((Vec::new(), meta.atime, meta.mtime));
        Ok(())
    }

    fn create_symlink(
        &mut self,
        raw_name: &[u8],
        parent: &[&[u8]],
        name: &[u8],
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let dir = self.parent(raw_name, parent)?;
        // The target is stored verbatim: it is only ever interpreted inside the container.
        match nix::unistd::symlinkat(target, Some(raw(dir.as_fd())), name) {
            Err(Errno::EEXIST) => {
                self.remove_existing(dir.as_fd(), name)
                    .map_err(|e| self.entry_err(raw_name, "replacing an existing entry", e))?;
                nix::unistd::symlinkat(target, Some(raw(dir.as_fd())), name)
            }
            other => other,
        }
        .map_err(|e| self.entry_err(raw_name, "creating the symlink", e))?;
        self.set_meta_nofollow(dir.as_fd(), raw_name, name, meta, false)
    }

    /// Ownership, xattrs and times of a node we cannot open (symlink, fifo), never following it.
    fn set_meta_nofollow(
        &self,
        dir: BorrowedFd<'_>,
        raw_name: &[u8],
        name: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), UnpackError> {
        nix::unistd::fchownat(
            Some(raw(dir)),
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.entry_err(raw_name, "changing ownership", e))?;
        if chmod {
            // A fifo (the only caller that changes the mode) opens without blocking, and
            // O_NOFOLLOW refuses a symlink swapped in. fchmodat's "no follow" flag is no
            // good here: before Linux 6.6 glibc emulates it through /proc, which a jail (or
            // an early boot) does not have, and the unpack failed there.
            let fifo = sys::openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )
            .map_err(|e| self.entry_err(raw_name, "opening the fifo", e))?;
            nix::sys::stat::fchmod(raw(fifo.as_fd()), Mode::from_bits_truncate(meta.mode))
                .map_err(|e| self.entry_err(raw_name, "changing the mode", e))?;
        }
        for (key, value) in &meta.xattrs {
            if self.skip_xattr(raw_name, key) {
                continue;
            }
            match sys::lsetxattr_at(dir, name, key, value) {
                Ok(()) => {}
                Err(Errno::EOPNOTSUPP | Errno::EPERM) => {
                    tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(raw_name),
                        xattr = key.as_str(), "extended attribute not supported here; skipped");
                }
                Err(e) => return Err(self.entry_err(raw_name, "setting an extended attribute", e)),
            }
        }
        nix::sys::stat::utimensat(
            Some(raw(dir)),
            name,
            &meta.atime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.entry_err(raw_name, "setting times", e))
    }

    fn skip_xattr(&self, raw_name: &[u8], key: &str) -> bool {
        if key.starts_with(RESERVED_XATTR_PREFIX) {
            tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(raw_name),
                xattr = key, "ignoring overlayfs-reserved extended attribute from the image");
            return true;
        }
        false
    }

    fn set_xattrs_fd(
        &self,
        fd: BorrowedFd<'_>,
        raw_name: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        for (key, value) in &meta.xattrs {
            if self.skip_xattr(raw_name, key) {
                continue;
            }
            match sys::fsetxattr(fd, key, value) {
                Ok(()) => {}
                Err(Errno::EOPNOTSUPP) => {
                    tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(raw_name),
                        xattr = key.as_str(), "extended attribute not supported here; skipped");
                }
                Err(e) => return Err(self.entry_err(raw_name, "setting an extended attribute", e)),
            }
        }
        Ok(())
    }

    fn create_hardlink(
        &mut self,
        raw_name: &[u8],
        components: &[&[u8]],
        target: &[u8],
    ) -> Result<(), UnpackError> {
        let escapes = || UnpackError::LinkEscapes {
            layer: self.layer.to_owned(),
            entry: String::from_utf8_lossy(raw_name).into_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let missing = || UnpackError::LinkTargetMissing {
            layer: self.layer.to_owned(),
            entry: String::from_utf8_lossy(raw_name).into_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let target_components = path::clean(target).map_err(|Escapes| escapes())?;
        if target_components == components {
            return Ok(());
        }
        let (Some((target_name, target_parent)), Some((name, parent))) =
            (target_components.split_last(), components.split_last())
        else {
            return Err(self.invalid(raw_name, "hardlink to or from the layer root"));
        };
        let target_dir = match self.open_dir_in_root(&path::join(target_parent)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(missing()),
            Err(e) => {
                return Err(self.entry_err(raw_name, "opening the link target's directory", e));
            }
        };
        let dir = self.parent(raw_name, parent)?;
        // Flags 0: if the target is a symlink, link the symlink itself, never what it points to.
        let link = || {
            nix::unistd::linkat(
                Some(raw(target_dir.as_fd())),
                *target_name,
                Some(raw(dir.as_fd())),
                *name,
                AtFlags::empty(),
            )
        };
        let result = match link() {
            Err(Errno::EEXIST) => {
                self.remove_existing(dir.as_fd(), name)
                    .map_err(|e| self.entry_err(raw_name, "replacing an existing entry", e))?;
                link()
            }
            other => other,
        };
        match result {
            Ok(()) => Ok(()),
            Err(Errno::ENOENT) => Err(missing()),
            Err(e) => Err(self.entry_err(raw_name, "creating the hardlink", e)),
        }
    }

    fn create_fifo(
        &mut self,
        raw_name: &[u8],
        parent: &[&[u8]],
        name: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let dir = self.parent(raw_name, parent)?;
        let mode = Mode::from_bits_truncate(0o600);
        match nix::sys::stat::mknodat(Some(raw(dir.as_fd())), name, SFlag::S_IFIFO, mode, 0) {
            Err(Errno::EEXIST) => {
                self.remove_existing(dir.as_fd(), name)
                    .map_err(|e| self.entry_err(raw_name, "replacing an existing entry", e))?;
                nix::sys::stat::mknodat(Some(raw(dir.as_fd())), name, SFlag::S_IFIFO, mode, 0)
            }
            other => other,
        }
        .map_err(|e| self.entry_err(raw_name, "creating the fifo", e))?;
        self.set_meta_nofollow(dir.as_fd(), raw_name, name, meta, true)
    }

    fn apply_whiteout(
        &mut self,
        raw_name: &[u8],
        parent: &[&[u8]],
        name: &[u8],
    ) -> Result<(), UnpackError> {
        if name == OPAQUE_MARKER {
            // Make sure the directory exists now; the xattr is set once all entries are in.
            self.parent(raw_name, parent)?;
            self.opaque_dirs.push(path::join(parent));
            return Ok(());
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            // Other aufs metadata (".wh..wh.plnk", ".wh..wh.aufs") means nothing to overlayfs.
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.invalid(raw_name, "whiteout names no file"));
        }
        let dir = self.parent(raw_name, parent)?;
        let device = nix::sys::stat::makedev(0, 0);
        let mknod = || {
            nix::sys::stat::mknodat(
                Some(raw(dir.as_fd())),
                hidden,
                SFlag::S_IFCHR,
                Mode::empty(),
                device,
            )
        };
        match mknod() {
            Err(Errno::EEXIST) => {
                self.remove_existing(dir.as_fd(), hidden)
                    .map_err(|e| self.entry_err(raw_name, "replacing an existing entry", e))?;
                mknod()
            }
            other => other,
        }
        .map_err(|e| self.entry_err(raw_name, "creating the overlay whiteout", e))
    }

    /// Opaque markers, then directory times (both change nothing but metadata).
    pub(super) fn finish(self) -> Result<(), UnpackError> {
        for dir in &self.opaque_dirs {
            // Entries under a symlinked directory were written through it (inside the root),
            // so its marker goes where they went: resolve the same way.
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
            let opened = if dir.is_empty() {
                sys::openat(self.root, b".", flags, Mode::empty())
            } else {
                flynn_fsutil::open_in_root(self.root, &dir[..], flags)
            };
            let fd = match opened {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
                Err(e) => return Err(self.entry_err(dir, "opening an opaque directory", e)),
            };
            sys::fsetxattr(fd.as_fd(), OPAQUE_XATTR, b"y")
                .map_err(|e| self.entry_err(dir, "marking the directory opaque", e))?;
        }
        for (dir, atime, mtime) in &self.dir_times {
            let (parent, name) = split_parent(dir);
            let result = self.open_dir_in_root(parent).and_then(|fd| {
                nix::sys::stat::utimensat(
                    Some(raw(fd.as_fd())),
                    if name.is_empty() { &b"."[..] } else { name },
                    atime,
                    mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
            });
            match result {
                // A later entry removed or replaced it: nothing to date.
                Ok(()) | Err(Errno::ENOENT | Errno::ENOTDIR) => {}
                Err(e) => return Err(self.entry_err(dir, "setting directory times", e)),
            }
        }
        Ok(())
    }
}

/// `a/b/c` -> (`a/b`, `c`); `c` -> (``, `c`); the root (``) -> (``, ``).
fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn raw(fd: BorrowedFd<'_>) -> std::os::fd::RawFd {
    std::os::fd::AsRawFd::as_raw_fd(&fd)
}

/// Deletes the directory `dir/name` and everything in it, never following a symlink.
fn remove_tree_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let fd = sys::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    let children: Vec<(Vec<u8>, bool)> = {
        let dup = fd.try_clone().map_err(|_| Errno::EMFILE)?;
        let mut listing = nix::dir::Dir::from(dup)?;
        let mut out = Vec::new();
        for entry in listing.iter() {
            let entry = entry?;
            let child = entry.file_name().to_bytes();
            if child == b"." || child == b".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                Some(t) => t == nix::dir::Type::Directory,
                None => {
                    let st = nix::sys::stat::fstatat(
                        Some(raw(fd.as_fd())),
                        child,
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )?;
                    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
                }
            };
            out.push((child.to_vec(), is_dir));
        }
        out
    };
    for (child, is_dir) in children {
        if is_dir {
            remove_tree_at(fd.as_fd(), &child)?;
        } else {
            nix::unistd::unlinkat(
                Some(raw(fd.as_fd())),
                child.as_slice(),
                UnlinkatFlags::NoRemoveDir,
            )?;
        }
    }
    nix::unistd::unlinkat(Some(raw(dir)), name, UnlinkatFlags::RemoveDir)
}

/// PAX times are decimal seconds with an optional fraction: `1700000000.123456789`.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(value).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        let n: i64 = digits.parse().ok()?;
        n * 10_i64.pow(9 - digits.len() as u32)
    };
    if secs < 0 && nanos > 0 {
        return Some(TimeSpec::new(secs - 1, 1_000_000_000 - nanos));
    }
    Some(TimeSpec::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(TimeSpec::new(12, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"12.0000000019"), Some(TimeSpec::new(12, 1)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
