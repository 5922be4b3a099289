//! Structure-aware fuzzing (proptest, stable Rust) of what the image crate reads from
//! strangers: layer tars and image references. Each property runs `PROPTEST_CASES` cases
//! (256 by default; `scripts/fuzz.sh N` runs more) and prints how many it ran.
//!
//! Layers are built from a small alphabet of names (`a`, `etc`, `..`, `.wh.a`, ...) and
//! link targets (`/`, `/etc`, `../../outside`, ...) so that entries collide, replace one
//! another and go through each other's links, which random bytes would almost never do.
//! They are unpacked in the jail of `common::nest`, one fork for all cases.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::nest::in_jail;
use common::{Layer, Node, sha256, snapshot};
use image::Reference;
use image::unpack::{Expected, UnpackError, unpack_layer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// The suite's config: `PROPTEST_CASES` (default 256), no regression files (the jail has
/// no source tree to write them to; a failure prints the minimal case instead).
fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

/// Tells the log (not the test harness's capture) how many cases a property ran.
fn report(what: &str, cases: u32) {
    let _ = writeln!(std::io::stderr(), "fuzz {what}: {cases} cases passed");
}

#[derive(Clone, Debug)]
enum Entry {
    Dir(String, u32),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
    Hardlink(String, String),
    Fifo(String),
    Device(String),
    LongName(String),
}

fn name() -> impl Strategy<Value = String> {
    let component = prop::sample::select(vec![
        "a",
        "b",
        "etc",
        "passwd",
        "out",
        "..",
        ".",
        "",
        ".wh.a",
        ".wh.etc",
        ".wh..wh..opq",
        ".wh..",
    ]);
    (
        prop::sample::select(vec!["", "/", "./"]),
        prop::collection::vec(component, 1..5),
        any::<bool>(),
    )
        .prop_map(|(lead, parts, slash)| {
            let mut n = format!("{lead}{}", parts.join("/"));
            if slash {
                n.push('/');
            }
            n
        })
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "/",
            "/etc",
            "/etc/passwd",
            "..",
            "../..",
            "../../outside",
            "../../../etc/passwd",
            "a",
            "/a/b",
            "etc/../..",
            "out/a",
            "/outside/secret",
        ])
        .prop_map(str::to_owned),
        name(),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        (name(), prop::sample::select(vec![0o755, 0o700, 0o4777]))
            .prop_map(|(n, m)| Entry::Dir(n, m)),
        (
            name(),
            prop::collection::vec(any::<u8>(), 0..64),
            prop::sample::select(vec![0o644, 0o6755])
        )
            .prop_map(|(n, d, m)| Entry::File(n, d, m)),
        (name(), target()).prop_map(|(n, t)| Entry::Symlink(n, t)),
        (name(), target()).prop_map(|(n, t)| Entry::Hardlink(n, t)),
        name().prop_map(Entry::Fifo),
        name().prop_map(Entry::Device),
        (prop::collection::vec(prop::sample::select(vec!["d", "..", "a", "x"]), 30..80))
            .prop_map(|parts| Entry::LongName(parts.join("/"))),
    ]
}

fn build(entries: &[Entry]) -> Vec<u8> {
    let mut l = Layer::new();
    for e in entries {
        match e {
            Entry::Dir(n, m) => l.dir(n, *m),
            Entry::File(n, d, m) => l.file_full(n.as_bytes(), d, *m, 0, 0),
            Entry::Symlink(n, t) => l.symlink(n, t),
            Entry::Hardlink(n, t) => l.hardlink(n, t),
            Entry::Fifo(n) => l.fifo(n, 0o644),
            Entry::Device(n) => l.char_device(n, 1, 3),
            Entry::LongName(n) => l.file_pax_path(n, b"long"),
        };
    }
    l.build()
}

/// A tree keyed by paths relative to `root`. Times of directories and whiteouts are left
/// out: a directory the tar does not date (the root, implied parents) and a whiteout (a
/// device overlayfs reads no time of) have the time they were written.
fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    snapshot(root, Path::new("/nonexistent"))
        .into_iter()
        .map(|(p, mut n)| {
            let kind = n.mode & libc::S_IFMT;
            if kind == libc::S_IFDIR || (kind == libc::S_IFCHR && n.rdev == 0) {
                n.mtime = 0;
            }
            (p.strip_prefix(root).unwrap().to_owned(), n)
        })
        .collect()
}

fn clear(dir: &str) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir(dir).unwrap();
}

/// Whatever the entries, unpacking never panics, never changes anything outside the
/// layer, creates no device but whiteouts, reports the stream's own digest, and gives the
/// same tree when done twice.
#[test]
fn unpacking_random_hostile_layers() {
    let world = tempfile::tempdir().unwrap();
    let w = world.path();
    fs::create_dir_all(w.join("etc")).unwrap();
    fs::write(w.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::create_dir_all(w.join("outside/sub")).unwrap();
    fs::write(w.join("outside/secret"), b"do not touch").unwrap();
    fs::create_dir(w.join("work")).unwrap();
    let before = snapshot(w, &w.join("work"));
    in_jail(w, || {
        let outside = snapshot(Path::new("/"), Path::new("/work"));
        let mut runner = TestRunner::new(config());
        let cases = std::cell::Cell::new(0u32);
        let result = runner.run(&prop::collection::vec(entry(), 1..12), |entries| {
            cases.set(cases.get() + 1);
            let tar = build(&entries);
            clear("/work/one");
            clear("/work/two");
            let first = unpack_layer(
                &tar[..],
                Path::new("/work/one"),
                "fuzz",
                &Expected::default(),
            );
            prop_assert_eq!(
                &snapshot(Path::new("/"), Path::new("/work")),
                &outside,
                "something outside the layer changed"
            );
            match first {
                Ok(unpacked) => {
                    prop_assert_eq!(unpacked.diff_id.to_string(), sha256(&tar));
                    prop_assert_eq!(unpacked.size, tar.len() as u64);
                    for (path, _) in tree(Path::new("/work/one")) {
                        let m = fs::symlink_metadata(Path::new("/work/one").join(&path)).unwrap();
                        let ft = m.file_type();
                        prop_assert!(
                            !ft.is_block_device() && (!ft.is_char_device() || m.rdev() == 0),
                            "a device node {:?} was created",
                            path
                        );
                    }
                    let second = unpack_layer(
                        &tar[..],
                        Path::new("/work/two"),
                        "fuzz",
                        &Expected::default(),
                    );
                    prop_assert!(second.is_ok(), "second unpack failed: {:?}", second.err());
                    prop_assert_eq!(tree(Path::new("/work/one")), tree(Path::new("/work/two")));
                }
                Err(e) => {
                    prop_assert!(
                        !matches!(e, UnpackError::ThreadPanicked { .. }),
                        "a thread panicked"
                    );
                    prop_assert!(e.is_client_error(), "blamed the host: {}", e);
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        report("layer unpack", cases.get());
    });
    assert_eq!(before, snapshot(w, &w.join("work")), "the world changed");
}

/// Random bytes, raw or after a valid tar header, are refused cleanly.
#[test]
fn unpacking_random_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let world = dir.path();
    fs::create_dir(world.join("work")).unwrap();
    in_jail(world, || {
        let mut runner = TestRunner::new(config());
        let cases = std::cell::Cell::new(0u32);
        let header = Layer::new().file("a", b"x").build();
        let result = runner.run(
            &(
                prop::collection::vec(any::<u8>(), 0..2048),
                0usize..1024,
                any::<bool>(),
            ),
            |(bytes, cut, prefixed)| {
                cases.set(cases.get() + 1);
                let mut blob = if prefixed {
                    header[..cut.min(header.len())].to_vec()
                } else {
                    Vec::new()
                };
                blob.extend_from_slice(&bytes);
                clear("/work/one");
                let r = unpack_layer(
                    &blob[..],
                    Path::new("/work/one"),
                    "fuzz",
                    &Expected::default(),
                );
                if let Err(e) = r {
                    let panicked = matches!(e, UnpackError::ThreadPanicked { .. });
                    prop_assert!(!panicked, "a thread panicked");
                }
                Ok(())
            },
        );
        if let Err(e) = result {
            panic!("{e}");
        }
        report("layer bytes", cases.get());
    });
}

fn path_component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}([._-][a-z0-9]{1,4}){0,2}"
}

fn reference_text() -> impl Strategy<Value = String> {
    let domain = prop_oneof![
        Just(String::new()),
        Just("localhost/".to_owned()),
        Just("localhost:5000/".to_owned()),
        Just("docker.io/".to_owned()),
        Just("index.docker.io/".to_owned()),
        Just("127.0.0.1:5000/".to_owned()),
        Just("[::1]:5000/".to_owned()),
        "[a-z]([a-z0-9-]{0,6}[a-z0-9])?\\.[a-z]{2,4}(:[0-9]{1,5})?/",
    ];
    let tag = prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}".prop_map(|t| format!(":{t}")),
    ];
    let digest = prop_oneof![
        Just(String::new()),
        "[0-9a-f]{64}".prop_map(|h| format!("@sha256:{h}")),
    ];
    (
        domain,
        prop::collection::vec(path_component(), 1..4),
        tag,
        digest,
    )
        .prop_map(|(d, mut p, t, g)| {
            // Without a domain, a first component with a dot would be read as one (Docker's
            // rule), and these are no valid host names.
            if d.is_empty() && p.len() > 1 {
                p[0] = p[0].replace('.', "-");
            }
            format!("{d}{}{t}{g}", p.join("/"))
        })
}

/// Valid references parse, print back to a reference that parses to the same value, and
/// their short form does too; any string either parses or gives an error (no panic).
#[test]
fn image_references() {
    let mut runner = TestRunner::new(config());
    let cases = std::cell::Cell::new(0u32);
    let result = runner.run(&reference_text(), |text| {
        cases.set(cases.get() + 1);
        let r: Reference = text
            .parse()
            .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let again: Reference = r.to_string().parse().unwrap();
        prop_assert_eq!(&again, &r);
        let short: Reference = r.familiar().parse().unwrap();
        prop_assert_eq!(&short, &r);
        prop_assert!(r.tag().is_some() || r.digest().is_some());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    report("image references (valid)", cases.get());

    let cases = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(config());
    let any_text = prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9:/@._\\-\\[\\]]{0,80}",
        reference_text().prop_map(|t| t.replace('/', "//")),
    ];
    let result = runner.run(&any_text, |text| {
        cases.set(cases.get() + 1);
        if let Ok(r) = text.parse::<Reference>() {
            let again: Reference = r.to_string().parse().unwrap();
            prop_assert_eq!(&again, &r);
            prop_assert!(r.repository().len() <= 255 + 255);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    report("image references (any text)", cases.get());
}
