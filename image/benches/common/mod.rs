//! What the Debian-image benches share: the fixture, the layer blob inside it,
//! running the anchors' commands, medians.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const ROUNDS: usize = 3;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// The Debian OCI layout (built by fixtures/build-debian.sh when missing or
/// stale) and its one layer blob.
pub fn debian_fixture() -> (PathBuf, PathBuf) {
    let fixtures = std::env::var_os("FLYNN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/fixtures"));
    run(Command::new("bash")
        .arg(workspace().join("fixtures/build-debian.sh"))
        .arg(&fixtures));
    let layout = fixtures.join("debian-oci");
    let blob = layer_blob(&layout);
    (layout, blob)
}

fn layer_blob(layout: &Path) -> PathBuf {
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .expect("JSON")
    };
    let blob = |digest: &str| layout.join("blobs/sha256").join(&digest[7..]);
    let index = read(layout.join("index.json"));
    let manifest = read(blob(
        index["manifests"][0]["digest"].as_str().expect("manifest"),
    ));
    blob(manifest["layers"][0]["digest"].as_str().expect("layer"))
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
