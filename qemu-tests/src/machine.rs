//! Appliance VMs: a machine description (firmware, boot medium, disks, NICs)
//! turned into QEMU arguments, a QMP socket for the power button, and the
//! agent's API reached from the test through a user-mode port forward on
//! 127.0.0.1.
//!
//! User-mode networking is always `restrict=on`: the guest reaches nothing
//! outside QEMU except what is forwarded explicitly (the API port to the test,
//! and `guestfwd` entries the test adds, such as a fake metadata service on
//! 127.0.0.1). For cluster tests, [`Nic::Tap`] attaches a NIC to a tap device
//! and [`Machine::netns`] starts QEMU inside a network namespace the test made,
//! so several VMs share a bridge there and nothing leaves the namespace.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::vm::{Vm, VmError, accel_args};

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the OVMF firmware is missing ({0}): apt-get install ovmf")]
    NoOvmf(String),
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("the console never said where the API is (no 'ready:' line); console log: {0}")]
    NotReady(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MachineError {
    let what = what.into();
    move |source| MachineError::Io { what, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    Bios,
    /// OVMF (Debian's `ovmf`), with a private copy of the variable store.
    Uefi,
}

#[derive(Debug, Clone)]
pub enum Boot {
    /// Direct kernel boot (QEMU loads them; the firmware is skipped).
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
    /// An ISO as a CD-ROM (El Torito).
    Cdrom(PathBuf),
    /// The first disk boots (give it in [`Machine::disks`]).
    Disk,
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: &'static str,
}

#[derive(Debug, Clone)]
pub enum Nic {
    /// QEMU's user-mode network, isolated (`restrict=on`). `net` is its subnet
    /// (default 10.0.2.0/24); `guestfwd` entries are QEMU's
    /// `[tcp]:SERVER:PORT-DEV` forwards from the guest to the test.
    User {
        net: Option<String>,
        guest_ip: Option<Ipv4Addr>,
        guestfwd: Vec<String>,
    },
    /// A tap device (inside [`Machine::netns`]), for VMs on a shared bridge.
    Tap { ifname: String, mac: String },
}

#[derive(Debug, Clone)]
pub struct Machine {
    /// Names the console log (`target/qemu-logs/NAME.log`) and work files.
    pub name: String,
    pub memory_mb: u32,
    pub cpus: u32,
    pub firmware: Firmware,
    pub boot: Boot,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    /// SMBIOS entries (`-smbios type=1,manufacturer=...`).
    pub smbios: Vec<String>,
    /// Start QEMU inside this network namespace (taps live there).
    pub netns: Option<String>,
}

impl Machine {
    pub fn new(name: &str, boot: Boot) -> Machine {
        Machine {
            name: name.to_string(),
            memory_mb: 1024,
            cpus: 2,
            firmware: Firmware::Bios,
            boot,
            disks: Vec::new(),
            nics: vec![Nic::User {
                net: None,
                guest_ip: None,
                guestfwd: Vec::new(),
            }],
            smbios: Vec::new(),
            netns: None,
        }
    }

    /// Starts the machine. `work` holds its QMP socket and firmware variables;
    /// the first user-mode NIC forwards a free port on 127.0.0.1 to the API.
    pub fn start(&self, work: &Path) -> Result<Appliance, MachineError> {
        let logs = crate::workspace_root().join("target/qemu-logs");
        std::fs::create_dir_all(&logs).map_err(io("creating target/qemu-logs"))?;
        let console_log = logs.join(format!("{}.log", self.name));
        let qmp = work.join(format!("{}.qmp", self.name));
        let _ = std::fs::remove_file(&qmp);
        let mut args: Vec<String> = vec![
            "-nographic".into(),
            "-no-reboot".into(),
            "-serial".into(),
            "stdio".into(),
            "-monitor".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
            "-m".into(),
            self.memory_mb.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-machine".into(),
            "q35".into(),
        ];
        args.extend(accel_args());
        if self.firmware == Firmware::Uefi {
            let code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
            let vars_src = "/usr/share/OVMF/OVMF_VARS_4M.fd";
            if !Path::new(code).is_file() || !Path::new(vars_src).is_file() {
                return Err(MachineError::NoOvmf(code.into()));
            }
            let vars = work.join(format!("{}.vars.fd", self.name));
            std::fs::copy(vars_src, &vars).map_err(io("copying the OVMF variables"))?;
            args.push("-drive".into());
            args.push(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ));
            args.push("-drive".into());
            args.push(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        }
        match &self.boot {
            Boot::Kernel {
                kernel,
                initrd,
                append,
            } => {
                args.extend(["-kernel".into(), kernel.display().to_string()]);
                args.extend(["-initrd".into(), initrd.display().to_string()]);
                args.extend(["-append".into(), append.clone()]);
            }
            Boot::Cdrom(iso) => {
                args.push("-drive".into());
                args.push(format!(
                    "file={},media=cdrom,readonly=on,if=none,id=cd0",
                    iso.display()
                ));
                args.extend(["-device".into(), "ide-cd,drive=cd0,bootindex=0".into()]);
            }
            Boot::Disk => {}
        }
        for (i, disk) in self.disks.iter().enumerate() {
            args.push("-drive".into());
            args.push(format!(
                "file={},format={},if=none,id=disk{i}",
                disk.path.display(),
                disk.format
            ));
            let boot = if i == 0 && matches!(self.boot, Boot::Disk) {
                ",bootindex=0"
            } else {
                ""
            };
            args.extend([
                "-device".into(),
                format!("virtio-blk-pci,drive=disk{i}{boot}"),
            ]);
        }
        let mut api = None;
        for (i, nic) in self.nics.iter().enumerate() {
            match nic {
                Nic::User {
                    net,
                    guest_ip,
                    guestfwd,
                } => {
                    let mut netdev = format!("user,id=n{i},restrict=on");
                    if let Some(net) = net {
                        netdev.push_str(&format!(",net={net}"));
                    }
                    if api.is_none() {
                        let port = free_port().map_err(io("finding a free port"))?;
                        let guest = guest_ip.map(|g| g.to_string()).unwrap_or_default();
                        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-{guest}:1113"));
                        api = Some(format!("http://127.0.0.1:{port}"));
                    }
                    for fwd in guestfwd {
                        netdev.push_str(&format!(",guestfwd={fwd}"));
                    }
                    args.extend(["-netdev".into(), netdev]);
                }
                Nic::Tap { ifname, .. } => {
                    args.extend([
                        "-netdev".into(),
                        format!("tap,id=n{i},ifname={ifname},script=no,downscript=no"),
                    ]);
                }
            }
            let mac = match nic {
                Nic::Tap { mac, .. } => format!(",mac={mac}"),
                Nic::User { .. } => String::new(),
            };
            args.extend(["-device".into(), format!("virtio-net-pci,netdev=n{i}{mac}")]);
        }
        if self.nics.is_empty() {
            args.extend(["-nic".into(), "none".into()]);
        }
        for s in &self.smbios {
            args.extend(["-smbios".into(), s.clone()]);
        }
        let started = Instant::now();
        let vm = Vm::spawn(self.netns.as_deref(), &args, &console_log)?;
        Ok(Appliance {
            vm,
            qmp,
            api,
            token: None,
            started,
        })
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running appliance VM.
pub struct Appliance {
    pub vm: Vm,
    qmp: PathBuf,
    /// `http://127.0.0.1:PORT`, forwarded to the guest's port 1113.
    pub api: Option<String>,
    /// The API token, from the console's `ready:` line.
    pub token: Option<String>,
    pub started: Instant,
}

/// What the init printed when the agent was ready.
#[derive(Debug, Clone)]
pub struct Ready {
    pub address: String,
    pub token: String,
    pub console: String,
    /// From QEMU's start.
    pub after: Duration,
}

impl Appliance {
    /// Waits for the init's `ready:` line; reads the token from it.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Ready, MachineError> {
        let needle = "flynn-init: ready: API ";
        let (line, console) = self.vm.wait_for_line(needle, timeout)?;
        let after = self.started.elapsed();
        let line = line.trim_start_matches(needle);
        let mut words = line.split_whitespace();
        let address = words.next().unwrap_or_default().to_string();
        let token = words
            .skip_while(|w| *w != "token")
            .nth(1)
            .ok_or_else(|| MachineError::NotReady(self.vm.log_path().display().to_string()))?
            .to_string();
        self.token = Some(token.clone());
        Ok(Ready {
            address,
            token,
            console,
            after,
        })
    }

    /// Sends one QMP command (after the capabilities handshake).
    pub fn qmp(&self, command: &str) -> Result<String, MachineError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(&self.qmp) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(MachineError::Qmp(format!(
                        "connecting to {}: {e}",
                        self.qmp.display()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io("QMP socket"))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io("QMP socket"))?);
        let mut writer = stream;
        let mut line = String::new();
        reader.read_line(&mut line).map_err(io("QMP greeting"))?;
        for cmd in [
            r#"{"execute":"qmp_capabilities"}"#.to_string(),
            format!(r#"{{"execute":"{command}"}}"#),
        ] {
            writer
                .write_all(format!("{cmd}\n").as_bytes())
                .map_err(io("QMP write"))?;
            loop {
                line.clear();
                reader.read_line(&mut line).map_err(io("QMP read"))?;
                if line.is_empty() {
                    return Err(MachineError::Qmp("QEMU closed the socket".into()));
                }
                if line.contains("\"error\"") {
                    return Err(MachineError::Qmp(line.trim().to_string()));
                }
                if line.contains("\"return\"") {
                    break;
                }
            }
        }
        Ok(line)
    }

    /// Presses the ACPI power button.
    pub fn power_button(&self) -> Result<(), MachineError> {
        self.qmp("system_powerdown").map(drop)
    }

    /// The flynn-host CLI on the host, talking to this appliance's API.
    pub fn cli(&self, bin: &Path, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new(bin);
        if let Some(api) = &self.api {
            cmd.env("FLYNN_HOST", api);
        }
        if let Some(token) = &self.token {
            cmd.env("FLYNN_TOKEN", token);
        }
        cmd.args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
    }
}
