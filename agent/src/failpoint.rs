//! Crash injection for tests. `FLYNN_FAILPOINTS=name[,name...]` in the daemon's
//! environment makes it kill itself with SIGKILL (exactly what `kill -9` does: no
//! destructor, no flush) when it reaches a named point, so tests can check that a
//! crash at that moment leaves state that a restarted daemon repairs.
//!
//! Points: create.dir, create.recorded, start.mounted, start.created,
//! start.started, exit.received, exit.recorded, rm.marked, rm.unmounted, rm.cleaned.

use std::sync::OnceLock;

fn enabled() -> &'static [String] {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("FLYNN_FAILPOINTS")
            .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_default()
    })
}

/// `FLYNN_HANG_AT=name`: the thread that reaches the point sleeps 10 s there, longer
/// than a test's `FLYNN_STEP_TIMEOUT`, to show that a stuck step is bounded and
/// cleaned up after. Points: start.mount (in the root filesystem's mount).
pub fn hang(name: &str) {
    if std::env::var("FLYNN_HANG_AT").is_ok_and(|v| v == name) {
        eprintln!("flynn-host: failpoint {name}: hanging for 10 s");
        std::thread::sleep(std::time::Duration::from_secs(10));
    }
}

/// Dies here if this point is enabled.
pub fn hit(name: &str) {
    if enabled().iter().any(|p| p == name) {
        eprintln!("flynn-host: failpoint {name}: killing the daemon");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
