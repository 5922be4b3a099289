//! Image import through the daemon in every format users bring.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use common::{Daemon, fixtures};

fn names(d: &Daemon) -> Vec<String> {
    let images: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["images", "--json"])).expect("images JSON");
    let mut names: Vec<String> = images
        .iter()
        .flat_map(|i| i["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[test]
fn imports_docker_archives_oci_layouts_and_oci_archives() {
    let d = Daemon::start();
    let fx = fixtures();
    let path = |name: &str| fx.join(name).to_str().expect("utf-8").to_string();

    let out = d.ok(&["import", &path("busybox-docker.tar")]);
    assert_eq!(out, "Loaded image: busybox:latest\n");
    let out = d.ok(&["import", &path("tool-oci"), "--tag", "me/tool:1.0"]);
    assert_eq!(out, "Loaded image: me/tool:1.0\n");
    d.ok(&["import", &path("busybox-oci.tar")]);
    d.ok(&["import", &path("busybox-zstd-oci")]);
    d.ok(&["import", &path("layered-docker.tar")]);
    assert_eq!(
        names(&d),
        vec![
            "docker.io/flynn-test/busybox-zstd:latest",
            "docker.io/flynn-test/layered:latest",
            "docker.io/library/busybox:latest",
            "docker.io/me/tool:1.0",
        ]
    );
    // The same image through three formats is one image; its layer is unpacked once.
    let images: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["images", "--json"])).unwrap();
    let busybox = images
        .iter()
        .find(|i| i["names"].to_string().contains("library/busybox"))
        .unwrap();
    let tool = images
        .iter()
        .find(|i| i["names"].to_string().contains("me/tool"))
        .unwrap();
    assert_eq!(busybox["id"], tool["id"]);

    let table = d.ok(&["images"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("REPOSITORY") && header.contains("IMAGE ID") && header.contains("SIZE")
    );
    assert!(
        table.contains("me/tool") && table.contains("1.0"),
        "{table}"
    );

    // Every imported image runs, including the zstd one.
    for image in [
        "busybox",
        "me/tool:1.0",
        "flynn-test/busybox-zstd",
        "docker.io/library/busybox:latest",
    ] {
        let out = d.ok(&["run", "--rm", image, "echo", "ok"]);
        assert_eq!(out, "ok\n", "{image}");
    }

    // Import again: same result, nothing duplicated.
    d.ok(&["import", &path("busybox-docker.tar")]);
    assert_eq!(names(&d).len(), 4);

    // An image can be run by its id prefix.
    let id = busybox["id"].as_str().unwrap();
    let out = d.ok(&["run", "--rm", &id[7..19], "echo", "by-id"]);
    assert_eq!(out, "by-id\n");
}

#[test]
fn import_survives_a_daemon_restart() {
    let mut d = Daemon::start();
    d.import_busybox();
    d.kill9();
    d.spawn();
    assert_eq!(names(&d), vec!["docker.io/library/busybox:latest"]);
    assert_eq!(
        d.ok(&["run", "--rm", "busybox", "echo", "again"]),
        "again\n"
    );
}

fn image_json(d: &Daemon, name: &str) -> serde_json::Value {
    let images: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["images", "--json"])).expect("images JSON");
    images
        .into_iter()
        .find(|i| {
            i["names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n.as_str() == Some(name)))
        })
        .unwrap_or_else(|| panic!("{name} is not listed"))
}

/// `save` gives the image as it was imported: another daemon importing the archive
/// holds the same image (id and manifest digest), runs it, and saves it byte for
/// byte alike. What cannot be saved or fetched says why.
#[test]
fn save_hands_an_image_to_another_host_with_its_digests() {
    let a = Daemon::start();
    let b = Daemon::start();
    let fx = fixtures();
    a.ok(&["import", fx.join("busybox-docker.tar").to_str().unwrap()]);
    a.ok(&[
        "import",
        fx.join("tool-oci").to_str().unwrap(),
        "--tag",
        "me/tool:1.0",
    ]);
    let dir = tempfile::tempdir().unwrap();
    for (name, full) in [
        ("busybox", "docker.io/library/busybox:latest"),
        ("me/tool:1.0", "docker.io/me/tool:1.0"),
    ] {
        let file = dir.path().join("saved.tar");
        assert_eq!(a.ok(&["save", name, "-o", file.to_str().unwrap()]), "");
        assert!(!dir.path().join("saved.tar.partial").exists());
        b.ok(&["import", file.to_str().unwrap()]);
        let (ia, ib) = (image_json(&a, full), image_json(&b, full));
        assert_eq!(ia["id"], ib["id"], "{full}");
        assert_eq!(ia["manifest_digest"], ib["manifest_digest"], "{full}");
        // By the manifest digest a release pins, from the second host: the same bytes.
        let pinned = format!("{full}@{}", ib["manifest_digest"].as_str().unwrap());
        let again = dir.path().join("again.tar");
        b.ok(&["save", &pinned, "-o", again.to_str().unwrap()]);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            std::fs::read(&again).unwrap()
        );
    }
    let out = b.ok(&["run", "--rm", "busybox", "echo", "moved"]);
    assert_eq!(out, "moved\n");

    // Unknown image: an error naming it, and no file left behind.
    let missing = dir.path().join("missing.tar");
    let out = a.cli(&["save", "nosuch:1", "-o", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such image"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!missing.exists() && !dir.path().join("missing.tar.partial").exists());
    // A host in no cluster has nobody to fetch from, and says what to do instead.
    let (status, body) = a.http(
        "POST",
        "/images/fetch",
        Some(r#"{"image": "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000"}"#),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("flynn-host import"), "{body}");
    let (status, body) = a.http("POST", "/images/fetch", Some(r#"{"image": 7}"#));
    assert_eq!(status, 400, "{body}");
}
