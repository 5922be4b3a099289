//! The appliance images from `buildroot/assemble.sh` (in `out/`), booted under
//! QEMU as a user would boot them: the ISO on SeaBIOS and on OVMF, the raw GPT
//! disk and the qcow2 on OVMF, and the kernel + initramfs directly with
//! configuration on the command line, in a NoCloud seed, or from a fake EC2
//! metadata service. The API is reached through a port forward on 127.0.0.1;
//! the guests' networks are QEMU's isolated user-mode networks (`restrict=on`).
//! Console logs are written to `target/qemu-logs/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qemu_tests::{Appliance, Boot, Disk, Firmware, Machine, Nic, appliance_out, static_flynn_host};

const BOOT: Duration = Duration::from_secs(300);
const STOP: Duration = Duration::from_secs(90);

fn out() -> PathBuf {
    appliance_out().unwrap_or_else(|e| panic!("{e}"))
}

fn cli() -> PathBuf {
    static_flynn_host().unwrap_or_else(|e| panic!("{e}"))
}

fn sparse_disk(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
}

/// Runs the CLI against the appliance; panics with the console log's path on failure.
fn run(vm: &Appliance, args: &[&str]) -> String {
    let out = vm.cli(&cli(), args);
    assert!(
        out.status.success(),
        "flynn-host {args:?}: {}\nstdout: {}\nstderr: {}\nconsole: {}; its end:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        vm.vm.log_path().display(),
        qemu_tests::console_tail(&vm.vm.console())
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Presses the power button and checks the stop was clean.
fn power_off(vm: &mut Appliance) -> String {
    vm.power_button().unwrap_or_else(|e| panic!("{e}"));
    vm.vm
        .wait_exit(STOP)
        .unwrap_or_else(|e| panic!("the VM did not power off: {e}"));
    let console = vm.vm.console();
    assert!(
        console.contains("flynn-init: power button pressed"),
        "{console}"
    );
    assert!(
        console.contains("flynn-init: unmounted /var/lib/flynn cleanly"),
        "{console}"
    );
    assert!(console.contains("flynn-init: power off"), "{console}");
    console
}

fn assert_no_failure(console: &str) {
    for bad in ["FATAL", "Kernel panic", "did not load", "panicked"] {
        assert!(!console.contains(bad), "{bad:?} on the console:\n{console}");
    }
}

/// Where the image's second partition (flynn-state) starts, from its GPT.
fn state_partition_offset(image: &Path) -> u64 {
    let out = std::process::Command::new("sfdisk")
        .arg("--json")
        .arg(image)
        .output()
        .expect("sfdisk (apt-get install fdisk)");
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sfdisk --json");
    let sector = table["partitiontable"]["sectorsize"]
        .as_u64()
        .unwrap_or(512);
    let start = table["partitiontable"]["partitions"][1]["start"]
        .as_u64()
        .expect("a second partition");
    start * sector
}

/// The ext4 superblock of the partition at `offset` says "cleanly unmounted".
fn ext4_clean_at(image: &Path, offset: u64) -> bool {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(image).unwrap();
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(offset + 1024)).unwrap();
    f.read_exact(&mut sb).unwrap();
    assert_eq!(&sb[0x38..0x3a], &[0x53, 0xef], "no ext4 at offset {offset}");
    let state = u16::from_le_bytes([sb[0x3a], sb[0x3b]]);
    state & 1 == 1
}

#[test]
fn iso_on_seabios_formats_a_blank_disk_and_runs_a_container() {
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("state.raw");
    sparse_disk(&disk, 256);
    let mut m = Machine::new("iso-seabios", Boot::Cdrom(out().join("flynn-x86_64.iso")));
    m.disks.push(Disk {
        path: disk,
        format: "raw",
    });
    let mut vm = m.start(work.path()).unwrap();
    let ready = vm.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));
    assert!(ready.console.contains("ISOLINUX") || ready.console.contains("flynn-init"));
    assert!(
        ready
            .console
            .contains("state on /dev/vda (ext4 FLYNN_STATE, formatted now: it was blank)"),
        "{}",
        ready.console
    );
    assert!(ready.console.contains("network: eth0 10.0.2.15/24 (DHCP"));
    assert!(
        ready
            .console
            .contains("imported /usr/share/flynn/images/busybox-docker.tar")
    );
    let hello = run(
        &vm,
        &["run", "--rm", "busybox", "echo", "hello from the appliance"],
    );
    assert_eq!(hello.trim(), "hello from the appliance");
    // The job's network: its own namespace on the bridge, NAT to the outside.
    let ip = run(
        &vm,
        &["run", "--rm", "busybox", "ip", "-4", "addr", "show", "eth0"],
    );
    assert!(ip.contains("inet 10.88.0."), "{ip}");
    // No shell on the appliance: its daemon's log is read through the API.
    let log = run(&vm, &["daemon-log", "-n", "500"]);
    assert!(
        log.lines().count() > 3 && log.contains("flynn-host daemon ready"),
        "the daemon's log through the API:\n{log}"
    );
    let console = power_off(&mut vm);
    assert_no_failure(&console);
}

#[test]
fn iso_on_ovmf_boots_with_state_on_tmpfs() {
    let work = tempfile::tempdir().unwrap();
    let mut m = Machine::new("iso-ovmf", Boot::Cdrom(out().join("flynn-x86_64.iso")));
    m.firmware = Firmware::Uefi;
    let mut vm = m.start(work.path()).unwrap();
    let ready = vm.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ready.console.contains("state on tmpfs at /var/lib/flynn"),
        "{}",
        ready.console
    );
    let v = run(&vm, &["version"]);
    assert!(v.contains("Daemon: "), "{v}");
    let console = power_off(&mut vm);
    assert_no_failure(&console);
}

#[test]
fn raw_disk_keeps_state_and_restarts_jobs_across_a_reboot() {
    let work = tempfile::tempdir().unwrap();
    let raw = work.path().join("disk.raw");
    let copied = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(out().join("flynn-x86_64.raw"))
        .arg(&raw)
        .status()
        .unwrap();
    assert!(copied.success());
    let machine = |name: &str| {
        let mut m = Machine::new(name, Boot::Disk);
        m.firmware = Firmware::Uefi;
        m.disks.push(Disk {
            path: raw.clone(),
            format: "raw",
        });
        m
    };

    let mut vm = machine("raw-boot1").start(work.path()).unwrap();
    let ready = vm.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ready
            .console
            .contains("state on /dev/vda2 (ext4 FLYNN_STATE, formatted now: it was blank)"),
        "{}",
        ready.console
    );
    run(
        &vm,
        &[
            "run",
            "-d",
            "--name",
            "keeper",
            "--restart",
            "always",
            "busybox",
            "sh",
            "-c",
            "echo up; exec sleep 100000",
        ],
    );
    let console = power_off(&mut vm);
    assert_no_failure(&console);
    // Partition 2 starts after the 1 MiB gap and the 64 MiB ESP.
    assert!(
        ext4_clean_at(&raw, state_partition_offset(&raw)),
        "the state file system was not cleanly unmounted"
    );

    let mut vm = machine("raw-boot2").start(work.path()).unwrap();
    let ready = vm.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ready
            .console
            .contains("state on /dev/vda2 (ext4 FLYNN_STATE), mounted on /var/lib/flynn"),
        "{}",
        ready.console
    );
    // Imported at first boot only.
    assert!(!ready.console.contains("imported /usr/share/flynn/images"));
    let mut state = String::new();
    for _ in 0..100 {
        let job: serde_json::Value = serde_json::from_str(&run(&vm, &["inspect", "keeper"]))
            .unwrap_or_else(|e| panic!("inspect's JSON: {e}"));
        state = job[0]["state"].as_str().unwrap_or_default().to_string();
        if state == "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(state, "running", "the job did not come back");
    // The log is kept across restarts: one line per start (the second may take
    // a moment to be written after the state says running).
    let mut logs = String::new();
    for _ in 0..50 {
        logs = run(&vm, &["logs", "keeper"]);
        if logs.matches("up").count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(logs.matches("up").count(), 2, "one start per boot: {logs}");
    let console = power_off(&mut vm);
    assert_no_failure(&console);
}

#[test]
fn qcow2_boots_on_ovmf() {
    let work = tempfile::tempdir().unwrap();
    let overlay = work.path().join("overlay.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(out().join("flynn-x86_64.qcow2"))
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(made.success());
    let mut m = Machine::new("qcow2-ovmf", Boot::Disk);
    m.firmware = Firmware::Uefi;
    m.disks.push(Disk {
        path: overlay,
        format: "qcow2",
    });
    let mut vm = m.start(work.path()).unwrap();
    let ready = vm.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ready.console.contains("state on /dev/vda2"),
        "{}",
        ready.console
    );
    let hello = run(&vm, &["run", "--rm", "busybox", "echo", "qcow2"]);
    assert_eq!(hello.trim(), "qcow2");
    let console = power_off(&mut vm);
    assert_no_failure(&console);
}

fn kernel_boot(append: &str) -> Boot {
    let out = out();
    Boot::Kernel {
        kernel: out.join("flynn-x86_64.vmlinuz"),
        initrd: out.join("flynn-x86_64.initramfs"),
        append: format!("console=ttyS0 quiet {append}"),
    }
}

/// A vfat NoCloud seed labelled CIDATA holding `user-data` and `meta-data`.
fn nocloud_seed(path: &Path, user_data: &str, meta_data: &str) {
    let dir = path.with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("user-data"), user_data).unwrap();
    std::fs::write(dir.join("meta-data"), meta_data).unwrap();
    let ok = |c: &mut std::process::Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(std::process::Command::new("mkfs.fat")
        .args(["-n", "CIDATA", "-C"])
        .arg(path)
        .arg("2048")
        .stdout(std::process::Stdio::null()));
    for f in ["user-data", "meta-data"] {
        ok(std::process::Command::new("mcopy")
            .arg("-i")
            .arg(path)
            .arg(dir.join(f))
            .arg(format!("::/{f}")));
    }
}

#[test]
fn command_line_and_nocloud_seed_configure_the_host() {
    let work = tempfile::tempdir().unwrap();
    let seed = work.path().join("seed.img");
    nocloud_seed(
        &seed,
        "#cloud-config is not parsed: KEY=VALUE lines are\nhostname=seed-host\ntoken=ignored-the-command-line-wins\ncolour=blue\n",
        "instance-id: i-1\nlocal-hostname: meta-host\n",
    );
    let token = "cmdline-token-0123456789";
    let mut m = Machine::new(
        "kernel-nocloud",
        kernel_boot(&format!(
            "ip=10.0.2.77::10.0.2.2:255.255.255.0:ip-host:eth0:off:10.0.2.3 flynn.token={token}"
        )),
    );
    m.nics = vec![Nic::User {
        net: None,
        guest_ip: Some("10.0.2.77".parse().unwrap()),
        guestfwd: Vec::new(),
    }];
    m.disks.push(Disk {
        path: seed,
        format: "raw",
    });
    let mut vm = m.start(work.path()).unwrap();
    let ready = vm.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));
    let c = &ready.console;
    assert!(
        c.contains("network: eth0 10.0.2.77/24 (static, from ip=) via 10.0.2.2"),
        "{c}"
    );
    assert!(
        c.contains("configuration from the NoCloud seed on /dev/vda (user data)"),
        "{c}"
    );
    assert!(c.contains("unknown key \"colour\""), "{c}");
    assert!(c.contains("host name: seed-host"), "{c}");
    assert!(c.contains("no FLYNN_STATE file system"), "{c}");
    // A single host serves its API over HTTPS off loopback, and says its pin.
    assert_eq!(ready.address, "https://10.0.2.77:1113");
    assert!(ready.pin.as_deref().is_some_and(|p| p.len() == 44), "{c}");
    assert_eq!(ready.token, token);
    let name = run(
        &vm,
        &["run", "--rm", "--net", "host", "busybox", "hostname"],
    );
    assert_eq!(name.trim(), "seed-host");
    // A wrong token is refused.
    vm.token = Some("wrong-token-0123456789".into());
    let refused = vm.cli(&cli(), &["ps"]);
    assert!(!refused.status.success());
    vm.token = Some(token.into());
    // A wrong pin is refused before the token goes out; plain HTTP to the
    // forwarded port gets a 400 that says to use HTTPS.
    let pin = vm.pin.take();
    vm.pin = Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into());
    let wrong = vm.cli(&cli(), &["ps"]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    vm.pin = None;
    let plain = vm.cli(&cli(), &["ps"]);
    assert!(!plain.status.success());
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("HTTPS"),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    vm.pin = pin;
    let console = power_off(&mut vm);
    assert_no_failure(&console);
}

/// A fake EC2 instance metadata service (IMDSv2) on 127.0.0.1: a session token
/// from PUT /latest/api/token, user data and host name only with it.
fn fake_imds(user_data: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(16) {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut token = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                if k.eq_ignore_ascii_case("x-aws-ec2-metadata-token") {
                    token = Some(v.trim().to_string());
                }
            }
            let mut parts = request.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            log.lock()
                .unwrap()
                .push(format!("{method} {path} {token:?}"));
            let authorized = token.as_deref() == Some("imds-session-1");
            let (status, body) = match (method, path) {
                ("PUT", "/latest/api/token") => ("200 OK", "imds-session-1"),
                (_, _) if !authorized => ("401 Unauthorized", ""),
                ("GET", "/latest/user-data") => ("200 OK", user_data),
                ("GET", "/latest/meta-data/local-hostname") => {
                    ("200 OK", "ip-169-254-0-15.ec2.internal")
                }
                _ => ("404 Not Found", ""),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

#[test]
fn ec2_user_data_from_the_metadata_service() {
    let work = tempfile::tempdir().unwrap();
    let token = "ec2-user-data-token-0123";
    let (port, seen) = fake_imds("flynn.token=ec2-user-data-token-0123\n");
    // The guest's network is 169.254.0.0/16 so that the link-local metadata
    // address is inside it; QEMU hands each guest connection to 169.254.169.254:80
    // to busybox nc, which connects to the fake service on 127.0.0.1. With
    // restrict=on nothing else leaves QEMU.
    let mut m = Machine::new("kernel-ec2", kernel_boot(""));
    m.nics = vec![Nic::User {
        net: Some("169.254.0.0/16".into()),
        guest_ip: None,
        guestfwd: vec![format!(
            "tcp:169.254.169.254:80-cmd:/bin/busybox nc 127.0.0.1 {port}"
        )],
    }];
    m.smbios = vec!["type=1,manufacturer=Amazon EC2".into()];
    let mut vm = m.start(work.path()).unwrap();
    let ready = vm.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));
    let c = &ready.console;
    assert!(
        c.contains("configuration from the EC2 metadata service 169.254.169.254:80 (user data)"),
        "{c}"
    );
    assert!(c.contains("host name: ip-169-254-0-15"), "{c}");
    assert_eq!(ready.token, token);
    let requests = seen.lock().unwrap().clone();
    assert_eq!(
        requests.first().map(String::as_str),
        Some("PUT /latest/api/token None"),
        "{requests:?}"
    );
    assert!(
        requests.contains(&"GET /latest/user-data Some(\"imds-session-1\")".to_string()),
        "{requests:?}"
    );
    run(&vm, &["version"]);
    let console = power_off(&mut vm);
    assert_no_failure(&console);
}
