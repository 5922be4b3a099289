//! Layer unpacking: formats, metadata, whiteouts, replacement rules, digests and errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{Comp, Layer, get_xattr, gzip, sha256, zstd};
use image::Digest;
use image::unpack::{Compression, Expected, UnpackError, unpack_layer};

fn unpack(blob: &[u8], dest: &Path) -> Result<image::unpack::Unpacked, UnpackError> {
    fs::create_dir_all(dest).unwrap();
    unpack_layer(blob, dest, "test-layer", &Expected::default())
}

/// A layer exercising every supported entry kind and attribute.
fn rich_layer() -> Vec<u8> {
    let long_dir = "d".repeat(60);
    let mut l = Layer::new();
    l.dir("./", 0o755)
        .dir("bin/", 0o755)
        .file_full(b"bin/su", b"#!setuid", 0o4755, 0, 0)
        .file_full(b"bin/wall", b"#!setgid", 0o2755, 0, 5)
        .dir("tmp/", 0o1777)
        .dir_owned("home/", 0o750, 1000, 2000)
        .file_full(b"home/notes.txt", b"hello", 0o640, 1000, 2000)
        .symlink("home/abs", "/etc/passwd")
        .symlink_owned("home/rel", "notes.txt", 1000)
        .hardlink("home/hard", "home/notes.txt")
        .fifo("home/pipe", 0o620)
        .file_xattrs(
            "bin/ping",
            b"ping",
            &[
                (
                    "security.capability",
                    &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
                ("user.origin", b"fixture"),
            ],
        )
        .file_gnu_longname(&format!("{long_dir}/{}", "g".repeat(80)), b"gnu long name")
        .file_pax_path(&format!("{long_dir}/{}", "p".repeat(80)), b"pax path")
        .mtime(1_500_000_000)
        .file("old.txt", b"old")
        .dir("late/", 0o700)
        .file("late/child", b"x");
    l.build()
}

fn check_rich_tree(root: &Path) {
    let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
    assert_eq!(fs::read(root.join("bin/su")).unwrap(), b"#!setuid");
    assert_eq!(meta("bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(meta("bin/wall").mode() & 0o7777, 0o2755);
    assert_eq!(meta("bin/wall").gid(), 5);
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    assert_eq!((meta("home").uid(), meta("home").gid()), (1000, 2000));
    assert_eq!(meta("home").mode() & 0o7777, 0o750);
    assert_eq!(
        (meta("home/notes.txt").uid(), meta("home/notes.txt").gid()),
        (1000, 2000)
    );
    assert_eq!(meta("home/notes.txt").mode() & 0o7777, 0o640);
    assert_eq!(
        fs::read_link(root.join("home/abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(root.join("home/rel")).unwrap(),
        Path::new("notes.txt")
    );
    assert_eq!(
        meta("home/rel").uid(),
        1000,
        "symlink owner applied without following"
    );
    assert_eq!(meta("home/hard").ino(), meta("home/notes.txt").ino());
    assert_eq!(meta("home/notes.txt").nlink(), 2);
    assert!(meta("home/pipe").file_type().is_fifo());
    assert_eq!(meta("home/pipe").mode() & 0o7777, 0o620);
    let cap =
        get_xattr(&root.join("bin/ping"), "security.capability").expect("file capability kept");
    assert_eq!(cap.len(), 20);
    assert_eq!(
        get_xattr(&root.join("bin/ping"), "user.origin").unwrap(),
        b"fixture"
    );
    let long_dir = "d".repeat(60);
    assert_eq!(
        fs::read(root.join(&long_dir).join("g".repeat(80))).unwrap(),
        b"gnu long name"
    );
    assert_eq!(
        fs::read(root.join(&long_dir).join("p".repeat(80))).unwrap(),
        b"pax path"
    );
    assert_eq!(meta("old.txt").mtime(), 1_500_000_000);
    assert_eq!(meta("bin/su").mtime(), 1_600_000_000);
    // Directory times are set after their children were created.
    assert_eq!(meta("late").mtime(), 1_500_000_000);
    assert_eq!(meta("home").mtime(), 1_600_000_000);
    assert_eq!(meta("").mode() & 0o7777, 0o755);
}

#[test]
fn plain_gzip_and_zstd_layers_unpack_to_the_same_tree() {
    let tar = rich_layer();
    let tmp = tempfile::tempdir().unwrap();
    for (comp, expected_kind) in [
        (Comp::None, Compression::None),
        (Comp::Gzip, Compression::Gzip),
        (Comp::Zstd, Compression::Zstd),
    ] {
        let blob = comp.apply(&tar);
        let dest = tmp.path().join(format!("{comp:?}"));
        fs::create_dir(&dest).unwrap();
        let expected = Expected {
            compressed: Some(sha256(&blob).parse().unwrap()),
            compressed_size: Some(blob.len() as u64),
            diff_id: Some(sha256(&tar).parse().unwrap()),
        };
        let got = unpack_layer(&blob[..], &dest, "rich", &expected).unwrap();
        assert_eq!(got.compression, expected_kind);
        assert_eq!(got.diff_id.to_string(), sha256(&tar));
        assert_eq!(got.compressed.to_string(), sha256(&blob));
        assert_eq!(got.size, tar.len() as u64);
        assert_eq!(got.compressed_size, blob.len() as u64);
        check_rich_tree(&dest);
    }
}

#[test]
fn digest_mismatches_name_the_layer_and_both_digests() {
    let tar = Layer::new().file("a", b"a").build();
    let blob = gzip(&tar);
    let tmp = tempfile::tempdir().unwrap();
    let wrong = Digest::of(b"something else");

    let dest = tmp.path().join("c");
    fs::create_dir(&dest).unwrap();
    let err = unpack_layer(
        &blob[..],
        &dest,
        "layer-7",
        &Expected {
            compressed: Some(wrong.clone()),
            ..Expected::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::CompressedDigestMismatch { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("layer-7") && msg.contains(&wrong.to_string()) && msg.contains(&sha256(&blob)),
        "{msg}"
    );

    let dest = tmp.path().join("d");
    fs::create_dir(&dest).unwrap();
    let err = unpack_layer(
        &blob[..],
        &dest,
        "layer-8",
        &Expected {
            diff_id: Some(wrong.clone()),
            ..Expected::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("layer-8") && msg.contains(&wrong.to_string()) && msg.contains(&sha256(&tar)),
        "{msg}"
    );

    let dest = tmp.path().join("e");
    fs::create_dir(&dest).unwrap();
    let err = unpack_layer(
        &blob[..],
        &dest,
        "layer-9",
        &Expected {
            compressed_size: Some(3),
            ..Expected::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::SizeMismatch { expected: 3, .. }),
        "{err}"
    );
}

#[test]
fn corrupt_blobs_are_reported_as_such() {
    let mut big = Layer::new();
    for i in 0..50 {
        big.file(&format!("f{i}"), &vec![i as u8; 10_000]);
    }
    let tar = big.build();
    let tmp = tempfile::tempdir().unwrap();

    let gz = gzip(&tar);
    let err = unpack(&gz[..gz.len() / 2], &tmp.path().join("gz")).unwrap_err();
    assert!(
        matches!(err, UnpackError::Decompress { format: "gzip", .. }),
        "{err}"
    );

    let zs = zstd(&tar);
    let err = unpack(&zs[..zs.len() / 2], &tmp.path().join("zs")).unwrap_err();
    assert!(
        matches!(err, UnpackError::Decompress { format: "zstd", .. }),
        "{err}"
    );

    let err = unpack(&tar[..tar.len() / 2 + 100], &tmp.path().join("tar")).unwrap_err();
    assert!(matches!(err, UnpackError::Tar { .. }), "{err}");

    let err = unpack(&[0x42u8; 4096], &tmp.path().join("garbage")).unwrap_err();
    assert!(matches!(err, UnpackError::Tar { .. }), "{err}");
    assert!(err.to_string().contains("corrupt or truncated"), "{err}");

    let mut garbage_gz = vec![0x1f, 0x8b];
    garbage_gz.extend_from_slice(&[0x55; 2000]);
    let err = unpack(&garbage_gz, &tmp.path().join("garbage-gz")).unwrap_err();
    assert!(matches!(err, UnpackError::Decompress { .. }), "{err}");

    let err = unpack(b"BZh91AY&SY", &tmp.path().join("bz")).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::UnsupportedCompression {
                format: "bzip2",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn empty_layer_is_valid() {
    let tar = Layer::new().build();
    let tmp = tempfile::tempdir().unwrap();
    let got = unpack(&gzip(&tar), &tmp.path().join("e")).unwrap();
    assert_eq!(got.diff_id.to_string(), sha256(&tar));
    assert_eq!(fs::read_dir(tmp.path().join("e")).unwrap().count(), 0);
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_opaque_markers_apply_in_any_order() {
    let tar = Layer::new()
        .file(".wh.gone", b"")
        .dir("etc/", 0o755)
        .file("etc/.wh.passwd", b"")
        // Marker before the directory's own entry and its files.
        .file("opaque-first/.wh..wh..opq", b"")
        .dir("opaque-first/", 0o711)
        .file("opaque-first/kept", b"k")
        .dir("opaque-last/", 0o755)
        .file("opaque-last/kept", b"k")
        .file("opaque-last/.wh..wh..opq", b"")
        .file(".wh..wh.plnk", b"")
        .build();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    unpack(&tar, &root).unwrap();
    for w in ["gone", "etc/passwd"] {
        let m = fs::symlink_metadata(root.join(w)).unwrap();
        assert!(m.file_type().is_char_device(), "{w} is a whiteout");
        assert_eq!(m.rdev(), 0);
    }
    assert!(!root.join(".wh.gone").exists());
    assert!(!root.join(".wh..wh.plnk").exists());
    for d in ["opaque-first", "opaque-last"] {
        assert_eq!(
            get_xattr(&root.join(d), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..]),
            "{d}"
        );
        assert_eq!(fs::read(root.join(d).join("kept")).unwrap(), b"k");
        assert!(!root.join(d).join(".wh..wh..opq").exists());
    }
    assert_eq!(
        fs::metadata(root.join("opaque-first"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o711
    );
    assert_eq!(get_xattr(&root.join("etc"), "trusted.overlay.opaque"), None);
}

#[test]
fn later_entries_replace_earlier_ones() {
    let tar = Layer::new()
        .file("f", b"first")
        .file("f", b"second")
        .file("file-then-dir", b"x")
        .dir("file-then-dir/", 0o700)
        .dir("dir-then-file/", 0o755)
        .file("dir-then-file/child", b"c")
        .file("dir-then-file", b"now a file")
        .dir("dir-twice/", 0o755)
        .file("dir-twice/child", b"kept")
        .dir_owned("dir-twice/", 0o705, 7, 8)
        .symlink("link-then-file", "f")
        .file("link-then-file", b"plain")
        .file("file-then-link", b"plain")
        .symlink("file-then-link", "f")
        .file("target", b"t")
        .file("link-over", b"old")
        .hardlink("link-over", "target")
        .file("w", b"x")
        .file(".wh.w", b"")
        .build();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    unpack(&tar, &root).unwrap();
    assert_eq!(fs::read(root.join("f")).unwrap(), b"second");
    assert!(
        fs::symlink_metadata(root.join("file-then-dir"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(fs::read(root.join("dir-then-file")).unwrap(), b"now a file");
    assert_eq!(fs::read(root.join("dir-twice/child")).unwrap(), b"kept");
    let m = fs::symlink_metadata(root.join("dir-twice")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o705, 7, 8));
    assert!(
        fs::symlink_metadata(root.join("link-then-file"))
            .unwrap()
            .is_file()
    );
    assert_eq!(
        fs::read(root.join("f")).unwrap(),
        b"second",
        "file written over a symlink did not go through it"
    );
    assert_eq!(
        fs::read_link(root.join("file-then-link")).unwrap(),
        Path::new("f")
    );
    assert_eq!(fs::read(root.join("link-over")).unwrap(), b"t");
    assert!(
        fs::symlink_metadata(root.join("w"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

#[test]
fn missing_parents_are_created_and_device_nodes_skipped() {
    let tar = Layer::new()
        .file("a/b/c/file", b"deep")
        .char_device("dev/null", 1, 3)
        .block_device("dev/sda", 8, 0)
        .file("dev/kept", b"k")
        .build();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    unpack(&tar, &root).unwrap();
    assert_eq!(fs::read(root.join("a/b/c/file")).unwrap(), b"deep");
    assert_eq!(
        fs::metadata(root.join("a/b")).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(!root.join("dev/null").exists());
    assert!(fs::symlink_metadata(root.join("dev/sda")).is_err());
    assert_eq!(fs::read(root.join("dev/kept")).unwrap(), b"k");
}

#[test]
fn overlay_reserved_xattrs_from_the_image_are_dropped() {
    let tar = Layer::new()
        .file_xattrs(
            "f",
            b"x",
            &[("trusted.overlay.redirect", b"/etc"), ("user.ok", b"1")],
        )
        .build();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    unpack(&tar, &root).unwrap();
    assert_eq!(get_xattr(&root.join("f"), "trusted.overlay.redirect"), None);
    assert_eq!(
        get_xattr(&root.join("f"), "user.ok").as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn hardlink_to_a_missing_target_is_an_error() {
    let tar = Layer::new().hardlink("h", "nowhere").build();
    let tmp = tempfile::tempdir().unwrap();
    let err = unpack(&tar, &tmp.path().join("r")).unwrap_err();
    assert!(
        matches!(err, UnpackError::LinkTargetMissing { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("\"h\""), "{err}");
}

#[test]
fn opaque_marker_under_a_symlinked_directory_marks_its_target_inside_the_root() {
    let tar = Layer::new()
        .dir("real/", 0o755)
        .symlink("link", "real")
        .file("link/.wh..wh..opq", b"")
        .file("link/file", b"f")
        .build();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    unpack(&tar, &root).unwrap();
    assert_eq!(
        get_xattr(&root.join("real"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(root.join("real/file")).unwrap(), b"f");
}
