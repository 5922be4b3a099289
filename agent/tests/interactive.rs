//! Interactive use: `run -it` on a real terminal (a pty driven by the test),
//! `run -i` with piped stdin, `attach`, and `exec` into a running job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Daemon;

/// A terminal for the CLI: the test holds the master side.
struct Terminal {
    master: std::fs::File,
    seen: Arc<Mutex<String>>,
    child: std::process::Child,
}

fn set_size(fd: &impl AsRawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we pass; the fd is an open pty.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0, "TIOCSWINSZ");
}

impl Terminal {
    /// Runs `flynn-host args` with a new pty as its controlling terminal.
    fn spawn(d: &Daemon, args: &[&str], rows: u16, cols: u16) -> Terminal {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        set_size(&pty.master, rows, cols);
        let slave: OwnedFd = pty.slave;
        let mut cmd = d.command();
        cmd.args(args)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe; they make the pty
        // the child's controlling terminal, so it gets SIGWINCH like in a shell.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting the CLI on a pty");
        let master = std::fs::File::from(pty.master);
        let seen = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            master,
            seen,
            child,
        }
    }

    fn type_keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Waits until the screen shows `text` after the first `after` bytes.
    fn expect(&self, after: usize, text: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = self.seen.lock().unwrap().clone();
            if let Some(at) = seen.get(after..).and_then(|s| s.find(text)) {
                return after + at + text.len();
            }
            assert!(
                Instant::now() < deadline,
                "never saw {text:?}; the terminal shows:\n{seen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the CLI did not exit:\n{}",
                self.seen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn run_it_gives_a_real_terminal_whose_size_follows_and_ctrl_c_reaches_the_job() {
    let d = Daemon::start();
    d.import_busybox();
    let mut term = Terminal::spawn(&d, &["run", "-it", "--rm", "busybox", "sh"], 30, 100);
    let mut at = term.expect(0, "# ");
    term.type_keys("stty size\r");
    at = term.expect(at, "30 100");
    at = term.expect(at, "# ");

    // The terminal grows: the job's follows (SIGWINCH → resize).
    set_size(&term.master, 40, 120);
    std::thread::sleep(Duration::from_millis(300));
    term.type_keys("stty size\r");
    at = term.expect(at, "40 120");

    // Ctrl-C interrupts the job's foreground process, not us.
    term.type_keys("sleep 100\r");
    std::thread::sleep(Duration::from_millis(500));
    term.type_keys("\x03");
    term.type_keys("echo back-$((40+2))\r");
    at = term.expect(at, "back-42");

    term.type_keys("exit 3\r");
    let code = term.wait();
    let screen = term.seen.lock().unwrap().clone();
    assert!(!screen.contains("job control turned off"), "{screen}");
    assert_eq!(code, Some(3), "{screen}");
    let _ = at;
}

#[test]
fn run_i_sends_piped_stdin_and_its_end() {
    let d = Daemon::start();
    d.import_busybox();
    let mut child = d
        .command()
        .args([
            "run",
            "-i",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "cat; echo done >&2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nworld\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nworld\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "done\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn attach_streams_stdout_and_stderr_apart_and_forwards_stdin() {
    let d = Daemon::start();
    d.import_busybox();
    d.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "reader",
        "busybox",
        "sh",
        "-c",
        "read x; echo got $x; echo on-err >&2",
    ]);
    let mut child = d
        .command()
        .args(["attach", "reader"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"zzz\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got zzz\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "on-err\n");
    assert_eq!(out.status.code(), Some(0));

    // A job without -i refuses stdin, but can be watched.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "talker",
        "busybox",
        "sh",
        "-c",
        "sleep 0.5; echo late",
    ]);
    let out = d.cli(&["attach", "--no-stdin", "talker"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "late\n");
}

#[test]
fn exec_runs_in_the_jobs_container_with_its_confinement() {
    let d = Daemon::start();
    d.import_busybox();
    exec_into_a_job(&d, &[]);
}

/// An exec into a job with a user namespace of its own joins it too (libcontainer's
/// tenant builder does not; `runtime::join` does): root in name only, with the
/// job's own confinement, and every exec feature works as for any other job.
#[test]
fn exec_joins_the_user_namespace_of_a_userns_job() {
    let d = Daemon::start();
    d.import_busybox();
    exec_into_a_job(&d, &["--userns"]);
}

/// Runs job `host` with `flags` and checks exec into it: namespaces, user, cwd, env,
/// exit codes, confinement, stdin, a terminal, and the refusal once it stopped.
fn exec_into_a_job(d: &Daemon, flags: &[&str]) {
    let mut run = vec!["run", "-d", "--name", "host"];
    run.extend_from_slice(flags);
    run.extend_from_slice(&["busybox", "sh", "-c", "echo $$ > /tmp/main; sleep 60"]);
    d.ok(&run);
    assert_eq!(
        d.ok(&["exec", "host", "cat", "/tmp/main"]),
        "1\n",
        "same pid namespace and rootfs"
    );
    assert_eq!(d.ok(&["exec", "host", "echo", "hi"]), "hi\n");
    let out = d.cli(&["exec", "host", "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    let out = d.ok(&[
        "exec",
        "-u",
        "app",
        "-w",
        "/tmp",
        "-e",
        "X=1",
        "host",
        "sh",
        "-c",
        "id -u; pwd; echo $X",
    ]);
    assert_eq!(out, "1000\n/tmp\n1\n");
    let status = d.ok(&[
        "exec",
        "host",
        "grep",
        "-E",
        "^(Seccomp|NoNewPrivs|CapEff):",
        "/proc/self/status",
    ]);
    let main = d.ok(&[
        "exec",
        "host",
        "grep",
        "-E",
        "^(Seccomp|NoNewPrivs|CapEff):",
        "/proc/1/status",
    ]);
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert_eq!(
        status, main,
        "exec'd processes are confined like the job's own"
    );
    let out = d.cli(&["exec", "host", "/no/such/thing"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(d.ok(&["exec", "host", "sh", "-c", "echo $HOME"]), "/root\n");
    // No signal is ignored in the exec'd program (SIGPIPE included).
    let ign = d.ok(&["exec", "host", "grep", "SigIgn", "/proc/self/status"]);
    assert!(ign.trim().ends_with("0000000000000000"), "{ign}");
    // Only stdio is inherited (and the descriptor ls reads /proc/self/fd with).
    let fds = d.ok(&["exec", "host", "ls", "/proc/self/fd"]);
    assert_eq!(
        fds.split_whitespace().count(),
        4,
        "open in the exec'd process: {fds}"
    );
    let out = d.cli(&["exec", "-w", "/no/such/dir", "host", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("working directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // stdin through exec -i.
    let mut child = d
        .command()
        .args(["exec", "-i", "host", "sh", "-c", "read x; echo exec-got $x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"input\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "exec-got input\n");

    // A terminal through exec -it.
    let mut term = Terminal::spawn(d, &["exec", "-it", "host", "sh"], 25, 90);
    let mut at = term.expect(0, "# ");
    term.type_keys("stty size\r");
    at = term.expect(at, "25 90");
    term.type_keys("exit 0\r");
    assert_eq!(term.wait(), Some(0));
    let _ = at;

    // The same namespaces as the job's own, its user namespace included, and the
    // same identity map: the host's root is nowhere in it.
    let ns = "for n in user mnt pid net ipc uts cgroup; do \
              [ $(readlink /proc/self/ns/$n) = $(readlink /proc/1/ns/$n) ] || echo DIFFERS $n; \
              done; cat /proc/self/uid_map; \
              [ \"$(grep Groups /proc/self/status)\" = \"$(grep Groups /proc/1/status)\" ] \
              || echo OTHER-GROUPS";
    let out = d.ok(&["exec", "host", "sh", "-c", ns]);
    assert!(!out.contains("DIFFERS"), "{out}");
    let map = out.lines().next().unwrap_or("").to_string();
    let host_root_mapped = map.split_whitespace().nth(1) == Some("0");
    assert_eq!(
        host_root_mapped,
        !flags.contains(&"--userns"),
        "uid_map inside: {out}"
    );
    assert!(!out.contains("OTHER-GROUPS"), "groups: {out}");

    // Not into a job that is not running.
    d.ok(&["stop", "-t", "1", "host"]);
    let out = d.cli(&["exec", "host", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}
