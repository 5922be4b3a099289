//! Network helpers the single-host and grid tests share: `ip` that fails the test
//! with its error, a banner listener inside a network namespace, and a UDP sink that
//! keeps what it receives.

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

/// Runs `f` on a thread inside `netns` (sockets made there stay in it).
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A listener on every IPv4 address of `netns` that answers `open <port>`, reads what
/// the client sends until it closes, and closes.
pub fn banner(netns: &str, port: u16) {
    banner_on(netns, "0.0.0.0", port);
}

/// [`banner`] on `addr` (`"::"`: every IPv6 address, and IPv4 ones as mapped).
pub fn banner_on(netns: &str, addr: &str, port: u16) {
    let addr = addr.to_string();
    let listener = in_netns(netns, move || {
        TcpListener::bind((addr.as_str(), port)).unwrap()
    });
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

/// A UDP socket on every address of `netns` at `port`; what it receives, one entry a
/// datagram, is in the returned list.
pub fn udp_sink(netns: &str, port: u16) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let socket = in_netns(netns, move || {
        std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap()
    });
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            sink.lock().unwrap().push(text);
        }
    });
    got
}
