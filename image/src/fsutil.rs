//! Small crash-safety helpers: unique temp names and fsync of directories (from
//! `flynn-fsutil`, whose `write_atomic_via` replaces the store's files), removal of trees.

use std::fs;
use std::io;
use std::path::Path;

pub(crate) use flynn_fsutil::{create_temp, fsync_dir, unique_name};

/// Removes a file, symlink or whole directory tree; a missing path is not an error.
/// `std::fs::remove_dir_all` never follows symlinks inside the tree, so a layer's
/// `etc -> /etc` cannot make this delete host files.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_any_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        remove_any(&tree).unwrap();
        remove_any(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
        assert_ne!(unique_name("a"), unique_name("a"));
    }
}
