//! The offline assembler is reproducible: two builds from the same inputs and
//! SOURCE_DATE_EPOCH, in different directories at different times, give
//! byte-identical kernels, initramfs, ISO, raw disk and qcow2.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::path::Path;
use std::process::Command;

use qemu_tests::workspace_root;

fn assemble(out: &Path) {
    let status = Command::new("bash")
        .arg(workspace_root().join("buildroot/assemble.sh"))
        .arg(out)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .status()
        .expect("running buildroot/assemble.sh");
    assert!(status.success(), "assemble.sh failed: {status}");
}

#[test]
fn two_builds_are_byte_identical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    assemble(a.path());
    // A second later: any wall-clock time that leaks in would show.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assemble(b.path());
    let sums_a = std::fs::read_to_string(a.path().join("SHA256SUMS")).unwrap();
    let sums_b = std::fs::read_to_string(b.path().join("SHA256SUMS")).unwrap();
    assert_eq!(sums_a, sums_b, "the builds differ");
    for ext in ["vmlinuz", "initramfs", "iso", "raw", "qcow2"] {
        let name = format!("flynn-x86_64.{ext}");
        assert!(sums_a.contains(&name), "{name} not in SHA256SUMS");
        let (x, y) = (
            std::fs::read(a.path().join(&name)).unwrap(),
            std::fs::read(b.path().join(&name)).unwrap(),
        );
        assert!(x == y, "{name} differs between the two builds");
    }
    let iso = std::fs::metadata(a.path().join("flynn-x86_64.iso"))
        .unwrap()
        .len();
    // A guard against accidental growth (a second copy of the binary, an
    // uncompressed segment), not a budget for features: with Layer 1 (controller,
    // router, log aggregator, scheduler) in the one binary the ISO reached 40 MiB.
    // Fat LTO with one codegen unit takes the binary from 37 to 30 MB (3 MB less
    // in the ISO) but costs about ten minutes a link on two cores, three links a
    // build; see ARCHITECTURE.md, Decisions.
    assert!(iso < 48 << 20, "the ISO is {iso} bytes, over 48 MiB");
}
