//! Import + unpack of a ~250 MB Debian image (debootstrap, one gzip layer) through
//! `ImageStore::import`, against the anchors measured in the same run on the same
//! disk: `umoci unpack` of the same OCI layout, and `tar -xzf` of the same layer blob
//! (alone, and followed by `sync -f`, since the store flushes a layer before it is
//! visible). Prints medians and ratios; asserts nothing.
//!
//! `cargo bench -p flynn-image --bench import_debian` (root; builds the fixture with
//! fixtures/build-debian.sh the first time, which needs Debian's archive).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::process::Command;
use std::time::Instant;

mod common;

use common::{ROUNDS, debian_fixture, median, run};

fn main() {
    let (layout, blob) = debian_fixture();
    let work = tempfile::Builder::new()
        .prefix("flynn-import-bench-")
        .tempdir_in("/var/tmp")
        .expect("work dir");
    let blob_mb = std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;

    let (mut ours, mut umoci, mut tar, mut tar_sync) = (vec![], vec![], vec![], vec![]);
    let mut unpacked_mb = 0.0;
    for round in 0..ROUNDS {
        let dir = |name: &str| work.path().join(format!("{name}-{round}"));
        let mut measure = |which: usize| {
            run(&mut Command::new("sync"));
            let start = Instant::now();
            match which {
                0 => {
                    let store = image::ImageStore::open(&dir("store")).expect("store");
                    let images = store.import(&layout, None).expect("import");
                    ours.push(start.elapsed());
                    unpacked_mb = images[0].size as f64 / 1e6;
                }
                1 => {
                    run(Command::new("umoci")
                        .args(["unpack", "--image"])
                        .arg(format!("{}:bookworm", layout.display()))
                        .arg(dir("umoci"))
                        .stdout(std::process::Stdio::null()));
                    umoci.push(start.elapsed());
                }
                2 => {
                    std::fs::create_dir_all(dir("tar")).expect("tar dir");
                    run(Command::new("tar")
                        .arg("-xzf")
                        .arg(&blob)
                        .arg("-C")
                        .arg(dir("tar")));
                    tar.push(start.elapsed());
                }
                _ => {
                    std::fs::create_dir_all(dir("tarsync")).expect("tar dir");
                    run(Command::new("tar")
                        .arg("-xzf")
                        .arg(&blob)
                        .arg("-C")
                        .arg(dir("tarsync")));
                    run(Command::new("sync").arg("-f").arg(dir("tarsync")));
                    tar_sync.push(start.elapsed());
                }
            }
        };
        // Rotate the order so no tool always runs first (or last) in a round.
        for i in 0..4 {
            measure((i + round) % 4);
        }
    }
    let (o, u, t, ts) = (median(ours), median(umoci), median(tar), median(tar_sync));
    println!(
        "import + unpack of a Debian image ({blob_mb:.0} MB gzip layer, {unpacked_mb:.0} MB unpacked), median of {ROUNDS}:"
    );
    println!("  flynn ImageStore::import : {:8.3} s", o.as_secs_f64());
    println!(
        "  umoci unpack             : {:8.3} s   ratio flynn/umoci   {:.2} (speed-up {:.2}x)",
        u.as_secs_f64(),
        o.as_secs_f64() / u.as_secs_f64(),
        u.as_secs_f64() / o.as_secs_f64()
    );
    println!(
        "  tar -xzf                 : {:8.3} s   ratio flynn/tar     {:.2} (target <= 1)",
        t.as_secs_f64(),
        o.as_secs_f64() / t.as_secs_f64()
    );
    println!(
        "  tar -xzf + sync -f       : {:8.3} s   ratio flynn/tar+sync {:.2}",
        ts.as_secs_f64(),
        o.as_secs_f64() / ts.as_secs_f64()
    );
}
