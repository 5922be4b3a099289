//! `flynn-host init` (crate `flynn-init`): PID 1 of the appliance. The kernel starts the binary as
//! `/init` (or `/sbin/init`); `main.rs` sends it here when it runs as PID 1 or
//! under either name. It prepares the machine, starts the daemon, reaps every
//! orphan, and stops the machine cleanly.
//!
//! The boot, in order (each step prints one `flynn-init:` line on the console):
//! leave the initramfs for a bind mount of it ([`mounts`]); mount the API file systems and
//! cgroup2; read the command line ([`cmdline`], [`settings`]); load the kernel
//! modules of the boot list and the present devices' drivers, job networking's
//! in the background ([`modules`]); find, format if blank, and mount
//! the state disk, or fall back to tmpfs ([`disk`]); read a NoCloud seed
//! ([`datasource`]); bring up the network (DHCP by default, [`dhcp`]; static from
//! the command line's `ip=`, else the seed's; [`net`]); read EC2 user data when
//! there is no seed; set the host name; start `flynn-host daemon`
//! (API on 0.0.0.0:1113); import the image archives baked into the image at first
//! boot ([`images`]); print the API address and token. Then it supervises: a
//! daemon that dies is started again (a daemon that upgraded itself in place is
//! followed through `daemon.pid`); DHCP leases are renewed; the power button,
//! SIGTERM/SIGPWR (power off) and SIGINT (Ctrl-Alt-Del: reboot) stop the machine
//! ([`power`]).
//!
//! A failure prints its reason. With `flynn.debug` on the command line the init
//! then starts a shell on the console (busybox `sh`); otherwise it powers off
//! after ten seconds, since an appliance with no shell has nothing else to offer.
//! This crate must not know about jobs or images beyond the daemon's API: it talks
//! to the daemon only through `flynn-client`, as any client would.

pub mod cmdline;
pub mod datasource;
pub mod dhcp;
pub mod disk;
mod drain;
#[cfg(test)]
mod fuzz;
pub mod host_image;
pub mod images;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod power;
pub mod settings;

use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use cmdline::{Cmdline, IpConfig};
use power::Stop;
use settings::{Datasource, Settings, Source};

pub const STATE_DIR: &str = "/var/lib/flynn";
const SOCKET: &str = "/run/flynn/host.sock";
const DAEMON_CONFIG: &str = "/run/flynn/daemon.json";
const DAEMON_LOG: &str = "/var/log/flynn/daemon.log";
/// How long a failed `flynn.peers` bootstrap waits before it runs again. A re-run
/// skips what is done and costs a few calls; what failed is most often a busy
/// etcd or a peer still booting, which a short wait heals.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(10);
/// The cluster's etcd members' election timeout on the appliance (ms).
const ETCD_ELECTION_MS: u64 = 5000;
const LISTEN: &str = "0.0.0.0:1113";
const DHCP_FIRST_LEASE: Duration = Duration::from_secs(30);

/// One line on the console.
pub fn say(msg: impl std::fmt::Display) {
    use std::io::Write;
    let line = format!("flynn-init: {msg}\n");
    let mut consoles = CONSOLES.lock().unwrap_or_else(|p| p.into_inner());
    if consoles.is_none() {
        *consoles = open_consoles();
    }
    match consoles.as_deref() {
        Some(all) if !all.is_empty() => {
            for mut c in all {
                let _ = c.write_all(line.as_bytes());
            }
        }
        _ => eprint!("{line}"),
    }
}

/// Every console the kernel writes to (`console=tty0 console=ttyS0` in the image:
/// the screen and the first serial port). /dev/console, our stderr, is only the
/// last of them: a user watching the screen of a machine that also has a serial
/// port would see the kernel's messages and none of ours.
static CONSOLES: std::sync::Mutex<Option<Vec<std::fs::File>>> = std::sync::Mutex::new(None);

/// None until sysfs is mounted (then stderr serves).
fn open_consoles() -> Option<Vec<std::fs::File>> {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").ok()?;
    Some(
        active
            .split_whitespace()
            .filter_map(|name| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOCTTY)
                    .open(Path::new("/dev").join(name))
                    .ok()
            })
            .collect(),
    )
}

/// Seconds since the kernel started (CLOCK_BOOTTIME).
fn uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

static TIMELINE: std::sync::Mutex<Vec<(&'static str, f64)>> = std::sync::Mutex::new(Vec::new());

/// Records when a boot step ended, for the timeline printed when ready.
fn mark(step: &'static str) {
    let t = uptime();
    TIMELINE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((step, t));
}

fn timeline() -> String {
    TIMELINE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(step, t)| format!("{step} {t:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether this process should act as init: PID 1, or started as `init`.
pub fn wanted(argv0: &std::ffi::OsStr) -> bool {
    // By name, not by pid: in a container the platform's own services (the
    // scheduler, the router) are flynn-host as PID 1 too, and must stay themselves.
    Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == "init" || n == "linuxrc")
}

pub fn main() -> i32 {
    if std::process::id() != 1 {
        eprintln!(
            "flynn-host init is the appliance's PID 1 (the kernel starts it as /init); it does not run as pid {}",
            std::process::id()
        );
        return 2;
    }
    // SAFETY: F_GETFD on fd 1 reads a flag; it fails harmlessly if 1 is not open.
    if unsafe { libc::fcntl(1, libc::F_GETFD) } < 0 {
        mounts::console_stdio();
    }
    if mounts::root_is_rootfs()
        && let Err(e) = mounts::leave_rootfs()
    {
        fail(&Settings::default(), anyhow!(e));
    }
    if let Err(e) = mounts::mount_basics() {
        mounts::console_stdio();
        fail(&Settings::default(), anyhow!(e));
    }
    mounts::console_stdio();
    // SAFETY: setting process environment before any thread exists.
    unsafe {
        std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        std::env::set_var("HOME", "/root");
    }
    mark("init");
    say(format!(
        "flynn-host {} starting (kernel {})",
        env!("CARGO_PKG_VERSION"),
        modules::release()
    ));
    let cmdline = Cmdline::read();
    let mut settings = Settings::default();
    let mut fatal = None;
    for (key, value) in cmdline.flynn() {
        if let Err(e) = settings.apply(Source::Cmdline, key, value) {
            say(format!("warning: {e}"));
            if key == "token" {
                fatal = Some(anyhow!(e));
            }
        }
    }
    if let Some(e) = fatal {
        fail(
            &settings,
            e.context("the API token given on the command line"),
        );
    }
    if let Err(e) = boot(&cmdline, &mut settings) {
        fail(&settings, e);
    }
    0
}

/// Prints the failure and either opens a shell (`flynn.debug`) or powers off.
fn fail(settings: &Settings, error: anyhow::Error) -> ! {
    say(format!("FATAL: {error:#}"));
    let debug = settings.debug || Cmdline::read().get("flynn.debug").is_some();
    if debug && Path::new("/bin/sh").exists() {
        say(
            "flynn.debug is set: starting an emergency shell on the console (exit it to power off)",
        );
        let _ = Command::new("/bin/sh")
            .env("PS1", "flynn-emergency# ")
            .status();
    } else {
        say("powering off in 10 s (boot with flynn.debug for an emergency shell)");
        std::thread::sleep(Duration::from_secs(10));
    }
    power::signal_all(Signal::SIGTERM, Duration::from_secs(3));
    power::signal_all(Signal::SIGKILL, Duration::from_secs(1));
    let _ = power::unmount_state(Path::new(STATE_DIR));
    power::finish(Stop::PowerOff)
}

fn boot(cmdline: &Cmdline, settings: &mut Settings) -> Result<()> {
    // Ctrl-Alt-Del becomes SIGINT to us instead of an immediate reboot.
    let _ = nix::sys::reboot::set_cad_enabled(false);
    load_modules();
    match mounts::enable_cgroup_controllers() {
        Ok(c) => say(format!("cgroup v2 controllers for jobs: {c}")),
        Err(e) => say(format!("warning: enabling cgroup controllers: {e}")),
    }
    let state = Path::new(STATE_DIR);
    let mounted = disk::mount_state(&settings.state, state).context("the state disk")?;
    mark("state");
    say(mounted.describe(state));
    for dir in ["/run/flynn", "/var/log/flynn", "/etc"] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    }
    // The kernel's `ip=` wins; without it, user data's `ip=` (a seed's) or DHCP.
    let ip = cmdline
        .get("ip")
        .map(|v| cmdline::parse_ip(Some(v)))
        .transpose()
        .context("the kernel command line")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the init's event loop")?;
    runtime.block_on(async move { run(ip, settings).await })
}

/// Leases being kept, by interface.
struct Leased {
    link: net::Link,
    lease: dhcp::Lease,
}

async fn network(ip: &IpConfig, settings: &Settings) -> Result<(Vec<Leased>, Option<Ipv4Addr>)> {
    let nl = net::Net::open().context("configuring the network")?;
    nl.up(1, "lo").await.context("configuring loopback")?;
    let links = tokio::task::spawn_blocking(|| net::wait_for_links(Duration::from_secs(3)))
        .await
        .unwrap_or_default();
    match ip {
        IpConfig::Off => {
            say("network: ip=off, loopback only");
            Ok((Vec::new(), None))
        }
        IpConfig::Static(s) => {
            let link = match &s.device {
                Some(name) => links
                    .iter()
                    .find(|l| &l.name == name)
                    .cloned()
                    .ok_or_else(|| anyhow!(net::NetError::NoSuchInterface(name.clone())))?,
                None => links
                    .first()
                    .cloned()
                    .ok_or_else(|| anyhow!(net::NetError::NoInterface))?,
            };
            nl.up(link.index, &link.name).await?;
            nl.address(link.index, &link.name, s.address, s.prefix_len)
                .await?;
            if let Some(gw) = s.gateway {
                nl.default_route(link.index, &link.name, gw).await?;
            }
            net::write_resolv_conf(&s.dns, None)?;
            say(format!(
                "network: {} {}/{} (static, from ip=){}",
                link.name,
                s.address,
                s.prefix_len,
                s.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
            ));
            let _ = settings;
            Ok((Vec::new(), Some(s.address)))
        }
        IpConfig::Dhcp => {
            if links.is_empty() {
                say("warning: network: no interface found; the API is reachable only from inside");
                return Ok((Vec::new(), None));
            }
            // Said before the wait, so a boot on a network without a DHCP server
            // shows what it waits for, and for how long.
            say(format!(
                "network: asking for a DHCP lease on {} (up to {} s)",
                links
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                DHCP_FIRST_LEASE.as_secs()
            ));
            let mut tasks = tokio::task::JoinSet::new();
            for link in links {
                let _ = nl.up(link.index, &link.name).await;
                tasks.spawn(async move {
                    let lease = dhcp::acquire(&link.name, link.mac, DHCP_FIRST_LEASE).await;
                    (link, lease)
                });
            }
            let mut leased = Vec::new();
            let mut first = None;
            while let Some(done) = tasks.join_next().await {
                let Ok((link, lease)) = done else { continue };
                match lease {
                    Ok(lease) => {
                        apply_lease(&nl, &link, &lease, first.is_none()).await?;
                        first.get_or_insert(lease.address);
                        leased.push(Leased { link, lease });
                    }
                    Err(e) => say(format!("warning: network: {e}")),
                }
            }
            if first.is_none() {
                say(
                    "warning: network: no DHCP lease on any interface; the API is reachable only from inside",
                );
            }
            Ok((leased, first))
        }
    }
}

async fn apply_lease(
    nl: &net::Net,
    link: &net::Link,
    lease: &dhcp::Lease,
    primary: bool,
) -> Result<()> {
    nl.address(link.index, &link.name, lease.address, lease.prefix_len)
        .await?;
    if primary {
        if let Some(gw) = lease.router {
            nl.default_route(link.index, &link.name, gw).await?;
        }
        net::write_resolv_conf(&lease.dns, lease.domain.as_deref())?;
    }
    say(format!(
        "network: {} {}/{} (DHCP from {}, lease {} s){}",
        link.name,
        lease.address,
        lease.prefix_len,
        lease.server,
        lease.lease_secs,
        lease
            .router
            .filter(|_| primary)
            .map(|g| format!(" via {g}"))
            .unwrap_or_default()
    ));
    Ok(())
}

/// The NoCloud seed, read before the network comes up (it needs none, and its
/// user data may hold the host's static `ip=`). Returns whether one was found and
/// its meta-data's host name.
async fn seed_datasource(settings: &mut Settings) -> (bool, Option<String>) {
    if !matches!(settings.datasource, Datasource::Auto | Datasource::NoCloud) {
        return (false, None);
    }
    match tokio::task::spawn_blocking(datasource::nocloud).await {
        Ok(Ok(Some(f))) => (true, apply_found(settings, f, Source::Seed)),
        Ok(Ok(None)) => {
            if settings.datasource == Datasource::NoCloud {
                say("warning: flynn.datasource=nocloud but no cidata seed was found");
            }
            (false, None)
        }
        Ok(Err(e)) => {
            say(format!("warning: {e}"));
            (false, None)
        }
        Err(e) => {
            say(format!("warning: reading the seed: {e}"));
            (false, None)
        }
    }
}

/// EC2's user data (after the network: it is an HTTP service), when no seed was
/// found and this is EC2 or the command line asks for it.
async fn ec2_datasource(settings: &mut Settings, seed_found: bool) -> Option<String> {
    let ec2 = settings.datasource == Datasource::Ec2
        || (settings.datasource == Datasource::Auto && !seed_found && datasource::on_ec2());
    if !ec2 {
        return None;
    }
    match datasource::ec2(Duration::from_secs(20)).await {
        Ok(f) => apply_found(settings, f, Source::Ec2),
        Err(e) => {
            say(format!("warning: {e}"));
            None
        }
    }
}

fn apply_found(settings: &mut Settings, f: datasource::Found, source: Source) -> Option<String> {
    say(format!(
        "configuration from the {}{}",
        f.source,
        if f.user_data.is_some() {
            " (user data)"
        } else {
            " (no user data)"
        }
    ));
    if let Some(text) = &f.user_data {
        for e in settings.apply_user_data(source, text) {
            say(format!("warning: {e}"));
        }
    }
    f.hostname
}

/// `flynn.peers=`: the host with the lowest address bootstraps the cluster (in the
/// background, as `flynn-host bootstrap` would, retrying until it succeeds: the
/// others may still be booting); the others wait to be joined.
fn cluster_bootstrap(peers: Vec<Ipv4Addr>, address: Option<Ipv4Addr>, settings: &Settings) {
    let Some((token, _)) = settings.token.clone() else {
        say("flynn.peers needs flynn.token: the hosts of a cluster share a token; not bootstrapping".to_string());
        return;
    };
    let lowest = peers[0];
    if address != Some(lowest) {
        say(format!(
            "flynn.peers: {lowest} bootstraps the cluster of {} hosts; this host waits to be joined",
            peers.len()
        ));
        return;
    }
    say(format!(
        "flynn.peers: this host bootstraps the cluster of {} hosts once all answer",
        peers.len()
    ));
    tokio::spawn(async move {
        loop {
            let code = bootstrap::run(bootstrap::BootstrapArgs {
                peers: peers.clone(),
                port: 1113,
                token: token.clone(),
                min_hosts: None,
                timeout: 600,
                json: false,
                manifest: None,
                // The consoles are the machine's log: lines, no animation.
                no_spinner: true,
            })
            .await;
            match code {
                0 => {
                    say("flynn.peers: the cluster is up".to_string());
                    return;
                }
                2 => return,
                _ => {
                    say(format!(
                        "flynn.peers: the bootstrap failed (above); trying again in {} s",
                        BOOTSTRAP_RETRY.as_secs()
                    ));
                    tokio::time::sleep(BOOTSTRAP_RETRY).await;
                }
            }
        }
    });
}

fn write_daemon_config(settings: &Settings) -> Result<()> {
    let mut config = serde_json::json!({
        "state_dir": STATE_DIR,
        "listen": LISTEN,
        "socket": SOCKET,
    });
    if let Some((token, _)) = &settings.token {
        config["token"] = serde_json::Value::String(token.clone());
    }
    // The etcd member this host runs for a cluster: 5 s elections (heartbeat
    // 500 ms) rather than etcd's 1 s. Appliances are VMs as often as metal, and a
    // VM's vCPU can be taken away for seconds by a busy host: under QEMU TCG, three
    // appliances on two shared cores missed 100 ms heartbeats for over a second
    // again and again, and the members held elections back to back. A dead leader
    // is replaced 5-10 s after it went rather than 1-2 s.
    config["grid"] = serde_json::json!({ "etcd_election_ms": ETCD_ELECTION_MS });
    // Every host serves HTTPS off loopback, a cluster's too: the bootstrap
    // verifies each host by the token's proof of its CA, then hands them all the
    // cluster's CA.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(DAEMON_CONFIG)
        .with_context(|| format!("writing {DAEMON_CONFIG}"))?;
    std::io::Write::write_all(&mut file, config.to_string().as_bytes())
        .with_context(|| format!("writing {DAEMON_CONFIG}"))
}

fn start_daemon(settings: &Settings) -> Result<Pid> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/flynn-host"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(DAEMON_LOG)
        .with_context(|| format!("opening {DAEMON_LOG}"))?;
    let child = Command::new(exe)
        .args(["daemon", "--config", DAEMON_CONFIG])
        .env("FLYNN_LOG", settings.log.as_deref().unwrap_or("info"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("the daemon's log")?)
        .stderr(log)
        .spawn()
        .context("starting flynn-host daemon")?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// The daemon makes the host id and, unless one was given, the API token at its
/// first start: secrets, taken only from an initialised random pool. Nothing else
/// of the boot waits for it. Without a hardware RNG (RDRAND, virtio-rng) the kernel
/// initialises its pool from CPU jitter while we wait: about a second under TCG.
fn wait_for_random_pool(settings: &Settings) {
    let state = Path::new(STATE_DIR);
    let needs_secret = (settings.token.is_none() && !state.join("token").exists())
        || !state.join("host-id").exists();
    if !needs_secret || flynn_random::pool_ready() {
        return;
    }
    say(
        "waiting for the kernel's random pool (for the API token and host id); \
         a hardware RNG (RDRAND, virtio-rng) makes this instant",
    );
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    match flynn_random::fill(&mut byte, flynn_random::Use::Secret) {
        Ok(()) => say(format!(
            "random pool ready after {:.1} s",
            started.elapsed().as_secs_f64()
        )),
        Err(e) => say(format!("warning: reading the random pool: {e}")),
    }
}

fn tail(path: &str, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The boot list and the present devices' drivers now; job networking in the
/// background (the daemon opens the host network once it can, and jobs wait
/// for it), so the API answers without waiting for them.
fn load_modules() {
    let index = match modules::Modules::open(Path::new("/")) {
        Ok(m) => std::sync::Arc::new(m),
        Err(e) => {
            say(format!("warning: no kernel modules: {e}"));
            return;
        }
    };
    modules::set_index(index.clone());
    if let Err(e) = modules::hotplug(index.clone()) {
        say(format!(
            "warning: no hotplug (devices added later get no driver): {e}"
        ));
    }
    let report = |what: &str, l: modules::Loaded| {
        say(format!("loaded {} kernel modules ({what})", l.loaded));
        for e in l.failed {
            say(format!("warning: {e}"));
        }
    };
    report("boot", index.load_list("flynn.boot"));
    report("drivers of the devices present", index.coldplug());
    mark("modules");
    let jobs = index.clone();
    let spawned = std::thread::Builder::new()
        .name("modules".into())
        .spawn(move || {
            report(
                "job networking, in the background",
                jobs.load_list("flynn.jobs"),
            )
        });
    if spawned.is_err() {
        report("job networking", index.load_list("flynn.jobs"));
    }
}

/// The daemon that serves the state dir now: after an in-place upgrade it is
/// the successor named in `daemon.pid`, not the process we started.
fn daemon_successor(old: Pid) -> Option<Pid> {
    let text = std::fs::read_to_string(Path::new(STATE_DIR).join("daemon.pid")).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?);
    (pid != old && nix::sys::signal::kill(pid, None).is_ok()).then_some(pid)
}

async fn run(ip: Option<IpConfig>, settings: &mut Settings) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Signals are caught before anything else runs, so none is lost to the
    // default action (which for PID 1 is to ignore it).
    let mut sigchld = signal(SignalKind::child()).context("SIGCHLD")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT")?;
    let mut sigpwr = signal(SignalKind::from_raw(libc::SIGPWR)).context("SIGPWR")?;
    let (button_tx, mut button_rx) = tokio::sync::mpsc::unbounded_channel();
    let buttons = power::watch_buttons(button_tx);
    if buttons.is_empty() {
        say(
            "warning: no power button found (ACPI button driver missing?): only signals stop the machine",
        );
    }

    let (seed_found, seed_hostname) = seed_datasource(settings).await;
    let ip = match (ip, &settings.ip) {
        (Some(ip), _) => ip,
        (None, Some((ip, source))) => {
            say(format!("network: ip= from {source}"));
            ip.clone()
        }
        (None, None) => IpConfig::Dhcp,
    };
    let (leases, address) = network(&ip, settings).await?;
    mark("network");
    let dhcp_hostname = leases.iter().find_map(|l| l.lease.hostname.clone());
    let meta_hostname = seed_hostname.or(ec2_datasource(settings, seed_found).await);
    let ip_hostname = match &ip {
        IpConfig::Static(s) => s.hostname.clone(),
        _ => None,
    };
    let hostname = settings
        .hostname
        .as_ref()
        .map(|(h, _)| h.clone())
        .or(ip_hostname)
        .or(meta_hostname)
        .or(dhcp_hostname.filter(|h| settings::valid_hostname(h)))
        .unwrap_or_else(|| "flynn".to_string());
    mark("config");
    net::set_hostname(&hostname)?;
    say(format!("host name: {hostname}"));

    write_daemon_config(settings)?;
    wait_for_random_pool(settings);
    let mut daemon = start_daemon(settings)?;
    say(format!(
        "started flynn-host daemon (pid {daemon}), log {DAEMON_LOG}"
    ));
    let client = flynn_client::Client::from_options(Some(&format!("unix://{SOCKET}")), None)?;
    let mut ready = false;
    for _ in 0..600 {
        if client
            .call::<serde_json::Value>(hyper::Method::GET, "/version", None::<&()>)
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        for (pid, status) in power::reap() {
            if pid == daemon {
                return Err(anyhow!(
                    "the daemon exited at start ({status:?}); its log:\n{}",
                    tail(DAEMON_LOG, 20)
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ready {
        return Err(anyhow!(
            "the daemon did not answer within 30 s; its log:\n{}",
            tail(DAEMON_LOG, 20)
        ));
    }
    mark("daemon");
    images::import_baked(&client, Path::new(STATE_DIR)).await;
    mark("images");
    let token = match &settings.token {
        Some((t, source)) => format!("{t} (from {source})"),
        None => std::fs::read_to_string(Path::new(STATE_DIR).join("token"))
            .map(|t| format!("{} (generated, in {STATE_DIR}/token)", t.trim()))
            .unwrap_or_else(|e| format!("unreadable: {e}")),
    };
    say(format!(
        "boot timeline (s since the kernel started): {}",
        timeline()
    ));
    // The pin goes last: what reads this line finds the token after "token".
    let pin = std::fs::read_to_string(Path::new(STATE_DIR).join("tls/ca.pem"))
        .ok()
        .and_then(|pem| flynn_tls::pin_of_pem(&pem).ok());
    let (scheme, pin) = match pin {
        Some(pin) => ("https", format!(" tls-pin {pin}")),
        None => ("http", String::new()),
    };
    say(format!(
        "ready: API {scheme}://{}:1113 token {token}{pin}",
        address
            .map(|a| a.to_string())
            .unwrap_or_else(|| "0.0.0.0".into())
    ));

    if let Some(peers) = settings.peers.clone() {
        cluster_bootstrap(peers, address, settings);
    }

    let mut renewals = tokio::task::JoinSet::new();
    for l in leases {
        renewals.spawn(keep_lease(l));
    }
    let mut restarts = 0u32;
    let stop = loop {
        tokio::select! {
            _ = sigchld.recv() => {
                for (pid, status) in power::reap() {
                    if pid != daemon {
                        continue;
                    }
                    if let Some(next) = daemon_successor(pid) {
                        say(format!("the daemon upgraded in place: now pid {next}"));
                        daemon = next;
                        continue;
                    }
                    restarts += 1;
                    say(format!("the daemon exited ({status:?}); its log:\n{}", tail(DAEMON_LOG, 20)));
                    let backoff = Duration::from_millis(250 * u64::from(restarts.min(20)));
                    tokio::time::sleep(backoff).await;
                    match start_daemon(settings) {
                        Ok(pid) => {
                            daemon = pid;
                            say(format!("restarted the daemon (pid {pid})"));
                        }
                        Err(e) => say(format!("warning: restarting the daemon: {e:#}")),
                    }
                }
            }
            Some(dev) = button_rx.recv() => {
                say(format!("power button pressed ({})", dev.display()));
                break Stop::PowerOff;
            }
            _ = sigterm.recv() => break Stop::PowerOff,
            _ = sigpwr.recv() => break Stop::PowerOff,
            _ = sigint.recv() => break Stop::Reboot,
        }
    };
    renewals.abort_all();
    // The cluster's token, for the drain's calls to the scheduler: the one given, or
    // the one the daemon made at its first start.
    let token = settings.token.as_ref().map(|(t, _)| t.clone()).or_else(|| {
        std::fs::read_to_string(Path::new(STATE_DIR).join("token"))
            .ok()
            .map(|t| t.trim().to_string())
    });
    shutdown(daemon, stop, token.as_deref())
}

/// Renews a lease at T1 for as long as the machine runs.
async fn keep_lease(mut l: Leased) {
    let Ok(nl) = net::Net::open() else { return };
    loop {
        tokio::time::sleep(Duration::from_secs(u64::from(l.lease.renew_secs.max(30)))).await;
        match dhcp::renew(&l.link.name, l.link.mac, &l.lease, Duration::from_secs(30)).await {
            Ok(lease) => {
                if lease.address != l.lease.address
                    && let Err(e) = apply_lease(&nl, &l.link, &lease, false).await
                {
                    say(format!("warning: applying a renewed lease: {e:#}"));
                }
                l.lease = lease;
            }
            Err(e) => say(format!(
                "warning: renewing the lease on {}: {e}",
                l.link.name
            )),
        }
    }
}

fn shutdown(daemon: Pid, stop: Stop, token: Option<&str>) -> Result<()> {
    say(match stop {
        Stop::PowerOff => "powering off: stopping the daemon and the jobs",
        Stop::Reboot => "rebooting: stopping the daemon and the jobs",
    });
    // While the daemon still runs: the cluster starts this host's jobs elsewhere.
    drain::before_stop(Path::new(STATE_DIR), SOCKET, token);
    // The daemon first, so it does not see the jobs end and restart them.
    let _ = nix::sys::signal::kill(daemon, Signal::SIGTERM);
    if !power::wait_for(daemon, Duration::from_secs(10)) {
        say("the daemon did not stop within 10 s; killing it");
        let _ = nix::sys::signal::kill(daemon, Signal::SIGKILL);
        power::wait_for(daemon, Duration::from_secs(2));
    }
    let killed = power::stop_jobs(Duration::from_secs(5));
    if killed > 0 {
        say(format!(
            "{killed} job processes did not stop within 5 s of SIGTERM; killed them"
        ));
    }
    // The shims record the exits and end by themselves; then the rest.
    if !power::signal_all(Signal::SIGTERM, Duration::from_secs(3)) {
        say("some processes did not stop within 3 s; killing them");
        power::signal_all(Signal::SIGKILL, Duration::from_secs(3));
    }
    match power::unmount_state(Path::new(STATE_DIR)) {
        Ok(()) => say(format!("unmounted {STATE_DIR} cleanly")),
        Err(e) => say(format!("warning: {STATE_DIR}: {e}")),
    }
    say(match stop {
        Stop::PowerOff => "power off",
        Stop::Reboot => "reboot",
    });
    power::finish(stop)
}
