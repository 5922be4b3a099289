//! The appliance boots wherever a user boots it: each row is one machine a user
//! might have (CPU model, firmware, the bus of the boot medium, NIC, memory,
//! console), booted from `out/` as they would, and must reach `ready`, answer on
//! its API and run a container. Together the rows cover every value of each
//! column (see `buildroot/README.md`, "Machines"). QEMU's own defaults are the
//! first row: `pc`, `qemu64` (no RDRAND), one vCPU, e1000, the ISO on IDE.
//!
//! Each row's time to `ready` goes to `target/qemu-logs/boot-matrix.txt`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use qemu_tests::{Boot, Bus, Console, Disk, Firmware, Machine, appliance_out, static_flynn_host};

const BOOT: Duration = Duration::from_secs(300);

struct Row {
    name: &'static str,
    cpu: &'static str,
    machine_type: &'static str,
    firmware: Firmware,
    /// The ISO as a CD-ROM on this bus, or (None) the raw disk on `disk_bus`.
    cdrom: Option<Bus>,
    disk_bus: Bus,
    nic: &'static str,
    memory_mb: u32,
    cpus: u32,
    console: Console,
    /// Runs `run --rm` [`stress_rounds`] times, not once.
    stress: bool,
}

/// How many `run --rm` the stressed row runs: `FLYNN_STRESS_ROUNDS`, else 10.
fn stress_rounds() -> u32 {
    std::env::var("FLYNN_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn boot(row: Row) {
    let out = appliance_out().unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::tempdir().unwrap();
    let boot = match row.cdrom {
        Some(_) => Boot::Cdrom(out.join("flynn-x86_64.iso")),
        None => Boot::Disk,
    };
    let mut m = Machine::new(row.name, boot);
    m.cpu = Some(row.cpu);
    m.machine_type = row.machine_type;
    m.firmware = row.firmware;
    m.cdrom_bus = row.cdrom.unwrap_or(Bus::Ide);
    m.disk_bus = row.disk_bus;
    m.nic_model = row.nic;
    m.memory_mb = row.memory_mb;
    m.cpus = row.cpus;
    m.console = row.console;
    if row.cdrom.is_none() {
        m.disks.push(Disk {
            path: overlay(&out.join("flynn-x86_64.raw"), work.path()),
            format: "qcow2",
        });
    }
    let mut vm = m
        .start(work.path())
        .unwrap_or_else(|e| panic!("{}: {e}", row.name));
    let ready = vm
        .wait_ready(BOOT)
        .unwrap_or_else(|e| panic!("{}: {e}", row.name));
    let secs = ready.after.as_secs_f64();
    record(row.name, secs);

    let cli = static_flynn_host().unwrap_or_else(|e| panic!("{e}"));
    // The q35 row with two vCPUs once saw a `run --rm` that never returned (in CI,
    // beside other VMs): it runs the start again and again, each bounded.
    let rounds = if row.stress { stress_rounds() } else { 1 };
    for round in 1..=rounds {
        let word = format!("hello-{round}");
        let out = vm.cli(&cli, &["run", "--rm", "busybox", "echo", &word]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == word,
            "{}: run {round}: {}\nstderr: {}\nconsole: {}",
            row.name,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            vm.vm.log_path().display()
        );
    }
    if rounds > 1 {
        let left = vm.cli(&cli, &["ps", "-aq"]);
        assert!(
            String::from_utf8_lossy(&left.stdout).trim().is_empty(),
            "{}: jobs left after {rounds} runs with --rm: {}",
            row.name,
            String::from_utf8_lossy(&left.stdout)
        );
    }
    if row.console == Console::Serial {
        for bad in ["FATAL", "Kernel panic", "panicked"] {
            assert!(
                !ready.console.contains(bad),
                "{}: {bad}:\n{}",
                row.name,
                ready.console
            );
        }
    }
    vm.power_button().unwrap_or_else(|e| panic!("{e}"));
    vm.vm
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{}: the VM did not power off: {e}", row.name));
}

/// A copy-on-write overlay of the raw image, so every row boots a pristine disk.
fn overlay(raw: &Path, dir: &Path) -> PathBuf {
    let path = dir.join("disk.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(raw)
        .arg(&path)
        .status()
        .expect("qemu-img (apt-get install qemu-utils)");
    assert!(status.success(), "qemu-img create failed");
    path
}

fn record(name: &str, secs: f64) {
    use std::io::Write;
    let logs = qemu_tests::workspace_root().join("target/qemu-logs");
    let _ = std::fs::create_dir_all(&logs);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("boot-matrix.txt"))
    {
        let _ = writeln!(f, "{name:<40} ready after {secs:6.1} s");
    }
    eprintln!("{name}: ready after {secs:.1} s");
}

#[test]
fn qemu_defaults_pc_qemu64_seabios_iso_on_ide_e1000_512m() {
    boot(Row {
        name: "matrix-defaults",
        cpu: "qemu64",
        machine_type: "pc",
        firmware: Firmware::Bios,
        cdrom: Some(Bus::Ide),
        disk_bus: Bus::Virtio,
        nic: "e1000",
        memory_mb: 512,
        cpus: 1,
        console: Console::Serial,
        stress: false,
    });
}

#[test]
fn qemu64_q35_ovmf_iso_on_ahci_virtio_net_2g() {
    boot(Row {
        name: "matrix-qemu64-ovmf-ahci",
        cpu: "qemu64",
        machine_type: "q35",
        firmware: Firmware::Uefi,
        cdrom: Some(Bus::Ahci),
        disk_bus: Bus::Virtio,
        nic: "virtio-net-pci",
        memory_mb: 2048,
        cpus: 2,
        console: Console::Serial,
        stress: false,
    });
}

#[test]
fn qemu64_vga_console_without_a_serial_port() {
    boot(Row {
        name: "matrix-qemu64-vga",
        cpu: "qemu64",
        machine_type: "pc",
        firmware: Firmware::Bios,
        cdrom: Some(Bus::Ide),
        disk_bus: Bus::Virtio,
        nic: "virtio-net-pci",
        memory_mb: 512,
        cpus: 1,
        console: Console::Vga,
        stress: false,
    });
}

#[test]
fn nehalem_seabios_raw_on_virtio_blk_rtl8139_512m() {
    boot(Row {
        name: "matrix-nehalem-virtio-rtl8139",
        cpu: "Nehalem",
        machine_type: "pc",
        firmware: Firmware::Bios,
        cdrom: None,
        disk_bus: Bus::Virtio,
        nic: "rtl8139",
        memory_mb: 512,
        cpus: 1,
        console: Console::Serial,
        stress: false,
    });
}

#[test]
fn nehalem_ovmf_raw_on_nvme_e1000e_2g() {
    boot(Row {
        name: "matrix-nehalem-ovmf-nvme",
        cpu: "Nehalem",
        machine_type: "q35",
        firmware: Firmware::Uefi,
        cdrom: None,
        disk_bus: Bus::Nvme,
        nic: "e1000e",
        memory_mb: 2048,
        cpus: 2,
        console: Console::Serial,
        stress: false,
    });
}

#[test]
fn max_seabios_raw_on_ahci_e1000_1g() {
    boot(Row {
        name: "matrix-max-ahci",
        cpu: "max",
        machine_type: "q35",
        firmware: Firmware::Bios,
        cdrom: None,
        disk_bus: Bus::Ahci,
        nic: "e1000",
        memory_mb: 1024,
        cpus: 2,
        console: Console::Serial,
        stress: true,
    });
}

#[test]
fn max_ovmf_iso_on_ide_pc_virtio_net_512m() {
    boot(Row {
        name: "matrix-max-ovmf-pc-ide",
        cpu: "max",
        machine_type: "pc",
        firmware: Firmware::Uefi,
        cdrom: Some(Bus::Ide),
        disk_bus: Bus::Virtio,
        nic: "virtio-net-pci",
        memory_mb: 512,
        cpus: 1,
        console: Console::Serial,
        stress: false,
    });
}

/// A machine the appliance cannot serve from (no NIC at all) boots anyway and says
/// why on its console, never a silent stall: the warning, then `ready` (the API on
/// its own addresses only).
#[test]
fn without_a_nic_the_console_says_so_and_boot_goes_on() {
    let out = appliance_out().unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::tempdir().unwrap();
    let mut m = Machine::new("matrix-no-nic", Boot::Cdrom(out.join("flynn-x86_64.iso")));
    m.cpu = Some("qemu64");
    m.machine_type = "pc";
    m.memory_mb = 512;
    m.cpus = 1;
    m.nics = Vec::new();
    let mut vm = m.start(work.path()).unwrap_or_else(|e| panic!("{e}"));
    let console = vm
        .vm
        .wait_for("flynn-init: ready: API", BOOT)
        .unwrap_or_else(|e| panic!("no ready line without a NIC: {e}"));
    assert!(
        console.contains("network: no interface found; the API is reachable only from inside"),
        "no word of the missing NIC:\n{}",
        qemu_tests::console_tail(&console)
    );
    vm.power_button().unwrap_or_else(|e| panic!("{e}"));
    vm.vm
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("the VM did not power off: {e}"));
}
