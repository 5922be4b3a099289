//! The store's side of pulls: a lease's journal keeps finished layers across a crash
//! (so the next pull resumes with them) until it expires; a verified commit makes the
//! image visible by its tag and by the index digest; a wrong blob leaves nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{Comp, Fixture, Layer, sha256};
use image::ImageStore;
use image::digest::Digest;
use image::store::{LayerBlob, PulledImage};

fn layer_dir(root: &Path, diff_id: &str) -> std::path::PathBuf {
    root.join("layers")
        .join(diff_id.trim_start_matches("sha256:"))
}

fn fixture() -> Fixture {
    let one = Layer::new().dir("etc", 0o755).file("etc/one", b"1").build();
    let two = Layer::new().file("two", b"2").build();
    Fixture::new("pulled", vec![(one, Comp::Gzip), (two, Comp::Zstd)])
}

fn blob_of(data: &[u8], media_type: &str) -> LayerBlob {
    LayerBlob {
        digest: sha256(data).parse().unwrap(),
        size: data.len() as u64,
        media_type: media_type.to_owned(),
    }
}

#[test]
fn journals_keep_finished_layers_across_a_crash_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let fx = fixture();
    let config: Digest = fx.id().parse().unwrap();
    let diff_ids: Vec<Digest> = fx.diff_ids().iter().map(|d| d.parse().unwrap()).collect();
    let blobs = fx.blobs();

    // A pull that finished one layer of two, then "crashed" (the store was dropped
    // without a commit).
    {
        let store = Arc::new(ImageStore::open(&root).unwrap());
        store.store_blob(&fx.config(), &config).unwrap();
        let lease = store.begin_pull(&config, &diff_ids).unwrap();
        let blob = blob_of(&blobs[0].0, "application/vnd.oci.image.layer.v1.tar+gzip");
        let layer = lease.unpack(&blobs[0].0[..], &blob, &diff_ids[0]).unwrap();
        assert_eq!(layer.diff_id, diff_ids[0]);
    }
    let store = Arc::new(ImageStore::open(&root).unwrap());
    assert!(
        layer_dir(&root, &fx.diff_ids()[0])
            .join("layer.json")
            .is_file(),
        "the journal kept the finished layer"
    );
    assert!(store.blob(&config).unwrap().is_some(), "and the config");
    assert!(store.list().unwrap().is_empty(), "no image is visible");

    // The next pull finds the layer, fetches the other, commits.
    let lease = store.begin_pull(&config, &diff_ids).unwrap();
    let first = blob_of(&blobs[0].0, "application/vnd.oci.image.layer.v1.tar+gzip");
    let present = lease.present(&diff_ids[0], &first).expect("present");
    let second = blob_of(&blobs[1].0, "application/vnd.oci.image.layer.v1.tar+zstd");
    // A wrong blob first: refused, naming the digest, and nothing left of it.
    let err = lease
        .unpack(&blobs[0].0[..], &second, &diff_ids[1])
        .unwrap_err();
    assert!(
        err.to_string().contains(&second.digest.to_string()),
        "{err}"
    );
    assert!(!layer_dir(&root, &fx.diff_ids()[1]).exists());
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    let other = lease
        .unpack(&blobs[1].0[..], &second, &diff_ids[1])
        .unwrap();
    let manifest = fx.manifest(false);
    let index_digest = Digest::of(b"an index");
    let image = lease
        .commit(PulledImage {
            manifest_digest: Digest::of(&manifest),
            manifest,
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
            config_digest: config.clone(),
            layers: vec![present, other],
            name: Some("127.0.0.1:5000/me/pulled:1".parse().unwrap()),
            index_digest: Some(index_digest.clone()),
        })
        .unwrap();
    drop(lease);
    assert_eq!(image.id, fx.id());
    assert_eq!(
        store.resolve("127.0.0.1:5000/me/pulled:1").unwrap().id,
        fx.id()
    );
    let by_index = format!("127.0.0.1:5000/me/pulled@{index_digest}");
    assert_eq!(store.resolve(&by_index).unwrap().id, fx.id());
    assert_eq!(store.layer_dirs(&image).unwrap().len(), 2);
    assert_eq!(
        std::fs::read_dir(root.join("pulls")).unwrap().count(),
        0,
        "journal ended"
    );
    drop(store);

    // An unfinished pull whose journal is older than the TTL: its layer goes at open.
    let store = Arc::new(ImageStore::open(&root).unwrap());
    let layer = Layer::new().file("three", b"3").build();
    let three = Fixture::new("stale", vec![(layer, Comp::Gzip)]);
    let config3: Digest = three.id().parse().unwrap();
    let diff3: Vec<Digest> = three
        .diff_ids()
        .iter()
        .map(|d| d.parse().unwrap())
        .collect();
    let blob3 = three.blobs()[0].0.clone();
    {
        let lease = store.begin_pull(&config3, &diff3).unwrap();
        let b = blob_of(&blob3, "application/vnd.oci.image.layer.v1.tar+gzip");
        lease.unpack(&blob3[..], &b, &diff3[0]).unwrap();
    }
    drop(store);
    for entry in std::fs::read_dir(root.join("pulls")).unwrap() {
        let ok = Command::new("touch")
            .args(["-d", "2 days ago"])
            .arg(entry.unwrap().path())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let store = ImageStore::open(&root).unwrap();
    assert!(
        !layer_dir(&root, &three.diff_ids()[0]).exists(),
        "expired journal, layer deleted"
    );
    assert_eq!(std::fs::read_dir(root.join("pulls")).unwrap().count(), 0);
    assert_eq!(store.list().unwrap().len(), 1, "the committed image stays");
}
