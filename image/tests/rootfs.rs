//! Overlay root filesystems over imported images.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use common::{Comp, Fixture, Layer, oci_layout};
use image::rootfs::{mount_overlay, unmount};
use image::{ImageStore, RootfsError};

fn is_mountpoint(path: &std::path::Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

#[test]
fn two_layer_image_with_whiteout_and_opaque_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("s")).unwrap();
    let lower = Layer::new()
        .dir("etc/", 0o755)
        .file("etc/passwd", b"root")
        .file("etc/hosts", b"localhost")
        .dir("opaque/", 0o755)
        .file("opaque/a", b"a")
        .file("opaque/b", b"b")
        .dir("keep/", 0o755)
        .file("keep/file", b"kept")
        .build();
    let upper = Layer::new()
        .file("etc/.wh.passwd", b"")
        .dir("opaque/", 0o755)
        .file("opaque/.wh..wh..opq", b"")
        .file("opaque/c", b"c")
        .file("new/file", b"new")
        .file("etc/hosts", b"changed")
        .build();
    let f = Fixture::new("overlay", vec![(lower, Comp::Gzip), (upper, Comp::Zstd)]);
    let layout = tmp.path().join("layout");
    oci_layout(
        &[(
            &f,
            &[("io.containerd.image.name", "docker.io/library/ov:1")],
        )],
        false,
    )
    .write_dir(&layout);
    let image = store.import(&layout, None).unwrap().remove(0);
    let lowers = store.layer_dirs(&image).unwrap();
    assert_eq!(lowers.len(), 2);

    let (up, work, merged) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("merged"),
    );
    for d in [&up, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    mount_overlay(&lowers, &up, &work, &merged).unwrap();
    let view = std::panic::catch_unwind(|| {
        assert!(
            !merged.join("etc/passwd").exists(),
            "whiteout hides the lower file"
        );
        assert_eq!(fs::read(merged.join("etc/hosts")).unwrap(), b"changed");
        let mut opaque: Vec<String> = fs::read_dir(merged.join("opaque"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        opaque.sort();
        assert_eq!(opaque, ["c"], "opaque dir hides the lower contents");
        assert_eq!(fs::read(merged.join("keep/file")).unwrap(), b"kept");
        assert_eq!(fs::read(merged.join("new/file")).unwrap(), b"new");
        fs::write(merged.join("keep/written"), b"w").unwrap();
        fs::remove_file(merged.join("keep/file")).unwrap();
    });
    unmount(&merged).unwrap();
    view.unwrap();
    assert!(!is_mountpoint(&merged));
    assert_eq!(fs::read(up.join("keep/written")).unwrap(), b"w");
    assert!(
        fs::symlink_metadata(up.join("keep/file"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // The shared layer itself is untouched by the container's changes.
    assert_eq!(fs::read(lowers[0].join("keep/file")).unwrap(), b"kept");
    // Idempotent unmount.
    unmount(&merged).unwrap();
    unmount(&tmp.path().join("does-not-exist")).unwrap();
}

#[test]
fn many_layers_beyond_the_mount_data_page() {
    let tmp = tempfile::tempdir().unwrap();
    let long = tmp.path().join("l".repeat(120));
    let lowers: Vec<PathBuf> = (0..60)
        .map(|i| {
            let d = long.join(format!("layer-{i:03}-{}", "x".repeat(60)));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(format!("from-{i}")), b"x").unwrap();
            fs::write(d.join("top"), i.to_string()).unwrap();
            d
        })
        .collect();
    let total: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(
        total > 4096,
        "the test needs options longer than a page ({total})"
    );
    let (up, work, merged) = (
        tmp.path().join("u"),
        tmp.path().join("w"),
        tmp.path().join("m"),
    );
    for d in [&up, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    mount_overlay(&lowers, &up, &work, &merged).unwrap();
    let checks = std::panic::catch_unwind(|| {
        assert!(merged.join("from-0").is_file());
        assert!(merged.join("from-59").is_file());
        assert_eq!(
            fs::read_to_string(merged.join("top")).unwrap(),
            "59",
            "last layer is on top"
        );
    });
    unmount(&merged).unwrap();
    checks.unwrap();
}

#[test]
fn mount_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let err = mount_overlay(&[], d, d, d).unwrap_err();
    assert!(matches!(err, RootfsError::NoLayers));
    let missing = d.join("missing");
    fs::create_dir(d.join("u")).unwrap();
    fs::create_dir(d.join("w")).unwrap();
    fs::create_dir(d.join("m")).unwrap();
    let err = mount_overlay(
        std::slice::from_ref(&missing),
        &d.join("u"),
        &d.join("w"),
        &d.join("m"),
    )
    .unwrap_err();
    assert!(matches!(err, RootfsError::Mount { .. }), "{err}");
    assert!(
        err.to_string().contains(d.join("m").to_str().unwrap()),
        "{err}"
    );
    assert!(!is_mountpoint(&d.join("m")));
}
