//! The receiver's data directory:
//!
//! ```text
//! repos/<app>.git     bare repository (hooks/pre-receive, post-receive: ours)
//! cache/<app>.tgz     the app's build cache, as the last good build left it
//! slugs/<hex>.tgz     slugs by the sha256 of their bytes (never changed once there)
//! builds/<id>/        one build's exchange with its job: source.tar, cache.tgz in;
//!                     slug.tgz, cache.tgz (replaced), meta out; removed after
//! tmp/                files being written (renamed into place when whole)
//! ```

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub(crate) struct Store {
    root: PathBuf,
}

/// App names as the controller takes them (a DNS label): also safe as file names.
pub(crate) fn valid_app(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn valid_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

pub(crate) fn valid_build_id(s: &str) -> bool {
    valid_hex(s, 32)
}

pub(crate) fn valid_slug(s: &str) -> bool {
    valid_hex(s, 64)
}

/// The files a build job may send back.
pub(crate) const BUILD_OUTPUTS: [&str; 3] = ["slug.tgz", "cache.tgz", "meta"];
/// The files a build job may fetch.
pub(crate) const BUILD_INPUTS: [&str; 2] = ["source.tar", "cache.tgz"];

impl Store {
    pub(crate) fn open(root: &Path) -> io::Result<Store> {
        for d in ["repos", "cache", "slugs", "builds", "tmp"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn repos(&self) -> PathBuf {
        self.root.join("repos")
    }

    pub(crate) fn repo(&self, app: &str) -> PathBuf {
        self.root.join("repos").join(format!("{app}.git"))
    }

    pub(crate) fn cache(&self, app: &str) -> PathBuf {
        self.root.join("cache").join(format!("{app}.tgz"))
    }

    pub(crate) fn slug(&self, hex: &str) -> PathBuf {
        self.root.join("slugs").join(format!("{hex}.tgz"))
    }

    pub(crate) fn build_dir(&self, id: &str) -> PathBuf {
        self.root.join("builds").join(id)
    }

    pub(crate) fn tmp_file(&self, what: &str) -> io::Result<PathBuf> {
        let id = flynn_random::hex(8, flynn_random::Use::Unique)?;
        Ok(self.root.join("tmp").join(format!("{what}.{id}")))
    }

    /// The app's bare repository, made (with our hooks, pushes allowed) if missing.
    /// `hook` is the program git runs as the hooks (this binary).
    pub(crate) fn ensure_repo(&self, app: &str, hook: &Path) -> io::Result<PathBuf> {
        let repo = self.repo(app);
        if repo.join("HEAD").exists() {
            return Ok(repo);
        }
        // Made aside and renamed, so a half-made repository is never served.
        let tmp = self.tmp_file(app)?;
        run_git(
            &tmp,
            &["init", "--quiet", "--bare", "--initial-branch=main", "."],
            true,
        )?;
        run_git(&tmp, &["config", "http.receivepack", "true"], false)?;
        // A push that git-http-backend has to unpack loose costs more than a pack.
        run_git(&tmp, &["config", "receive.unpackLimit", "1000"], false)?;
        write_hooks(&tmp, hook)?;
        match std::fs::rename(&tmp, &repo) {
            Ok(()) => Ok(repo),
            // Another request made it meanwhile.
            Err(_) if repo.join("HEAD").exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(repo)
            }
            Err(e) => Err(e),
        }
    }

    /// Moves a whole file into the slug store under the sha256 of its bytes.
    pub(crate) fn add_slug(&self, file: &Path) -> io::Result<String> {
        let mut f = std::fs::File::open(file)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        let hex = hex::encode(hash.finalize());
        std::fs::rename(file, self.slug(&hex))?;
        Ok(hex)
    }

    /// A peer's copy of a slug: kept only if its bytes hash to `hex`.
    pub(crate) fn put_slug(&self, hex: &str, bytes: &[u8]) -> io::Result<bool> {
        if hex::encode(Sha256::digest(bytes)) != hex {
            return Ok(false);
        }
        flynn_fsutil::write_atomic(&self.slug(hex), bytes, flynn_fsutil::Durability::Durable)?;
        Ok(true)
    }

    /// A peer's copy of an app's repository (a tar of the bare repository): it
    /// replaces ours whole, with our hooks.
    pub(crate) fn put_repo(&self, app: &str, tar_bytes: &[u8], hook: &Path) -> io::Result<()> {
        let tmp = self.tmp_file(app)?;
        std::fs::create_dir_all(&tmp)?;
        let mut archive = tar::Archive::new(tar_bytes);
        // tar's unpack keeps every entry inside `tmp` (it refuses `..` and absolute
        // paths); the archive comes from a peer that holds the cluster token.
        archive.unpack(&tmp)?;
        if !tmp.join("HEAD").is_file() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a bare repository (no HEAD)",
            ));
        }
        write_hooks(&tmp, hook)?;
        let repo = self.repo(app);
        let old = self.tmp_file(&format!("{app}-old"))?;
        let had = std::fs::rename(&repo, &old).is_ok();
        std::fs::rename(&tmp, &repo)?;
        if had {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }

    /// A tar of an app's bare repository (for the peers).
    pub(crate) fn repo_tar(&self, app: &str) -> io::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.append_dir_all(".", self.repo(app))?;
        b.into_inner()
    }
}

fn write_hooks(repo: &Path, hook: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let hooks = repo.join("hooks");
    std::fs::create_dir_all(&hooks)?;
    for name in ["pre-receive", "post-receive"] {
        let path = hooks.join(name);
        let mut f = std::fs::File::create(&path)?;
        writeln!(
            f,
            "#!/bin/sh\nexec '{}' gitreceive-hook {name}",
            hook.display()
        )?;
        f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn run_git(dir: &Path, args: &[&str], create: bool) -> io::Result<()> {
    if create {
        std::fs::create_dir_all(dir)?;
    }
    let out = Command::new("git").args(args).current_dir(dir).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_app("hello-2"));
        assert!(!valid_app("../x"));
        assert!(!valid_app("Hello"));
        assert!(!valid_app("-a"));
        assert!(valid_build_id(&"a".repeat(32)));
        assert!(!valid_build_id("../../etc/passwd"));
        assert!(valid_slug(&"0".repeat(64)));
        assert!(!valid_slug(&"A".repeat(64)));
    }

    #[test]
    fn slugs_are_kept_by_digest_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let f = s.tmp_file("slug").unwrap();
        std::fs::write(&f, b"slug bytes").unwrap();
        let hex = s.add_slug(&f).unwrap();
        assert_eq!(hex, hex::encode(Sha256::digest(b"slug bytes")));
        assert_eq!(std::fs::read(s.slug(&hex)).unwrap(), b"slug bytes");
        assert!(!s.put_slug(&hex, b"other bytes").unwrap());
        assert!(s.put_slug(&hex, b"slug bytes").unwrap());
    }
}
