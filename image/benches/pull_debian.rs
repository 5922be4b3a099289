//! Pull + unpack of a ~250 MB Debian image (debootstrap, one gzip layer) from a local
//! registry (Debian's `docker-registry` on 127.0.0.1, the image pushed with skopeo),
//! through `Puller::pull` into a fresh store, against anchors measured in the same run on
//! the same disk: `skopeo copy docker://… oci:…` followed by `umoci unpack` (what a
//! pull is without us), and `tar -xzf` of the same layer blob from a local file (alone,
//! and followed by `sync -f`, since the store flushes a layer before it is visible).
//! Prints medians and ratios; asserts nothing.
//!
//! `cargo bench -p flynn-image --bench pull_debian` (root; builds the fixture with
//! fixtures/build-debian.sh the first time, which needs Debian's archive).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{ROUNDS, debian_fixture, median, run};

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &Path) -> (Registry, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("registry").display()
        ),
    )
    .expect("registry config");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (apt-get install docker-registry)");
    let registry = Registry(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "the registry did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (registry, addr)
}

fn main() {
    let (layout, blob) = debian_fixture();
    let blob_mb = std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let work = tempfile::Builder::new()
        .prefix("flynn-pull-bench-")
        .tempdir_in("/var/tmp")
        .expect("work dir");
    let (_registry, addr) = start_registry(work.path());
    let image = format!("{addr}/bench/debian:bookworm");
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:bookworm", layout.display()))
        .arg(format!("docker://{image}")));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let (mut ours, mut skopeo_umoci, mut tar, mut tar_sync) = (vec![], vec![], vec![], vec![]);
    let mut unpacked_mb = 0.0;
    for round in 0..ROUNDS {
        let dir = |name: &str| work.path().join(format!("{name}-{round}"));
        let mut measure = |which: usize| {
            run(&mut Command::new("sync"));
            let start = Instant::now();
            match which {
                0 => {
                    let store = Arc::new(image::ImageStore::open(&dir("store")).expect("store"));
                    let puller =
                        image::Puller::new(store, image::registry::RegistryConfig::default(), None);
                    let request = image::PullRequest {
                        reference: image.parse().expect("reference"),
                        platform: None,
                        credentials: None,
                    };
                    let pulled = runtime
                        .block_on(puller.pull(&request, Arc::new(|_| {})))
                        .expect("pull");
                    ours.push(start.elapsed());
                    unpacked_mb = pulled.image.size as f64 / 1e6;
                }
                1 => {
                    let oci = dir("skopeo");
                    run(Command::new("skopeo")
                        .args(["copy", "-q", "--src-tls-verify=false"])
                        .arg(format!("docker://{image}"))
                        .arg(format!("oci:{}:bookworm", oci.display())));
                    run(Command::new("umoci")
                        .args(["unpack", "--image"])
                        .arg(format!("{}:bookworm", oci.display()))
                        .arg(dir("umoci"))
                        .stdout(Stdio::null()));
                    skopeo_umoci.push(start.elapsed());
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
    let (o, s, t, ts) = (
        median(ours),
        median(skopeo_umoci),
        median(tar),
        median(tar_sync),
    );
    println!(
        "pull + unpack of a Debian image from a local registry ({blob_mb:.0} MB gzip layer, \
         {unpacked_mb:.0} MB unpacked), median of {ROUNDS}:"
    );
    println!("  flynn Puller::pull         : {:8.3} s", o.as_secs_f64());
    println!(
        "  skopeo copy + umoci unpack : {:8.3} s   speed-up {:.2}x (target >= 2.5x)",
        s.as_secs_f64(),
        s.as_secs_f64() / o.as_secs_f64()
    );
    println!(
        "  tar -xzf (local file)      : {:8.3} s   ratio flynn/tar      {:.2} (target <= 1)",
        t.as_secs_f64(),
        o.as_secs_f64() / t.as_secs_f64()
    );
    println!(
        "  tar -xzf + sync -f         : {:8.3} s   ratio flynn/tar+sync {:.2}",
        ts.as_secs_f64(),
        o.as_secs_f64() / ts.as_secs_f64()
    );
}
