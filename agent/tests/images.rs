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
