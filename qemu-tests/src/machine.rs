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

/// The bus a disk or the CD-ROM hangs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// Legacy IDE (the `pc` machine's PIIX controller; on `q35`, its AHCI ports).
    Ide,
    /// SATA through an AHCI controller (q35's built-in one, or one added on `pc`).
    Ahci,
    Virtio,
    Nvme,
}

/// Where the guest's console is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// A serial port, copied to the console log.
    Serial,
    /// A VGA screen and no serial port at all: [`Appliance::screen`] reads it.
    Vga,
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
    /// QEMU's machine type: `q35` (default here) or `pc` (QEMU's own default).
    pub machine_type: &'static str,
    /// A CPU model (`qemu64`, `Nehalem`, `max`); None: `max` (or the host's with KVM).
    pub cpu: Option<&'static str>,
    /// Where the CD-ROM ([`Boot::Cdrom`]) is attached.
    pub cdrom_bus: Bus,
    /// Where the disks are attached.
    pub disk_bus: Bus,
    /// The NIC model: `virtio-net-pci` (default), `e1000`, `e1000e`, `rtl8139`.
    pub nic_model: &'static str,
    pub console: Console,
    /// More QEMU arguments, last (`-rtc base=...` for a clock set off, say).
    pub extra: Vec<String>,
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
            machine_type: "q35",
            cpu: None,
            cdrom_bus: Bus::Ide,
            disk_bus: Bus::Virtio,
            nic_model: "virtio-net-pci",
            console: Console::Serial,
            extra: Vec::new(),
        }
    }

    /// `-device` for drive `drive` on `bus`; `ahci` is the AHCI controller's id,
    /// `port` the next free port of it (or of the IDE channels).
    fn attach(&self, bus: Bus, drive: &str, cdrom: bool, boot: &str, port: &mut u32) -> String {
        let kind = if cdrom { "cd" } else { "hd" };
        match bus {
            Bus::Virtio => format!("virtio-blk-pci,drive={drive}{boot}"),
            Bus::Nvme => format!("nvme,drive={drive},serial={drive}{boot}"),
            Bus::Ide if self.machine_type == "pc" => {
                let (bus, unit) = (*port / 2, *port % 2);
                *port += 1;
                format!("ide-{kind},drive={drive},bus=ide.{bus},unit={unit}{boot}")
            }
            // q35's IDE is its AHCI controller; on `pc` one is added (see `start`).
            Bus::Ide | Bus::Ahci => {
                let p = *port;
                *port += 1;
                let bus = if self.machine_type == "pc" {
                    format!("ahci0.{p}")
                } else {
                    format!("ide.{p}")
                };
                format!("ide-{kind},drive={drive},bus={bus}{boot}")
            }
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
        let console: [&str; 4] = match self.console {
            Console::Serial => ["-nographic", "-serial", "stdio", "-no-reboot"],
            Console::Vga => ["-display", "none", "-serial", "none"],
        };
        let mut args: Vec<String> = console.map(String::from).to_vec();
        if self.console == Console::Vga {
            args.extend(["-vga".into(), "std".into(), "-no-reboot".into()]);
        }
        args.extend([
            "-monitor".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
            "-m".into(),
            self.memory_mb.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-machine".into(),
            self.machine_type.into(),
        ]);
        let mut accel = accel_args();
        if let (Some(cpu), Some(i)) = (self.cpu, accel.iter().position(|a| a == "-cpu")) {
            accel[i + 1] = cpu.to_string();
        }
        args.extend(accel);
        let uses_ahci = [self.cdrom_bus, self.disk_bus].contains(&Bus::Ahci);
        if self.machine_type == "pc" && uses_ahci {
            args.extend(["-device".into(), "ahci,id=ahci0".into()]);
        }
        // Ports in use, per controller kind: IDE channels and AHCI ports are numbered
        // apart (on q35 both are the built-in AHCI's).
        let (mut ide_port, mut ahci_port) = (0u32, 0u32);
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
                let port = port_of(self, self.cdrom_bus, &mut ide_port, &mut ahci_port);
                let dev = self.attach(self.cdrom_bus, "cd0", true, ",bootindex=0", port);
                args.extend(["-device".into(), dev]);
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
            let port = port_of(self, self.disk_bus, &mut ide_port, &mut ahci_port);
            let dev = self.attach(self.disk_bus, &format!("disk{i}"), false, boot, port);
            args.extend(["-device".into(), dev]);
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
            args.extend([
                "-device".into(),
                format!("{},netdev=n{i}{mac}", self.nic_model),
            ]);
        }
        if self.nics.is_empty() {
            args.extend(["-nic".into(), "none".into()]);
        }
        for s in &self.smbios {
            args.extend(["-smbios".into(), s.clone()]);
        }
        let started = Instant::now();
        args.extend(self.extra.iter().cloned());
        let vm = Vm::spawn(self.netns.as_deref(), &args, &console_log)?;
        Ok(Appliance {
            vm,
            qmp,
            api,
            token: None,
            pin: None,
            started,
            screen: (self.console == Console::Vga)
                .then(|| work.join(format!("{}.screen", self.name))),
        })
    }
}

/// The port counter for a device on `bus`: on q35, IDE and AHCI share the one
/// built-in controller.
fn port_of<'a>(m: &Machine, bus: Bus, ide: &'a mut u32, ahci: &'a mut u32) -> &'a mut u32 {
    match bus {
        Bus::Ide if m.machine_type == "pc" => ide,
        _ => ahci,
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
    /// The pin of the host's TLS CA, from the `ready:` line: the API is then
    /// HTTPS off the guest's loopback (the forwarded port included).
    pub pin: Option<String>,
    pub started: Instant,
    /// Where the VGA text screen is dumped ([`Console::Vga`] machines).
    screen: Option<PathBuf>,
}

/// What the init printed when the agent was ready.
#[derive(Debug, Clone)]
pub struct Ready {
    pub address: String,
    pub token: String,
    /// `tls-pin PIN`, when the API is HTTPS.
    pub pin: Option<String>,
    pub console: String,
    /// From QEMU's start.
    pub after: Duration,
}

impl Appliance {
    /// The VGA text memory (0xb8000-0xbffff: the 80x25 screen and what the
    /// kernel's VGA console scrolled through, which moves the screen's origin in
    /// it), rows joined without line breaks: a line the screen wrapped reads whole.
    pub fn screen(&self) -> Result<String, MachineError> {
        let Some(path) = &self.screen else {
            return Err(MachineError::Qmp("this machine has no VGA console".into()));
        };
        let _ = std::fs::remove_file(path);
        self.qmp_with(
            "pmemsave",
            &format!(
                r#"{{"val":{},"size":32768,"filename":"{}"}}"#,
                0xb8000,
                path.display()
            ),
        )?;
        let cells = std::fs::read(path).map_err(io("reading the screen dump"))?;
        Ok(cells
            .chunks(2)
            .map(|c| match c[0] {
                b @ 0x20..=0x7e => b as char,
                _ => ' ',
            })
            .collect())
    }

    /// Waits for the `ready:` line on the screen of a [`Console::Vga`] machine.
    fn wait_ready_on_screen(
        &mut self,
        timeout: Duration,
    ) -> Result<(String, String), MachineError> {
        let needle = "flynn-init: ready: API ";
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen()?;
            if let Some(at) = screen.rfind(needle) {
                let line = screen[at..].to_string();
                // The token is 64 hex digits: wait until all of it is on the screen.
                if line
                    .split_whitespace()
                    .nth(5)
                    .is_some_and(|t| t.len() >= 64)
                {
                    return Ok((line, screen));
                }
            }
            if Instant::now() >= deadline {
                return Err(MachineError::NotReady(format!(
                    "no ready line on the VGA screen after {timeout:?}; the screen:\n{}",
                    screen
                        .as_bytes()
                        .chunks(80)
                        .map(String::from_utf8_lossy)
                        .collect::<Vec<_>>()
                        .join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits for the init's `ready:` line; reads the token from it.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Ready, MachineError> {
        let needle = "flynn-init: ready: API ";
        let (line, console) = match self.screen {
            Some(_) => self.wait_ready_on_screen(timeout)?,
            None => self.vm.wait_for_line(needle, timeout)?,
        };
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
        let pin = line
            .split_whitespace()
            .skip_while(|w| *w != "tls-pin")
            .nth(1)
            .map(str::to_string);
        self.pin = pin.clone();
        Ok(Ready {
            address,
            token,
            pin,
            console,
            after,
        })
    }

    /// Sends one QMP command (after the capabilities handshake).
    pub fn qmp(&self, command: &str) -> Result<String, MachineError> {
        self.qmp_with(command, "{}")
    }

    /// Sends one QMP command with `arguments` (a JSON object).
    pub fn qmp_with(&self, command: &str, arguments: &str) -> Result<String, MachineError> {
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
            format!(r#"{{"execute":"{command}","arguments":{arguments}}}"#),
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

    /// The flynn-host CLI on the host, talking to this appliance's API, bounded
    /// by [`CLI_BOUND`]: a command that does not return within it is killed, and
    /// the test fails with what the guest still answers and its console, never
    /// a test that waits for ever.
    pub fn cli(&self, bin: &Path, args: &[&str]) -> std::process::Output {
        match self.cli_within(bin, args, CLI_BOUND) {
            Ok(out) => out,
            Err(e) => panic!("{}", self.hung(bin, args, &e)),
        }
    }

    /// The CLI, killed after `bound`: `Err` says so.
    pub fn cli_within(
        &self,
        bin: &Path,
        args: &[&str],
        bound: Duration,
    ) -> Result<std::process::Output, String> {
        let mut cmd = std::process::Command::new(bin);
        if let Some(api) = &self.api {
            match &self.pin {
                Some(pin) => {
                    cmd.env("FLYNN_HOST", api.replacen("http://", "https://", 1));
                    cmd.env("FLYNN_TLS_PIN", pin);
                }
                None => {
                    cmd.env("FLYNN_HOST", api);
                }
            }
        }
        if let Some(token) = &self.token {
            cmd.env("FLYNN_TOKEN", token);
        }
        cmd.args(args);
        crate::output_within(&mut cmd, bound)
            .map_err(|e| format!("flynn-host {}: {e}", args.join(" ")))
    }

    /// Why a CLI command did not return: whether the API still answers, what it
    /// says of the jobs and the daemon's own log (each bounded), then the
    /// console's tail.
    fn hung(&self, bin: &Path, args: &[&str], error: &str) -> String {
        let ask = |what: &[&str]| match self.cli_within(bin, what, Duration::from_secs(30)) {
            Ok(out) => format!(
                "{}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => e,
        };
        format!(
            "{error} (`{} {}`)\n`ps -a` afterwards: {}\n`daemon-log -n 100`: {}\nconsole ({}):\n{}",
            bin.display(),
            args.join(" "),
            ask(&["ps", "-a"]),
            ask(&["daemon-log", "-n", "100"]),
            self.vm.log_path().display(),
            crate::console_tail(&self.vm.console())
        )
    }
}

/// How long a CLI command against an appliance may take in a test: a start under
/// TCG takes seconds; minutes mean something waits that should not.
pub const CLI_BOUND: Duration = Duration::from_secs(240);
