//! Store semantics: lookup rules, removal and layer GC, concurrency, crash recovery.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Comp, Fixture, Layer, oci_layout};
use image::{ImageStore, Removed, StoreError};

fn base_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("usr/", 0o755);
    for i in 0..20 {
        l.file(&format!("usr/f{i}"), &vec![i as u8; 4096]);
    }
    l.build()
}

fn small_layer(label: &str) -> Vec<u8> {
    Layer::new().file("label", label.as_bytes()).build()
}

fn fixture(label: &str) -> Fixture {
    Fixture::new(
        label,
        vec![(base_layer(), Comp::Gzip), (small_layer(label), Comp::Gzip)],
    )
}

/// Writes an OCI layout for `fixture` named `name` (if any) and returns its path.
fn layout(dir: &Path, fixture: &Fixture, name: Option<&str>) -> PathBuf {
    let path = dir.join(format!("layout-{}", fixture.label));
    if !path.exists() {
        let annotations: Vec<(&str, &str)> = name
            .map(|n| ("io.containerd.image.name", n))
            .into_iter()
            .collect();
        oci_layout(&[(fixture, &annotations)], false).write_dir(&path);
    }
    path
}

fn import(store: &ImageStore, dir: &Path, fixture: &Fixture, name: Option<&str>) -> image::Image {
    store
        .import(&layout(dir, fixture, name), None)
        .unwrap()
        .remove(0)
}

fn layer_count(store: &ImageStore) -> usize {
    fs::read_dir(store.root().join("layers")).unwrap().count()
}

fn blob_count(store: &ImageStore) -> usize {
    fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn resolve_by_name_id_prefix_and_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("s")).unwrap();
    let a = import(
        &store,
        tmp.path(),
        &fixture("a"),
        Some("docker.io/library/busybox:latest"),
    );
    let b = import(
        &store,
        tmp.path(),
        &fixture("b"),
        Some("docker.io/me/tool:1.0"),
    );
    for name in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        "index.docker.io/library/busybox",
    ] {
        assert_eq!(store.resolve(name).unwrap().id, a.id, "{name}");
    }
    assert_eq!(store.resolve("me/tool:1.0").unwrap().id, b.id);
    let hex = a.id.trim_start_matches("sha256:");
    assert_eq!(store.resolve(&a.id).unwrap().id, a.id);
    assert_eq!(store.resolve(hex).unwrap().id, a.id);
    assert_eq!(store.resolve(&hex[..12]).unwrap().id, a.id);
    assert_eq!(
        store.resolve(&format!("sha256:{}", &hex[..12])).unwrap().id,
        a.id
    );
    assert_eq!(store.resolve(&hex[..12].to_uppercase()).unwrap().id, a.id);
    assert_eq!(
        store
            .resolve(&format!("busybox@{}", a.manifest_digest))
            .unwrap()
            .id,
        a.id
    );

    let not_found = |s: &str| matches!(store.resolve(s), Err(StoreError::NotFound(_)));
    assert!(not_found("nothere"));
    assert!(not_found("me/tool:2.0"));
    assert!(not_found(&hex[..3]), "prefixes shorter than 4 are not ids");
    assert!(not_found("sha256:zzzz"));
    assert!(not_found(&format!("sha256:{}", "0".repeat(64))));
    let err = store.resolve("Bad/Name").unwrap_err();
    assert!(matches!(err, StoreError::InvalidName { .. }), "{err}");

    // A tag wins over an id prefix (Docker's order).
    let b_prefix = &b.id.trim_start_matches("sha256:")[..8];
    let tag = format!("{b_prefix}:latest");
    store
        .import(
            &layout(tmp.path(), &fixture("a"), None),
            Some(&tag.parse().unwrap()),
        )
        .unwrap();
    assert_eq!(store.resolve(b_prefix).unwrap().id, a.id);
    assert_eq!(
        store.resolve(&format!("sha256:{b_prefix}")).unwrap().id,
        b.id
    );
}

#[test]
fn ambiguous_id_prefixes_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("s")).unwrap();
    // Find two configs whose ids share 4 hex characters (birthday search over labels).
    let mut seen = std::collections::HashMap::new();
    let (x, y) = (0..100_000)
        .find_map(|i| {
            let f = Fixture::new(
                &format!("amb{i}"),
                vec![(small_layer("shared"), Comp::None)],
            );
            let prefix = f.id()[7..11].to_owned();
            seen.insert(prefix, f.clone()).map(|other| (other, f))
        })
        .unwrap();
    let ix = import(&store, tmp.path(), &x, None);
    let iy = import(&store, tmp.path(), &y, None);
    let prefix = &ix.id[7..11];
    let err = store.resolve(prefix).unwrap_err();
    match &err {
        StoreError::Ambiguous(image::store::Ambiguity { matches, .. }) => {
            assert!(matches.contains(&ix.id) && matches.contains(&iy.id));
        }
        other => panic!("expected Ambiguous, got {other}"),
    }
    assert!(err.to_string().contains("ambiguous"));
    assert!(matches!(
        store.remove(prefix, &|_| false),
        Err(StoreError::Ambiguous(_))
    ));
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn remove_untags_then_deletes_and_collects_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("s")).unwrap();
    let fx = fixture("x");
    let fy = fixture("y");
    let x = import(&store, tmp.path(), &fx, Some("docker.io/library/a:1"));
    store
        .import(
            &layout(tmp.path(), &fx, None),
            Some(&"a:2".parse().unwrap()),
        )
        .unwrap();
    let y = import(&store, tmp.path(), &fy, Some("docker.io/library/b:1"));
    store
        .import(
            &layout(tmp.path(), &fy, None),
            Some(&"b:2".parse().unwrap()),
        )
        .unwrap();
    assert_eq!(layer_count(&store), 3, "base layer shared");
    // Configs and manifests, and the imported layer blobs (the base's once).
    assert_eq!(blob_count(&store), 7);

    // One of two names: untag only, without asking whether it is in use.
    let r = store
        .remove("a:1", &|_| panic!("not asked when untagging"))
        .unwrap();
    assert_eq!(
        r,
        Removed {
            untagged: vec!["docker.io/library/a:1".into()],
            deleted: vec![]
        }
    );
    assert_eq!(
        store.resolve(&x.id).unwrap().names,
        ["docker.io/library/a:2"]
    );

    // Last name of an image in use: refused, nothing changes.
    let asked = std::cell::RefCell::new(Vec::new());
    let err = store
        .remove("a:2", &|id| {
            asked.borrow_mut().push(id.to_owned());
            true
        })
        .unwrap_err();
    assert_eq!(*asked.borrow(), std::slice::from_ref(&x.id));
    match &err {
        StoreError::InUse { image, id } => {
            assert_eq!(image, "docker.io/library/a:2");
            assert_eq!(id, &x.id);
        }
        other => panic!("expected InUse, got {other}"),
    }
    assert_eq!(store.resolve("a:2").unwrap().id, x.id);

    // Last name, not in use: image and its own layer go; the shared base stays.
    let r = store.remove("a:2", &|_| false).unwrap();
    assert_eq!(r.untagged, ["docker.io/library/a:2"]);
    assert_eq!(r.deleted, [x.id.clone(), x.layers[1].clone()]);
    assert!(matches!(store.resolve(&x.id), Err(StoreError::NotFound(_))));
    assert_eq!(layer_count(&store), 2);
    assert_eq!(blob_count(&store), 4);
    assert!(store.layer_dirs(&y).unwrap().iter().all(|d| d.is_dir()));

    // By id: every name goes, then the image and all its layers.
    assert!(matches!(
        store.remove(&y.id, &|_| true),
        Err(StoreError::InUse { .. })
    ));
    let r = store.remove(&y.id[..15], &|_| false).unwrap();
    assert_eq!(
        r.untagged,
        ["docker.io/library/b:1", "docker.io/library/b:2"]
    );
    assert_eq!(
        r.deleted,
        [y.id.clone(), y.layers[0].clone(), y.layers[1].clone()]
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(layer_count(&store), 0);
    assert_eq!(blob_count(&store), 0);
    assert!(matches!(
        store.remove("b:1", &|_| false),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(store.layer_dirs(&y), Err(StoreError::NotFound(_))));

    // And it all comes back.
    let again = import(&store, tmp.path(), &fy, Some("docker.io/library/b:1"));
    assert_eq!(again.id, y.id);
    assert_eq!(
        fs::read(store.layer_dirs(&again).unwrap()[1].join("label")).unwrap(),
        b"y"
    );
}

#[test]
fn concurrent_imports_and_removals_stay_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(ImageStore::open(&tmp.path().join("s")).unwrap());
    let fixtures: Vec<Fixture> = (0..4).map(|i| fixture(&format!("c{i}"))).collect();
    let paths: Vec<PathBuf> = fixtures
        .iter()
        .map(|f| {
            layout(
                tmp.path(),
                f,
                Some(&format!("docker.io/library/{}:latest", f.label)),
            )
        })
        .collect();

    // Four imports sharing a base layer, all at once.
    std::thread::scope(|s| {
        for p in &paths {
            let store = Arc::clone(&store);
            s.spawn(move || store.import(p, None).unwrap());
        }
    });
    assert_eq!(store.list().unwrap().len(), 4);
    assert_eq!(layer_count(&store), 5);

    // Removals racing imports of images sharing the same base layer.
    for round in 0..4 {
        std::thread::scope(|s| {
            let st = Arc::clone(&store);
            let victim = fixtures[round % 4].label.clone();
            s.spawn(move || st.remove(&victim, &|_| false).unwrap());
            let st = Arc::clone(&store);
            let p = &paths[(round + 1) % 4];
            s.spawn(move || st.import(p, None).unwrap());
            let st = Arc::clone(&store);
            s.spawn(move || {
                for image in st.list().unwrap() {
                    // Whatever is listed is usable, even mid-removal of something else.
                    if let Ok(dirs) = st.layer_dirs(&image) {
                        assert!(dirs.iter().all(|d| d.is_dir()));
                    }
                }
            });
        });
        let p = &paths[round % 4];
        store.import(p, None).unwrap();
    }
    let images = store.list().unwrap();
    assert_eq!(images.len(), 4);
    for image in &images {
        for dir in store.layer_dirs(image).unwrap() {
            assert!(dir.join("usr/f3").is_file() || dir.join("label").is_file());
        }
    }
    assert_eq!(layer_count(&store), 5);
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn reopen_cleans_leftovers_of_interrupted_work() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s");
    let kept = {
        let store = ImageStore::open(&root).unwrap();
        import(
            &store,
            tmp.path(),
            &fixture("kept"),
            Some("docker.io/library/kept:1"),
        )
    };
    let orphan_hex = "ab".repeat(32);
    // An interrupted ingest and unpack, a half-deleted layer, an unpacked layer whose import
    // never committed, stray entries, an unreferenced blob, and a tag to a missing image.
    fs::write(root.join("tmp/ingest-123-0-0"), b"partial").unwrap();
    fs::create_dir_all(root.join("tmp/unpack-123-1-0/diff/usr/bin")).unwrap();
    fs::write(root.join("tmp/unpack-123-1-0/diff/usr/bin/half"), b"half").unwrap();
    fs::create_dir_all(
        root.join("trash")
            .join(format!("{orphan_hex}-9"))
            .join("diff/etc"),
    )
    .unwrap();
    fs::create_dir_all(root.join("layers").join(&orphan_hex).join("diff/etc")).unwrap();
    fs::write(
        root.join("layers").join(&orphan_hex).join("layer.json"),
        b"{}",
    )
    .unwrap();
    fs::create_dir_all(root.join("layers/not-a-layer")).unwrap();
    fs::write(
        root.join("blobs/sha256").join("cd".repeat(32)),
        b"orphan blob",
    )
    .unwrap();
    fs::write(root.join("blobs/sha256/garbage.tmp"), b"x").unwrap();
    let state_path = root.join("images.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&fs::read(&state_path).unwrap()).unwrap();
    state["tags"]["docker.io/library/ghost:1"] =
        serde_json::json!(format!("sha256:{}", "ef".repeat(32)));
    fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();

    let store = ImageStore::open(&root).unwrap();
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(root.join("trash")).unwrap().count(), 0);
    assert_eq!(layer_count(&store), 2);
    assert!(!root.join("layers").join(&orphan_hex).exists());
    // The image's config, manifest and two layer blobs; the orphan went.
    assert_eq!(blob_count(&store), 4);
    assert!(matches!(
        store.resolve("ghost:1"),
        Err(StoreError::NotFound(_))
    ));
    let img = store.resolve("kept:1").unwrap();
    assert_eq!(img, kept);
    assert_eq!(
        fs::read(store.layer_dirs(&img).unwrap()[1].join("label")).unwrap(),
        b"kept"
    );
    assert_eq!(
        store.config(&img).unwrap().rootfs().diff_ids(),
        &kept.layers
    );
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&state_path).unwrap()).unwrap();
    assert!(
        saved["tags"].get("docker.io/library/ghost:1").is_none(),
        "repair persisted"
    );
}

#[test]
fn crash_between_removal_steps_never_loses_a_listed_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s");
    let (a, b) = {
        let store = ImageStore::open(&root).unwrap();
        let a = import(
            &store,
            tmp.path(),
            &fixture("ra"),
            Some("docker.io/library/ra:1"),
        );
        let b = import(
            &store,
            tmp.path(),
            &fixture("rb"),
            Some("docker.io/library/rb:1"),
        );
        (a, b)
    };
    // Simulate a crash after the metadata write of `remove(a)` but before its layers moved:
    // the metadata no longer lists `a`; its layer directories are still there.
    let state_path = root.join("images.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&fs::read(&state_path).unwrap()).unwrap();
    state["images"].as_object_mut().unwrap().remove(&a.id);
    state["tags"]
        .as_object_mut()
        .unwrap()
        .remove("docker.io/library/ra:1");
    fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    // ...and of a second removal whose layer was already in the trash.
    let trashed = root.join("trash/deadbeef-1");
    fs::create_dir_all(trashed.join("diff")).unwrap();

    let store = ImageStore::open(&root).unwrap();
    assert_eq!(store.list().unwrap(), std::slice::from_ref(&b));
    let dirs = store.layer_dirs(&b).unwrap();
    assert!(
        dirs.iter().all(|d| d.is_dir()),
        "b's layers, including the shared base, remain"
    );
    assert!(
        !root
            .join("layers")
            .join(a.layers[1].trim_start_matches("sha256:"))
            .exists()
    );
    assert!(!trashed.exists());
}

#[test]
fn one_process_per_store_and_corrupt_metadata_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s");
    let store = ImageStore::open(&root).unwrap();
    let err = ImageStore::open(&root).err().unwrap();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    drop(store);
    let store = ImageStore::open(&root).unwrap();
    drop(store);
    fs::write(root.join("images.json"), b"{ truncated").unwrap();
    let err = ImageStore::open(&root).err().unwrap();
    assert!(matches!(err, StoreError::CorruptState { .. }), "{err}");
    assert!(err.to_string().contains("images.json"), "{err}");
}

#[test]
fn duplicated_layers_are_listed_once_at_their_topmost_position() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("s")).unwrap();
    let empty = Layer::new().build();
    let f = Fixture::new(
        "dup",
        vec![
            (empty.clone(), Comp::None),
            (small_layer("mid"), Comp::None),
            (empty, Comp::None),
        ],
    );
    let img = import(&store, tmp.path(), &f, None);
    assert_eq!(img.layers.len(), 3);
    let dirs = store.layer_dirs(&img).unwrap();
    assert_eq!(dirs.len(), 2);
    assert!(
        dirs[0].join("label").is_file(),
        "mid layer first, then the duplicated one"
    );
}

#[test]
fn reimport_repairs_a_damaged_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("s")).unwrap();
    let f = fixture("damaged");
    let img = import(&store, tmp.path(), &f, Some("docker.io/library/damaged:1"));
    let top = store.layer_dirs(&img).unwrap()[1].clone();
    // Damage from outside: the layer lost its info file and a file.
    fs::remove_file(top.parent().unwrap().join("layer.json")).unwrap();
    fs::remove_file(top.join("label")).unwrap();
    let again = import(&store, tmp.path(), &f, None);
    assert_eq!(again.id, img.id);
    assert_eq!(
        fs::read(store.layer_dirs(&again).unwrap()[1].join("label")).unwrap(),
        b"damaged"
    );
}
