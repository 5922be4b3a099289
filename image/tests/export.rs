//! Exporting an imported image as an OCI archive with its own digests: what one host
//! hands another (`ImageStore::export`), checked by importing it into a fresh store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;

use common::{Comp, DockerStyle, Fixture, Layer, docker_archive, hex_of, oci_layout};
use image::{ImageStore, StoreError};

fn store(dir: &Path, name: &str) -> ImageStore {
    ImageStore::open(&dir.join(name)).unwrap()
}

fn layer(label: &str) -> Vec<u8> {
    Layer::new()
        .dir("app/", 0o755)
        .file("app/name", label.as_bytes())
        .file_full(b"app/run", b"#!/bin/sh", 0o755, 0, 0)
        .build()
}

fn export_to(store: &ImageStore, name: &str, path: &Path) {
    let export = store.export(name).unwrap();
    let file = fs::File::create(path).unwrap();
    export.write_to(file).unwrap();
}

fn blobs(store: &ImageStore) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn an_exported_oci_image_imports_elsewhere_as_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store(tmp.path(), "a");
    let fixture = Fixture::new(
        "app",
        vec![(layer("base"), Comp::Gzip), (layer("top"), Comp::Zstd)],
    );
    let files = oci_layout(
        &[(
            &fixture,
            &[("io.containerd.image.name", "registry.local/team/app:7")],
        )],
        false,
    );
    let dir = tmp.path().join("layout");
    files.write_dir(&dir);
    let imported = a.import(&dir, None).unwrap().remove(0);
    // The compressed blobs are kept as they came.
    for (blob, _) in fixture.blobs() {
        assert!(
            blobs(&a).contains(&hex_of(&blob)),
            "a layer blob is not kept"
        );
    }

    let archive = tmp.path().join("export.tar");
    export_to(&a, "registry.local/team/app:7", &archive);
    let b = store(tmp.path(), "b");
    let again = b.import(&archive, None).unwrap().remove(0);
    assert_eq!(again, imported, "the same id, manifest, layers and names");
    assert_eq!(
        b.manifest(&again).unwrap(),
        a.manifest(&imported).unwrap(),
        "the manifest's bytes"
    );
    assert_eq!(blobs(&a), blobs(&b));
    // By manifest digest too (what a release pins), and the same bytes every time.
    let by_digest = format!("app@{}", imported.manifest_digest);
    let second = tmp.path().join("second.tar");
    export_to(&b, &by_digest, &second);
    assert_eq!(fs::read(&archive).unwrap(), fs::read(&second).unwrap());
    let layer_dirs = b.layer_dirs(&again).unwrap();
    assert_eq!(
        fs::read(layer_dirs[1].join("app/name")).unwrap(),
        b"top".to_vec()
    );
}

#[test]
fn a_docker_save_archive_keeps_its_synthesized_manifest_across_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store(tmp.path(), "a");
    let fixture = Fixture::new(
        "legacy",
        vec![(layer("one"), Comp::None), (layer("two"), Comp::None)],
    );
    let files = docker_archive(
        &[(&fixture, &["tool:1", "tool:latest"])],
        DockerStyle::Legacy,
    );
    let path = tmp.path().join("save.tar");
    fs::write(&path, files.to_tar()).unwrap();
    let imported = a.import(&path, None).unwrap().remove(0);

    let archive = tmp.path().join("export.tar");
    export_to(&a, &imported.id, &archive);
    let b = store(tmp.path(), "b");
    let again = b.import(&archive, None).unwrap().remove(0);
    assert_eq!(again.id, imported.id);
    assert_eq!(again.manifest_digest, imported.manifest_digest);
    assert_eq!(again.names, imported.names, "both tags travel");
}

/// Imports a one-layer image named `name` (an OCI layout) into `store`.
fn import_one(store: &ImageStore, dir: &Path, label: &str, name: &str) -> Fixture {
    let fixture = Fixture::new(label, vec![(layer(label), Comp::Gzip)]);
    let files = oci_layout(&[(&fixture, &[("io.containerd.image.name", name)])], false);
    let layout = dir.join(format!("layout-{label}"));
    files.write_dir(&layout);
    store.import(&layout, None).unwrap();
    fixture
}

#[test]
fn removal_deletes_the_kept_blobs_and_an_open_export_still_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store(tmp.path(), "a");
    let fixture = import_one(&a, tmp.path(), "gone", "docker.io/library/gone:1");
    let export = a.export("gone:1").unwrap();
    a.remove("gone:1", &|_| false).unwrap();
    assert!(blobs(&a).is_empty(), "left behind: {:?}", blobs(&a));
    // The export opened its blobs before the removal.
    let archive = tmp.path().join("export.tar");
    export
        .write_to(fs::File::create(&archive).unwrap())
        .unwrap();
    let b = store(tmp.path(), "b");
    assert_eq!(b.import(&archive, None).unwrap()[0].id, fixture.id());
    // Reopening finds nothing to clean (the kept blobs count as used) and keeps them.
    drop(b);
    let b = store(tmp.path(), "b");
    assert_eq!(blobs(&b).len(), 3, "config, manifest and the layer blob");
    assert!(matches!(a.export("gone:1"), Err(StoreError::NotFound(_))));
}

#[test]
fn an_image_without_its_layer_blobs_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store(tmp.path(), "a");
    let fixture = import_one(&a, tmp.path(), "pulled", "docker.io/library/pulled:1");
    // As a pull leaves it: the layer unpacked, its blob not kept.
    let (blob, _) = &fixture.blobs()[0];
    fs::remove_file(a.root().join("blobs/sha256").join(hex_of(blob))).unwrap();
    let err = a.export("pulled:1").unwrap_err();
    assert!(matches!(err, StoreError::BlobsNotKept { .. }), "{err:?}");
    assert!(
        err.to_string().contains("pull it from that registry"),
        "{err}"
    );
    // The image itself is untouched.
    assert!(a.resolve("pulled:1").is_ok());
}
