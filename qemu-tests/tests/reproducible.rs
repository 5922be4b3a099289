//! The offline assembler is reproducible: two builds from the same inputs and
//! SOURCE_DATE_EPOCH, in different directories at different times, give
//! byte-identical kernels, initramfs, ISO, raw disk and qcow2 (their SHA256SUMS agree).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use qemu_tests::workspace_root;

/// The epoch both builds use: the one `scripts/test.sh` assembled `out/` with, or a
/// fixed one.
fn epoch() -> String {
    std::env::var("SOURCE_DATE_EPOCH").unwrap_or_else(|_| "1700000000".to_owned())
}

fn assemble(out: &Path) {
    let status = Command::new("bash")
        .arg(workspace_root().join("buildroot/assemble.sh"))
        .arg(out)
        .env("SOURCE_DATE_EPOCH", epoch())
        .status()
        .expect("running buildroot/assemble.sh");
    assert!(status.success(), "assemble.sh failed: {status}");
}

/// The first build: `FLYNN_REPRO_BASELINE` names one made from the same inputs and
/// `SOURCE_DATE_EPOCH` (`scripts/test.sh` passes the `out/` it has just assembled, which
/// saves an assembly), else one made here.
fn first_build(scratch: &Path) -> PathBuf {
    match std::env::var_os("FLYNN_REPRO_BASELINE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            assemble(scratch);
            // A second passes before the other build: any wall-clock time that leaks in
            // would show.
            std::thread::sleep(std::time::Duration::from_millis(1100));
            scratch.to_owned()
        }
    }
}

#[test]
fn two_builds_are_byte_identical() {
    let scratch = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let a = first_build(scratch.path());
    assemble(b.path());
    // The sums were taken as each build was written: tests that have booted `out/`'s
    // images since cannot blur the comparison.
    let sums_a = std::fs::read_to_string(a.join("SHA256SUMS")).unwrap();
    let sums_b = std::fs::read_to_string(b.path().join("SHA256SUMS")).unwrap();
    assert_eq!(
        sums_a,
        sums_b,
        "the builds differ ({a:?} and {:?})",
        b.path()
    );
    for ext in ["vmlinuz", "initramfs", "iso", "raw", "qcow2"] {
        let name = format!("flynn-x86_64.{ext}");
        assert!(sums_a.contains(&name), "{name} not in SHA256SUMS");
    }
    let iso = std::fs::metadata(a.join("flynn-x86_64.iso")).unwrap().len();
    // A guard against accidental growth (a second copy of the binary, an
    // uncompressed segment), not a budget for features: with Layer 1 (controller,
    // router, log aggregator, scheduler) in the one binary the ISO reached 40 MiB.
    // Fat LTO with one codegen unit takes the binary from 37 to 30 MB (3 MB less
    // in the ISO) but costs about ten minutes a link on two cores, three links a
    // build; see ARCHITECTURE.md, Decisions.
    assert!(iso < 48 << 20, "the ISO is {iso} bytes, over 48 MiB");
}
