//! End to end: the confinement a job can ask for (`--userns`, `--read-only`,
//! `--cap-add/--cap-drop`, `--security-opt`, `--pids-limit` and its default), on real
//! containers run by a real daemon.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{BIN, Daemon};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first host id a job's user namespace gets (`jobs::userns::FIRST_HOST_ID`).
const FIRST_HOST_ID: u32 = 0x7000_0000;

/// A host directory with a file owned by the host's root, mode 0644.
fn host_file() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("flynn-userns-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "host\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    dir
}

const PROBE: &str = "id -u; cat /proc/self/uid_map; stat -c %u:%g /bin/busybox; \
     (echo job >> /data/f) 2>/dev/null && echo WROTE || echo DENIED; \
     echo new > /made-by-job && echo ROOTFS-WRITABLE";

/// Runs the probe with `flags`; returns its lines.
fn probe(d: &Daemon, flags: &[&str], data: &Path) -> Vec<String> {
    let volume = format!("{}:/data", data.display());
    let mut args = vec!["run", "--net", "none", "-v", &volume];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--name", "probe", "busybox", "sh", "-c", PROBE]);
    let out = d.ok(&args);
    out.lines().map(str::to_string).collect()
}

fn check_userns_job(d: &Daemon, what: &str) {
    let data = host_file();
    let lines = probe(d, &["--userns"], data.path());
    assert_eq!(lines[0], "0", "{what}: root inside: {lines:?}");
    let map: Vec<u64> = lines[1]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(map, [0, FIRST_HOST_ID as u64, 65536], "{what}: uid_map");
    assert_eq!(
        lines[2], "0:0",
        "{what}: the image's files are root's inside"
    );
    assert_eq!(lines[3], "DENIED", "{what}: {lines:?}");
    assert_eq!(lines[4], "ROOTFS-WRITABLE", "{what}: {lines:?}");
    assert_eq!(
        std::fs::read_to_string(data.path().join("f")).unwrap(),
        "host\n"
    );
    let job = d.inspect("probe");
    assert_eq!(job["config"]["userns"]["host"], FIRST_HOST_ID, "{what}");
    let id = job["id"].as_str().unwrap();
    // What the job wrote is its range's on the host, not root's.
    let jobs = d.state_dir().join("jobs").join(id);
    let written = ["upper/made-by-job", "copy/made-by-job"]
        .iter()
        .map(|p| jobs.join(p))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{what}: the job's file is nowhere"));
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), FIRST_HOST_ID);
    d.ok(&["rm", "probe"]);

    // The same job without a user namespace is root on the host: it writes the file.
    let lines = probe(d, &["--userns=host"], data.path());
    assert_eq!(lines[1].split_whitespace().nth(1), Some("0"), "{lines:?}");
    assert_eq!(lines[3], "WROTE", "{what}: {lines:?}");
    d.ok(&["rm", "probe"]);

    // On the bridge network too (its network namespace is the host's to own: /sys
    // is the host's, bound read-only).
    let out = d.ok(&[
        "run",
        "--rm",
        "--userns",
        "busybox",
        "cat",
        "/proc/self/uid_map",
    ]);
    assert!(out.contains(&FIRST_HOST_ID.to_string()), "{what}: {out}");

    // exec joins the job's user namespace: its root cannot write the host's file either.
    let volume = format!("{}:/data", data.path().display());
    let before = std::fs::read_to_string(data.path().join("f")).unwrap();
    let id = d.run_detached(&["--userns", "-v", &volume, "busybox", "sleep", "60"]);
    let out = d.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "id -u; (echo exec >> /data/f) 2>/dev/null && echo WROTE || echo DENIED",
    ]);
    assert_eq!(out, "0\nDENIED\n", "{what}: exec into a --userns job");
    assert_eq!(
        std::fs::read_to_string(data.path().join("f")).unwrap(),
        before
    );
    d.ok(&["rm", "-f", &id]);
}

#[test]
fn a_userns_jobs_root_cannot_write_a_host_file_bound_into_it() {
    let d = Daemon::start();
    d.import_busybox();
    check_userns_job(&d, "idmapped layers");
    // Two jobs at once get two ranges.
    let a = d.run_detached(&["--userns", "--net", "none", "busybox", "sleep", "60"]);
    let b = d.run_detached(&["--userns", "--net", "none", "busybox", "sleep", "60"]);
    let range = |id: &str| d.inspect(id)["config"]["userns"]["host"].as_u64().unwrap();
    assert_eq!(range(&a), FIRST_HOST_ID as u64);
    assert_eq!(range(&b), FIRST_HOST_ID as u64 + 65536);
    d.ok(&["rm", "-f", &a, &b]);
    // No idmapped layer, overlay or copy stays mounted.
    let jobs = d.state_dir().join("jobs");
    assert!(
        common::mounts_under(&jobs).is_empty(),
        "{:?}",
        common::mounts_under(&jobs)
    );
}

#[test]
fn the_chowned_copy_fallback_confines_the_same() {
    let d = Daemon::start_with(Path::new(BIN), &[], &[("FLYNN_USERNS_NO_IDMAP", "1")]);
    d.import_busybox();
    check_userns_job(&d, "chowned copy");
    assert!(common::mounts_under(&d.state_dir().join("jobs")).is_empty());
}

#[test]
fn the_daemon_default_puts_jobs_in_user_namespaces_unless_they_opt_out() {
    let d = Daemon::start_with(Path::new(BIN), &["--userns"], &[]);
    d.import_busybox();
    let out = d.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "busybox",
        "cat",
        "/proc/self/uid_map",
    ]);
    assert!(out.contains(&FIRST_HOST_ID.to_string()), "{out}");
    let out = d.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--userns=host",
        "busybox",
        "cat",
        "/proc/self/uid_map",
    ]);
    assert_eq!(out.split_whitespace().nth(1), Some("0"), "{out}");

    // Host-network jobs are the platform's own: the default leaves them out, so they
    // read the host's platform key (root's, 0600) and bind a low port of the host.
    let dir = host_file();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "secret\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let volume = format!("{}:/run/flynn/tls:ro", dir.path().display());
    let script = "cat /proc/self/uid_map; cat /run/flynn/tls/key.pem; \
                  httpd -f -p 81 & sleep 1; kill $! && echo BOUND";
    let out = d.ok(&[
        "run", "--rm", "--net", "host", "-v", &volume, "busybox", "sh", "-c", script,
    ]);
    assert_eq!(out.split_whitespace().nth(1), Some("0"), "{out}");
    assert!(out.contains("secret"), "{out}");
    assert!(out.contains("BOUND"), "{out}");
    // Asked for in so many words, it gets one, and the key stays closed to it.
    let out = d.ok(&[
        "run",
        "--rm",
        "--net",
        "host",
        "--userns",
        "-v",
        &volume,
        "busybox",
        "sh",
        "-c",
        "cat /proc/self/uid_map; cat /run/flynn/tls/key.pem || echo NO-KEY",
    ]);
    assert!(out.contains(&FIRST_HOST_ID.to_string()), "{out}");
    assert!(out.contains("NO-KEY") && !out.contains("secret"), "{out}");

    let out = d.cli(&["run", "--userns=maybe", "busybox", "true"]);
    assert!(stderr(&out).contains("--userns=host"), "{}", stderr(&out));
}

#[test]
fn read_only_rootfs_refuses_writes() {
    let d = Daemon::start();
    d.import_busybox();
    let out = d.cli(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--read-only",
        "busybox",
        "sh",
        "-c",
        "touch /x; echo tmpfs > /dev/shm/y && cat /dev/shm/y",
    ]);
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "tmpfs\n");
    let out = d.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "touch /x && echo ok",
    ]);
    assert_eq!(out, "ok\n");
}

/// The effective capability mask of the job's process.
fn cap_eff(d: &Daemon, flags: &[&str]) -> u64 {
    let mut args = vec!["run", "--rm", "--net", "none"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["busybox", "grep", "CapEff", "/proc/self/status"]);
    let out = d.ok(&args);
    u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
fn capabilities_are_added_and_dropped_by_dockers_names() {
    let d = Daemon::start();
    d.import_busybox();
    const NET_RAW: u64 = 1 << 13;
    const SYS_ADMIN: u64 = 1 << 21;
    let default = cap_eff(&d, &[]);
    assert_eq!(default, 0xa80425fb, "Docker's 14 capabilities");
    assert_eq!(cap_eff(&d, &["--cap-drop", "NET_RAW"]), default & !NET_RAW);
    assert_eq!(
        cap_eff(&d, &["--cap-add", "cap_sys_admin"]),
        default | SYS_ADMIN
    );
    assert_eq!(
        cap_eff(&d, &["--cap-drop", "ALL", "--cap-add", "NET_RAW"]),
        NET_RAW
    );

    // What it means: ping needs a raw socket.
    let ping = ["busybox", "ping", "-c", "1", "-W", "2", "127.0.0.1"];
    let mut args = vec!["run", "--rm", "--net", "none"];
    args.extend_from_slice(&ping);
    d.ok(&args);
    let mut args = vec!["run", "--rm", "--net", "none", "--cap-drop", "NET_RAW"];
    args.extend_from_slice(&ping);
    let out = d.cli(&args);
    assert_ne!(out.status.code(), Some(0), "ping without NET_RAW");
    assert!(
        stderr(&out).contains("permitted") || stderr(&out).contains("denied"),
        "{}",
        stderr(&out)
    );

    let out = d.cli(&["run", "--rm", "--cap-add", "NET_FLY", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("unknown capability \"NET_FLY\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn seccomp_profiles_from_files_or_unconfined() {
    let d = Daemon::start();
    d.import_busybox();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let out = d.cli(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--security-opt",
        &opt,
        "busybox",
        "mkdir",
        "/newdir",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    d.ok(&[
        "run", "--rm", "--net", "none", "busybox", "mkdir", "/newdir",
    ]);

    // Docker's default profile denies new user namespaces without SYS_ADMIN;
    // unconfined does not.
    let unshare = ["busybox", "unshare", "-U", "true"];
    let mut args = vec!["run", "--rm", "--net", "none"];
    args.extend_from_slice(&unshare);
    let out = d.cli(&args);
    assert_ne!(
        out.status.code(),
        Some(0),
        "unshare under the default profile"
    );
    let mut args = vec![
        "run",
        "--rm",
        "--net",
        "none",
        "--security-opt",
        "seccomp=unconfined",
    ];
    args.extend_from_slice(&unshare);
    d.ok(&args);

    // Bad profiles and options are refused before anything runs.
    std::fs::write(&profile, r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#).unwrap();
    let out = d.cli(&["run", "--rm", "--security-opt", &opt, "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("not a Docker seccomp profile")
            && stderr(&out).contains("SCMP_ACT_MAYBE"),
        "{}",
        stderr(&out)
    );
    let out = d.cli(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=/no/such.json",
        "busybox",
        "true",
    ]);
    assert!(stderr(&out).contains("/no/such.json"), "{}", stderr(&out));
    let out = d.cli(&[
        "run",
        "--rm",
        "--security-opt",
        "apparmor=x",
        "busybox",
        "true",
    ]);
    assert!(
        stderr(&out).contains("no SELinux or AppArmor"),
        "{}",
        stderr(&out)
    );
    let (status, body) = d.http(
        "POST",
        "/jobs",
        Some(r#"{"image": "busybox", "security_opt": ["privileged"]}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown security option"), "{body}");
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");
}

#[test]
fn no_new_privileges_is_on_unless_turned_off() {
    let d = Daemon::start();
    d.import_busybox();
    let nnp = |flags: &[&str]| {
        let mut args = vec!["run", "--rm", "--net", "none"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["busybox", "grep", "NoNewPrivs", "/proc/self/status"]);
        d.ok(&args).split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(nnp(&[]), "1");
    assert_eq!(nnp(&["--security-opt", "no-new-privileges"]), "1");
    assert_eq!(
        nnp(&[
            "--security-opt",
            "no-new-privileges:false",
            "--security-opt",
            "seccomp=unconfined"
        ]),
        "0"
    );
    // The filter goes in after the capabilities are dropped: only with no_new_privileges.
    let out = d.cli(&[
        "run",
        "--rm",
        "--security-opt",
        "no-new-privileges:false",
        "busybox",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("needs seccomp=unconfined"),
        "{}",
        stderr(&out)
    );
}

fn pids_max(id: &str) -> String {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let path = if v2 {
        format!("/sys/fs/cgroup/flynn/{id}/pids.max")
    } else {
        format!("/sys/fs/cgroup/pids/flynn/{id}/pids.max")
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn a_pids_limit_applies_by_default() {
    let d = Daemon::start();
    d.import_busybox();
    let id = d.run_detached(&["--net", "none", "busybox", "sleep", "60"]);
    assert_eq!(pids_max(&id), "4096");
    assert_eq!(d.inspect(&id)["config"]["resources"]["pids_limit"], 4096);
    let unlimited = d.run_detached(&[
        "--net",
        "none",
        "--pids-limit",
        "-1",
        "busybox",
        "sleep",
        "60",
    ]);
    assert_eq!(pids_max(&unlimited), "max");
    d.ok(&["rm", "-f", &id, &unlimited]);

    let d = Daemon::start_with(Path::new(BIN), &["--default-pids-limit", "100"], &[]);
    d.import_busybox();
    let id = d.run_detached(&["--net", "none", "busybox", "sleep", "60"]);
    assert_eq!(pids_max(&id), "100");
    d.ok(&["rm", "-f", &id]);
}
