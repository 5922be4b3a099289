//! Hostile layers: whatever the tar says, nothing outside the layer root may be created,
//! linked, changed or deleted. Each test snapshots the sandbox (outside the root) before and
//! after the unpack and requires them equal.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::{Layer, Sandbox, get_xattr, snapshot};
use image::unpack::{Expected, UnpackError, Unpacked, unpack_layer};

/// Unpacks `tar` into `<sandbox>/root` and asserts nothing outside the root changed.
fn unpack_guarded(sandbox: &Sandbox, tar: &[u8]) -> (PathBuf, Result<Unpacked, UnpackError>) {
    let root = sandbox.path().join("root");
    fs::create_dir(&root).unwrap();
    let before = snapshot(sandbox.path(), &root);
    let result = unpack_layer(tar, &root, "hostile", &Expected::default());
    let after = snapshot(sandbox.path(), &root);
    assert_eq!(before, after, "something outside the layer root changed");
    (root, result)
}

fn outside_str(sandbox: &Sandbox) -> String {
    sandbox.outside().to_str().unwrap().to_owned()
}

/// The sandbox's absolute outside path, re-rooted inside the layer.
fn inside(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").unwrap())
}

#[test]
fn dotdot_paths_are_rejected() {
    for name in [
        "../escape",
        "a/../../escape",
        "./../outside/secret",
        "a/b/../../../outside/pwned",
    ] {
        let sandbox = Sandbox::new();
        let tar = Layer::new().dir("a/", 0o755).file(name, b"pwned").build();
        let (_, result) = unpack_guarded(&sandbox, &tar);
        let err = result.unwrap_err();
        assert!(
            matches!(err, UnpackError::PathEscapes { .. }),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains("hostile") && err.to_string().contains(name),
            "{err}"
        );
    }
}

#[test]
fn absolute_paths_are_taken_relative_to_the_root() {
    let sandbox = Sandbox::new();
    let target = format!("{}/secret", outside_str(&sandbox));
    let tar = Layer::new()
        .file("/etc/abs-file", b"inside")
        .file(&target, b"pwned")
        .build();
    let (root, result) = unpack_guarded(&sandbox, &tar);
    result.unwrap();
    assert_eq!(fs::read(root.join("etc/abs-file")).unwrap(), b"inside");
    assert_eq!(
        fs::read(inside(&root, Path::new(&target))).unwrap(),
        b"pwned"
    );
    assert_eq!(
        fs::read(sandbox.outside().join("secret")).unwrap(),
        b"do not touch"
    );
}

#[test]
fn writing_through_a_symlink_that_points_out_stays_inside() {
    let sandbox = Sandbox::new();
    let outside = outside_str(&sandbox);
    let tar = Layer::new()
        .symlink("a", &outside)
        .file("a/pwned", b"pwned")
        .file("a/secret", b"overwritten?")
        .symlink("rel", "../../../../../../../../outside")
        .file("rel/pwned", b"pwned")
        .dir("a/newdir/", 0o777)
        .symlink("a/sub/link", "/etc")
        .build();
    let (root, result) = unpack_guarded(&sandbox, &tar);
    result.unwrap();
    let reached = inside(&root, &sandbox.outside());
    assert_eq!(fs::read(reached.join("pwned")).unwrap(), b"pwned");
    assert_eq!(fs::read(reached.join("secret")).unwrap(), b"overwritten?");
    assert!(reached.join("newdir").is_dir());
    assert_eq!(fs::read(root.join("outside/pwned")).unwrap(), b"pwned");
    assert!(!sandbox.outside().join("pwned").exists());
}

#[test]
fn a_symlink_swapped_in_for_a_directory_is_not_followed() {
    let sandbox = Sandbox::new();
    let outside = outside_str(&sandbox);
    let tar = Layer::new()
        .dir("d/", 0o755)
        .file("d/x", b"x")
        .symlink("d", &outside)
        .file("d/pwned", b"pwned")
        .file("d/sub/file", b"replaced?")
        .build();
    let (root, result) = unpack_guarded(&sandbox, &tar);
    result.unwrap();
    assert!(
        fs::symlink_metadata(root.join("d"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let reached = inside(&root, &sandbox.outside());
    assert_eq!(fs::read(reached.join("pwned")).unwrap(), b"pwned");
    assert_eq!(fs::read(reached.join("sub/file")).unwrap(), b"replaced?");
}

#[test]
fn hardlinks_pointing_out_are_refused() {
    let sandbox = Sandbox::new();
    let tar = Layer::new().hardlink("h", "../outside/secret").build();
    let (_, result) = unpack_guarded(&sandbox, &tar);
    let err = result.unwrap_err();
    assert!(matches!(err, UnpackError::LinkEscapes { .. }), "{err}");
    assert_eq!(
        fs::metadata(sandbox.outside().join("secret"))
            .unwrap()
            .nlink(),
        1
    );

    // An absolute target is looked up inside the root, where it does not exist.
    let sandbox = Sandbox::new();
    let target = format!("{}/secret", outside_str(&sandbox));
    let tar = Layer::new().hardlink("h", &target).build();
    let (_, result) = unpack_guarded(&sandbox, &tar);
    assert!(matches!(
        result.unwrap_err(),
        UnpackError::LinkTargetMissing { .. }
    ));
    assert_eq!(
        fs::metadata(sandbox.outside().join("secret"))
            .unwrap()
            .nlink(),
        1
    );

    // Through a symlinked directory: resolved inside the root as well.
    let sandbox = Sandbox::new();
    let tar = Layer::new()
        .symlink("out", &outside_str(&sandbox))
        .hardlink("h", "out/secret")
        .build();
    let (_, result) = unpack_guarded(&sandbox, &tar);
    assert!(matches!(
        result.unwrap_err(),
        UnpackError::LinkTargetMissing { .. }
    ));
    assert_eq!(
        fs::metadata(sandbox.outside().join("secret"))
            .unwrap()
            .nlink(),
        1
    );
}

#[test]
fn a_hardlink_to_a_symlink_links_the_symlink_itself() {
    let sandbox = Sandbox::new();
    let target = format!("{}/secret", outside_str(&sandbox));
    let tar = Layer::new()
        .symlink("s", &target)
        .hardlink("h", "s")
        .build();
    let (root, result) = unpack_guarded(&sandbox, &tar);
    result.unwrap();
    let h = fs::symlink_metadata(root.join("h")).unwrap();
    assert!(h.file_type().is_symlink());
    assert_eq!(h.ino(), fs::symlink_metadata(root.join("s")).unwrap().ino());
    assert_eq!(fs::read_link(root.join("h")).unwrap(), Path::new(&target));
    assert_eq!(
        fs::metadata(sandbox.outside().join("secret"))
            .unwrap()
            .nlink(),
        1
    );
}

#[test]
fn whiteouts_naming_outside_paths_stay_inside() {
    let sandbox = Sandbox::new();
    let tar = Layer::new().file("../.wh.secret", b"").build();
    let (_, result) = unpack_guarded(&sandbox, &tar);
    assert!(matches!(
        result.unwrap_err(),
        UnpackError::PathEscapes { .. }
    ));

    let sandbox = Sandbox::new();
    let tar = Layer::new()
        .symlink("a", &outside_str(&sandbox))
        .file("a/.wh.secret", b"")
        .file("a/sub/.wh..wh..opq", b"")
        .file("a/.wh.sub", b"")
        .build();
    let (root, result) = unpack_guarded(&sandbox, &tar);
    result.unwrap();
    let reached = inside(&root, &sandbox.outside());
    assert!(
        fs::symlink_metadata(reached.join("secret"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert!(
        fs::symlink_metadata(reached.join("sub"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(
        get_xattr(&sandbox.outside().join("sub"), "trusted.overlay.opaque"),
        None
    );
    assert_eq!(
        fs::read(sandbox.outside().join("sub/file")).unwrap(),
        b"also keep"
    );
}

#[test]
fn device_nodes_are_not_created() {
    let sandbox = Sandbox::new();
    let tar = Layer::new()
        .char_device("mem", 1, 1)
        .char_device("dev/kmsg", 1, 11)
        .block_device("disk", 254, 0)
        .build();
    let (root, result) = unpack_guarded(&sandbox, &tar);
    result.unwrap();
    for node in ["mem", "dev/kmsg", "disk"] {
        assert!(
            fs::symlink_metadata(root.join(node)).is_err(),
            "{node} must not exist"
        );
    }
}

#[test]
fn chmod_and_chown_never_go_through_a_symlink() {
    let sandbox = Sandbox::new();
    let outside = outside_str(&sandbox);
    let secret = format!("{outside}/secret");
    let before = fs::metadata(sandbox.outside().join("secret")).unwrap();
    let tar = Layer::new()
        // The symlink's own owner is applied to the link, not to what it points at.
        .symlink_owned("l", &secret, 4321)
        .symlink_owned("ldir", &outside, 4321)
        // A directory entry over a symlink replaces the link; it never chmods the target.
        .symlink("d", &outside)
        .dir_owned("d/", 0o777, 4321, 4321)
        // Setuid file over a symlink: the link is replaced, the target not written.
        .symlink("f", &secret)
        .file_full(b"f", b"pwned", 0o4777, 4321, 4321)
        // Fifo over a symlink.
        .symlink("p", &secret)
        .fifo("p", 0o777)
        // Directory metadata through a symlinked parent resolves inside the root.
        .dir_owned("ldir/sub/", 0o777, 4321, 4321)
        .build();
    let (root, result) = unpack_guarded(&sandbox, &tar);
    result.unwrap();
    let after = fs::metadata(sandbox.outside().join("secret")).unwrap();
    assert_eq!(
        (after.mode(), after.uid(), after.gid()),
        (before.mode(), before.uid(), before.gid())
    );
    let l = fs::symlink_metadata(root.join("l")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!(l.uid(), 4321);
    let d = fs::symlink_metadata(root.join("d")).unwrap();
    assert!(d.is_dir());
    assert_eq!((d.mode() & 0o7777, d.uid()), (0o777, 4321));
    let f = fs::symlink_metadata(root.join("f")).unwrap();
    assert!(f.is_file());
    assert_eq!(f.mode() & 0o7777, 0o4777);
    assert!(
        fs::symlink_metadata(root.join("p"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let sub = inside(&root, &sandbox.outside()).join("sub");
    assert_eq!(fs::symlink_metadata(&sub).unwrap().uid(), 4321);
}

#[test]
fn symlink_loops_in_parents_are_an_error_not_a_hang() {
    let sandbox = Sandbox::new();
    let tar = Layer::new()
        .symlink("loop1", "loop2")
        .symlink("loop2", "loop1")
        .file("loop1/x", b"x")
        .build();
    let (_, result) = unpack_guarded(&sandbox, &tar);
    let err = result.unwrap_err();
    assert!(matches!(err, UnpackError::Entry { .. }), "{err}");
}

#[test]
fn layer_root_metadata_entry_does_not_touch_the_parent() {
    let sandbox = Sandbox::new();
    let tar = Layer::new()
        .dir_owned("./", 0o700, 99, 99)
        .dir("/", 0o711)
        .dir("..", 0o777)
        .build();
    let (_, result) = unpack_guarded(&sandbox, &tar);
    assert!(matches!(
        result.unwrap_err(),
        UnpackError::PathEscapes { .. }
    ));
}
