//! The breakout corpus: layers crafted to make an unpacker write, link, truncate, chmod or
//! delete outside its destination. It covers the cases of containerd's archive breakout
//! tests (symlinks absolute, relative and chained; hardlinks through symlinks and to
//! symlinks; symlinks and directories replacing each other; whiteouts naming `.`, `..`,
//! symlinks and dangling parents) plus our own (`..` in names and long names, devices,
//! opaque markers through links, duplicate entries, link loops).
//!
//! Each case runs in a jail (`common::nest`): a forked child in its own mount namespace,
//! chrooted into a temporary "world" that holds decoys where an escape would land
//! (`/etc/passwd`, `/outside/secret`) and the layer destination `/layer`. So a broken
//! unpacker damages the world, never the host; the test then finds the damage by comparing
//! the world (without `/layer`) before and after. Inside the jail, the case checks what the
//! layer holds: escapes are either refused with an error or land inside `/layer`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::nest::in_jail;
use common::{Layer, get_xattr, snapshot};
use image::unpack::{Expected, UnpackError, Unpacked, unpack_layer};

const LAYER: &str = "/layer";
const HOST_PASSWD: &[u8] = b"root:x:0:0:host:/root:/bin/sh\n";

/// A world with decoys, the layer destination, and the snapshot of everything but it.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::create_dir_all(p.join("etc")).unwrap();
        fs::write(p.join("etc/passwd"), HOST_PASSWD).unwrap();
        fs::write(p.join("etc/whitedout"), b"host file").unwrap();
        fs::write(p.join("etc/perm400"), b"...").unwrap();
        fs::set_permissions(p.join("etc/perm400"), fs::Permissions::from_mode(0o400)).unwrap();
        fs::write(p.join("etc/also-exists"), b"...").unwrap();
        fs::create_dir_all(p.join("outside/sub")).unwrap();
        fs::write(p.join("outside/secret"), b"do not touch").unwrap();
        fs::write(p.join("outside/sub/file"), b"keep").unwrap();
        fs::create_dir(p.join("layer")).unwrap();
        World { dir }
    }
}

/// Unpacks `tar` into `/layer` inside the jail, runs `check` there on the result, and
/// requires the world outside `/layer` unchanged.
fn breakout(tar: Vec<u8>, check: impl FnOnce(Result<Unpacked, UnpackError>) + Send) {
    let world = World::new();
    let layer = world.dir.path().join("layer");
    let before = snapshot(world.dir.path(), &layer);
    in_jail(world.dir.path(), || {
        let result = unpack_layer(&tar[..], Path::new(LAYER), "breakout", &Expected::default());
        check(result);
    });
    let after = snapshot(world.dir.path(), &layer);
    assert_eq!(before, after, "something outside the layer changed");
}

// Checks, run inside the jail; paths are relative to the layer.

fn at(rel: &str) -> String {
    format!("{LAYER}/{rel}")
}

fn read(rel: &str) -> Vec<u8> {
    fs::read(at(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn absent(rel: &str) -> bool {
    fs::symlink_metadata(at(rel)).is_err()
}

fn is_symlink(rel: &str) -> bool {
    fs::symlink_metadata(at(rel))
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

fn is_whiteout(rel: &str) -> bool {
    fs::symlink_metadata(at(rel))
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// The same inode (a hardlink), looked at without following the last component.
fn same_inode(a: &str, b: &str) -> bool {
    let (a, b) = (
        fs::symlink_metadata(at(a)).unwrap(),
        fs::symlink_metadata(at(b)).unwrap(),
    );
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

fn refused(result: Result<Unpacked, UnpackError>) -> UnpackError {
    match result {
        Ok(_) => panic!("the layer was accepted; it must be refused"),
        Err(e) => e,
    }
}

// Symlinks that point out, followed by writes through them.

#[test]
fn absolute_symlink_to_etc_then_a_file_through_it() {
    let tar = Layer::new()
        .dir("etc", 0o755)
        .symlink("localetc", "/etc")
        .file("/localetc/unbroken", b"unbroken")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert_eq!(read("etc/unbroken"), b"unbroken");
    });
}

#[test]
fn absolute_symlink_with_dotdot_inside_its_target() {
    let tar = Layer::new()
        .dir("etc", 0o755)
        .dir("dummy", 0o755)
        .symlink("localetc", "/dummy/../etc")
        .file("/localetc/unbroken", b"unbroken")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert_eq!(read("etc/unbroken"), b"unbroken");
    });
}

#[test]
fn chain_of_absolute_symlinks() {
    let tar = Layer::new()
        .dir("etc", 0o755)
        .dir("dummy", 0o755)
        .symlink("/dummy/etc", "/etc")
        .symlink("localetc", "/dummy/etc")
        .file("/dummy/etc/unbroken", b"unbroken")
        .file("localetc/also", b"also")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert_eq!(read("etc/unbroken"), b"unbroken");
        assert_eq!(read("etc/also"), b"also");
    });
}

#[test]
fn relative_symlink_into_an_absolute_one() {
    let tar = Layer::new()
        .dir("etc", 0o755)
        .dir("dummy", 0o755)
        .symlink("/dummy/etc", "/etc")
        .symlink("localetc", "./dummy/etc")
        .file("localetc/unbroken", b"unbroken")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert_eq!(read("etc/unbroken"), b"unbroken");
    });
}

#[test]
fn an_empty_file_through_a_symlink_truncates_only_the_layers_copy() {
    let tar = Layer::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"layer passwd")
        .symlink("localetc", "/etc")
        .file("/localetc/passwd", b"")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert_eq!(read("etc/passwd"), b"");
    });
}

#[test]
fn relative_symlinks_climbing_far_above_the_root() {
    let tar = Layer::new()
        .dir("home/derek", 0o700)
        .symlink("home/derek/etc", "../../../../../../etc")
        .symlink("home/derek/updown", "up/../../../../other")
        .symlink("breakout", "../../outside")
        .file("home/derek/etc/passwd", b"layer")
        .file("breakout/secret", b"pwned")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        // The links themselves are kept as written (the container resolves them inside its
        // own root); only what went through them is placed, inside the layer.
        assert!(is_symlink("home/derek/etc"));
        assert!(is_symlink("home/derek/updown"));
        assert_eq!(read("etc/passwd"), b"layer");
        assert_eq!(read("outside/secret"), b"pwned");
    });
}

#[test]
fn symlink_into_a_subdirectory_that_climbs_out() {
    let tar = Layer::new()
        .dir("etc", 0o755)
        .dir("home/derek", 0o755)
        .symlink("breakout", "etc/../../upandout")
        .symlink("home/breakout", "derek/../../../downandout")
        .file("breakout/f", b"1")
        .file("home/breakout/g", b"2")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert_eq!(read("upandout/f"), b"1");
        assert_eq!(read("downandout/g"), b"2");
    });
}

#[test]
fn directory_entry_through_a_symlink_to_the_outside() {
    let tar = Layer::new()
        .symlink("out", "/outside")
        .dir("out/newdir", 0o777)
        .dir_owned("out/sub", 0o700, 4321, 4321)
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(fs::metadata(at("outside/newdir")).unwrap().is_dir());
        assert_eq!(fs::metadata(at("outside/sub")).unwrap().uid(), 4321);
    });
}

#[test]
fn dangling_symlink_as_a_parent_is_created_inside() {
    let tar = Layer::new()
        .symlink("dne-link", "/no/such/dir")
        .file("dne-link/file", b"x")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert_eq!(read("no/such/dir/file"), b"x");
    });
}

// Hardlinks whose target is reached through symlinks or climbs out.

#[test]
fn hardlink_through_a_relative_symlink_that_climbs_out() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .dir("breakouts", 0o755)
        .symlink("breakouts/d1", "../../etc")
        .hardlink("breakouts/mypasswd", "/breakouts/d1/passwd")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(same_inode("breakouts/mypasswd", "etc/passwd"));
    });
}

#[test]
fn hardlink_through_a_symlink_going_down_then_out() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .dir("breakouts", 0o755)
        .dir("downandout", 0o755)
        .symlink("breakouts/d1", "../downandout/../../etc")
        .hardlink("breakouts/mypasswd", "/breakouts/d1/passwd")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(same_inode("breakouts/mypasswd", "etc/passwd"));
    });
}

#[test]
fn hardlink_through_an_absolute_symlink() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .symlink("localetc", "/etc")
        .hardlink("localpasswd", "/localetc/passwd")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(same_inode("localpasswd", "etc/passwd"));
        assert_eq!(read("localpasswd"), b"inside");
    });
}

#[test]
fn hardlink_through_a_long_relative_symlink() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .symlink("localetc", "../../../../../../../etc")
        .hardlink("localpasswd", "/localetc/passwd")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(same_inode("localpasswd", "etc/passwd"));
    });
}

#[test]
fn hardlink_through_a_symlink_going_up_via_a_missing_dir() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .symlink("localetc", "upandout/../../../etc")
        .hardlink("localpasswd", "/localetc/passwd")
        .build();
    breakout(tar, |r| {
        // The kernel resolves `upandout` first, and it does not exist: the container
        // would not find localetc/passwd either, so there is nothing to link.
        let e = refused(r);
        assert!(matches!(e, UnpackError::LinkTargetMissing { .. }), "{e}");
    });
}

#[test]
fn hardlink_target_climbing_out_directly_is_refused() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .hardlink("localpasswd", "../../../../../etc/passwd")
        .build();
    breakout(tar, |r| {
        // Unlike a symlink, a hardlink target is a name inside the archive: `..` above the
        // root cannot be meant, so the layer is refused rather than reinterpreted.
        let e = refused(r);
        assert!(matches!(e, UnpackError::LinkEscapes { .. }), "{e}");
    });
}

#[test]
fn hardlink_to_an_absolute_name_stays_inside() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .hardlink("localpasswd", "/etc/passwd")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(same_inode("localpasswd", "etc/passwd"));
        assert_eq!(read("localpasswd"), b"inside");
    });
}

#[test]
fn hardlink_to_a_file_only_the_host_has_is_refused() {
    // /etc/also-exists is in the world (the "host"), not in the layer.
    let tar = Layer::new()
        .symlink("hostetc", "/etc")
        .hardlink("grab", "/etc/also-exists")
        .build();
    breakout(tar, |r| {
        let e = refused(r);
        assert!(matches!(e, UnpackError::LinkTargetMissing { .. }), "{e}");
    });
}

#[test]
fn hardlink_named_outside_is_refused() {
    let tar = Layer::new()
        .file("f", b"x")
        .hardlink("../../outside/grabbed", "f")
        .build();
    breakout(tar, |r| {
        let e = refused(r);
        assert!(matches!(e, UnpackError::PathEscapes { .. }), "{e}");
    });
}

// Hardlinks to symlinks: the link is to the symlink itself, never to what it names.

#[test]
fn hardlink_to_a_symlink_made_before_its_target_exists() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .symlink("localpasswd", "/etc/passwd")
        .hardlink("localpasswd-dup", "localpasswd")
        .file("/etc/passwd", b"after")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(is_symlink("localpasswd-dup"));
        assert!(same_inode("localpasswd-dup", "localpasswd"));
        assert_eq!(read("etc/passwd"), b"after");
    });
}

#[test]
fn hardlink_to_a_relative_symlink_that_climbs_out() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .symlink("passwdlink", "../../../../../etc/passwd")
        .hardlink("localpasswd", "/passwdlink")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(is_symlink("localpasswd"));
        assert!(same_inode("localpasswd", "passwdlink"));
        assert_eq!(
            fs::read_link(at("localpasswd")).unwrap(),
            Path::new("../../../../../etc/passwd")
        );
    });
}

#[test]
fn hardlink_to_an_absolute_symlink() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .symlink("passwdlink", "/etc/passwd")
        .hardlink("localpasswd", "/passwdlink")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(is_symlink("localpasswd"));
        assert!(same_inode("localpasswd", "passwdlink"));
    });
}

#[test]
fn hardlink_to_a_symlink_at_an_absolute_path_never_chmods_its_target() {
    // The world's /etc/perm400 is mode 0400; the symlink and link must not change it.
    let tar = Layer::new()
        .symlink_owned("/etc/also-exists", "/etc/perm400", 4321)
        .hardlink("sketchylink", "/etc/also-exists")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(is_symlink("sketchylink"));
        assert!(same_inode("sketchylink", "etc/also-exists"));
        assert_eq!(
            fs::symlink_metadata("/etc/perm400").unwrap().mode() & 0o7777,
            0o400
        );
    });
}

// Names that are `..`, empty, or end in `..`.

#[test]
fn symlink_named_dotdot_is_refused() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .symlink("..", "/etc/")
        .hardlink("localpasswd", "/etc/passwd")
        .build();
    breakout(tar, |r| {
        let e = refused(r);
        assert!(matches!(e, UnpackError::PathEscapes { .. }), "{e}");
    });
}

#[test]
fn symlink_with_an_empty_name_is_skipped() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .symlink("", "/etc/")
        .hardlink("localpasswd", "/etc/passwd")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        // The empty name is the layer root, which an entry cannot turn into a symlink.
        assert!(fs::symlink_metadata(LAYER).unwrap().is_dir());
        assert!(same_inode("localpasswd", "etc/passwd"));
    });
}

#[test]
fn symlink_name_ending_in_dotdot_names_its_grandparent() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .symlink("localetc/sub/..", "/etc/")
        .hardlink("/localetc/localpasswd", "/etc/passwd")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(is_symlink("localetc"));
        assert!(same_inode("etc/localpasswd", "etc/passwd"));
    });
}

#[test]
fn directory_name_with_a_trailing_slash() {
    let tar = Layer::new()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside")
        .dir("localetc/", 0o770)
        .hardlink("/localetc/localpasswd", "/etc/passwd")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(fs::symlink_metadata(at("localetc")).unwrap().is_dir());
        assert!(same_inode("localetc/localpasswd", "etc/passwd"));
    });
}

#[test]
fn dotdot_names_are_refused() {
    for name in [
        "../escape",
        "a/../../escape",
        "./../outside/secret",
        "/../etc/passwd",
    ] {
        let tar = Layer::new().dir("a/", 0o755).file(name, b"pwned").build();
        breakout(tar, |r| {
            let e = refused(r);
            assert!(matches!(e, UnpackError::PathEscapes { .. }), "{name}: {e}");
        });
    }
}

#[test]
fn long_names_climbing_out_are_refused() {
    let pax = format!("{}../outside/pax", "a/../".repeat(40));
    let gnu = format!("{}../outside/gnu-long-name-escape", "b/".repeat(60));
    let gnu_climb = format!("{gnu}/{}", "../".repeat(80));
    for tar in [
        Layer::new().file_pax_path(&pax, b"pwned").build(),
        Layer::new().file_gnu_longname(&gnu_climb, b"pwned").build(),
    ] {
        breakout(tar, |r| {
            let e = refused(r);
            assert!(matches!(e, UnpackError::PathEscapes { .. }), "{e}");
        });
    }
}

#[test]
fn long_names_inside_are_placed_whole() {
    let name = format!("{}/leaf", vec!["d".repeat(90); 3].join("/"));
    let tar = Layer::new().file_pax_path(&name, b"deep").build();
    breakout(tar, move |r| {
        r.unwrap();
        assert_eq!(read(&name), b"deep");
    });
}

// Symlinks and directories replacing one another.

#[test]
fn symlink_replacing_a_directory() {
    let tar = Layer::new()
        .dir("/etc/", 0o755)
        .file("/etc/passwd", b"inside")
        .dir("/localetc/", 0o755)
        .file("/localetc/old", b"old")
        .symlink("localetc", "/etc")
        .hardlink("/localetc/localpasswd", "/etc/passwd")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(is_symlink("localetc"));
        assert!(same_inode("etc/localpasswd", "etc/passwd"));
    });
}

#[test]
fn relative_symlink_replacing_a_directory() {
    let tar = Layer::new()
        .dir("/etc/", 0o755)
        .file("/etc/passwd", b"inside")
        .dir("/localetc/", 0o755)
        .symlink("localetc", "../../etc")
        .hardlink("/localetc/localpasswd", "/etc/passwd")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(is_symlink("localetc"));
        assert!(same_inode("etc/localpasswd", "etc/passwd"));
    });
}

#[test]
fn directory_replacing_a_symlink() {
    let tar = Layer::new()
        .dir("/etc/", 0o755)
        .file("/etc/passwd", b"inside")
        .symlink("localetc", "/etc")
        .dir("/localetc/", 0o755)
        .hardlink("/localetc/localpasswd", "/etc/passwd")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(fs::symlink_metadata(at("localetc")).unwrap().is_dir());
        assert!(same_inode("localetc/localpasswd", "etc/passwd"));
    });
}

#[test]
fn directory_replacing_a_symlink_then_a_file_replacing_a_hardlink() {
    let tar = Layer::new()
        .dir("/etc/", 0o755)
        .file("/etc/passwd", b"inside")
        .symlink("localetc", "etc")
        .hardlink("/localetc/localpasswd", "/etc/passwd")
        .dir("/localetc/", 0o755)
        .file("/localetc/localpasswd", b"different")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(!same_inode("localetc/localpasswd", "etc/passwd"));
        assert_eq!(read("etc/passwd"), b"inside");
        assert_eq!(read("localetc/localpasswd"), b"different");
    });
}

#[test]
fn file_replacing_a_symlink_to_the_outside() {
    let tar = Layer::new()
        .symlink("passwd", "/etc/passwd")
        .file_full(b"passwd", b"pwned", 0o4755, 4321, 4321)
        .symlink("secret", "../../outside/secret")
        .file("secret", b"replaced")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        let m = fs::symlink_metadata(at("passwd")).unwrap();
        assert!(m.is_file());
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o4755, 4321));
        assert_eq!(read("secret"), b"replaced");
        assert_eq!(fs::read("/etc/passwd").unwrap(), HOST_PASSWD);
    });
}

#[test]
fn fifo_and_symlink_duplicates_replace_the_entry_not_its_target() {
    let tar = Layer::new()
        .symlink("p", "/etc/passwd")
        .fifo("p", 0o777)
        .file("q", b"x")
        .symlink("q", "/outside/secret")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(fs::symlink_metadata(at("p")).unwrap().file_type().is_fifo());
        assert!(is_symlink("q"));
    });
}

// Whiteouts.

#[test]
fn whiteouts_naming_dot_or_dotdot_are_refused() {
    for name in [".wh...", "etc/.wh...", ".wh..", "etc/.wh.."] {
        let tar = Layer::new()
            .dir("/etc/", 0o755)
            .file("/etc/passwd", b"inside")
            .file(name, b"")
            .build();
        breakout(tar, |r| {
            let e = refused(r);
            assert!(matches!(e, UnpackError::InvalidEntry { .. }), "{name}: {e}");
            assert_eq!(read("etc/passwd"), b"inside");
        });
    }
}

#[test]
fn whiteout_of_a_symlink_hides_the_link_not_its_target() {
    let tar = Layer::new()
        .dir("/etc/", 0o755)
        .file("/etc/passwd", b"all users")
        .symlink("localetc", "/etc")
        .file(".wh.localetc", b"")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(is_whiteout("localetc"));
        assert_eq!(read("etc/passwd"), b"all users");
    });
}

#[test]
fn whiteout_through_a_symlinked_parent_lands_inside() {
    let tar = Layer::new()
        .dir("/etc/", 0o755)
        .file("/etc/passwd", b"all users")
        .file("/etc/whitedout", b"ahhhh whiteout")
        .symlink("localetc", "/etc")
        .file("localetc/.wh.whitedout", b"")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(is_whiteout("etc/whitedout"));
        assert_eq!(read("etc/passwd"), b"all users");
    });
}

#[test]
fn whiteout_prefix_on_a_directory_name_is_just_a_name() {
    let tar = Layer::new()
        .dir("/etc/", 0o755)
        .file("/etc/passwd", b"all users")
        .file(".wh.etc/somefile", b"non-empty")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert_eq!(read("etc/passwd"), b"all users");
        assert_eq!(read(".wh.etc/somefile"), b"non-empty");
    });
}

#[test]
fn whiteout_under_a_dangling_symlink_parent() {
    let tar = Layer::new()
        .dir("/etc/", 0o755)
        .file("/etc/passwd", b"all users")
        .symlink("localetc", "/dne")
        .file("localetc/.wh.etc", b"")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert_eq!(read("etc/passwd"), b"all users");
        assert!(is_whiteout("dne/etc"));
    });
}

#[test]
fn whiteout_with_dotdot_in_its_path() {
    let tar = Layer::new()
        .dir("/etc/", 0o755)
        .file("/etc/passwd", b"all users")
        .symlink("localetc", "/dne")
        .file("dne/../.wh.etc", b"")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(is_whiteout("etc"));
        assert!(absent("etc/passwd"));
    });
}

#[test]
fn whiteouts_and_opaque_markers_through_a_link_to_the_outside() {
    let tar = Layer::new()
        .symlink("out", "/outside")
        .file("out/.wh.secret", b"")
        .file("out/sub/.wh..wh..opq", b"")
        .file("../.wh.outside", b"")
        .build();
    breakout(tar, |r| {
        // The last entry climbs out and is refused; the first three stayed inside.
        let e = refused(r);
        assert!(matches!(e, UnpackError::PathEscapes { .. }), "{e}");
        assert!(is_whiteout("outside/secret"));
    });
    let tar = Layer::new()
        .symlink("out", "/outside")
        .file("out/.wh.secret", b"")
        .file("out/sub/.wh..wh..opq", b"")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        assert!(is_whiteout("outside/secret"));
        assert_eq!(
            get_xattr(Path::new(&at("outside/sub")), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            get_xattr(Path::new("/outside/sub"), "trusted.overlay.opaque"),
            None
        );
    });
}

// Other entry kinds and odd streams.

#[test]
fn device_nodes_are_never_created() {
    let tar = Layer::new()
        .char_device("dev/mem", 1, 1)
        .symlink("hostdev", "/etc")
        .char_device("hostdev/kmsg", 1, 11)
        .block_device("disk", 8, 0)
        .build();
    breakout(tar, |r| {
        r.unwrap();
        for node in ["dev/mem", "etc/kmsg", "disk"] {
            assert!(absent(node), "{node} must not exist");
        }
    });
}

#[test]
fn symlink_loops_fail_cleanly() {
    let tar = Layer::new()
        .symlink("loop1", "loop2")
        .symlink("loop2", "/loop1")
        .file("loop1/x", b"x")
        .build();
    breakout(tar, |r| {
        let e = refused(r);
        assert!(matches!(e, UnpackError::Entry { .. }), "{e}");
    });
}

#[test]
fn layer_root_entries_never_change_the_parent() {
    let tar = Layer::new()
        .dir_owned("./", 0o700, 99, 99)
        .dir("/", 0o711)
        .file(".", b"not a dir")
        .build();
    breakout(tar, |r| {
        r.unwrap();
        let m = fs::symlink_metadata(LAYER).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o7777, 0o711);
    });
}

#[test]
fn truncated_stream_after_a_symlink_leaves_the_outside_alone() {
    let mut tar = Layer::new()
        .symlink("out", "/outside")
        .file("out/secret", &[b'x'; 4096])
        .build();
    tar.truncate(512 + 512 + 1000);
    breakout(tar, |r| {
        let e = refused(r);
        assert!(
            matches!(e, UnpackError::Tar { .. } | UnpackError::Entry { .. }),
            "{e}"
        );
    });
}
