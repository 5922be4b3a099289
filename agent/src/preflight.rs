//! Whether this host can take part in a cluster, checked before the bootstrap starts
//! anything (`GET /host/preflight`), and the probes that prove two hosts reach each
//! other on the cluster's ports (`/host/probe/...`).
//!
//! Flynn's users lost days to clusters that half-formed because hosts could not see
//! each other, UDP was blocked or a module was missing; every check here names what
//! is wrong and the likely fix, and nothing in it changes the host.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model::{PreflightCheck, ProbeHeard, ProbeListen, ProbeSend, ProbeSent};

/// Kernel modules (or built-ins) a cluster host needs.
const MODULES: &[(&str, &str, &str)] = &[
    ("overlay", "OVERLAY_FS", "container root file systems"),
    ("vxlan", "VXLAN", "the overlay network between hosts"),
    ("bridge", "BRIDGE", "the host's container bridge"),
    ("veth", "VETH", "container network interfaces"),
    ("nf_tables", "NF_TABLES", "NAT and published ports"),
];
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];
/// The longest a probe listens.
const MAX_LISTEN: Duration = Duration::from_secs(60);
/// Probe listeners at once (each holds a socket and a task).
const MAX_PROBES: usize = 64;

/// What the port checks must know of the host's own holders of those ports.
pub struct Holders {
    /// The host's etcd job runs (it holds 2379 and 2380).
    pub etcd_running: bool,
    /// The host's VXLAN device exists (it holds the overlay's UDP port).
    pub vxlan_up: bool,
    /// One of this agent's probe listeners holds the overlay's UDP port (for its
    /// time-out at most): the listener of a bootstrap killed mid-preflight must not
    /// fail the next run's checks.
    pub probing_vxlan: bool,
}

pub fn checks(holders: &Holders) -> Vec<PreflightCheck> {
    let mut out = Vec::new();
    let release = crate::host::kernel();
    let config = kernel_config(&release);
    for (module, symbol, why) in MODULES {
        let (ok, detail) = match module_available(module, symbol, &release, config.as_deref()) {
            Some(true) => (
                true,
                format!("{module} is loaded, built in or loadable ({why})"),
            ),
            Some(false) => (false, format!("no {module} in kernel {release} ({why})")),
            // No module index, no kernel config: nothing says; the set-up will.
            None => (
                true,
                format!(
                    "{module} could not be checked (no module index or kernel config); assumed built in"
                ),
            ),
        };
        out.push(PreflightCheck {
            name: format!("kernel:{module}"),
            ok,
            detail,
            fix: (!ok).then(|| {
                format!("install the kernel's modules (Debian: linux-image-{release}) or build {module} in (CONFIG_{symbol})")
            }),
        });
    }
    let enabled = enabled_controllers();
    for c in CONTROLLERS {
        let ok = enabled.iter().any(|e| e == c);
        out.push(PreflightCheck {
            name: format!("cgroup:{c}"),
            ok,
            detail: if ok {
                format!("the {c} controller is enabled")
            } else {
                format!("the {c} controller is not enabled (limits of jobs need it)")
            },
            fix: (!ok).then(|| {
                format!("enable it on the kernel command line (cgroup_enable={c}) or in the cgroup2 subtree_control")
            }),
        });
    }
    for (port, held) in [(2379, holders.etcd_running), (2380, holders.etcd_running)] {
        out.push(port_check("tcp", port, held, tcp_free(port), "etcd"));
    }
    if holders.probing_vxlan && !holders.vxlan_up {
        out.push(PreflightCheck {
            name: "port:udp/4789".into(),
            ok: true,
            detail: "udp 4789 is held for a few seconds by this host's own probe listener (a bootstrap's preflight)".into(),
            fix: None,
        });
    } else {
        out.push(port_check(
            "udp",
            4789,
            holders.vxlan_up,
            udp_free(4789),
            "the overlay (VXLAN)",
        ));
    }
    out.push(port_check(
        "udp",
        53,
        false,
        !udp_wildcard_listener(53),
        "DNS for containers on the bridge address",
    ));
    out
}

fn port_check(proto: &str, port: u16, ours: bool, free: bool, what: &str) -> PreflightCheck {
    let ok = ours || free;
    PreflightCheck {
        name: format!("port:{proto}/{port}"),
        ok,
        detail: match (ours, free) {
            (true, _) => format!("{proto} {port} is held by this host's own {what}"),
            (false, true) => format!("{proto} {port} is free ({what})"),
            (false, false) => {
                format!("{proto} {port} is taken by another program ({what} needs it)")
            }
        },
        fix: (!ok).then(|| {
            format!(
                "stop what listens on {proto} port {port} (see `ss -lnp{}`)",
                if proto == "udp" { "u" } else { "t" }
            )
        }),
    }
}

/// The kernel's configuration: `/proc/config.gz`, else `/boot/config-<release>`.
fn kernel_config(release: &str) -> Option<String> {
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(f), &mut text).is_ok() {
            return Some(text);
        }
    }
    std::fs::read_to_string(format!("/boot/config-{release}")).ok()
}

/// Loaded (`/sys/module`), built in or loadable (depmod's index, or the kernel's
/// config: `=y` or `=m`); `None` when nothing on this host can tell.
fn module_available(name: &str, symbol: &str, release: &str, config: Option<&str>) -> Option<bool> {
    if Path::new("/sys/module").join(name).exists() {
        return Some(true);
    }
    if name == "overlay"
        && std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("\toverlay"))
    {
        return Some(true);
    }
    if let Some(config) = config {
        let set = format!("CONFIG_{symbol}=");
        return Some(
            config
                .lines()
                .any(|l| l.strip_prefix(&set).is_some_and(|v| v == "y" || v == "m")),
        );
    }
    let dir = Path::new("/lib/modules").join(release);
    if !dir.exists() {
        return None;
    }
    let needle = format!("/{name}.ko");
    Some(["modules.builtin", "modules.dep"].iter().any(|f| {
        std::fs::read_to_string(dir.join(f)).is_ok_and(|text| {
            text.lines().any(|l| {
                let path = l.split(':').next().unwrap_or_default();
                path.ends_with(&needle) || path.contains(&format!("{needle}."))
            })
        })
    }))
}

/// Controllers with `enabled` = 1 in `/proc/cgroups` (v1, hybrid and v2 alike).
fn enabled_controllers() -> Vec<String> {
    std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[3] == "1").then(|| f[0].to_string())
        })
        .collect()
}

fn tcp_free(port: u16) -> bool {
    std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// Someone listens on every address on this UDP port (which would take the bridge
/// address's port too); listeners on one address (a local resolver on 127.0.0.53)
/// do not matter.
fn udp_wildcard_listener(port: u16) -> bool {
    let wanted = format!("00000000:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some(wanted.as_str()))
}

#[derive(Default)]
struct Heard {
    from: Option<SocketAddr>,
    listening: bool,
    port: u16,
}

/// The UDP probe listeners of this daemon, by nonce.
#[derive(Default)]
pub struct Probes {
    by_nonce: Mutex<HashMap<String, Arc<Mutex<Heard>>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("UDP port {port} cannot be listened on: {reason}")]
    Busy { port: u16, reason: String },
    #[error("{0}")]
    NotFound(String),
}

/// Port 0 names no port: binding it would listen on one the kernel picks (which the
/// prober does not know), and sending to it reaches nothing.
fn check_port(what: &str, port: u16) -> Result<(), ProbeError> {
    if port == 0 {
        return Err(ProbeError::BadRequest(format!(
            "{what} 0 is not a port: give 1 to 65535"
        )));
    }
    Ok(())
}

fn check_nonce(nonce: &str) -> Result<(), ProbeError> {
    let ok = (8..=64).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProbeError::BadRequest(
            "the nonce must be 8-64 letters, digits or '-'".into(),
        ))
    }
}

impl Probes {
    /// Listens on UDP `port` until a datagram carrying the nonce arrives or the time-out.
    pub async fn listen(self: &Arc<Self>, req: ProbeListen) -> Result<(), ProbeError> {
        check_nonce(&req.nonce)?;
        check_port("port", req.port)?;
        let timeout = Duration::from_millis(req.timeout_ms).min(MAX_LISTEN);
        let socket = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, req.port))
            .await
            .map_err(|e| ProbeError::Busy {
                port: req.port,
                reason: if e.kind() == std::io::ErrorKind::AddrInUse {
                    "it is in use (by this host's overlay if the host is already in a cluster)"
                        .into()
                } else {
                    e.to_string()
                },
            })?;
        let heard = Arc::new(Mutex::new(Heard {
            from: None,
            listening: true,
            port: req.port,
        }));
        {
            let mut map = self.by_nonce.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_PROBES {
                return Err(ProbeError::BadRequest(format!(
                    "{MAX_PROBES} probes are listening already; try again in a minute"
                )));
            }
            map.insert(req.nonce.clone(), heard.clone());
        }
        let probes = self.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            let wanted = req.nonce.as_bytes();
            let _ = tokio::time::timeout(timeout, async {
                loop {
                    match socket.recv_from(&mut buf).await {
                        Ok((n, from)) if &buf[..n] == wanted => {
                            heard.lock().unwrap_or_else(|p| p.into_inner()).from = Some(from);
                            return;
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "probe listener");
                            return;
                        }
                    }
                }
            })
            .await;
            drop(socket);
            heard.lock().unwrap_or_else(|p| p.into_inner()).listening = false;
            // The result stays readable for a while after the listener ends.
            tokio::time::sleep(MAX_LISTEN).await;
            probes
                .by_nonce
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&req.nonce);
        });
        Ok(())
    }

    /// Whether a listener of ours holds UDP `port` now.
    pub fn listening_on(&self, port: u16) -> bool {
        self.by_nonce
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|h| {
                let h = h.lock().unwrap_or_else(|p| p.into_inner());
                h.listening && h.port == port
            })
    }

    pub fn heard(&self, nonce: &str) -> Result<ProbeHeard, ProbeError> {
        let map = self.by_nonce.lock().unwrap_or_else(|p| p.into_inner());
        let heard = map.get(nonce).ok_or_else(|| {
            ProbeError::NotFound(format!("no probe listener with nonce {nonce} (it ended over a minute ago, or never started)"))
        })?;
        let h = heard.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ProbeHeard {
            received: h.from.is_some(),
            from: h.from.map(|a| a.to_string()),
            listening: h.listening && h.from.is_none(),
        })
    }
}

/// Connects over TCP and sends the nonce over UDP (a few times: UDP may drop one).
pub async fn send(req: ProbeSend) -> Result<ProbeSent, ProbeError> {
    check_nonce(&req.nonce)?;
    check_port("tcp_port", req.tcp_port)?;
    check_port("udp_port", req.udp_port)?;
    tokio::task::spawn_blocking(move || {
        let tcp = TcpStream::connect_timeout(
            &SocketAddr::new(req.address, req.tcp_port),
            Duration::from_secs(3),
        );
        let mut sent = 0;
        if let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
            for _ in 0..5 {
                if sock
                    .send_to(req.nonce.as_bytes(), (req.address, req.udp_port))
                    .is_ok()
                {
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(40));
            }
        }
        ProbeSent {
            tcp_ok: tcp.is_ok(),
            tcp_error: tcp.err().map(|e| e.to_string()),
            udp_sent: sent,
        }
    })
    .await
    .map_err(|e| ProbeError::BadRequest(format!("the probe task failed: {e}")))
}
