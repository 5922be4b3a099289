//! Test harness: every test runs in a network namespace of its own, made by unsharing a
//! fresh thread, with a current-thread tokio runtime on that thread (netlink sockets made
//! there, and threads spawned from there, live in that namespace). The host's own
//! networking is checked to be unchanged after each test.

#![allow(dead_code)]

use std::fs;
use std::future::Future;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use network::NetworkConfig;

/// What a test gets: a scratch directory (cleaned, mounts included) and a config whose
/// directories are inside it.
pub struct Env {
    pub dir: PathBuf,
    pub cfg: NetworkConfig,
}

/// The host's view that tests must never change.
fn host_fingerprint() -> (String, Vec<String>) {
    let fwd = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    let mut ifs: Vec<String> = fs::read_dir("/proc/sys/net/ipv4/conf")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ifs.sort();
    (fwd, ifs)
}

/// Unmounts everything mounted under `dir` (deepest first).
fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut mps: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|s| s.replace("\\040", " "))
        .filter(|mp| mp == &prefix || mp.starts_with(&format!("{prefix}/")))
        .collect();
    mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mp in mps {
        let _ = umount2(Path::new(&mp), MntFlags::MNT_DETACH);
    }
}

/// Mounts under `dir` (the directory itself excluded), for leak checks.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}/", dir.to_string_lossy());
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        unmount_under(&self.0);
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `body` in a new network namespace (with `lo` up) on a fresh thread.
pub fn netns_test<F, Fut>(body: F)
where
    F: FnOnce(Env) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let before = host_fingerprint();
    let tmp = tempfile::Builder::new()
        .prefix("flynn-net-test")
        .tempdir()
        .unwrap()
        .keep();
    let cleanup = Cleanup(tmp.clone());
    let dir = tmp.clone();
    let result = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): tests need root");
        let mine = fs::read_link("/proc/thread-self/ns/net").unwrap();
        let process = fs::read_link("/proc/self/ns/net").unwrap();
        assert_ne!(
            mine, process,
            "the test thread must not be in the host's namespace"
        );
        let rt = runtime();
        rt.block_on(async move {
            link_up_by_index(1).await;
            let cfg = NetworkConfig {
                state_dir: dir.join("state"),
                netns_dir: dir.join("netns"),
                ..NetworkConfig::default()
            };
            body(Env { dir, cfg }).await;
        });
    })
    .join();
    drop(cleanup);
    let after = host_fingerprint();
    assert_eq!(before, after, "the host's networking changed");
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn handle() -> rtnetlink::Handle {
    let (conn, h, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(conn);
    h
}

async fn link_up_by_index(index: u32) {
    handle()
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .unwrap();
}

/// Runs `f` on a thread inside the namespace file `ns`.
pub fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        let fd = fs::File::open(&ns).unwrap();
        setns(fd, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Makes a namespace file at `path` (a thread unshares and bind-mounts itself), with lo up.
pub fn make_netns(path: &Path) {
    let path = path.to_owned();
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).unwrap();
        fs::write(&path, b"").unwrap();
        mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        runtime().block_on(link_up_by_index(1));
    })
    .join()
    .unwrap();
}

/// A link as the tests look at it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mtu: u32,
    pub mac: String,
    pub controller: Option<u32>,
}

/// Links, IPv4 addresses `(ifindex, ip, prefix)` and IPv4 main-table routes
/// `(dst, prefix, gateway)` of the calling thread's namespace.
#[derive(Debug, Clone)]
pub struct NsView {
    pub links: Vec<Link>,
    pub addrs: Vec<(u32, Ipv4Addr, u8)>,
    pub routes: Vec<(Ipv4Addr, u8, Option<Ipv4Addr>)>,
}

impl NsView {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn addrs_of(&self, name: &str) -> Vec<(Ipv4Addr, u8)> {
        let Some(l) = self.link(name) else {
            return vec![];
        };
        self.addrs
            .iter()
            .filter(|a| a.0 == l.index)
            .map(|a| (a.1, a.2))
            .collect()
    }
}

pub async fn view() -> NsView {
    let h = handle();
    let mut links = Vec::new();
    let mut s = h.link().get().execute();
    while let Some(l) = s.try_next().await.unwrap() {
        let mut link = Link {
            index: l.header.index,
            name: String::new(),
            up: l.header.flags.contains(LinkFlags::Up),
            mtu: 0,
            mac: String::new(),
            controller: None,
        };
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::Address(m) => {
                    link.mac = m
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                }
                _ => {}
            }
        }
        links.push(link);
    }
    let mut addrs = Vec::new();
    let mut s = h.address().get().execute();
    while let Some(a) = s.try_next().await.unwrap() {
        for attr in &a.attributes {
            if let AddressAttribute::Local(std::net::IpAddr::V4(ip)) = attr {
                addrs.push((a.header.index, *ip, a.header.prefix_len));
            }
        }
    }
    let mut routes = Vec::new();
    let mut s = h
        .route()
        .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = s.try_next().await.unwrap() {
        if r.header.table != 254 {
            continue;
        }
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut gw = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                _ => {}
            }
        }
        routes.push((dst, r.header.destination_prefix_length, gw));
    }
    NsView {
        links,
        addrs,
        routes,
    }
}

/// The view of another namespace.
pub fn view_of(ns: &Path) -> NsView {
    in_netns(ns, || runtime().block_on(view()))
}

/// "The outside world": a namespace at `<dir>/outside` joined to the test's namespace by
/// a veth pair: `ext0` (192.0.2.1/24, MTU `mtu`) here, `eth0` (192.0.2.2/24) there. With
/// `default_route`, the test namespace's default route goes through it.
pub async fn outside(dir: &Path, mtu: u32, default_route: bool) -> PathBuf {
    let ns = dir.join("outside");
    make_netns(&ns);
    let fd = fs::File::open(&ns).unwrap();
    let h = handle();
    let peer = rtnetlink::LinkUnspec::new_with_name("eth0")
        .mtu(mtu)
        .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .build();
    let msg = rtnetlink::LinkVeth::new("ext0", "eth0")
        .set_info_data(netlink_packet_route::link::InfoData::Veth(
            netlink_packet_route::link::InfoVeth::Peer(peer),
        ))
        .mtu(mtu)
        .up()
        .build();
    h.link().add(msg).execute().await.unwrap();
    let ext0 = view().await.link("ext0").unwrap().index;
    h.address()
        .add(ext0, Ipv4Addr::new(192, 0, 2, 1).into(), 24)
        .execute()
        .await
        .unwrap();
    if default_route {
        h.route()
            .add(
                rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(Ipv4Addr::new(192, 0, 2, 2))
                    .build(),
            )
            .execute()
            .await
            .unwrap();
    }
    in_netns(&ns, || {
        runtime().block_on(async {
            let h = handle();
            let eth0 = view().await.link("eth0").unwrap().index;
            link_up_by_index(eth0).await;
            h.address()
                .add(eth0, Ipv4Addr::new(192, 0, 2, 2).into(), 24)
                .execute()
                .await
                .unwrap();
        })
    });
    ns
}

pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// A TCP server on `bind` (inside `ns`, or in the caller's namespace) that answers each
/// of up to `conns` connections with `peer=<address it saw>` and stops after 20 s.
/// Returns the bound port once it is listening.
pub fn tcp_server(ns: Option<&Path>, bind: SocketAddrV4, conns: usize) -> u16 {
    let ns = ns.map(Path::to_owned);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            setns(fs::File::open(ns).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        }
        let l = TcpListener::bind(bind).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut served = 0;
        while served < conns && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = writeln!(s, "peer={}", peer.ip());
                    served += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(_) => break,
            }
        }
    });
    rx.recv().unwrap()
}

/// A UDP server that answers each datagram with `peer=<address>`, up to `n` times.
pub fn udp_server(ns: Option<&Path>, bind: SocketAddrV4, n: usize) -> u16 {
    let ns = ns.map(Path::to_owned);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            setns(fs::File::open(ns).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        }
        let s = UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        tx.send(s.local_addr().unwrap().port()).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..n {
            let Ok((_, peer)) = s.recv_from(&mut buf) else {
                break;
            };
            let _ = s.send_to(format!("peer={}", peer.ip()).as_bytes(), peer);
        }
    });
    rx.recv().unwrap()
}

/// Connects to `addr` (from the caller's namespace) and returns the address the server
/// saw.
pub fn tcp_peer(addr: SocketAddrV4) -> io::Result<Ipv4Addr> {
    let s = TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    line.trim()
        .strip_prefix("peer=")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected answer {line:?}")))
}

/// [`tcp_peer`] from inside `ns`.
pub fn tcp_peer_from(ns: &Path, addr: SocketAddrV4) -> io::Result<Ipv4Addr> {
    in_netns(ns, move || tcp_peer(addr))
}

pub fn udp_peer(addr: SocketAddrV4) -> io::Result<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.send_to(b"x", addr)?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf)?;
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    line.strip_prefix("peer=")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected answer {line:?}")))
}

pub fn sysctl(path: &str) -> String {
    fs::read_to_string(path).unwrap().trim().to_string()
}

pub fn sorted(mut v: Vec<u128>) -> Vec<u128> {
    v.sort_unstable();
    v
}

/// `(median, p90, max)` in microseconds.
pub fn stats(v: &[u128]) -> (u128, u128, u128) {
    let v = sorted(v.to_vec());
    (v[v.len() / 2], v[v.len() * 9 / 10], v[v.len() - 1])
}
