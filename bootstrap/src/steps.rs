//! The actions. Each looks at the real state first (`Skipped` when it holds) and
//! fails with what is wrong, on which host or between which hosts, and what to do.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use flynn_client::{ApiFailure, Client};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::manifest::Step;

/// The overlay's UDP port (VXLAN) and the most clock skew a cluster tolerates.
const VXLAN_PORT: u16 = 4789;
const MAX_SKEW_MS: i64 = 2000;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const SCHEDULER_JOB: &str = "flynn-scheduler";
const SCHEDULER_PORT: u16 = 1114;

pub enum Outcome {
    Done(Value),
    Skipped(Value),
}

struct Peer {
    addr: Ipv4Addr,
    id: String,
    client: Client,
}

/// `GET /cluster` as the bootstrap reads it.
#[derive(Deserialize, Default, Clone)]
struct Membership {
    cluster_id: Option<String>,
    #[serde(default)]
    joined: bool,
}

#[derive(Deserialize)]
struct PreflightCheck {
    name: String,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

#[derive(Deserialize)]
struct Preflight {
    checks: Vec<PreflightCheck>,
    time_ms: i64,
}

pub struct Run {
    peers: Vec<Ipv4Addr>,
    port: u16,
    token: String,
    min_hosts: Option<usize>,
    timeout: Duration,
    hosts: Vec<Peer>,
    cluster_id: Option<String>,
    etcd_urls: Vec<String>,
    etcd: Option<discovery::Etcd>,
}

async fn call<T: DeserializeOwned>(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, c.call::<T>(method, path, body)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(match e.downcast_ref::<ApiFailure>() {
            Some(f) if f.status == StatusCode::UNAUTHORIZED => {
                "it refused the token: give every host the same token (flynn.token=, or the daemon's config) and pass it here".to_string()
            }
            Some(f)
                if f.status == StatusCode::NOT_FOUND
                    && (path.starts_with("/cluster") || path.starts_with("/host/p")) =>
            {
                format!("{} (is its flynn-host older than this one?)", f.message)
            }
            _ => format!("{e:#}"),
        }),
        Err(_) => Err(format!("no answer within {}s", CALL_TIMEOUT.as_secs())),
    }
}

fn random_id() -> Result<String, String> {
    flynn_random::hex(8, flynn_random::Use::Unique).map_err(|e| format!("random bytes: {e}"))
}

impl Run {
    pub fn new(
        peers: Vec<Ipv4Addr>,
        port: u16,
        token: String,
        min_hosts: Option<usize>,
        timeout: Duration,
    ) -> Run {
        Run {
            peers,
            port,
            token,
            min_hosts,
            timeout,
            hosts: Vec::new(),
            cluster_id: None,
            etcd_urls: Vec::new(),
            etcd: None,
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "cluster {} of {} hosts ({}), etcd at {}",
            self.cluster_id.as_deref().unwrap_or("?"),
            self.hosts.len(),
            self.hosts
                .iter()
                .map(|h| h.addr.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.etcd_urls.join(",")
        )
    }

    pub async fn step(&mut self, step: &Step) -> Result<Outcome, String> {
        if step.action != "online-hosts" && self.hosts.is_empty() {
            self.online().await?;
        }
        match step.action.as_str() {
            "online-hosts" => self.online().await,
            "preflight" => self.preflight().await,
            "etcd" => {
                let members = step
                    .params
                    .get("members")
                    .and_then(Value::as_u64)
                    .map(|n| n as usize);
                self.etcd_step(members).await
            }
            "join" => self.join().await,
            "scheduler" => {
                let n = step
                    .params
                    .get("instances")
                    .and_then(Value::as_u64)
                    .unwrap_or(2) as usize;
                let image = step
                    .params
                    .get("image")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("flynn/host:{}", env!("CARGO_PKG_VERSION")));
                self.scheduler(n, &image).await
            }
            other => Err(format!("unknown action {other}")),
        }
    }

    /// Notes a finished step in etcd (once etcd runs); best effort: the record is a
    /// convenience, the steps check the real state themselves.
    pub async fn record(&self, step: &str) {
        let Some(etcd) = &self.etcd else { return };
        let mut rec = discovery::cluster::bootstrap_record(etcd)
            .await
            .unwrap_or_default();
        if !rec.done.iter().any(|d| d == step) {
            rec.done.push(step.to_string());
        }
        rec.hosts = self.hosts.iter().map(|h| h.addr.to_string()).collect();
        rec.updated_at = Some(chrono::Utc::now());
        if let Err(e) = discovery::cluster::put_bootstrap_record(etcd, &rec).await {
            tracing::warn!(error = %e, "recording the bootstrap's progress");
        }
    }

    async fn online(&mut self) -> Result<Outcome, String> {
        let want = self.min_hosts.unwrap_or(self.peers.len());
        let deadline = Instant::now() + self.timeout;
        let mut found: BTreeMap<Ipv4Addr, Peer> = BTreeMap::new();
        let mut last_error: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        loop {
            for addr in &self.peers {
                if found.contains_key(addr) {
                    continue;
                }
                let client = Client::from_options(
                    Some(&format!("http://{addr}:{}", self.port)),
                    Some(&self.token),
                )
                .map_err(|e| format!("{e:#}"))?;
                match call::<Value>(&client, Method::GET, "/host/status", None).await {
                    Ok(status) => {
                        let id = status["id"].as_str().unwrap_or_default().to_string();
                        found.insert(
                            *addr,
                            Peer {
                                addr: *addr,
                                id,
                                client,
                            },
                        );
                    }
                    Err(e) if e.contains("refused the token") => {
                        return Err(format!("host {addr}: {e}"));
                    }
                    Err(e) => {
                        last_error.insert(*addr, e);
                    }
                }
            }
            if found.len() >= want {
                break;
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = self
                    .peers
                    .iter()
                    .filter(|a| !found.contains_key(a))
                    .map(|a| {
                        format!(
                            "{a} ({})",
                            last_error.get(a).map(String::as_str).unwrap_or("no answer")
                        )
                    })
                    .collect();
                return Err(format!(
                    "{} of {} hosts answered within {}s; still missing: {}",
                    found.len(),
                    self.peers.len(),
                    self.timeout.as_secs(),
                    missing.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.hosts = found.into_values().collect();
        let hosts: Vec<Value> = self
            .hosts
            .iter()
            .map(|h| json!({"address": h.addr, "id": h.id}))
            .collect();
        // Nothing to bring up when every host is in one cluster already.
        let ms = self.memberships().await?;
        if let Some(id) = self.known_cluster(&ms)?
            && ms.iter().all(|m| m.joined)
        {
            self.cluster_id = Some(id.clone());
            return Ok(Outcome::Skipped(json!({
                "hosts": hosts,
                "summary": format!("{} hosts answer, all in cluster {id}", self.hosts.len()),
            })));
        }
        Ok(Outcome::Done(json!({
            "hosts": hosts,
            "summary": format!("{} hosts answer", self.hosts.len()),
        })))
    }

    async fn memberships(&self) -> Result<Vec<Membership>, String> {
        let mut out = Vec::new();
        for h in &self.hosts {
            out.push(
                call(&h.client, Method::GET, "/cluster", None)
                    .await
                    .map_err(|e| format!("host {}: {e}", h.addr))?,
            );
        }
        Ok(out)
    }

    /// The cluster the hosts already belong to, if any; an error if they disagree.
    fn known_cluster(&self, ms: &[Membership]) -> Result<Option<String>, String> {
        let mut ids: Vec<(&Ipv4Addr, &String)> = self
            .hosts
            .iter()
            .zip(ms)
            .filter_map(|(h, m)| m.cluster_id.as_ref().map(|id| (&h.addr, id)))
            .collect();
        ids.dedup_by(|a, b| a.1 == b.1);
        match ids.as_slice() {
            [] => Ok(None),
            [(_, id)] => Ok(Some((*id).clone())),
            _ => Err(format!(
                "the hosts belong to different clusters ({}): a host answers to one cluster; bootstrap hosts of one cluster, or wipe the others' state",
                ids.iter()
                    .map(|(a, id)| format!("{a}: {id}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    async fn preflight(&mut self) -> Result<Outcome, String> {
        let ms = self.memberships().await?;
        let known = self.known_cluster(&ms)?;
        if known.is_some() && ms.iter().all(|m| m.joined) {
            return Ok(Outcome::Skipped(json!({
                "summary": format!("every host is already in cluster {}", known.unwrap_or_default()),
            })));
        }
        let mut failures = Vec::new();
        let mut times = Vec::new();
        for h in &self.hosts {
            let sent = Instant::now();
            let p: Preflight = call(&h.client, Method::GET, "/host/preflight", None)
                .await
                .map_err(|e| format!("host {}: {e}", h.addr))?;
            let rtt = sent.elapsed().as_millis() as i64;
            times.push((h.addr, p.time_ms - rtt / 2));
            for c in p.checks.iter().filter(|c| !c.ok) {
                failures.push(format!(
                    "host {}: {}: {}{}",
                    h.addr,
                    c.name,
                    c.detail,
                    c.fix
                        .as_ref()
                        .map(|f| format!(" (fix: {f})"))
                        .unwrap_or_default()
                ));
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        for (addr, t) in &times {
            // Each host against this machine's clock, all read within a moment.
            let skew = (t - now).abs();
            let others = times.iter().map(|(_, o)| (t - o).abs()).max().unwrap_or(0);
            if others > MAX_SKEW_MS {
                failures.push(format!(
                    "host {addr}: its clock is {others} ms off another host's (at most {MAX_SKEW_MS} ms): run NTP (chrony) on every host"
                ));
            }
            tracing::debug!(%addr, skew, "clock");
        }
        // Every ordered pair of hosts not yet in the cluster: TCP to the API, UDP to
        // the overlay's port. The hosts in the cluster already hold 4789 (their VXLAN
        // device): they proved it then.
        let fresh: Vec<usize> = (0..self.hosts.len()).filter(|i| !ms[*i].joined).collect();
        let mut pairs = 0;
        for &b in &fresh {
            for &a in &fresh {
                if a == b {
                    continue;
                }
                pairs += 1;
                if let Err(e) = self.probe(a, b).await {
                    failures.push(e);
                }
            }
        }
        if !failures.is_empty() {
            return Err(format!("nothing was started: {}", failures.join("; ")));
        }
        Ok(Outcome::Done(json!({
            "summary": format!("{} hosts ready, {pairs} host pairs reach each other on TCP {} and UDP {VXLAN_PORT}", self.hosts.len(), self.port),
            "pairs": pairs,
        })))
    }

    async fn probe(&self, a: usize, b: usize) -> Result<(), String> {
        let (ha, hb) = (&self.hosts[a], &self.hosts[b]);
        let nonce = format!("bootstrap-{}", random_id()?);
        let listen = json!({"port": VXLAN_PORT, "nonce": nonce, "timeout_ms": 3000});
        // 204: no body; the client wants JSON, so use the raw request.
        tokio::time::timeout(
            CALL_TIMEOUT,
            hb.client
                .send_json(Method::POST, "/host/probe/listen", Some(&listen)),
        )
        .await
        .map_err(|_| format!("host {}: no answer to the UDP probe set-up", hb.addr))?
        .map_err(|e| {
            format!(
                "host {}: cannot listen on UDP {VXLAN_PORT}: {e:#} (is something else using it?)",
                hb.addr
            )
        })?;
        let send = json!({"address": hb.addr, "tcp_port": self.port, "udp_port": VXLAN_PORT, "nonce": nonce});
        let sent: Value = call(&ha.client, Method::POST, "/host/probe/send", Some(&send))
            .await
            .map_err(|e| format!("host {}: {e}", ha.addr))?;
        let mut problems = Vec::new();
        if sent["tcp_ok"] != true {
            problems.push(format!(
                "TCP {} from {} to {} fails ({}): open TCP port {} between the hosts",
                self.port,
                ha.addr,
                hb.addr,
                sent["tcp_error"].as_str().unwrap_or("?"),
                self.port
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut heard = false;
        loop {
            let h: Value = call(
                &hb.client,
                Method::GET,
                &format!("/host/probe/listen/{nonce}"),
                None,
            )
            .await
            .map_err(|e| format!("host {}: {e}", hb.addr))?;
            if h["received"] == true {
                heard = true;
                break;
            }
            if h["listening"] != true || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !heard {
            problems.push(format!(
                "UDP {VXLAN_PORT} from {} to {} does not arrive: open UDP port {VXLAN_PORT} between the hosts (firewall, security group); the overlay needs it",
                ha.addr, hb.addr
            ));
            // The listener holds the port until its time-out: wait it out.
            for _ in 0..40 {
                let h: Value = call(
                    &hb.client,
                    Method::GET,
                    &format!("/host/probe/listen/{nonce}"),
                    None,
                )
                .await
                .unwrap_or(Value::Null);
                if h["listening"] != true {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The etcd members: the hosts with the lowest addresses, 1, 3 or 5 of them (one
    /// when there are two hosts: a second member adds a failure, not safety).
    fn members(&self, wanted: Option<usize>) -> Vec<Ipv4Addr> {
        let n = wanted.unwrap_or(match self.hosts.len() {
            0..=2 => 1,
            3 | 4 => 3,
            _ => 5,
        });
        // `hosts` is in address order.
        self.hosts
            .iter()
            .take(n.min(self.hosts.len()))
            .map(|h| h.addr)
            .collect()
    }

    fn host(&self, addr: Ipv4Addr) -> Option<(usize, &Peer)> {
        self.hosts.iter().enumerate().find(|(_, h)| h.addr == addr)
    }

    async fn etcd_step(&mut self, wanted: Option<usize>) -> Result<Outcome, String> {
        let ms = self.memberships().await?;
        let cluster_id = match self.known_cluster(&ms)? {
            Some(id) => id,
            None => random_id()?,
        };
        self.cluster_id = Some(cluster_id.clone());
        let members = self.members(wanted);
        let list: Vec<Value> = members
            .iter()
            .map(|addr| {
                json!({
                    "name": format!("m-{}", addr.to_string().replace('.', "-")),
                    "peer_url": format!("http://{addr}:2380"),
                    "client_url": format!("http://{addr}:2379"),
                })
            })
            .collect();
        self.etcd_urls = members.iter().map(|a| format!("http://{a}:2379")).collect();
        let mut changed = false;
        for (addr, entry) in members.iter().zip(&list) {
            let Some((_, m)) = self.host(*addr) else {
                continue;
            };
            let req = json!({"cluster_id": cluster_id, "name": entry["name"], "members": list});
            // Asked even when the host records this membership: the agent makes sure
            // its job exists and runs (a run killed mid-step may have left it without).
            let r: Value = call(&m.client, Method::PUT, "/cluster/etcd", Some(&req))
                .await
                .map_err(|e| format!("host {addr}: running its etcd member: {e}"))?;
            changed |= r["changed"] == true;
        }
        let etcd = self.wait_etcd().await?;
        let record = discovery::cluster::ensure(
            &etcd,
            &discovery::cluster::ClusterRecord {
                id: cluster_id.clone(),
                created_at: chrono::Utc::now(),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        if record.id != cluster_id {
            return Err(format!(
                "the etcd at {} belongs to cluster {}, not {cluster_id}: these hosts were bootstrapped with other hosts",
                self.etcd_urls.join(","),
                record.id
            ));
        }
        self.etcd = Some(etcd);
        let data = json!({
            "cluster_id": cluster_id,
            "members": list,
            "summary": format!("{} member(s) on {}, cluster {cluster_id}", members.len(), members.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")),
        });
        Ok(if changed {
            Outcome::Done(data)
        } else {
            Outcome::Skipped(data)
        })
    }

    /// Waits until every member answers (a client of all of them then never lands on
    /// one still starting), then connects to all.
    async fn wait_etcd(&self) -> Result<discovery::Etcd, String> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let mut silent = Vec::new();
            for u in &self.etcd_urls {
                let ok =
                    match discovery::Etcd::connect(std::slice::from_ref(u), Duration::from_secs(2))
                        .await
                    {
                        Ok(e) => e.ping().await.is_ok(),
                        Err(_) => false,
                    };
                if !ok {
                    silent.push(u.clone());
                }
            }
            if silent.is_empty()
                && let Ok(e) =
                    discovery::Etcd::connect(&self.etcd_urls, Duration::from_secs(2)).await
                && e.ping().await.is_ok()
            {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd is not healthy after {}s; members not answering: {} (see `flynn-host logs flynn-etcd` on those hosts)",
                    self.timeout.as_secs(),
                    if silent.is_empty() {
                        "none, but there is no quorum yet".to_string()
                    } else {
                        silent.join(", ")
                    }
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The scheduler: `n` jobs `flynn-scheduler` on the hosts with the lowest addresses
    /// (one per host), on the host network; then waits for a leader.
    async fn scheduler(&mut self, n: usize, image: &str) -> Result<Outcome, String> {
        if self.etcd_urls.is_empty() {
            self.etcd_urls = self
                .members(None)
                .iter()
                .map(|a| format!("http://{a}:2379"))
                .collect();
        }
        let mut started = 0;
        for h in self.hosts.iter().take(n.max(1)) {
            match call::<Value>(
                &h.client,
                Method::GET,
                &format!("/jobs/{SCHEDULER_JOB}"),
                None,
            )
            .await
            {
                Ok(_) => continue,
                Err(e) if e.contains("no such job") || e.contains("not found") => {}
                Err(e) => return Err(format!("host {}: {e}", h.addr)),
            }
            let req = json!({
                "image": image,
                "name": SCHEDULER_JOB,
                "cmd": ["scheduler", "--listen", format!("{}:{SCHEDULER_PORT}", h.addr)],
                "env": [format!("FLYNN_ETCD={}", self.etcd_urls.join(",")), format!("FLYNN_TOKEN={}", self.token)],
                "network": "host",
                "restart": {"policy": "always"},
                "labels": {"flynn.platform": "scheduler"},
            });
            call::<Value>(&h.client, Method::POST, "/jobs", Some(&req))
                .await
                .map_err(|e| format!("host {}: starting the scheduler: {e}", h.addr))?;
            started += 1;
        }
        let deadline = Instant::now() + self.timeout;
        let leader = loop {
            match call::<Value>(
                &self.hosts[0].client,
                Method::GET,
                "/discovery/services/flynn-scheduler/leader",
                None,
            )
            .await
            {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "no scheduler leads after {}s ({e}): see `flynn-host logs {SCHEDULER_JOB}` on the first hosts",
                        self.timeout.as_secs()
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        let data = json!({"leader": leader["addr"], "summary": format!("leader at {}", leader["addr"].as_str().unwrap_or("?"))});
        Ok(if started > 0 {
            Outcome::Done(data)
        } else {
            Outcome::Skipped(data)
        })
    }

    async fn join(&mut self) -> Result<Outcome, String> {
        let ms = self.memberships().await?;
        let Some(cluster_id) = self.cluster_id.clone().or(self.known_cluster(&ms)?) else {
            return Err("no cluster to join: the etcd step must come first".into());
        };
        if self.etcd_urls.is_empty() {
            self.etcd_urls = self
                .members(None)
                .iter()
                .map(|a| format!("http://{a}:2379"))
                .collect();
        }
        let mut joined_now = 0;
        for (h, m) in self.hosts.iter().zip(&ms) {
            if m.joined && m.cluster_id.as_deref() == Some(cluster_id.as_str()) {
                continue;
            }
            let req = json!({"cluster_id": cluster_id, "etcd": self.etcd_urls});
            call::<Value>(&h.client, Method::PUT, "/cluster/join", Some(&req))
                .await
                .map_err(|e| format!("host {}: joining: {e}", h.addr))?;
            joined_now += 1;
        }
        // Every host is in the membership (its lease and record are up).
        let deadline = Instant::now() + self.timeout;
        let ids: Vec<&str> = self.hosts.iter().map(|h| h.id.as_str()).collect();
        loop {
            let listed: Result<Vec<Value>, String> =
                call(&self.hosts[0].client, Method::GET, "/cluster/hosts", None).await;
            let missing: Vec<&str> = match &listed {
                Ok(l) => ids
                    .iter()
                    .copied()
                    .filter(|id| !l.iter().any(|r| r["id"] == *id))
                    .collect(),
                Err(_) => ids.clone(),
            };
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "hosts not in the cluster after {}s: {} ({})",
                    self.timeout.as_secs(),
                    missing.join(", "),
                    listed
                        .err()
                        .unwrap_or_else(|| "see their daemon logs: `flynn-host status`".into())
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if self.etcd.is_none() {
            self.etcd = discovery::Etcd::connect(&self.etcd_urls, Duration::from_secs(3))
                .await
                .ok();
        }
        let data = json!({"summary": format!("{} hosts in cluster {cluster_id}", self.hosts.len()), "joined": joined_now});
        Ok(if joined_now > 0 {
            Outcome::Done(data)
        } else {
            Outcome::Skipped(data)
        })
    }
}
