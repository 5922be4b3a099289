//! DNS for containers, on the bridge address (port 53, UDP and TCP):
//! `<service>.discoverd` answers the service's instances (A records, election order),
//! `leader.<service>.discoverd` its leader; every other name is forwarded, query bytes
//! unchanged, to the upstream servers (the host's resolv.conf, or `--dns-upstream`),
//! which also reach loopback resolvers a container cannot.
//!
//! Answers come from the agent's watch of every service (no etcd round trip per
//! query), with TTL 0 so that clients ask again rather than keep a departed instance.
//! Messages are read and written with `hickory-proto`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use discovery::services::ServiceView;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub const ZONE: &str = "discoverd";
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

pub struct DnsServer {
    view: Arc<RwLock<ServiceView>>,
    upstream: Vec<SocketAddr>,
}

/// The upstream nameservers of a resolv.conf (port 53).
pub fn upstreams_of(resolv: &str) -> Vec<SocketAddr> {
    resolv
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl DnsServer {
    pub fn new(view: Arc<RwLock<ServiceView>>, upstream: Vec<SocketAddr>) -> Arc<DnsServer> {
        Arc::new(DnsServer { view, upstream })
    }

    /// Binds `addr` (UDP and TCP) and serves until the task is dropped.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<()> {
        let udp = Arc::new(UdpSocket::bind(addr).await?);
        let tcp = TcpListener::bind(addr).await?;
        tracing::info!(%addr, upstream = ?self.upstream, "discovery DNS serving");
        let me = self.clone();
        let tcp_task = tokio::spawn(async move {
            loop {
                match tcp.accept().await {
                    Ok((stream, _)) => {
                        let me = me.clone();
                        tokio::spawn(async move { me.serve_tcp(stream).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "DNS: accepting a TCP connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        let mut buf = vec![0u8; 4096];
        let result = loop {
            let (n, peer) = match udp.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => break Err(e),
            };
            let query = buf[..n].to_vec();
            let me = self.clone();
            let udp = udp.clone();
            tokio::spawn(async move {
                if let Some(answer) = me.answer(&query, false).await {
                    let _ = udp.send_to(&answer, peer).await;
                }
            });
        };
        tcp_task.abort();
        result
    }

    async fn serve_tcp(&self, mut stream: TcpStream) {
        loop {
            let mut len = [0u8; 2];
            if stream.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            if stream.read_exact(&mut q).await.is_err() {
                return;
            }
            let Some(a) = self.answer(&q, true).await else {
                return;
            };
            let Ok(alen) = u16::try_from(a.len()) else {
                return;
            };
            if stream.write_all(&alen.to_be_bytes()).await.is_err()
                || stream.write_all(&a).await.is_err()
            {
                return;
            }
        }
    }

    /// The answer to one query message (None: drop it, it is not a query we can read).
    pub async fn answer(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let msg = Message::from_vec(query).ok()?;
        if msg.message_type() != MessageType::Query {
            return None;
        }
        let mut reply = Message::new();
        reply
            .set_id(msg.id())
            .set_message_type(MessageType::Response)
            .set_op_code(msg.op_code())
            .set_recursion_desired(msg.recursion_desired())
            .set_recursion_available(true);
        for q in msg.queries() {
            reply.add_query(q.clone());
        }
        let q = match msg.queries() {
            [q] if msg.op_code() == OpCode::Query => q,
            _ => {
                reply.set_response_code(ResponseCode::FormErr);
                return reply.to_vec().ok();
            }
        };
        let name = q.name().to_lowercase().to_ascii();
        let name = name.trim_end_matches('.');
        let Some(local) = name
            .strip_suffix(ZONE)
            .filter(|rest| rest.is_empty() || rest.ends_with('.'))
        else {
            return Some(self.forward(query, tcp).await.unwrap_or_else(|| {
                reply.set_response_code(ResponseCode::ServFail);
                reply.to_vec().unwrap_or_default()
            }));
        };
        reply.set_authoritative(true);
        let labels: Vec<&str> = local.trim_end_matches('.').split('.').collect();
        let (service, leader_only) = match labels.as_slice() {
            ["leader", svc] => (*svc, true),
            [svc] if !svc.is_empty() => (*svc, false),
            _ => {
                reply.set_response_code(ResponseCode::NXDomain);
                return reply.to_vec().ok();
            }
        };
        let (instances, leader) = self
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .lookup(service);
        if instances.is_empty() {
            reply.set_response_code(ResponseCode::NXDomain);
            return reply.to_vec().ok();
        }
        let chosen = if leader_only {
            leader.into_iter().collect()
        } else {
            instances
        };
        if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
            let mut seen = Vec::new();
            for inst in chosen {
                if let IpAddr::V4(ip) = inst.addr.ip()
                    && !seen.contains(&ip)
                {
                    seen.push(ip);
                    reply.add_answer(Record::from_rdata(q.name().clone(), 0, RData::A(A(ip))));
                }
            }
        }
        // Other types: the name exists, with no records of that type (NODATA).
        reply.to_vec().ok()
    }

    /// Relays a query to the upstream servers in turn; the first answer wins.
    async fn forward(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        for up in &self.upstream {
            let r = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
                if tcp {
                    forward_tcp(*up, query).await
                } else {
                    forward_udp(*up, query).await
                }
            })
            .await;
            match r {
                Ok(Ok(a)) => return Some(a),
                Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "DNS upstream failed"),
                Err(_) => tracing::debug!(upstream = %up, "DNS upstream timed out"),
            }
        }
        None
    }
}

async fn forward_udp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = match up {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().map_err(std::io::Error::other)?,
        SocketAddr::V6(_) => "[::]:0".parse().map_err(std::io::Error::other)?,
    };
    let s = UdpSocket::bind(bind).await?;
    s.connect(up).await?;
    s.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = s.recv(&mut buf).await?;
        // Only the answer to this query (same id).
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            return Ok(buf[..n].to_vec());
        }
    }
}

async fn forward_tcp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(up).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(query).await?;
    let mut l = [0u8; 2];
    s.read_exact(&mut l).await?;
    let mut a = vec![0u8; u16::from_be_bytes(l) as usize];
    s.read_exact(&mut a).await?;
    Ok(a)
}

/// A server whose view holds the service `web` with these instances (id, address,
/// etcd revision) and no upstream (a forwarded name gets SERVFAIL, sending nothing):
/// for the tests and the fuzzer.
#[cfg(test)]
pub(crate) fn server_with_web(instances: &[(&str, std::net::SocketAddr, i64)]) -> Arc<DnsServer> {
    use discovery::Instance;
    use discovery::watch::{Change, Entry};
    let mut view = ServiceView::default();
    for &(id, addr, rev) in instances {
        let inst = Instance {
            service: "web".into(),
            id: id.into(),
            addr,
            host_id: "h".into(),
            job_id: None,
            meta: Default::default(),
            registered_at: chrono::DateTime::UNIX_EPOCH,
        };
        view.apply(Change::Put(Entry {
            key: discovery::schema::instance("web", id),
            value: serde_json::to_vec(&inst).unwrap_or_default(),
            create_revision: rev,
            mod_revision: rev,
            lease: 1,
        }));
    }
    DnsServer::new(Arc::new(RwLock::new(view)), vec![])
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(42).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn answers_services_and_leaders() {
        let s = server_with_web(&[
            ("b", "100.100.2.5:80".parse().unwrap(), 7),
            ("a", "100.100.1.5:80".parse().unwrap(), 5),
        ]);
        let a = Message::from_vec(
            &s.answer(&query("web.discoverd.", RecordType::A), false)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(a.id(), 42);
        let ips: Vec<String> = a.answers().iter().map(|r| r.data().to_string()).collect();
        assert_eq!(ips, ["100.100.1.5", "100.100.2.5"]);
        let l = Message::from_vec(
            &s.answer(&query("Leader.WEB.discoverd", RecordType::A), false)
                .await
                .unwrap(),
        )
        .unwrap();
        let ips: Vec<String> = l.answers().iter().map(|r| r.data().to_string()).collect();
        assert_eq!(ips, ["100.100.1.5"]);
        let n = Message::from_vec(
            &s.answer(&query("nope.discoverd.", RecordType::A), false)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(n.response_code(), ResponseCode::NXDomain);
        let aaaa = Message::from_vec(
            &s.answer(&query("web.discoverd.", RecordType::AAAA), false)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (aaaa.response_code(), aaaa.answers().len()),
            (ResponseCode::NoError, 0)
        );
        // No upstream: other names fail rather than hang.
        let f = Message::from_vec(
            &s.answer(&query("example.org.", RecordType::A), false)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(f.response_code(), ResponseCode::ServFail);
        assert!(s.answer(b"garbage", false).await.is_none());
        assert_eq!(
            upstreams_of("nameserver 127.0.0.53\nsearch x\n"),
            vec!["127.0.0.53:53".parse().unwrap()]
        );
    }
}
