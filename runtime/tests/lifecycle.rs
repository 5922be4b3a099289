//! Containers run end to end through the shim binary: output, exit statuses, cleanup.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use common::Fixture;
use runtime::logs::Stream;

#[tokio::test]
async fn echo_hello_is_logged_and_exits_zero() {
    let f = Fixture::new();
    let status = f.run(f.container(&["echo", "hello"])).await;
    assert_eq!(status.code, Some(0));
    assert_eq!(status.signal, None);
    assert!(!status.oom_killed);
    assert_eq!(status.exit_code(), 0);
    let logs = f.logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0].log, "hello\n");
    assert_eq!(logs[0].stream, Stream::Stdout);
    // The exit record is durable and matches what the waiter got.
    assert_eq!(runtime::shim::read_exit(&f.job_dir).unwrap(), Some(status));
}

#[tokio::test]
async fn exit_code_is_recorded() {
    let f = Fixture::new();
    let status = f
        .run(f.container(&["sh", "-c", "echo out; echo err >&2; exit 3"]))
        .await;
    assert_eq!((status.code, status.signal), (Some(3), None));
    assert_eq!(status.exit_code(), 3);
    assert_eq!(f.output(Stream::Stdout), "out\n");
    assert_eq!(f.output(Stream::Stderr), "err\n");
}

#[tokio::test]
async fn unterminated_and_invalid_output_is_kept() {
    let f = Fixture::new();
    // 40000 bytes without a newline, then a line with a byte that is not UTF-8.
    let script = "head -c 40000 /dev/zero | tr '\\0' x; printf 'bad \\377\\n'; printf tail";
    let status = f.run(f.container(&["sh", "-c", script])).await;
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    let logs: Vec<String> = f.logs().into_iter().map(|e| e.log).collect();
    // How the output is cut depends on how it was read; no entry is over 16 KiB, and
    // together they are what the program wrote.
    assert!(logs.iter().all(|l| l.len() <= 16384), "{logs:?}");
    assert_eq!(
        logs.concat(),
        format!("{}bad \u{fffd}\ntail", "x".repeat(40000))
    );
    assert!(
        logs.iter().any(|l| l.ends_with("bad \u{fffd}\n")),
        "{logs:?}"
    );
    assert_eq!(logs.last().map(String::as_str), Some("tail"));
}

#[tokio::test]
async fn env_cwd_hostname_and_user() {
    let f = Fixture::new();
    let mut c = f.container(&[
        "sh",
        "-c",
        "id -u; id -g; id -G; pwd; echo $HOME; echo $FOO; echo $PATH; hostname; echo $HOSTNAME",
    ]);
    c.user = "app".into();
    c.cwd = "/work/dir".into();
    c.env = vec!["FOO=bar".into()];
    c.hostname = "web-1".into();
    let status = f.run(c).await;
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    assert_eq!(
        f.stdout(),
        "1000\n1000\n1000 29 44\n/work/dir\n/home/app\nbar\n\
         /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nweb-1\nweb-1\n"
    );
    // The missing working directory was created, owned by root.
    let meta = std::fs::metadata(f.rootfs.join("work/dir")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
}

#[tokio::test]
async fn numeric_user_and_group() {
    let f = Fixture::new();
    let mut c = f.container(&["sh", "-c", "id -u; id -g; id -G; echo $HOME"]);
    c.user = "4242:audio".into();
    let status = f.run(c).await;
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    assert_eq!(f.stdout(), "4242\n29\n29\n/\n");
}

#[tokio::test]
async fn create_errors_surface_and_leave_nothing() {
    let f = Fixture::new();
    let mut c = f.container(&["true"]);
    c.user = "ghost".into();
    let err = runtime::shim::spawn(
        std::path::Path::new(common::SHIM_EXE),
        &f.job_dir,
        &f.shim_config(c),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, runtime::shim::ShimError::Create(_)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("unable to find user ghost: no matching entries in passwd file"),
        "{err}"
    );
    f.assert_gone();

    // A command that does not exist fails at create, like Docker's run.
    let f = Fixture::new();
    let err = runtime::shim::spawn(
        std::path::Path::new(common::SHIM_EXE),
        &f.job_dir,
        &f.shim_config(f.container(&["/no/such/binary"])),
    )
    .await;
    match err {
        Err(e) => {
            assert!(matches!(e, runtime::shim::ShimError::Create(_)), "{e:?}");
            f.assert_gone();
        }
        // libcontainer may only find out at exec time: then the start fails instead.
        Ok(created) => {
            let started = created.start().await;
            assert!(started.is_err(), "exec of a missing binary started");
            f.assert_gone();
        }
    }
}

#[tokio::test]
async fn socket_path_too_long_is_refused() {
    let f = Fixture::new();
    let deep = f.tmp.path().join("x".repeat(100));
    std::fs::create_dir(&deep).unwrap();
    let err = runtime::shim::spawn(
        std::path::Path::new(common::SHIM_EXE),
        &deep,
        &f.shim_config(f.container(&["true"])),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, runtime::shim::ShimError::SocketPathTooLong { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("107-byte limit"), "{err}");
}

#[tokio::test]
async fn stdin_eof_before_start_leaves_nothing_behind() {
    let f = Fixture::new();
    let created = f.create(f.container(&["sh", "-c", "echo never"])).await;
    let pid = created.pid();
    let shim_pid = created.shim_pid();
    // Created: init exists and waits, libcontainer state and cgroups exist.
    assert!(common::is_alive(pid));
    assert!(f.state_root.join(&f.id).exists());
    assert!(!runtime::cgroup::existing_dirs(&f.id).unwrap().is_empty());

    created.abort().await;
    f.assert_gone();
    // The shim reaped init before deleting the container, and exits right after.
    assert!(!common::is_alive(pid), "init {pid} survived");
    common::wait_until_dead(shim_pid);
    assert_eq!(runtime::shim::read_exit(&f.job_dir).unwrap(), None);
    assert!(!f.log_path.exists() || f.stdout().is_empty());
}

const SECCOMP_CHECK: &str = "grep '^Seccomp:' /proc/self/status; unshare -U true; \
                             echo unshare-exit=$?; sh -c 'echo forked'";

fn cache_files(f: &Fixture) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(f.state_root.join("seccomp")) {
        Ok(dir) => dir.map(|e| e.unwrap().path()).collect(),
        Err(_) => vec![],
    }
}

fn assert_filtered(f: &Fixture, status: &runtime::ExitStatus) {
    assert_eq!(status.code, Some(0), "{}", f.output(Stream::Stderr));
    let out = f.stdout();
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("unshare-exit=1"), "{out}");
    assert!(out.contains("forked"), "{out}");
}

#[tokio::test]
async fn the_seccomp_filter_is_compiled_once_per_host() {
    use std::os::unix::fs::MetadataExt;
    let first = Fixture::new();
    assert_filtered(
        &first,
        &first
            .run(first.container(&["sh", "-c", SECCOMP_CHECK]))
            .await,
    );
    let files = cache_files(&first);
    assert_eq!(files.len(), 1, "{files:?}");
    let before = std::fs::metadata(&files[0]).unwrap();

    // A second container of the same host (same state root) loads the cached program.
    let mut second = Fixture::new();
    second.state_root = first.state_root.clone();
    assert_filtered(
        &second,
        &second
            .run(second.container(&["sh", "-c", SECCOMP_CHECK]))
            .await,
    );
    assert_eq!(cache_files(&second), files);
    let after = std::fs::metadata(&files[0]).unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mtime(), before.mtime_nsec()),
        "the cache file was rewritten"
    );
}

#[tokio::test]
async fn a_corrupt_seccomp_cache_is_rebuilt_not_loaded() {
    let first = Fixture::new();
    assert_eq!(first.run(first.container(&["true"])).await.code, Some(0));
    let files = cache_files(&first);
    assert_eq!(files.len(), 1, "{files:?}");
    let good = std::fs::read(&files[0]).unwrap();

    for (n, corrupt) in [good[..good.len() - 3].to_vec(), {
        let mut flipped = good.clone();
        flipped[good.len() / 3] ^= 0x01;
        flipped
    }]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&files[0], &corrupt).unwrap();
        let mut f = Fixture::new();
        f.state_root = first.state_root.clone();
        assert_filtered(&f, &f.run(f.container(&["sh", "-c", SECCOMP_CHECK])).await);
        assert_eq!(std::fs::read(&files[0]).unwrap(), good, "corruption {n}");
        assert!(f.shim_log().contains("corrupt"), "{}", f.shim_log());
    }
}

#[tokio::test]
async fn config_json_shows_the_profile_the_bundle_does_not() {
    let f = Fixture::new();
    assert_eq!(f.run(f.container(&["true"])).await.code, Some(0));
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    };
    let full = read(f.job_dir.join("config.json"));
    let bundle = read(f.job_dir.join("bundle/config.json"));
    assert_eq!(full["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert!(bundle["linux"].get("seccomp").is_none(), "{bundle}");
    let mut stripped = full.clone();
    stripped["linux"].as_object_mut().unwrap().remove("seccomp");
    assert_eq!(stripped, bundle);
}

#[tokio::test]
async fn a_job_can_start_again_as_soon_as_its_exit_is_known() {
    // The agent may start a job again the moment it hears of the exit, while the previous
    // shim is still deleting the container (same id, same job dir): the new shim waits
    // for the old one to finish.
    let f = Fixture::new();
    for round in 0..3 {
        let client = f.start(f.container(&["sh", "-c", "echo run"])).await;
        let status = client.wait().await.unwrap();
        assert_eq!(status.code, Some(0), "round {round}: {}", f.shim_log());
    }
    f.assert_gone();
    assert_eq!(f.stdout(), "run\nrun\nrun\n");
}
