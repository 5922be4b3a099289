//! What identifies this host's daemon and guards its API: the host id (stable
//! across restarts) and the API token, both kept in the state dir.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

use super::config::validate_token;

/// Host ids and tokens wait for the kernel's random pool (see [`crate::random`]): a
/// token must not be guessable, and clones of one image must not share a host id.
fn random_hex(bytes: usize) -> Result<String> {
    crate::random::hex(bytes, crate::random::Use::Secret)
        .context("reading random bytes from the kernel (getrandom)")
}

/// Reads `path`, or creates it (mode `mode`) with `make()` if it does not exist.
/// Creation is exclusive, so two daemons starting at once agree on one value.
fn read_or_create(path: &Path, mode: u32, make: impl FnOnce() -> Result<String>) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_string()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let value = make()?;
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(format!("{value}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    // link(2) fails if the name exists: exactly one creator wins.
    match fs::hard_link(&tmp, path) {
        Ok(()) => {
            let _ = fs::remove_file(&tmp);
            Ok(value)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&tmp);
            Ok(fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_string())
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// The host's id: 32 hex characters, created at first start.
pub fn host_id(state_dir: &Path) -> Result<String> {
    read_or_create(&state_dir.join("host-id"), 0o644, || random_hex(16))
}

/// The API token: `configured`, or `<state_dir>/token` (mode 0600, created at first start).
pub fn token(state_dir: &Path, configured: Option<&str>) -> Result<String> {
    if let Some(token) = configured {
        return Ok(token.to_string());
    }
    let path = state_dir.join("token");
    let token = read_or_create(&path, 0o600, || random_hex(32))?;
    validate_token(&token).with_context(|| format!("the token in {}", path.display()))?;
    // A token others can read is no secret: put the mode back.
    let mode = fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the token file was readable by others; made it 0600");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = token(dir.path(), None).unwrap();
        assert_eq!(first.len(), 64);
        let mode = fs::metadata(dir.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(token(dir.path(), None).unwrap(), first);
        fs::set_permissions(dir.path().join("token"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(token(dir.path(), None).unwrap(), first);
        let mode = fs::metadata(dir.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            token(dir.path(), Some("configured-token-123")).unwrap(),
            "configured-token-123"
        );
    }

    #[test]
    fn host_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let id = host_id(dir.path()).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(host_id(dir.path()).unwrap(), id);
    }
}
