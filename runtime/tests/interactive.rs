//! Interactive containers: a terminal (real ptys), stdin, resizes, output without newlines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::time::Duration;

use common::{Fixture, exe_of, wait_for_monitor_exec, wait_for_output};
use runtime::logs::Stream;
use runtime::shim::{ShimClient, ShimError};
use tokio::io::AsyncWriteExt;

fn shim_pid(f: &Fixture) -> i32 {
    std::fs::read_to_string(f.job_dir.join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn tty_shell_with_job_control_resize_and_ctrl_c() {
    let f = Fixture::new();
    let mut c = f.container(&["sh"]);
    c.tty = true;
    c.stdin = true;
    let client = f.start(c).await;
    let mut stdin = ShimClient::attach_stdin(&f.job_dir).await.unwrap();
    // The prompt, without a newline, is logged as it is printed.
    wait_for_output(&f.log_path, Stream::Stdout, "# ");

    client.resize(33, 101).await.unwrap();
    stdin.write_all(b"stty size\n").await.unwrap();
    wait_for_output(&f.log_path, Stream::Stdout, "33 101");
    client.resize(40, 132).await.unwrap();
    stdin.write_all(b"stty size\n").await.unwrap();
    wait_for_output(&f.log_path, Stream::Stdout, "40 132");

    // Ctrl-C reaches the foreground job (the sleep), not the shell.
    stdin.write_all(b"sleep 100\n").await.unwrap();
    f.wait_for_process("sleep", true);
    stdin.write_all(&[0x03]).await.unwrap();
    f.wait_for_process("sleep", false);
    // The shell's echo of the line shows ba''ck; only the command prints "back".
    stdin.write_all(b"echo ba''ck\n").await.unwrap();
    wait_for_output(&f.log_path, Stream::Stdout, "back\r\n");

    // A second client cannot take the terminal's input.
    let second = ShimClient::attach_stdin(&f.job_dir).await.unwrap_err();
    assert!(
        matches!(&second, ShimError::Control(m) if m == "stdin is already attached"),
        "{second}"
    );

    stdin.write_all(b"exit\n").await.unwrap();
    let status = client.wait().await.unwrap();
    assert_eq!((status.code, status.signal), (Some(0), None));
    let out = f.stdout();
    assert!(!out.contains("job control"), "{out}");
    // Everything the terminal printed is logged as stdout.
    assert_eq!(f.output(Stream::Stderr), "");
    f.assert_gone();
}

#[tokio::test]
async fn a_terminal_without_stdin_refuses_input_but_resizes() {
    let f = Fixture::new();
    let mut c = f.container(&["sh", "-c", "echo ready; sleep 1000"]);
    c.tty = true;
    let client = f.start(c).await;
    wait_for_output(&f.log_path, Stream::Stdout, "ready\r\n");
    let err = ShimClient::attach_stdin(&f.job_dir).await.unwrap_err();
    assert!(
        matches!(&err, ShimError::Control(m) if m == "the job was started without stdin"),
        "{err}"
    );
    client.resize(10, 20).await.unwrap();
    client.signal(9).await.unwrap();
    assert_eq!(client.wait().await.unwrap().signal, Some(9));
    f.assert_gone();
}

#[tokio::test]
async fn stdin_pipe_reaches_the_program_and_half_close_is_eof() {
    let f = Fixture::new();
    let mut c = f.container(&["cat"]);
    c.stdin = true;
    let client = f.start(c).await;
    let mut stdin = ShimClient::attach_stdin(&f.job_dir).await.unwrap();
    let second = ShimClient::attach_stdin(&f.job_dir).await.unwrap_err();
    assert!(
        matches!(&second, ShimError::Control(m) if m == "stdin is already attached"),
        "{second}"
    );
    let err = client.resize(24, 80).await.unwrap_err();
    assert!(err.to_string().contains("no terminal"), "{err}");
    stdin.write_all(b"hello\n").await.unwrap();
    wait_for_output(&f.log_path, Stream::Stdout, "hello\n");
    // Still running: cat waits for more until its stdin closes.
    assert_eq!(
        client.state().await.unwrap().status,
        runtime::shim::Status::Running
    );
    stdin.shutdown().await.unwrap();
    let status = client.wait().await.unwrap();
    assert_eq!(status.code, Some(0));
    assert_eq!(f.stdout(), "hello\n");
    drop(stdin);
    f.assert_gone();
}

#[tokio::test]
async fn stdin_is_closed_for_good_once_its_client_leaves() {
    let f = Fixture::new();
    let mut c = f.container(&["sh", "-c", "cat; echo cat done; sleep 1000"]);
    c.stdin = true;
    let client = f.start(c).await;
    let mut stdin = ShimClient::attach_stdin(&f.job_dir).await.unwrap();
    stdin.write_all(b"one\n").await.unwrap();
    // Dropping the connection (no shutdown) detaches as well.
    drop(stdin);
    wait_for_output(&f.log_path, Stream::Stdout, "one\ncat done\n");
    let err = ShimClient::attach_stdin(&f.job_dir).await.unwrap_err();
    assert!(err.to_string().contains("stdin is closed"), "{err}");
    client.signal(9).await.unwrap();
    client.wait().await.unwrap();
    f.assert_gone();
}

#[tokio::test]
async fn a_container_without_stdin_refuses_it() {
    let f = Fixture::new();
    let client = f.start(f.container(&["sleep", "1000"])).await;
    let err = ShimClient::attach_stdin(&f.job_dir).await.unwrap_err();
    assert!(
        matches!(&err, ShimError::Control(m) if m == "the job was started without stdin"),
        "{err}"
    );
    client.signal(9).await.unwrap();
    client.wait().await.unwrap();
    f.assert_gone();
}

#[tokio::test]
async fn a_prompt_without_newline_is_logged_before_any_input() {
    let f = Fixture::new();
    let mut c = f.container(&["sh", "-c", "printf 'name? '; read n; echo \"hi $n\""]);
    c.stdin = true;
    let client = f.start(c).await;
    wait_for_output(&f.log_path, Stream::Stdout, "name? ");
    assert_eq!(f.logs().last().unwrap().log, "name? ");
    let mut stdin = ShimClient::attach_stdin(&f.job_dir).await.unwrap();
    stdin.write_all(b"bob\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert_eq!(client.wait().await.unwrap().code, Some(0));
    assert_eq!(f.stdout(), "name? hi bob\n");
    f.assert_gone();
}

/// More input than the pipe and the shim's buffer hold, to a program that reads it late:
/// the client is held back, nothing is lost, and the shim keeps answering meanwhile.
#[tokio::test]
async fn stdin_backpressure_loses_nothing_and_blocks_nobody_else() {
    let f = Fixture::new();
    // The pause leaves the pipe and the shim's buffer full, the client blocked.
    let mut c = f.container(&["sh", "-c", "read go; sleep 1; cat | wc -c"]);
    c.stdin = true;
    let client = f.start(c).await;
    let mut stdin = ShimClient::attach_stdin(&f.job_dir).await.unwrap();
    const TOTAL: usize = 4 << 20;
    let writer = tokio::spawn(async move {
        stdin.write_all(b"go\n").await.unwrap();
        let chunk = vec![b'z'; 64 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            stdin.write_all(&chunk).await.unwrap();
        }
        stdin.shutdown().await.unwrap();
    });
    for _ in 0..20 {
        assert_eq!(
            client.state().await.unwrap().status,
            runtime::shim::Status::Running
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await.unwrap();
    let status = client.wait().await.unwrap();
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    assert_eq!(f.stdout().trim(), TOTAL.to_string());
    f.assert_gone();
}

#[tokio::test]
async fn the_lean_monitor_binary_supervises_when_installed() {
    let f = Fixture::new();
    let mut c = f.container(&["cat"]);
    c.stdin = true;
    let client = f.start(c).await;
    let pid = shim_pid(&f);
    wait_for_monitor_exec(pid);
    let exe = exe_of(pid);
    assert_eq!(
        exe.file_name().and_then(|n| n.to_str()),
        Some(runtime::shim::MONITOR_BINARY),
        "{exe:?}"
    );
    let mut stdin = ShimClient::attach_stdin(&f.job_dir).await.unwrap();
    stdin.write_all(b"through the monitor\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert_eq!(client.wait().await.unwrap().code, Some(0));
    assert_eq!(f.stdout(), "through the monitor\n");
    f.assert_gone();
}

#[tokio::test]
async fn without_the_monitor_binary_the_shim_binary_monitors() {
    let f = Fixture::new();
    // The shim binary alone in a directory: no flynn-shim-monitor beside it.
    let bin = f.tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("flynn-shim-test");
    if std::fs::hard_link(common::SHIM_EXE, &exe).is_err() {
        std::fs::copy(common::SHIM_EXE, &exe).unwrap();
    }
    let mut c = f.container(&["sh", "-c", "read x; echo got $x"]);
    c.stdin = true;
    let created = runtime::shim::spawn(&exe, &f.job_dir, &f.shim_config(c))
        .await
        .unwrap();
    let pid = created.shim_pid();
    created.start().await.unwrap();
    wait_for_monitor_exec(pid);
    assert_eq!(exe_of(pid), exe);
    let client = ShimClient::connect(&f.job_dir).await.unwrap();
    let mut stdin = ShimClient::attach_stdin(&f.job_dir).await.unwrap();
    stdin.write_all(b"hi\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert_eq!(client.wait().await.unwrap().code, Some(0));
    assert_eq!(f.stdout(), "got hi\n");
    f.assert_gone();
}

/// A monitor binary that cannot read the handoff (another version, beside an upgraded
/// agent) runs the creating shim's binary through the descriptor handed over for that.
/// The stand-in here does only that step, as a script.
#[tokio::test]
async fn a_monitor_binary_of_another_version_hands_back_to_the_shim_binary() {
    let f = Fixture::new();
    let bin = f.tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("flynn-shim-test");
    if std::fs::hard_link(common::SHIM_EXE, &exe).is_err() {
        std::fs::copy(common::SHIM_EXE, &exe).unwrap();
    }
    let monitor = bin.join(runtime::shim::MONITOR_BINARY);
    std::fs::write(
        &monitor,
        "#!/bin/sh\nexec /proc/self/fd/$FLYNN_SHIM_EXE_FD \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&monitor, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut c = f.container(&["sh", "-c", "read x; echo got $x"]);
    c.stdin = true;
    let created = runtime::shim::spawn(&exe, &f.job_dir, &f.shim_config(c))
        .await
        .unwrap();
    let pid = created.shim_pid();
    created.start().await.unwrap();
    wait_for_monitor_exec(pid);
    // Through the script, back to the shim's own binary.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while exe_of(pid) != exe {
        assert!(std::time::Instant::now() < deadline, "{:?}", exe_of(pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    let client = ShimClient::connect(&f.job_dir).await.unwrap();
    let mut stdin = ShimClient::attach_stdin(&f.job_dir).await.unwrap();
    stdin.write_all(b"back\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert_eq!(client.wait().await.unwrap().code, Some(0));
    assert_eq!(f.stdout(), "got back\n");
    f.assert_gone();
}
