//! An initramfs (newc cpio, gzip) assembled from host files and generated ones.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the initramfs {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is larger than 4 GiB, which newc cannot hold")]
    TooLarge(String),
}

enum Node {
    Dir(u32),
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// Files of an initramfs, keyed by path inside it (no leading '/').
#[derive(Default)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

impl Initramfs {
    pub fn new() -> Initramfs {
        let mut fs = Initramfs::default();
        for dir in [
            "bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "var", "root",
        ] {
            fs.dir(dir, 0o755);
        }
        fs
    }

    /// Adds a directory and its missing parents.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let path = clean(path);
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.nodes.entry(prefix.clone()).or_insert(Node::Dir(0o755));
        }
        if !path.is_empty() {
            self.nodes.insert(path, Node::Dir(mode));
        }
        self
    }

    fn parent_dirs(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            let parent = parent.to_string();
            if !self.nodes.contains_key(&parent) {
                self.dir(&parent, 0o755);
            }
        }
    }

    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        let path = clean(path);
        self.parent_dirs(&path);
        self.nodes.insert(
            path,
            Node::File {
                data: data.into(),
                mode,
            },
        );
        self
    }

    /// Copies a host file (following symlinks), keeping its permission bits.
    pub fn file(&mut self, path: &str, host: &Path) -> Result<&mut Self, InitramfsError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |e| InitramfsError::Read {
            path: host.to_path_buf(),
            source: e,
        };
        let data = std::fs::read(host).map_err(read)?;
        let mode = std::fs::metadata(host).map_err(read)?.permissions().mode() & 0o7777;
        Ok(self.bytes(path, data, mode))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let path = clean(path);
        self.parent_dirs(&path);
        self.nodes.insert(path, Node::Symlink(target.to_string()));
        self
    }

    /// Busybox as /bin/busybox with a symlink per applet it lists.
    pub fn busybox(&mut self, host: &Path) -> Result<&mut Self, InitramfsError> {
        self.file("bin/busybox", host)?;
        let out = std::process::Command::new(host)
            .arg("--list")
            .output()
            .map_err(|e| InitramfsError::Read {
                path: host.to_path_buf(),
                source: e,
            })?;
        for applet in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if applet != "busybox" {
                self.symlink(&format!("bin/{applet}"), "busybox");
            }
        }
        Ok(self)
    }

    /// Writes the gzip-compressed newc archive.
    pub fn write(&self, out: &Path) -> Result<(), InitramfsError> {
        let write_err = |e| InitramfsError::Write {
            path: out.to_path_buf(),
            source: e,
        };
        let file = std::fs::File::create(out).map_err(write_err)?;
        let gz = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(file),
            flate2::Compression::fast(),
        );
        let mut inputs = Vec::new();
        for (ino, (path, node)) in self.nodes.iter().enumerate() {
            let builder = cpio::newc::Builder::new(path)
                .ino(ino as u32 + 1)
                .uid(0)
                .gid(0)
                .mtime(0);
            let (builder, data): (_, Vec<u8>) = match node {
                Node::Dir(mode) => (builder.mode(0o040000 | mode).nlink(2), Vec::new()),
                Node::File { data, mode } => {
                    if data.len() > u32::MAX as usize {
                        return Err(InitramfsError::TooLarge(path.clone()));
                    }
                    (builder.mode(0o100000 | mode).nlink(1), data.clone())
                }
                Node::Symlink(target) => {
                    (builder.mode(0o120777).nlink(1), target.as_bytes().to_vec())
                }
            };
            inputs.push((builder, std::io::Cursor::new(data)));
        }
        let gz = cpio::write_cpio(inputs.into_iter(), gz).map_err(write_err)?;
        let mut buf = gz.finish().map_err(write_err)?;
        buf.flush().map_err(write_err)
    }
}
