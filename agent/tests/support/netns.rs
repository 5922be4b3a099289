//! Network helpers the single-host and grid tests share: `ip` that fails the test
//! with its error, and a banner listener inside a network namespace.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

/// Runs `ip ARGS`; a failure fails the test with ip's message.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A listener on every address of `netns` that answers `open <port>`, reads what the
/// client sends until it closes, and closes.
pub fn banner(netns: &str, port: u16) {
    let path = format!("/run/netns/{netns}");
    let listener = std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        TcpListener::bind(("0.0.0.0", port)).unwrap()
    })
    .join()
    .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = writeln!(conn, "open {port}");
                // Read what the client sent before closing: a socket closed with
                // unread data sends a reset, which can overtake the banner and leave
                // the client with nothing to read.
                let _ = conn.shutdown(std::net::Shutdown::Write);
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut sink = [0u8; 1024];
                while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
}
