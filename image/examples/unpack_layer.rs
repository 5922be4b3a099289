//! Unpacks one layer blob (tar, tar.gz or tar.zst) into a new directory, printing its
//! digests: `cargo run --release -p flynn-image --example unpack_layer -- BLOB DEST`.
//! Handy for timing against `tar -xf` and for looking at what a layer produces.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::path::PathBuf;
use std::time::Instant;

use image::unpack::{Expected, unpack_layer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(blob), Some(dest)) = (args.next(), args.next()) else {
        return Err("usage: unpack_layer BLOB DEST".into());
    };
    let dest = PathBuf::from(dest);
    std::fs::create_dir(&dest)?;
    let started = Instant::now();
    let unpacked = unpack_layer(
        std::fs::File::open(blob)?,
        &dest,
        "cli",
        &Expected::default(),
    )?;
    println!(
        "{:?} blob {} ({} bytes), diff id {} ({} bytes), in {:.3?}",
        unpacked.compression,
        unpacked.compressed,
        unpacked.compressed_size,
        unpacked.diff_id,
        unpacked.size,
        started.elapsed()
    );
    Ok(())
}
