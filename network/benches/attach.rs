//! Attach/detach latency, in a network namespace of its own (never the host's).
//!
//! `cargo bench -p flynn-network --bench attach` (root). The anchor is what a job with no
//! network (`--network none`) costs anyway: a new network namespace made the same way
//! (a thread unshares and bind-mounts it) and removed. "Added" is attach minus that.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::fs;
use std::path::Path;
use std::time::Instant;

use network::{HostNetwork, NetworkConfig, PortMapping};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

const ROUNDS: usize = 200;

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

/// A bare namespace file: what a job without a network needs anyway.
fn bare_netns(path: &Path) {
    let path = path.to_owned();
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).unwrap();
        fs::File::create(&path).unwrap();
        mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    })
    .join()
    .unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("flynn-net-bench")
        .tempdir()
        .unwrap();
    let root = dir.path().to_owned();
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(&root));
        // The namespace directory's own mount.
        let _ = umount2(&root.join("netns"), MntFlags::MNT_DETACH);
    })
    .join()
    .unwrap();
}

async fn run(root: &Path) {
    let cfg = NetworkConfig {
        state_dir: root.join("state"),
        netns_dir: root.join("netns"),
        ..NetworkConfig::default()
    };
    let net = HostNetwork::open(cfg.clone(), &[]).await.unwrap();
    let ports: Vec<PortMapping> = vec!["8080:80".parse().unwrap()];

    let mut bare = Vec::new();
    let mut bare_rm = Vec::new();
    let mut plain = (Vec::new(), Vec::new());
    let mut with_ports = (Vec::new(), Vec::new());
    // Warm up (first namespace, first rule batch).
    for i in 0..5 {
        let id = format!("warm{i}");
        net.attach(&id, &ports).await.unwrap();
        net.detach(&id).await.unwrap();
    }
    for i in 0..ROUNDS {
        // Alternate the three so that drift in the machine's load hits them alike.
        let path = cfg.netns_dir.join(format!("bare{i}"));
        let t = Instant::now();
        bare_netns(&path);
        bare.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        umount2(&path, MntFlags::MNT_DETACH).unwrap();
        fs::remove_file(&path).unwrap();
        bare_rm.push(t.elapsed().as_secs_f64() * 1e3);

        for (p, acc) in [(&[][..], &mut plain), (&ports[..], &mut with_ports)] {
            let id = format!("{i:032x}");
            let t = Instant::now();
            net.attach(&id, p).await.unwrap();
            acc.0.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            net.detach(&id).await.unwrap();
            acc.1.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (b, b90) = stats(bare);
    let (br, _) = stats(bare_rm);
    println!("{ROUNDS} rounds; milliseconds, median (p90)");
    println!("anchor: bare netns (--network none)   create {b:.2} ({b90:.2})   remove {br:.2}");
    for (what, (a, d)) in [
        ("attach, no ports", plain),
        ("attach, 1 port  ", with_ports),
    ] {
        let (a, a90) = stats(a);
        let (d, d90) = stats(d);
        println!(
            "{what}: {a:.2} ({a90:.2})   added over anchor {:.2}   ratio {:.2}x   detach {d:.2} ({d90:.2})",
            a - b,
            a / b
        );
    }
    net.destroy().await.unwrap();
}
