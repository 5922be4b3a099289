//! Clusters of appliances: N VMs booted from the same ISO, each with its own
//! qcow2 state disk, MAC and NoCloud seed, on one L2 network of their own.
//!
//! The network is a bridge (`br0`, 10.90.0.1/24) inside a network namespace the
//! cluster creates; each VM's NIC is a tap on that bridge (QEMU runs inside the
//! namespace). The namespace has no other interface and no route anywhere, so the
//! guests reach each other and the namespace's bridge address, nothing else. The
//! test reaches them from inside the namespace ([`Netns::command`]: `nsenter
//! --net=/run/netns/NAME`), at their own addresses.
//!
//! Each node's keys come from a vfat NoCloud seed labelled `cidata`
//! ([`nocloud_seed`]): `token`, `peers` (every node's address: the lowest one
//! bootstraps the cluster once all answer), `hostname` and `ip` (a static
//! address in the kernel's `ip=` syntax, which the init reads from the seed
//! before it brings up the network). Static addresses rather than a DHCP server
//! in the namespace: the peers list must name the addresses before the nodes
//! boot, so they are fixed anyway, and nothing else has to run beside the VMs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::machine::{Appliance, Boot, Disk, Machine, MachineError, Nic};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("node {0} does not exist or is not running")]
    NoNode(usize),
    #[error("a cluster has 1 to 200 nodes, not {0}")]
    Size(usize),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Runs a command to its end; its failure is an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<Output, ClusterError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("running {cmd:?}")))?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            command: format!("{cmd:?}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// The bridge's address inside the namespace: the test's own address there.
pub const BRIDGE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 1);

/// Node `i`'s address (0-based): 10.90.0.11, .12, ...
pub fn node_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        90,
        0,
        11u8.saturating_add(u8::try_from(i).unwrap_or(u8::MAX)),
    )
}

/// A network namespace of the test's own with one bridge, removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` (replacing a leftover of that name) with loopback
    /// up and bridge `br0` at [`BRIDGE_ADDRESS`]/24.
    pub fn create(name: &str) -> Result<Netns, ClusterError> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["addr", "add", &format!("{BRIDGE_ADDRESS}/24"), "dev", "br0"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<Output, ClusterError> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A tap on the bridge, up, for QEMU to open.
    pub fn add_tap(&self, ifname: &str) -> Result<(), ClusterError> {
        let _ = self.ip(&["link", "del", ifname]);
        self.ip(&["tuntap", "add", "dev", ifname, "mode", "tap"])?;
        self.ip(&["link", "set", ifname, "master", "br0", "up"])?;
        Ok(())
    }

    /// `program` run inside the namespace (`nsenter --net=/run/netns/NAME`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A vfat NoCloud seed labelled `CIDATA` holding `user-data` and `meta-data`
/// (`mkfs.fat` from dosfstools, `mcopy` from mtools).
pub fn nocloud_seed(path: &Path, user_data: &str, meta_data: &str) -> Result<(), ClusterError> {
    let dir = path.with_extension("d");
    std::fs::create_dir_all(&dir).map_err(io("creating the seed's directory"))?;
    std::fs::write(dir.join("user-data"), user_data).map_err(io("writing user-data"))?;
    std::fs::write(dir.join("meta-data"), meta_data).map_err(io("writing meta-data"))?;
    let _ = std::fs::remove_file(path);
    run(Command::new("mkfs.fat")
        .args(["-n", "CIDATA", "-C"])
        .arg(path)
        .arg("2048"))?;
    for f in ["user-data", "meta-data"] {
        run(Command::new("mcopy")
            .arg("-i")
            .arg(path)
            .arg(dir.join(f))
            .arg(format!("::/{f}")))?;
    }
    Ok(())
}

/// What the seed of node `i` of `n` says (the keys of init's `settings.rs`).
pub fn user_data(i: usize, n: usize, token: &str) -> String {
    let address = node_address(i);
    let mut text = format!(
        "# flynn appliance keys, one per line\nflynn.token={token}\nflynn.hostname=node{}\n\
         flynn.ip={address}::{BRIDGE_ADDRESS}:255.255.255.0:node{}::off\n",
        i + 1,
        i + 1
    );
    // Every node names them all (a single node itself: a cluster of one).
    let peers: Vec<String> = (0..n).map(|j| node_address(j).to_string()).collect();
    text.push_str(&format!("flynn.peers={}\n", peers.join(",")));
    text
}

/// One node: its files and, while it runs, its VM.
pub struct Node {
    pub name: String,
    pub address: Ipv4Addr,
    pub mac: String,
    pub tap: String,
    pub state_disk: PathBuf,
    pub seed: PathBuf,
    pub vm: Option<Appliance>,
    /// How many times it was started (names the console logs).
    pub boots: u32,
}

/// N appliances from one ISO on a bridge of their own (see the module's notes).
pub struct Cluster {
    // Declared before the namespace: the VMs go (closing their taps) first.
    pub nodes: Vec<Node>,
    pub netns: Netns,
    pub iso: PathBuf,
    pub work: PathBuf,
    pub token: String,
    pub memory_mb: u32,
    /// Console logs are `target/qemu-logs/PREFIX-nodeN-bootB.log`.
    pub prefix: String,
}

impl Cluster {
    /// Makes the namespace, the taps, a blank 8 GiB qcow2 state disk and a seed
    /// per node in `work`. Nothing boots yet.
    pub fn new(
        prefix: &str,
        n: usize,
        iso: &Path,
        work: &Path,
        token: &str,
        memory_mb: u32,
    ) -> Result<Cluster, ClusterError> {
        if !(1..=200).contains(&n) {
            return Err(ClusterError::Size(n));
        }
        let netns = Netns::create(&format!("{prefix}-{}", std::process::id()))?;
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("node{}", i + 1);
            let tap = format!("tap{}", i + 1);
            netns.add_tap(&tap)?;
            let state_disk = work.join(format!("{name}-state.qcow2"));
            run(Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&state_disk)
                .arg("8G"))?;
            let seed = work.join(format!("{name}-seed.img"));
            nocloud_seed(
                &seed,
                &user_data(i, n, token),
                &format!("instance-id: {prefix}-{name}\nlocal-hostname: {name}\n"),
            )?;
            nodes.push(Node {
                name,
                address: node_address(i),
                mac: format!("52:54:00:90:00:{:02x}", i + 11),
                tap,
                state_disk,
                seed,
                vm: None,
                boots: 0,
            });
        }
        Ok(Cluster {
            nodes,
            netns,
            iso: iso.to_path_buf(),
            work: work.to_path_buf(),
            token: token.to_string(),
            memory_mb,
            prefix: prefix.to_string(),
        })
    }

    fn node(&mut self, i: usize) -> Result<&mut Node, ClusterError> {
        self.nodes.get_mut(i).ok_or(ClusterError::NoNode(i))
    }

    /// Boots node `i` from the ISO (1 vCPU), its state disk and seed attached.
    pub fn start(&mut self, i: usize) -> Result<(), ClusterError> {
        self.start_with(i, &[])
    }

    /// [`Cluster::start`] with more QEMU arguments (`-rtc base=...`, say).
    pub fn start_with(&mut self, i: usize, extra: &[String]) -> Result<(), ClusterError> {
        let (iso, work, memory, prefix) = (
            self.iso.clone(),
            self.work.clone(),
            self.memory_mb,
            self.prefix.clone(),
        );
        let netns = self.netns.name.clone();
        let node = self.node(i)?;
        node.boots += 1;
        let mut m = Machine::new(
            &format!("{prefix}-{}-boot{}", node.name, node.boots),
            Boot::Cdrom(iso),
        );
        m.cpus = 1;
        m.memory_mb = memory;
        m.netns = Some(netns);
        m.extra = extra.to_vec();
        m.nics = vec![Nic::Tap {
            ifname: node.tap.clone(),
            mac: node.mac.clone(),
        }];
        m.disks = vec![
            Disk {
                path: node.state_disk.clone(),
                format: "qcow2",
            },
            Disk {
                path: node.seed.clone(),
                format: "raw",
            },
        ];
        let mut vm = m.start(&work)?;
        vm.api = Some(format!("http://{}:1113", node.address));
        vm.token = None;
        node.vm = Some(vm);
        Ok(())
    }

    /// The running VM of node `i`.
    pub fn vm(&mut self, i: usize) -> Result<&mut Appliance, ClusterError> {
        self.node(i)?.vm.as_mut().ok_or(ClusterError::NoNode(i))
    }

    /// SIGKILL to node `i`'s QEMU: the machine is gone at once, no shutdown.
    pub fn kill(&mut self, i: usize) -> Result<(), ClusterError> {
        let node = self.node(i)?;
        let mut vm = node.vm.take().ok_or(ClusterError::NoNode(i))?;
        vm.vm.kill();
        Ok(())
    }

    /// Presses node `i`'s power button and waits up to `timeout` for QEMU to exit.
    pub fn power_off(&mut self, i: usize, timeout: Duration) -> Result<String, ClusterError> {
        let node = self.node(i)?;
        let vm = node.vm.as_mut().ok_or(ClusterError::NoNode(i))?;
        vm.power_button()?;
        vm.vm.wait_exit(timeout).map_err(MachineError::from)?;
        let console = vm.vm.console();
        node.vm = None;
        Ok(console)
    }

    /// A command run inside the namespace with `FLYNN_HOST`, `FLYNN_TOKEN` and
    /// `FLYNN_TLS_PIN` naming node `i`'s API (HTTPS). The pin is node 0's: the
    /// bootstrap adopts the CA of the host with the lowest address as the
    /// cluster's, so once it has run every node is verified by that pin (before
    /// it, only node 0 is).
    pub fn command_for(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.netns.command(program);
        if let Some(node) = self.nodes.get(i) {
            c.env("FLYNN_HOST", format!("https://{}:1113", node.address));
        }
        let pin = self
            .nodes
            .first()
            .and_then(|n| n.vm.as_ref())
            .and_then(|vm| vm.pin.clone())
            .or_else(|| {
                self.nodes
                    .get(i)
                    .and_then(|n| n.vm.as_ref())
                    .and_then(|vm| vm.pin.clone())
            });
        if let Some(pin) = pin {
            c.env("FLYNN_TLS_PIN", pin);
        }
        c.env("FLYNN_TOKEN", &self.token);
        c
    }
}
