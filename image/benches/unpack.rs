//! Unpack speed against GNU tar, the anchor: `tar -xzf` of the same gzip layer.
//!
//! Builds a gzip layer from about `FLYNN_BENCH_MB` (default 250) MB of files sampled across
//! `FLYNN_BENCH_SRC` (default /usr), then times, alternately, `tar -xzf` (and `tar -xzf`
//! followed by `sync -f`, since our unpack flushes the layer to disk) and `unpack_layer`.
//! Extracts into /dev/shm (tmpfs: the pipeline alone) and /var/tmp (disk), or the
//! `:`-separated `FLYNN_BENCH_DIRS`. Run with `cargo bench -p flynn-image --bench unpack`.
//! Needs root (ownership, whiteouts).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use image::unpack::{Expected, unpack_layer};

const ROUNDS: usize = 4;

fn walk(dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let is_dir = meta.is_dir();
        out.push((path.clone(), meta));
        if is_dir {
            walk(&path, out);
        }
    }
}

fn build_layer(src: &Path, limit: u64, dest: &Path) {
    let mut all = Vec::new();
    walk(src, &mut all);
    let total: u64 = all
        .iter()
        .filter(|(_, m)| m.is_file())
        .map(|(_, m)| m.len())
        .sum();
    // Keep every k-th file so the sample spans the tree (small and large files alike).
    let keep_every = (total / limit.max(1)).max(1) as usize;
    let file = fs::File::create(dest).unwrap();
    let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    builder.follow_symlinks(false);
    let (mut bytes, mut files, mut nth) = (0u64, 0usize, 0usize);
    for (path, meta) in &all {
        let name = path.strip_prefix(src).unwrap();
        if meta.is_file() {
            nth += 1;
            if nth % keep_every != 0 || bytes >= limit {
                continue;
            }
            bytes += meta.len();
            files += 1;
        } else if !(meta.is_dir() || meta.file_type().is_symlink()) {
            continue;
        }
        if builder.append_path_with_name(path, name).is_err() {
            continue;
        }
    }
    let gz = builder.into_inner().unwrap();
    gz.finish().unwrap().flush().unwrap();
    println!("sampled {files} files, {} MB", bytes >> 20);
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run command");
    assert!(status.success(), "{cmd:?} failed");
}

fn fresh(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    // Removal leaves dirty metadata; flush it so it does not land in the next timing.
    run(Command::new("sync").arg("-f").arg(dir));
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Times both extractions into `base`, alternating, and prints the ratios.
fn compare(layer: &Path, base: &Path, bytes: u64) {
    let dest = base.join("flynn-unpack-bench-dest");
    let (mut tar_plain, mut tar_sync, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    let run_tar = |tar_plain: &mut Vec<Duration>, tar_sync: &mut Vec<Duration>| {
        fresh(&dest);
        let t = Instant::now();
        run(Command::new("tar")
            .arg("-xzf")
            .arg(layer)
            .arg("-C")
            .arg(&dest));
        tar_plain.push(t.elapsed());
        run(Command::new("sync").arg("-f").arg(&dest));
        tar_sync.push(t.elapsed());
    };
    let run_ours = |ours: &mut Vec<Duration>| {
        fresh(&dest);
        let t = Instant::now();
        let blob = fs::File::open(layer).unwrap();
        let unpacked = unpack_layer(blob, &dest, "bench", &Expected::default()).unwrap();
        ours.push(t.elapsed());
        assert!(unpacked.size > bytes);
    };
    // Alternate which goes first: on a VM the disk and page cache drift between runs.
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            run_tar(&mut tar_plain, &mut tar_sync);
            run_ours(&mut ours);
        } else {
            run_ours(&mut ours);
            run_tar(&mut tar_plain, &mut tar_sync);
        }
    }
    let _ = fs::remove_dir_all(&dest);
    let (a, b, c) = (median(&tar_plain), median(&tar_sync), median(&ours));
    println!("into {} (median of {ROUNDS}):", base.display());
    println!("  tar -xzf:              {a:>9.3?}  (rounds: {tar_plain:.3?})");
    println!("  tar -xzf && sync -f:   {b:>9.3?}  (rounds: {tar_sync:.3?})");
    println!("  unpack_layer (syncfs): {c:>9.3?}  (rounds: {ours:.3?})");
    println!(
        "  ratio unpack_layer / tar -xzf = {:.2}; / (tar -xzf && sync -f) = {:.2}",
        c.as_secs_f64() / a.as_secs_f64(),
        c.as_secs_f64() / b.as_secs_f64()
    );
}

fn main() {
    let src = PathBuf::from(std::env::var("FLYNN_BENCH_SRC").unwrap_or_else(|_| "/usr".into()));
    let mb: u64 = std::env::var("FLYNN_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    // The layer is kept between runs (building it takes longer than the benchmark).
    let tag: String = src
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let layer = PathBuf::from(format!("/var/tmp/flynn-unpack-bench{tag}-{mb}mb.tar.gz"));
    if !layer.exists() {
        let partial = layer.with_extension("partial");
        let t = Instant::now();
        build_layer(&src, mb << 20, &partial);
        fs::rename(&partial, &layer).unwrap();
        println!("built {} in {:.1?}", layer.display(), t.elapsed());
    }
    // Uncompressed file bytes, for the sanity check on the result.
    let bytes = {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
            fs::File::open(&layer).unwrap(),
        ));
        let (mut bytes, mut files) = (0u64, 0usize);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            if entry.header().entry_type().is_file() {
                bytes += entry.size();
                files += 1;
            }
        }
        println!(
            "layer: {files} files, {} MB of file data, {} MB gzip",
            bytes >> 20,
            fs::metadata(&layer).unwrap().len() >> 20
        );
        bytes
    };
    let dirs: Vec<PathBuf> = match std::env::var("FLYNN_BENCH_DIRS") {
        Ok(v) => v.split(':').map(PathBuf::from).collect(),
        Err(_) => vec![PathBuf::from("/dev/shm"), PathBuf::from("/var/tmp")],
    };
    for dir in dirs {
        compare(&layer, &dir, bytes);
    }
}
