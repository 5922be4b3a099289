//! Importing `docker save` archives and OCI layouts (directories and tars), names and tags,
//! re-imports, and every way an archive can be broken.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{
    Comp, DockerStyle, Files, Fixture, Layer, docker_archive, gzip, hex_of, oci_layout, sha256,
};
use image::{ImageStore, ImportError, Reference, UnpackError};

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(&dir.join("store")).unwrap()
}

enum As {
    Dir,
    Tar,
    TarGz,
}

fn write(files: &Files, dir: &Path, name: &str, form: As) -> PathBuf {
    let path = dir.join(name);
    match form {
        As::Dir => files.write_dir(&path),
        As::Tar => fs::write(&path, files.to_tar()).unwrap(),
        As::TarGz => fs::write(&path, gzip(&files.to_tar())).unwrap(),
    }
    path
}

fn base_layer() -> Vec<u8> {
    Layer::new()
        .dir("bin/", 0o755)
        .file_full(b"bin/sh", b"#!/bin/sh", 0o755, 0, 0)
        .file_full(b"bin/su", b"su", 0o4755, 0, 0)
        .dir("etc/", 0o755)
        .file("etc/os-release", b"ID=fixture")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh")
        .symlink("etc/mtab", "/proc/mounts")
        .hardlink("bin/ash", "bin/sh")
        .file_xattrs("bin/ping", b"ping", &[("user.cap", b"net_raw")])
        .build()
}

fn app_layer(label: &str) -> Vec<u8> {
    Layer::new()
        .dir("app/", 0o755)
        .file("app/name", label.as_bytes())
        .file("etc/.wh.passwd", b"")
        .build()
}

/// Asserts the store holds no leftovers: nothing in tmp/ and only the layers of listed images.
fn assert_tidy(store: &ImageStore) {
    let root = store.root();
    assert_eq!(
        fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "tmp/ must be empty"
    );
    assert_eq!(
        fs::read_dir(root.join("trash")).unwrap().count(),
        0,
        "trash/ must be empty"
    );
    let mut listed: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .flat_map(|i| {
            i.layers
                .iter()
                .map(|l| l.trim_start_matches("sha256:").to_owned())
        })
        .collect();
    listed.sort();
    listed.dedup();
    let mut present: Vec<String> = fs::read_dir(root.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    present.sort();
    assert_eq!(
        present, listed,
        "layers/ must hold exactly the layers of listed images"
    );
}

#[test]
fn docker_archive_with_plain_layer_tars() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let base = base_layer();
    let one = Fixture::new(
        "one",
        vec![(base.clone(), Comp::None), (app_layer("one"), Comp::None)],
    );
    let two = Fixture::new(
        "two",
        vec![(base.clone(), Comp::None), (app_layer("two"), Comp::None)],
    );
    let files = docker_archive(
        &[
            (&one, &["busybox:latest", "me/tool:1.0"]),
            (&two, &["localhost:5000/two:t"]),
        ],
        DockerStyle::Legacy,
    );
    assert!(
        !files.symlinks.is_empty(),
        "the shared layer is stored once and symlinked"
    );
    let archive = write(&files, tmp.path(), "save.tar", As::Tar);

    let images = store.import(&archive, None).unwrap();
    assert_eq!(images.len(), 2);
    let img = &images[0];
    assert_eq!(img.id, one.id());
    assert_eq!(
        img.names,
        ["docker.io/library/busybox:latest", "docker.io/me/tool:1.0"]
    );
    assert_eq!(img.layers, one.diff_ids());
    assert_eq!(img.size, (base.len() + app_layer("one").len()) as u64);
    assert_eq!(img.created.as_deref(), Some("2024-01-02T03:04:05Z"));
    assert_eq!(
        (img.architecture.as_str(), img.os.as_str()),
        ("amd64", "linux")
    );
    assert_eq!(images[1].names, ["localhost:5000/two:t"]);

    let config = store.config(img).unwrap();
    assert_eq!(
        config.config().as_ref().unwrap().cmd().as_ref().unwrap(),
        &["/bin/sh".to_owned()]
    );
    let dirs = store.layer_dirs(img).unwrap();
    assert_eq!(dirs.len(), 2);
    assert_eq!(
        fs::read(dirs[0].join("etc/os-release")).unwrap(),
        b"ID=fixture"
    );
    assert_eq!(
        fs::metadata(dirs[0].join("bin/su")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(fs::read(dirs[1].join("app/name")).unwrap(), b"one");
    // Both images share the base layer directory.
    assert_eq!(store.layer_dirs(&images[1]).unwrap()[0], dirs[0]);
    // The synthesized manifest names the layer blobs (plain tars: blob digest = diff id).
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.manifest(img).unwrap()).unwrap();
    assert_eq!(manifest["layers"][0]["digest"], sha256(&base));
    assert_eq!(manifest["config"]["digest"], one.id());
    assert_eq!(img.manifest_digest, sha256(&store.manifest(img).unwrap()));
    assert_eq!(store.resolve("busybox").unwrap().id, one.id());
    assert_eq!(store.resolve("me/tool:1.0").unwrap().id, one.id());
    assert_eq!(store.resolve("localhost:5000/two:t").unwrap().id, two.id());
    assert_tidy(&store);
}

#[test]
fn docker_archive_with_compressed_oci_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let fixture = Fixture::new(
        "blobs",
        vec![(base_layer(), Comp::Gzip), (app_layer("z"), Comp::Zstd)],
    );
    let files = docker_archive(&[(&fixture, &["me/new:25"])], DockerStyle::OciBlobs);
    let archive = write(&files, tmp.path(), "save.tar", As::Tar);
    let images = store.import(&archive, None).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, fixture.id());
    assert_eq!(images[0].names, ["docker.io/me/new:25"]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.manifest(&images[0]).unwrap()).unwrap();
    let blobs = fixture.blobs();
    assert_eq!(manifest["layers"][0]["digest"], sha256(&blobs[0].0));
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        manifest["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let dirs = store.layer_dirs(&images[0]).unwrap();
    assert_eq!(fs::read(dirs[1].join("app/name")).unwrap(), b"z");
    // The layer blobs are kept as they came (so the image can go to another host
    // with its digests), beside the manifest and the config.
    let blob_count = fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blob_count, 4);
    for (blob, _) in &blobs {
        assert_eq!(
            fs::read(store.root().join("blobs/sha256").join(hex_of(blob))).unwrap(),
            *blob
        );
    }
    assert_tidy(&store);
}

#[test]
fn compressed_docker_archive_file_and_extracted_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let fixture = Fixture::new("gz", vec![(base_layer(), Comp::None)]);
    let files = docker_archive(&[(&fixture, &["gz:1"])], DockerStyle::Legacy);
    let archive = write(&files, tmp.path(), "save.tar.gz", As::TarGz);
    assert_eq!(store.import(&archive, None).unwrap()[0].id, fixture.id());
    let fixture2 = Fixture::new("dir", vec![(base_layer(), Comp::None)]);
    let files = docker_archive(&[(&fixture2, &["dir:1"])], DockerStyle::Legacy);
    let dir = write(&files, tmp.path(), "extracted", As::Dir);
    assert_eq!(
        store.import(&dir, None).unwrap()[0].names,
        ["docker.io/library/dir:1"]
    );
    assert_tidy(&store);
}

#[test]
fn oci_layout_directory_and_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let a = Fixture::new(
        "a",
        vec![(base_layer(), Comp::Gzip), (app_layer("a"), Comp::Gzip)],
    );
    let b = Fixture::new(
        "b",
        vec![(base_layer(), Comp::Gzip), (app_layer("b"), Comp::Zstd)],
    );
    let files = oci_layout(
        &[
            (
                &a,
                &[
                    ("io.containerd.image.name", "docker.io/library/alpha:3"),
                    ("org.opencontainers.image.ref.name", "3"),
                ],
            ),
            (
                &b,
                &[("org.opencontainers.image.ref.name", "quay.io/beta/b:2")],
            ),
        ],
        false,
    );
    let dir = write(&files, tmp.path(), "oci", As::Dir);
    let images = store.import(&dir, None).unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].id, a.id());
    assert_eq!(images[0].names, ["docker.io/library/alpha:3"]);
    assert_eq!(images[0].manifest_digest, sha256(&a.manifest(false)));
    assert_eq!(images[1].names, ["quay.io/beta/b:2"]);
    assert_eq!(store.manifest(&images[0]).unwrap(), a.manifest(false));
    assert_eq!(store.resolve("alpha:3").unwrap().id, a.id());
    assert_eq!(
        fs::read(store.layer_dirs(&images[1]).unwrap()[1].join("app/name")).unwrap(),
        b"b"
    );

    // The same layout as a tar, into a fresh store.
    let tmp2 = tempfile::tempdir().unwrap();
    let store2 = ImageStore::open(&tmp2.path().join("s")).unwrap();
    let tar = write(&files, tmp.path(), "oci.tar", As::Tar);
    let images2 = store2.import(&tar, None).unwrap();
    assert_eq!(images2, images);
    assert_tidy(&store);
    assert_tidy(&store2);
}

#[test]
fn oci_tag_only_ref_names_need_the_callers_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let f = Fixture::new("tagonly", vec![(base_layer(), Comp::Gzip)]);
    let files = oci_layout(
        &[(&f, &[("org.opencontainers.image.ref.name", "1.0")])],
        false,
    );
    let dir = write(&files, tmp.path(), "oci", As::Dir);
    let untagged = store.import(&dir, None).unwrap();
    assert!(untagged[0].names.is_empty(), "a bare tag names nothing");
    assert_eq!(store.resolve(&f.id()).unwrap().id, f.id());
    let tag: Reference = "me/tool:1.0".parse().unwrap();
    let tagged = store.import(&dir, Some(&tag)).unwrap();
    assert_eq!(tagged[0].names, ["docker.io/me/tool:1.0"]);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn docker_media_types_and_nested_index_pick_linux_amd64() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let amd = Fixture::new("amd64", vec![(base_layer(), Comp::Gzip)]);
    let mut arm = Fixture::new("arm64", vec![(app_layer("arm"), Comp::Gzip)]);
    arm.architecture = "arm64".to_owned();
    // Start from a layout with both images, then put them behind a nested index.
    let mut files = oci_layout(&[(&amd, &[]), (&arm, &[])], true);
    let amd_manifest = amd.manifest(true);
    let arm_manifest = arm.manifest(true);
    let entry = |m: &[u8], arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": sha256(m), "size": m.len(),
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [entry(&arm_manifest, "arm64"), entry(&amd_manifest, "amd64")],
    }))
    .unwrap();
    files.add(&format!("blobs/sha256/{}", hex_of(&list)), list.clone());
    files.add(
        "index.json",
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "digest": sha256(&list), "size": list.len(),
            "annotations": {"io.containerd.image.name": "docker.io/library/multi:latest"},
        }]}))
        .unwrap(),
    );
    let tar = write(&files, tmp.path(), "multi.tar", As::Tar);
    let images = store.import(&tar, None).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, amd.id());
    assert_eq!(images[0].names, ["docker.io/library/multi:latest"]);
    assert_eq!(images[0].architecture, "amd64");

    // An index with no linux/amd64 entry is a clear error.
    let mut arm_only = oci_layout(&[(&arm, &[])], true);
    let only = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "manifests": [entry(&arm_manifest, "arm64")],
    }))
    .unwrap();
    arm_only.add(&format!("blobs/sha256/{}", hex_of(&only)), only.clone());
    arm_only.add(
        "index.json",
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(&only), "size": only.len(),
        }]}))
        .unwrap(),
    );
    let dir = write(&arm_only, tmp.path(), "arm", As::Dir);
    let err = store.import(&dir, None).unwrap_err();
    assert!(matches!(err, ImportError::NoPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");
}

#[test]
fn reimport_skips_present_layers_and_moves_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let v1 = Fixture::new(
        "v1",
        vec![(base_layer(), Comp::Gzip), (app_layer("v1"), Comp::Gzip)],
    );
    let v2 = Fixture::new(
        "v2",
        vec![(base_layer(), Comp::Gzip), (app_layer("v2"), Comp::Gzip)],
    );
    let a1 = write(
        &oci_layout(
            &[(&v1, &[("io.containerd.image.name", "app:latest")])],
            false,
        ),
        tmp.path(),
        "v1",
        As::Dir,
    );
    let first = store.import(&a1, None).unwrap();
    let base_dir = store.layer_dirs(&first[0]).unwrap()[0].clone();
    let inode = fs::metadata(&base_dir).unwrap().ino();

    // Same image again, now also tagged: same id, layers untouched, one more name.
    let again = store
        .import(&a1, Some(&"app:stable".parse().unwrap()))
        .unwrap();
    assert_eq!(again[0].id, first[0].id);
    assert_eq!(
        again[0].names,
        [
            "docker.io/library/app:latest",
            "docker.io/library/app:stable"
        ]
    );
    assert_eq!(
        fs::metadata(&base_dir).unwrap().ino(),
        inode,
        "present layer not unpacked again"
    );

    // A new image takes "app:latest": v1 keeps only "app:stable".
    let a2 = write(
        &oci_layout(
            &[(&v2, &[("io.containerd.image.name", "app:latest")])],
            false,
        ),
        tmp.path(),
        "v2",
        As::Dir,
    );
    store.import(&a2, None).unwrap();
    assert_eq!(store.resolve("app").unwrap().id, v2.id());
    assert_eq!(
        store.resolve(&v1.id()).unwrap().names,
        ["docker.io/library/app:stable"]
    );
    assert_eq!(
        fs::metadata(&base_dir).unwrap().ino(),
        inode,
        "shared layer reused"
    );
    // And once "app:stable" moves too, v1 stays, untagged (Docker's <none>).
    store
        .import(&a2, Some(&"app:stable".parse().unwrap()))
        .unwrap();
    let v1_now = store.resolve(&v1.id()).unwrap();
    assert!(v1_now.names.is_empty());
    assert_eq!(store.list().unwrap().len(), 2);
    assert_tidy(&store);
}

#[test]
fn a_tag_for_an_archive_of_several_images_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let a = Fixture::new("a", vec![(base_layer(), Comp::None)]);
    let b = Fixture::new("b", vec![(base_layer(), Comp::None)]);
    let archive = write(
        &docker_archive(&[(&a, &[]), (&b, &[])], DockerStyle::Legacy),
        tmp.path(),
        "two.tar",
        As::Tar,
    );
    let err = store
        .import(&archive, Some(&"x:1".parse().unwrap()))
        .unwrap_err();
    assert!(
        matches!(err, ImportError::TagWithSeveralImages { count: 2, .. }),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    // Without a tag both are stored, untagged.
    let images = store.import(&archive, None).unwrap();
    assert!(images.iter().all(|i| i.names.is_empty()));
    assert_tidy(&store);
}

/// A broken import must leave the store as it was, and a good import must work after it.
fn assert_fails_cleanly(store: &ImageStore, path: &Path, check: impl Fn(&ImportError) -> bool) {
    let before = store.list().unwrap();
    let err = store.import(path, None).unwrap_err();
    assert!(check(&err), "unexpected error: {err:?}");
    assert!(err.is_client_error(), "the archive is at fault: {err}");
    assert_eq!(store.list().unwrap(), before);
    assert_tidy(store);
}

#[test]
fn broken_archives_fail_cleanly_and_the_store_stays_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let mut big = Layer::new();
    for i in 0..40 {
        big.file(&format!("data/{i}"), &vec![i as u8; 20_000]);
    }
    let big = big.build();
    let fixture = Fixture::new(
        "victim",
        vec![(base_layer(), Comp::Gzip), (big.clone(), Comp::Gzip)],
    );
    let good = oci_layout(
        &[(&fixture, &[("io.containerd.image.name", "victim:1")])],
        false,
    );
    let blobs = fixture.blobs();
    let layer_member = format!("blobs/sha256/{}", hex_of(&blobs[1].0));
    let config_member = format!("blobs/sha256/{}", hex_of(&fixture.config()));

    // Truncated tar file.
    let tar = good.to_tar();
    let p = tmp.path().join("truncated.tar");
    fs::write(&p, &tar[..tar.len() / 2]).unwrap();
    assert_fails_cleanly(&store, &p, |e| matches!(e, ImportError::Archive(_)));

    // Garbage file, empty file, truncated gzip file.
    fs::write(&p, vec![0x5a; 3000]).unwrap();
    assert_fails_cleanly(&store, &p, |e| matches!(e, ImportError::Archive(_)));
    fs::write(&p, b"").unwrap();
    assert_fails_cleanly(&store, &p, |e| {
        matches!(e, ImportError::UnknownFormat { .. })
    });
    let gz = gzip(&tar);
    fs::write(&p, &gz[..gz.len() / 2]).unwrap();
    assert_fails_cleanly(&store, &p, |e| {
        matches!(e, ImportError::CompressedArchive { .. })
    });

    // Unknown format: a directory without manifest.json or oci-layout; a tar of other files.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert_fails_cleanly(&store, &empty, |e| {
        matches!(e, ImportError::UnknownFormat { .. })
    });
    let mut other = Files::default();
    other.add("hello.txt", b"hi".to_vec());
    let p2 = write(&other, tmp.path(), "other.tar", As::Tar);
    assert_fails_cleanly(&store, &p2, |e| {
        matches!(e, ImportError::UnknownFormat { .. }) && e.to_string().contains("manifest.json")
    });

    // Tampered layer blob (same size): digest mismatch, nothing unpacked stays.
    let mut tampered = oci_layout(&[(&fixture, &[])], false);
    let mut blob = blobs[1].0.clone();
    let n = blob.len();
    blob[n - 20] ^= 0xff;
    tampered.add(&layer_member, blob);
    let d = write(&tampered, tmp.path(), "tampered", As::Dir);
    assert_fails_cleanly(&store, &d, |e| {
        matches!(
            e,
            ImportError::Unpack(UnpackError::CompressedDigestMismatch { .. })
                | ImportError::Unpack(UnpackError::Decompress { .. })
        )
    });

    // Tampered layer blob that is still valid gzip: the compressed digest catches it.
    let mut tampered = oci_layout(&[(&fixture, &[])], false);
    let mut other_level = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut other_level, &big).unwrap();
    let regzipped = other_level.finish().unwrap();
    assert_ne!(regzipped, blobs[1].0);
    tampered.add(&layer_member, regzipped);
    let d = write(&tampered, tmp.path(), "regzipped", As::Dir);
    assert_fails_cleanly(&store, &d, |e| {
        matches!(
            e,
            ImportError::Unpack(UnpackError::CompressedDigestMismatch { .. })
                | ImportError::Unpack(UnpackError::SizeMismatch { .. })
        )
    });

    // Tampered config.
    let mut tampered = oci_layout(&[(&fixture, &[])], false);
    let mut config = fixture.config();
    config[5] = b' ';
    tampered.add(&config_member, config);
    let d = write(&tampered, tmp.path(), "badconfig", As::Dir);
    assert_fails_cleanly(&store, &d, |e| {
        matches!(e, ImportError::DigestMismatch { .. }) && e.to_string().contains(&fixture.id())
    });

    // Config lists a wrong diff id: the layer is unpacked, checked, and thrown away.
    let mut wrong = fixture.clone();
    let mut ids = wrong.diff_ids();
    ids[1] = sha256(b"not the layer");
    wrong.diff_ids = Some(ids);
    let d = write(
        &oci_layout(&[(&wrong, &[])], false),
        tmp.path(),
        "wrongdiff",
        As::Dir,
    );
    assert_fails_cleanly(&store, &d, |e| {
        matches!(e, ImportError::Unpack(UnpackError::DiffIdMismatch { .. }))
            && e.to_string().contains(&sha256(b"not the layer"))
    });

    // Missing layer blob.
    let mut missing = oci_layout(&[(&fixture, &[])], false);
    missing.entries.remove(&layer_member);
    let d = write(&missing, tmp.path(), "missing", As::Tar);
    assert_fails_cleanly(&store, &d, |e| {
        matches!(e, ImportError::MissingFile { .. }) && e.to_string().contains(&hex_of(&blobs[1].0))
    });

    // Malformed index.json, oci-layout and manifest.json.
    let mut bad = oci_layout(&[(&fixture, &[])], false);
    bad.add(
        "index.json",
        b"{\"schemaVersion\": 2, \"manifests\": 7}".to_vec(),
    );
    let d = write(&bad, tmp.path(), "badindex", As::Dir);
    assert_fails_cleanly(
        &store,
        &d,
        |e| matches!(e, ImportError::Malformed { name, .. } if name == "index.json"),
    );
    let mut bad = oci_layout(&[(&fixture, &[])], false);
    bad.add("oci-layout", b"[]".to_vec());
    let d = write(&bad, tmp.path(), "badlayout", As::Dir);
    assert_fails_cleanly(
        &store,
        &d,
        |e| matches!(e, ImportError::Malformed { name, .. } if name == "oci-layout"),
    );
    let mut bad = docker_archive(&[(&fixture, &["x:1"])], DockerStyle::OciBlobs);
    bad.add("manifest.json", b"[{\"Config\": 12}]".to_vec());
    let d = write(&bad, tmp.path(), "badmanifest.tar", As::Tar);
    assert_fails_cleanly(
        &store,
        &d,
        |e| matches!(e, ImportError::Malformed { name, .. } if name == "manifest.json"),
    );
    let mut bad = docker_archive(&[(&fixture, &["x:1"])], DockerStyle::OciBlobs);
    bad.add("manifest.json", b"not json".to_vec());
    let d = write(&bad, tmp.path(), "notjson.tar", As::Tar);
    assert_fails_cleanly(&store, &d, |e| matches!(e, ImportError::Malformed { .. }));
    let mut bad = docker_archive(&[(&fixture, &["x:1"])], DockerStyle::Legacy);
    bad.add("manifest.json", b"[]".to_vec());
    let d = write(&bad, tmp.path(), "noimages", As::Dir);
    assert_fails_cleanly(&store, &d, |e| matches!(e, ImportError::NoImages { .. }));
    // A manifest.json entry pointing outside the archive directory cannot read host files.
    let mut bad = docker_archive(&[(&fixture, &["x:1"])], DockerStyle::Legacy);
    bad.add(
        "manifest.json",
        br#"[{"Config": "../../../../../etc/passwd", "Layers": []}]"#.to_vec(),
    );
    let d = write(&bad, tmp.path(), "escape", As::Dir);
    assert_fails_cleanly(&store, &d, |e| matches!(e, ImportError::MissingFile { .. }));

    // A corrupt layer inside a valid archive (truncated gzip).
    let mut corrupt = docker_archive(&[(&fixture, &["x:1"])], DockerStyle::OciBlobs);
    corrupt.add(&layer_member, blobs[1].0[..blobs[1].0.len() / 2].to_vec());
    let d = write(&corrupt, tmp.path(), "corruptlayer.tar", As::Tar);
    assert_fails_cleanly(&store, &d, |e| matches!(e, ImportError::Unpack(_)));

    // After all that, the good archive imports.
    let good_path = write(&good, tmp.path(), "good", As::Dir);
    let images = store.import(&good_path, None).unwrap();
    assert_eq!(images[0].id, fixture.id());
    assert_eq!(store.list().unwrap().len(), 1);
    assert_tidy(&store);
}

#[test]
fn odd_inputs_are_refused_without_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let f = Fixture::new("odd", vec![(base_layer(), Comp::Gzip)]);
    let files = oci_layout(&[(&f, &[])], false);
    let dir = write(&files, tmp.path(), "fifo", As::Dir);
    // A fifo where a blob should be: opening it must not block the import.
    let config = dir.join(format!("blobs/sha256/{}", hex_of(&f.config())));
    fs::remove_file(&config).unwrap();
    nix::unistd::mkfifo(&config, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let err = store.import(&dir, None).unwrap_err();
    assert!(matches!(err, ImportError::MissingFile { .. }), "{err}");

    let good = write(&files, tmp.path(), "good", As::Dir);
    let digest_tag: Reference = format!("x@{}", sha256(b"m")).parse().unwrap();
    let err = store.import(&good, Some(&digest_tag)).unwrap_err();
    assert!(matches!(err, ImportError::TagWithDigest(_)), "{err}");
    assert!(store.list().unwrap().is_empty());
}
