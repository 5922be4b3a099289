//! Fixtures built in Rust for the integration tests: layers as tar streams (including
//! hand-crafted malicious headers), compressed blobs, and whole image archives in the
//! `docker save` and OCI layout formats.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn hex_of(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Builds an uncompressed layer tar entry by entry. Names and link targets are written into
/// the header verbatim (no validation), so tests can craft any entry a hostile tar could hold.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl Default for Layer {
    fn default() -> Self {
        Layer::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            builder: tar::Builder::new(Vec::new()),
            mtime: 1_600_000_000,
        }
    }

    fn header(&self, name: &[u8], kind: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        {
            let old = h.as_old_mut();
            assert!(name.len() <= old.name.len(), "use long_file for long names");
            old.name[..name.len()].copy_from_slice(name);
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.mtime);
        h
    }

    fn push(&mut self, mut h: Header, data: &[u8]) -> &mut Layer {
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    fn push_pax(&mut self, records: &[(&str, &[u8])]) {
        let mut body = Vec::new();
        for (key, value) in records {
            let rest = 1 + key.len() + 1 + value.len() + 1; // ' ' key '=' value '\n'
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {key}=").as_bytes());
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        let h = self.header(
            b"././@PaxHeader",
            EntryType::XHeader,
            0o644,
            body.len() as u64,
        );
        self.push(h, &body);
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Layer {
        self.dir_owned(name, mode, 0, 0)
    }

    pub fn dir_owned(&mut self, name: &str, mode: u32, uid: u64, gid: u64) -> &mut Layer {
        let mut h = self.header(name.as_bytes(), EntryType::Directory, mode, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        self.push(h, &[])
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Layer {
        self.file_full(name.as_bytes(), data, 0o644, 0, 0)
    }

    pub fn file_full(
        &mut self,
        name: &[u8],
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Layer {
        let mut h = self.header(name, EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.push(h, data)
    }

    /// A file with PAX extended attributes (`SCHILY.xattr.<name>`).
    pub fn file_xattrs(&mut self, name: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> &mut Layer {
        let keys: Vec<String> = xattrs
            .iter()
            .map(|(k, _)| format!("SCHILY.xattr.{k}"))
            .collect();
        let records: Vec<(&str, &[u8])> = keys
            .iter()
            .map(String::as_str)
            .zip(xattrs.iter().map(|(_, v)| *v))
            .collect();
        self.push_pax(&records);
        self.file(name, data)
    }

    /// A file whose name is longer than the 100-byte header field, as a PAX `path`.
    pub fn file_pax_path(&mut self, name: &str, data: &[u8]) -> &mut Layer {
        self.push_pax(&[("path", name.as_bytes())]);
        self.file_full(b"placeholder", data, 0o644, 0, 0)
    }

    /// A file whose name is longer than 100 bytes, as a GNU long-name entry.
    pub fn file_gnu_longname(&mut self, name: &str, data: &[u8]) -> &mut Layer {
        let mut long = name.as_bytes().to_vec();
        long.push(0);
        let h = self.header(
            b"././@LongLink",
            EntryType::GNULongName,
            0o644,
            long.len() as u64,
        );
        self.push(h, &long);
        self.file_full(&name.as_bytes()[..100], data, 0o644, 0, 0)
    }

    fn link(
        &mut self,
        name: &[u8],
        target: &[u8],
        kind: EntryType,
        uid: u64,
        mode: u32,
    ) -> &mut Layer {
        let mut h = self.header(name, kind, mode, 0);
        {
            let old = h.as_old_mut();
            old.linkname[..target.len()].copy_from_slice(target);
        }
        h.set_uid(uid);
        self.push(h, &[])
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Layer {
        self.link(
            name.as_bytes(),
            target.as_bytes(),
            EntryType::Symlink,
            0,
            0o777,
        )
    }

    pub fn symlink_owned(&mut self, name: &str, target: &str, uid: u64) -> &mut Layer {
        self.link(
            name.as_bytes(),
            target.as_bytes(),
            EntryType::Symlink,
            uid,
            0o777,
        )
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Layer {
        self.link(
            name.as_bytes(),
            target.as_bytes(),
            EntryType::Link,
            0,
            0o644,
        )
    }

    pub fn fifo(&mut self, name: &str, mode: u32) -> &mut Layer {
        let h = self.header(name.as_bytes(), EntryType::Fifo, mode, 0);
        self.push(h, &[])
    }

    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) -> &mut Layer {
        let mut h = self.header(name.as_bytes(), EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, &[])
    }

    pub fn block_device(&mut self, name: &str, major: u32, minor: u32) -> &mut Layer {
        let mut h = self.header(name.as_bytes(), EntryType::Block, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, &[])
    }

    pub fn mtime(&mut self, mtime: u64) -> &mut Layer {
        self.mtime = mtime;
        self
    }

    pub fn build(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        builder.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

impl Comp {
    pub fn apply(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Comp::None => tar.to_vec(),
            Comp::Gzip => gzip(tar),
            Comp::Zstd => zstd(tar),
        }
    }

    fn oci_media_type(self) -> &'static str {
        match self {
            Comp::None => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// An image to write into an archive: layer tars (uncompressed) and how each is stored.
#[derive(Clone)]
pub struct Fixture {
    pub layers: Vec<(Vec<u8>, Comp)>,
    /// Distinguishes otherwise identical configs (so image ids differ).
    pub label: String,
    pub architecture: String,
    /// Overrides the diff ids written in the config (for mismatch tests).
    pub diff_ids: Option<Vec<String>>,
}

impl Fixture {
    pub fn new(label: &str, layers: Vec<(Vec<u8>, Comp)>) -> Fixture {
        Fixture {
            layers,
            label: label.to_owned(),
            architecture: "amd64".to_owned(),
            diff_ids: None,
        }
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.diff_ids
            .clone()
            .unwrap_or_else(|| self.layers.iter().map(|(tar, _)| sha256(tar)).collect())
    }

    pub fn config(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "created": "2024-01-02T03:04:05Z",
            "architecture": self.architecture,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/bin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {"fixture": self.label},
            },
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids()},
        }))
        .unwrap()
    }

    /// The image id the store must report.
    pub fn id(&self) -> String {
        sha256(&self.config())
    }

    pub fn blobs(&self) -> Vec<(Vec<u8>, Comp)> {
        self.layers
            .iter()
            .map(|(tar, c)| (c.apply(tar), *c))
            .collect()
    }

    /// OCI manifest (bytes); `docker_types` uses Docker schema2 media types.
    pub fn manifest(&self, docker_types: bool) -> Vec<u8> {
        let config = self.config();
        let layers: Vec<_> = self
            .blobs()
            .iter()
            .map(|(blob, c)| {
                let media_type = if docker_types {
                    "application/vnd.docker.image.rootfs.diff.tar.gzip"
                } else {
                    c.oci_media_type()
                };
                serde_json::json!({"mediaType": media_type, "digest": sha256(blob), "size": blob.len()})
            })
            .collect();
        let (manifest_type, config_type) = if docker_types {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            )
        } else {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            )
        };
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": sha256(&config), "size": config.len()},
            "layers": layers,
        }))
        .unwrap()
    }
}

/// Files of an archive, written either as a directory or as a tar.
#[derive(Default)]
pub struct Files {
    pub entries: BTreeMap<String, Vec<u8>>,
    pub symlinks: Vec<(String, String)>,
}

impl Files {
    pub fn add(&mut self, name: &str, data: Vec<u8>) {
        self.entries.insert(name.to_owned(), data);
    }

    pub fn write_dir(&self, dir: &Path) {
        for (name, data) in &self.entries {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        for (name, target) in &self.symlinks {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, path).unwrap();
        }
    }

    pub fn to_tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in &self.entries {
            let mut h = Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(EntryType::Regular);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        for (name, target) in &self.symlinks {
            let mut h = Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o777);
            h.set_entry_type(EntryType::Symlink);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.into_inner().unwrap()
    }
}

/// How `docker save` lays out layers.
#[derive(Clone, Copy, PartialEq)]
pub enum DockerStyle {
    /// Before Docker 25: `<id>/layer.tar` (uncompressed) and `<hex>.json` configs.
    Legacy,
    /// Docker 25+: everything under `blobs/sha256/`, layers possibly compressed.
    OciBlobs,
}

/// A `docker save` archive of `images`, each with its `RepoTags`.
pub fn docker_archive(images: &[(&Fixture, &[&str])], style: DockerStyle) -> Files {
    let mut files = Files::default();
    let mut manifest = Vec::new();
    let mut first_copy: BTreeMap<String, String> = BTreeMap::new();
    for (fixture, tags) in images {
        let config = fixture.config();
        let config_name = match style {
            DockerStyle::Legacy => format!("{}.json", hex_of(&config)),
            DockerStyle::OciBlobs => format!("blobs/sha256/{}", hex_of(&config)),
        };
        files.add(&config_name, config.clone());
        let mut layer_names = Vec::new();
        for (i, (blob, _)) in fixture.blobs().iter().enumerate() {
            let name = match style {
                DockerStyle::Legacy => {
                    // v1 layer ids are not content digests; make them unique per image.
                    let dir = hex_of(format!("{}-{i}", fixture.label).as_bytes());
                    let name = format!("{dir}/layer.tar");
                    // Old Docker stores a layer shared by two images once and symlinks it.
                    match first_copy.get(&hex_of(blob)) {
                        Some(first) => files.symlinks.push((name.clone(), format!("../{first}"))),
                        None => {
                            files.add(&name, blob.clone());
                            first_copy.insert(hex_of(blob), name.clone());
                        }
                    }
                    name
                }
                DockerStyle::OciBlobs => {
                    let name = format!("blobs/sha256/{}", hex_of(blob));
                    files.add(&name, blob.clone());
                    name
                }
            };
            layer_names.push(name);
        }
        manifest.push(serde_json::json!({
            "Config": config_name,
            "RepoTags": tags,
            "Layers": layer_names,
        }));
    }
    files.add("manifest.json", serde_json::to_vec(&manifest).unwrap());
    if style == DockerStyle::OciBlobs {
        files.add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    }
    files
}

/// An OCI layout holding `images`, each with its `index.json` annotations.
pub fn oci_layout(images: &[(&Fixture, &[(&str, &str)])], docker_types: bool) -> Files {
    let mut files = Files::default();
    let mut manifests = Vec::new();
    for (fixture, annotations) in images {
        let config = fixture.config();
        files.add(&format!("blobs/sha256/{}", hex_of(&config)), config);
        for (blob, _) in fixture.blobs() {
            files.add(&format!("blobs/sha256/{}", hex_of(&blob)), blob);
        }
        let manifest = fixture.manifest(docker_types);
        files.add(
            &format!("blobs/sha256/{}", hex_of(&manifest)),
            manifest.clone(),
        );
        let annotations: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect();
        let media_type = if docker_types {
            "application/vnd.docker.distribution.manifest.v2+json"
        } else {
            "application/vnd.oci.image.manifest.v1+json"
        };
        manifests.push(serde_json::json!({
            "mediaType": media_type,
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": annotations,
        }));
    }
    files.add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    files.add(
        "index.json",
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap(),
    );
    files
}

/// One node of a tree, as `lstat` sees it (no link is followed).
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Node {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub mtime: i64,
    pub rdev: u64,
    pub link: Option<PathBuf>,
    pub content: Option<String>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Everything under `dir` (except `skip`), for before/after comparisons.
pub fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(dir, skip, &mut out);
    out
}

fn walk(path: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    if path == skip {
        return;
    }
    let meta = fs::symlink_metadata(path).unwrap();
    let ft = meta.file_type();
    let node = Node {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        nlink: meta.nlink(),
        mtime: meta.mtime(),
        rdev: meta.rdev(),
        link: ft.is_symlink().then(|| fs::read_link(path).unwrap()),
        content: ft.is_file().then(|| hex_of(&fs::read(path).unwrap())),
        xattrs: if ft.is_symlink() {
            Vec::new()
        } else {
            list_xattrs(path)
        },
    };
    out.insert(path.to_owned(), node);
    if ft.is_dir() {
        let mut children: Vec<_> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        children.sort();
        for child in children {
            walk(&child, skip, out);
        }
    }
}

pub fn list_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: test helper; buffers are valid for their lengths.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}", path.display());
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(name.to_vec()).unwrap();
        out.push((name.clone(), get_xattr(path, &name).unwrap()));
    }
    out.sort();
    out
}

pub fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let key = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: test helper; buffers are valid for their lengths.
    let n =
        unsafe { libc::lgetxattr(c.as_ptr(), key.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// The test's scratch area: `outside/` holds sentinel content no unpack may touch.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"do not touch").unwrap();
        fs::create_dir(outside.join("sub")).unwrap();
        fs::write(outside.join("sub/file"), b"also keep").unwrap();
        Sandbox { dir }
    }

    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
pub mod nest;
