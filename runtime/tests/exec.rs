//! Processes exec'd into running containers: output, exit, user/cwd/env, confinement,
//! terminals, and what happens when the container ends first.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use common::{Fixture, exec_config, log_output, status_field, wait_for_output, wait_until_dead};
use runtime::logs::Stream;
use runtime::shim::{ShimClient, ShimError};
use tokio::io::AsyncWriteExt;

/// A container that just waits, with a connected client.
async fn idle(f: &Fixture) -> ShimClient {
    let client = f.start(f.container(&["sleep", "1000"])).await;
    f.wait_for_process("sleep", true);
    client
}

async fn stop(f: &Fixture, client: &ShimClient) {
    client.signal(9).await.unwrap();
    client.wait().await.unwrap();
    f.assert_gone();
}

#[tokio::test]
async fn exec_echo_logs_and_exits_zero() {
    let f = Fixture::new();
    let container = idle(&f).await;
    let pid = f
        .exec(&exec_config("0123456789ab", &["echo", "hi"]))
        .await
        .unwrap();
    assert!(pid > 0);
    let dir = f.exec_dir("0123456789ab");
    let status = ShimClient::connect(&dir)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        (status.code, status.signal, status.oom_killed),
        (Some(0), None, false)
    );
    assert_eq!(log_output(&dir.join("log.json"), Stream::Stdout), "hi\n");
    assert_eq!(runtime::shim::read_exit(&dir).unwrap(), Some(status));
    runtime::shim::wait_shim_gone(&dir, std::time::Duration::from_secs(60)).unwrap();
    assert!(!dir.join("shim.sock").exists());
    // The container goes on; libcontainer's per-exec sockets are not left in its state.
    assert_eq!(
        container.state().await.unwrap().status,
        runtime::shim::Status::Running
    );
    let leftovers: Vec<_> = std::fs::read_dir(f.state_root.join(&f.id))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("tenant-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    stop(&f, &container).await;
}

#[tokio::test]
async fn exec_of_a_missing_command_is_a_clear_create_error() {
    let f = Fixture::new();
    let container = idle(&f).await;
    let err = f
        .exec(&exec_config("00000000000a", &["no-such-program", "x"]))
        .await
        .unwrap_err();
    match &err {
        ShimError::Create(msg) => assert!(msg.contains("\"no-such-program\" not found"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Nothing of the failed exec is left.
    assert!(!f.exec_dir("00000000000a").exists());
    let mut e = exec_config("00000000000b", &["true"]);
    e.cwd = Some("/no/such/dir".into());
    let err = f.exec(&e).await.unwrap_err();
    assert!(
        matches!(&err, ShimError::Create(m)
            if m.contains("working directory \"/no/such/dir\" does not exist")),
        "{err}"
    );
    // Invalid configs are refused before anything runs.
    let err = f
        .exec(&exec_config("NOT-HEX", &["true"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ShimError::Create(m) if m.contains("invalid exec id")),
        "{err}"
    );
    stop(&f, &container).await;
}

#[tokio::test]
async fn exec_exit_code_user_cwd_and_env() {
    let f = Fixture::new();
    let mut c = f.container(&["sleep", "1000"]);
    c.env = vec!["FROM_CONTAINER=1".into(), "FOO=container".into()];
    let container = f.start(c).await;

    f.exec(&exec_config("00000000000b", &["sh", "-c", "exit 4"]))
        .await
        .unwrap();
    let dir = f.exec_dir("00000000000b");
    let status = ShimClient::connect(&dir)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!((status.code, status.exit_code()), (Some(4), 4));

    let mut e = exec_config(
        "00000000000c",
        &[
            "sh",
            "-c",
            "id -u; id -G; pwd; echo $FOO $FROM_CONTAINER $HOME",
        ],
    );
    e.user = Some("app".into());
    e.cwd = Some("/tmp".into());
    e.env = vec!["FOO=exec".into()];
    f.exec(&e).await.unwrap();
    let dir = f.exec_dir("00000000000c");
    let status = ShimClient::connect(&dir)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let log = dir.join("log.json");
    assert_eq!(status.code, Some(0), "{}", log_output(&log, Stream::Stderr));
    assert_eq!(
        log_output(&log, Stream::Stdout),
        "1000\n1000 29 44\n/tmp\nexec 1 /home/app\n"
    );

    // Defaults: the container's user and working directory.
    f.exec(&exec_config("00000000000d", &["sh", "-c", "id -u; pwd"]))
        .await
        .unwrap();
    let dir = f.exec_dir("00000000000d");
    ShimClient::connect(&dir)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(log_output(&dir.join("log.json"), Stream::Stdout), "0\n/\n");
    stop(&f, &container).await;
}

#[tokio::test]
async fn an_exec_ends_with_its_container_and_its_exit_is_recorded() {
    let f = Fixture::new();
    let container = idle(&f).await;
    let pid = f
        .exec(&exec_config("00000000000e", &["sleep", "1000"]))
        .await
        .unwrap();
    let dir = f.exec_dir("00000000000e");
    let exec = ShimClient::connect(&dir).await.unwrap();
    assert_eq!(exec.state().await.unwrap().pid, pid);
    let exec_shim: i32 = std::fs::read_to_string(dir.join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    common::wait_for_monitor_exec(exec_shim);
    // The container's end kills everything in its PID namespace, the exec'd process too.
    container.signal(9).await.unwrap();
    container.wait().await.unwrap();
    let status = exec.wait().await.unwrap();
    assert_eq!((status.code, status.signal), (None, Some(9)));
    wait_until_dead(pid);
    wait_until_dead(exec_shim);
    f.assert_gone();
    // Too late for another.
    let err = f
        .exec(&exec_config("00000000000f", &["true"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ShimError::Create(m) if m.contains("not running")),
        "{err}"
    );
}

#[tokio::test]
async fn an_exec_is_confined_like_the_container() {
    let f = Fixture::new();
    let container = idle(&f).await;
    let init = container.state().await.unwrap().pid;
    let init_status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert_eq!(status_field(&init_status, "Seccomp"), "2");

    let script = "grep -E '^(Seccomp|CapEff|CapBnd|NoNewPrivs):' /proc/self/status; \
                  unshare -m true && echo UNSHARE-ALLOWED; \
                  mount -t tmpfs none /mnt && echo MOUNT-ALLOWED; \
                  cat /proc/self/cgroup | grep -c /flynn/; true";
    f.exec(&exec_config("000000000010", &["sh", "-c", script]))
        .await
        .unwrap();
    let dir = f.exec_dir("000000000010");
    let status = ShimClient::connect(&dir)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(status.code, Some(0));
    let log = dir.join("log.json");
    let out = log_output(&log, Stream::Stdout);
    let err = log_output(&log, Stream::Stderr);
    assert_eq!(status_field(&out, "Seccomp"), "2", "{out}");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1", "{out}");
    for field in ["CapEff", "CapBnd"] {
        assert_eq!(
            status_field(&out, field),
            status_field(&init_status, field),
            "{field}: {out}"
        );
    }
    assert!(!out.contains("ALLOWED"), "{out}");
    assert!(err.contains("unshare") && err.contains("mount"), "{err}");
    // In the container's cgroups (every v1 hierarchy names /flynn/<id>).
    let in_cgroups: usize = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(in_cgroups >= 5, "{out}");
    // And its namespaces.
    let exec_ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).unwrap();
    let sleeper = f
        .exec(&exec_config("000000000011", &["sleep", "1000"]))
        .await
        .unwrap();
    for ns in ["pid", "mnt", "net", "uts", "ipc"] {
        assert_eq!(
            std::fs::read_link(format!("/proc/{sleeper}/ns/{ns}")).unwrap(),
            std::fs::read_link(format!("/proc/{init}/ns/{ns}")).unwrap(),
            "{ns}"
        );
    }
    assert_ne!(exec_ns(sleeper), exec_ns(std::process::id() as i32));
    stop(&f, &container).await;
}

#[tokio::test]
async fn exec_with_a_terminal_and_stdin() {
    let f = Fixture::new();
    let container = idle(&f).await;
    let mut e = exec_config("000000000012", &["sh"]);
    e.tty = true;
    e.stdin = true;
    f.exec(&e).await.unwrap();
    let dir = f.exec_dir("000000000012");
    let log = dir.join("log.json");
    let exec = ShimClient::connect(&dir).await.unwrap();
    let mut stdin = ShimClient::attach_stdin(&dir).await.unwrap();
    wait_for_output(&log, Stream::Stdout, "# ");
    exec.resize(33, 101).await.unwrap();
    stdin.write_all(b"stty size; echo $TERM\n").await.unwrap();
    wait_for_output(&log, Stream::Stdout, "33 101\r\nxterm\r\n");
    stdin.write_all(b"exit 3\n").await.unwrap();
    let status = exec.wait().await.unwrap();
    assert_eq!(status.code, Some(3));
    assert!(!log_output(&log, Stream::Stdout).contains("job control"));
    // A plain exec has no terminal to resize and no stdin.
    f.exec(&exec_config("000000000013", &["sleep", "1000"]))
        .await
        .unwrap();
    let dir = f.exec_dir("000000000013");
    let plain = ShimClient::connect(&dir).await.unwrap();
    assert!(plain.resize(1, 1).await.is_err());
    let err = ShimClient::attach_stdin(&dir).await.unwrap_err();
    assert!(
        matches!(&err, ShimError::Control(m) if m == "the exec was started without stdin"),
        "{err}"
    );
    plain.signal(9).await.unwrap();
    assert_eq!(plain.wait().await.unwrap().signal, Some(9));
    stop(&f, &container).await;
}

#[tokio::test]
async fn exec_stdin_pipe() {
    let f = Fixture::new();
    let container = idle(&f).await;
    let mut e = exec_config("000000000014", &["sh", "-c", "cat; echo done"]);
    e.stdin = true;
    f.exec(&e).await.unwrap();
    let dir = f.exec_dir("000000000014");
    let mut stdin = ShimClient::attach_stdin(&dir).await.unwrap();
    stdin.write_all(b"to the exec\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    let status = ShimClient::connect(&dir)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(status.code, Some(0));
    assert_eq!(
        log_output(&dir.join("log.json"), Stream::Stdout),
        "to the exec\ndone\n"
    );
    stop(&f, &container).await;
}
