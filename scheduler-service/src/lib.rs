//! The scheduler as a service (`flynn-host scheduler`, two instances on different
//! hosts): the I/O around the pure `scheduler` crate. It reads the wanted state
//! (formations, drained hosts) and the live hosts from etcd, each host's jobs from its
//! agent, asks `scheduler::rectify` for a plan, and carries it out through the agents'
//! APIs. Only the leader acts; every instance serves the HTTP API (`api.rs`).
//!
//! - **Leader**: each instance registers itself in discovery (`flynn-scheduler`) on a
//!   lease of its own (TTL 5 s); the leader is discovery's (the oldest instance). A
//!   leader that dies loses its lease and the other leads within the TTL; it adopts
//!   the running jobs as they are: the state is read from the agents, not remembered.
//! - **When**: at once on any change of hosts, formations or drains (etcd watches),
//!   and every second (job exits are seen there).
//! - **Its jobs** carry the labels `flynn.scheduler=1`, `flynn.app`, `flynn.type` and
//!   `flynn.formation`. One that exited and that its formation's restart policy
//!   replaces counts as a crash of its formation (back-off), is removed (bounded
//!   history), and replaced; one it does not replace (exit 0 under `on-failure`,
//!   any exit under `never`) is kept as finished, in its formation's count, so the
//!   records kept never exceed the formation's count.
//! - **Partial knowledge is no knowledge**: when a live host's agent does not answer,
//!   the pass does nothing, so its jobs are never doubled while its lease lives.

pub mod api;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery::Etcd;
use discovery::formations::FormationRecord;
use flynn_client::Client;
use hyper::Method;
use scheduler::{Backoff, FormationKey, Plan, Resources};
use serde::Serialize;
use serde_json::{Value, json};

pub const SERVICE: &str = "flynn-scheduler";
const LEASE_TTL: Duration = Duration::from_secs(5);
const RESYNC: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pass waits for a host's job list.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host that vanished from discovery is still asked for its jobs. A host's
/// lease can lapse while the host lives (a busy machine late with its keep-alive, an
/// etcd election); its jobs must not be replaced while it still answers, or the
/// formation runs surplus jobs that are stopped again when the host comes back.
const LAPSE_GRACE: Duration = Duration::from_secs(15);
/// How long a lapsed host gets to answer: a host that was really lost must not slow
/// the pass that replaces its jobs much, but a live one on a loaded machine needs a
/// TLS handshake and a job listing within it: at 1 s, a busy test machine (load 10)
/// missed it, the host's jobs were replaced while it lived, and the formation ran
/// one job over its count until the host came back.
const LAPSE_PROBE: Duration = Duration::from_secs(3);
/// How long a lapsed host gets to accept a TCP connection before the probe above.
/// A live host accepts at once however busy it is (the kernel completes the
/// handshake); one powered off or cut off accepts nothing, and waiting the whole
/// probe for it only delays the replacement of its jobs.
const PROBE_CONNECT: Duration = Duration::from_secs(1);
const MIB: u64 = 1024 * 1024;
/// Jobs without a memory setting are promised this much (for placement).
const DEFAULT_MEMORY: u64 = 64 * MIB;

#[derive(clap::Args, Debug, Clone)]
pub struct SchedulerArgs {
    /// Where the API is served (its address is what discovery announces).
    #[arg(long, default_value = "127.0.0.1:1114")]
    pub listen: SocketAddr,
    /// etcd endpoints (http://HOST:PORT, comma-separated).
    #[arg(long, env = "FLYNN_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// The cluster's API token: for the agents, and asked of the API's clients.
    #[arg(long, env = "FLYNN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Serve HTTPS with the certificate of this directory (`cert.pem`, `key.pem`:
    /// the host's, which the agent gives its host-network jobs), re-read as the
    /// host renews it; discovery then says `tls` so clients use https.
    #[arg(long, env = "FLYNN_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
}

/// The instance's metadata key that says its API is HTTPS (value "1").
pub const META_TLS: &str = "tls";

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("the API's TLS: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("announcing this scheduler: {0}")]
    Announce(#[from] discovery::DiscoveryError),
}

/// One image of a host's `GET /images`, as far as placement needs it.
#[derive(serde::Deserialize)]
struct HeldImage {
    manifest_digest: String,
}

/// The manifest digest a formation's image names (`name@sha256:…`, as releases
/// pin them); `None` for a name alone, which any host may resolve.
fn pinned_digest(image: &str) -> Option<String> {
    let (_, digest) = image.rsplit_once('@')?;
    digest.starts_with("sha256:").then(|| digest.to_string())
}

/// A live host as the service sees it.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub id: String,
    pub address: String,
    pub api: Option<String>,
    pub draining: bool,
    pub memory_mb: u64,
    pub cpus: u32,
    /// The host's labels (`--tags`), which formations' tags must match.
    pub tags: BTreeMap<String, String>,
    /// The manifest digests of the images it holds, asked with its jobs each
    /// pass; `None` when it did not say (then it is taken to hold every image).
    #[serde(skip)]
    pub images: Option<BTreeSet<String>>,
}

/// One of the scheduler's jobs.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    pub app: String,
    pub process_type: String,
    pub host: String,
    pub state: String,
    pub created_at: String,
    /// Its `flynn.release` label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Up: running, and every service it declares registered in discovery (its
    /// health check passed). What a rolling deploy waits for.
    pub healthy: bool,
    /// How it ended, once exited (-1 when the agent did not say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// What the last pass saw and decided (for the API).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub hosts: Vec<HostView>,
    pub jobs: Vec<JobView>,
    pub formations: Vec<FormationRecord>,
    pub plan: Plan,
    pub error: Option<String>,
}

pub struct Service {
    etcd: Etcd,
    token: String,
    me: String,
    last: Mutex<Snapshot>,
    backoff: Mutex<HashMap<FormationKey, Backoff>>,
    /// Jobs this scheduler is stopping (id → when, ms): their exit is not a crash,
    /// and they no longer count toward their formation.
    stopping: Mutex<HashMap<String, u64>>,
    /// Hosts seen in discovery (id → the host, when last seen, ms): those that vanish
    /// are probed for `LAPSE_GRACE` before their jobs count as lost.
    recent: Mutex<HashMap<String, (HostView, u64)>>,
    wake: tokio::sync::Notify,
    /// Bumped whenever a host's record leaves discovery (its lease ended): a pass
    /// still asking hosts then starts over, instead of waiting out a host that is
    /// gone before it can replace that host's jobs.
    hosts_left: std::sync::atomic::AtomicU64,
    leading: std::sync::atomic::AtomicBool,
    started: std::time::Instant,
    /// Hosts asked to fetch a pinned image from a peer, by (host id, manifest
    /// digest): when to ask again (ms), if it still lacks it then.
    fetching: Arc<Mutex<HashMap<(String, String), u64>>>,
}

/// How long a fetch may take before the host is asked again.
const FETCH_PATIENCE_MS: u64 = 600_000;
/// After a failed fetch, the pause before the next ask.
const FETCH_RETRY_MS: u64 = 30_000;

/// A host to fetch a pinned image: (host id, its API, the image as the formation
/// names it, the hosts that hold it).
type Spread = (String, String, String, Vec<String>);

/// Which hosts should fetch which pinned images from which: every host a formation
/// with jobs may use (not draining, its tags matching) that says it lacks the image,
/// from the hosts that say they hold it. An image imported before a host joined is in
/// no registry: this is how that host comes to hold it, and to take its jobs.
fn images_to_spread(hosts: &[HostView], formations: &[FormationRecord]) -> Vec<Spread> {
    let mut out: Vec<Spread> = Vec::new();
    for f in formations.iter().filter(|f| f.count > 0) {
        let Some(digest) = pinned_digest(&f.image) else {
            continue;
        };
        let holds = |h: &HostView| h.images.as_ref().is_some_and(|i| i.contains(&digest));
        let holders: Vec<String> = hosts
            .iter()
            .filter(|h| holds(h) && h.api.is_some())
            .map(|h| h.id.clone())
            .collect();
        if holders.is_empty() {
            continue;
        }
        for h in hosts {
            let (Some(api), Some(_)) = (&h.api, &h.images) else {
                continue;
            };
            let eligible = !h.draining && f.tags.iter().all(|(k, v)| h.tags.get(k) == Some(v));
            if eligible
                && !holds(h)
                && !out
                    .iter()
                    .any(|(id, _, image, _)| *id == h.id && *image == f.image)
            {
                out.push((h.id.clone(), api.clone(), f.image.clone(), holders.clone()));
            }
        }
    }
    out
}

fn key(f: &FormationRecord) -> FormationKey {
    FormationKey {
        app: f.app.clone(),
        process_type: f.process_type.clone(),
    }
}

fn resources(f: &FormationRecord) -> Resources {
    Resources {
        memory_mb: f.memory.unwrap_or(DEFAULT_MEMORY) / MIB,
        cpu_milli: f.cpus.map_or(0, |c| (c * 1000.0) as u64),
    }
}

async fn call(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    match tokio::time::timeout(CALL_TIMEOUT, c.call::<Value>(method, path, body)).await {
        Ok(r) => r.map_err(|e| format!("{e:#}")),
        Err(_) => Err(format!("no answer within {}s", CALL_TIMEOUT.as_secs())),
    }
}

impl Service {
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn is_leader(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks each host that lacks a pinned image to fetch it from a host that holds
    /// it ([`images_to_spread`]), in the background, once per patience period.
    fn spread_images(
        &self,
        hosts: &[HostView],
        formations: &[FormationRecord],
        now: u64,
    ) -> Result<(), String> {
        for (host, api, image, from) in images_to_spread(hosts, formations) {
            let key = (host.clone(), pinned_digest(&image).unwrap_or_default());
            {
                let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
                if fetching.get(&key).is_some_and(|at| *at > now) {
                    continue;
                }
                fetching.insert(key.clone(), now + FETCH_PATIENCE_MS);
            }
            let client = self.client(&api)?;
            let fetching = self.fetching.clone();
            let started = self.started;
            tracing::info!(host = %host, image = %image, from = ?from, "asking a host to fetch an image it lacks");
            tokio::spawn(async move {
                let body = serde_json::json!({"image": image, "from": from});
                // A big image takes its time: bounded by the patience, not CALL_TIMEOUT.
                let asked = tokio::time::timeout(
                    Duration::from_millis(FETCH_PATIENCE_MS),
                    client.call::<Value>(Method::POST, "/images/fetch", Some(&body)),
                )
                .await;
                let mut fetching = fetching.lock().unwrap_or_else(|p| p.into_inner());
                match asked {
                    Ok(Ok(_)) => {
                        tracing::info!(host = %key.0, image = %image, "the host fetched the image");
                        fetching.remove(&key);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(host = %key.0, image = %image, error = %format!("{e:#}"), "fetching an image");
                        let now = started.elapsed().as_millis() as u64;
                        fetching.insert(key, now + FETCH_RETRY_MS);
                    }
                    Err(_) => {
                        tracing::warn!(host = %key.0, image = %image, "fetching an image: no answer within the patience");
                    }
                }
            });
        }
        Ok(())
    }

    fn client(&self, api: &str) -> Result<Client, String> {
        Client::from_options(Some(api), Some(&self.token)).map_err(|e| format!("{e:#}"))
    }

    /// Hosts seen lately that discovery no longer lists (and remembers `hosts`).
    fn lapsed(&self, hosts: &[HostView]) -> Vec<HostView> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        lapsed(
            &mut recent,
            hosts,
            self.now_ms(),
            LAPSE_GRACE.as_millis() as u64,
        )
    }

    /// Hosts and their jobs as they are now; `Err` when some live host did not say.
    /// A host whose lease lapsed lately but that still answers counts as live.
    async fn observe(&self) -> Result<(Vec<HostView>, Vec<(JobView, Value)>), String> {
        let draining = discovery::formations::draining(&self.etcd)
            .await
            .map_err(|e| e.to_string())?;
        let mut hosts: Vec<HostView> = discovery::hosts::list(&self.etcd)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|h| HostView {
                draining: draining.contains(&h.id),
                address: h.address.to_string(),
                api: h.api.clone(),
                memory_mb: h.resources.memory_total / MIB,
                cpus: h.resources.cpus,
                tags: h.tags.clone(),
                id: h.id,
                images: None,
            })
            .collect();
        // Every host at once, each briefly: a host that went away must not hold up
        // the pass that replaces its jobs once its lease ends.
        let lapsed = self.lapsed(&hosts);
        let mut asks = tokio::task::JoinSet::new();
        for (h, probe) in hosts
            .iter()
            .map(|h| (h, false))
            .chain(lapsed.iter().map(|h| (h, true)))
        {
            let Some(api) = h.api.clone() else {
                if probe {
                    continue;
                }
                return Err(format!("host {} announces no API address", h.id));
            };
            let (client, id) = (self.client(&api)?, h.id.clone());
            let wait = if probe { LAPSE_PROBE } else { OBSERVE_TIMEOUT };
            asks.spawn(async move {
                if probe && !accepts(&api).await {
                    return (id, Err("it accepts no connection".to_string()), None);
                }
                // Its images beside its jobs, in the same time: placement needs
                // them only for releases that pin an image, and a host that does
                // not say is taken to hold them all (as before it was asked).
                let (r, images) = tokio::join!(
                    tokio::time::timeout(
                        wait,
                        client.call::<Value>(
                            Method::GET,
                            "/jobs?all=true&label=flynn.scheduler=1",
                            None::<&()>,
                        ),
                    ),
                    tokio::time::timeout(
                        wait,
                        client.call::<Vec<HeldImage>>(Method::GET, "/images", None::<&()>),
                    ),
                );
                let images = match images {
                    Ok(Ok(list)) => Some(list.into_iter().map(|i| i.manifest_digest).collect()),
                    _ => None,
                };
                let r = match r {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(_) => Err(format!("no answer within {}s", wait.as_secs())),
                };
                (id, r, images)
            });
        }
        let mut jobs = Vec::new();
        while let Some(done) = asks.join_next().await {
            let (host, r, images) = done.map_err(|e| format!("asking a host: {e}"))?;
            if let Some(h) = hosts.iter_mut().find(|h| h.id == host) {
                h.images = images.clone();
            }
            if let Some(h) = lapsed.iter().find(|h| h.id == host) {
                match &r {
                    Ok(_) => {
                        tracing::info!(host = %host, "host's lease lapsed but it answers: its jobs still count");
                        hosts.push(HostView {
                            images,
                            ..h.clone()
                        });
                    }
                    _ => continue,
                }
            }
            let list = r.map_err(|e| format!("host {host}: {e}"))?;
            for j in list.as_array().cloned().unwrap_or_default() {
                let label = |k: &str| {
                    j["config"]["labels"][k]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                };
                let state = j["state"].as_str().unwrap_or_default().to_string();
                let exit_code = (state == "exited").then(|| exit_code(&j));
                jobs.push((
                    JobView {
                        exit_code,
                        release: j["config"]["labels"]["flynn.release"]
                            .as_str()
                            .map(str::to_string),
                        healthy: state == "running" && services_up(&j),
                        id: j["id"].as_str().unwrap_or_default().to_string(),
                        app: label("flynn.app"),
                        process_type: label("flynn.type"),
                        host: host.clone(),
                        state,
                        created_at: j["created_at"].as_str().unwrap_or_default().to_string(),
                    },
                    j,
                ));
            }
        }
        Ok((hosts, jobs))
    }

    /// One pass: observe, decide, act (when leading).
    async fn pass(&self) {
        let result = self.pass_inner().await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "scheduling pass");
        }
        self.last.lock().unwrap_or_else(|p| p.into_inner()).error = result.err();
    }

    async fn pass_inner(&self) -> Result<(), String> {
        let leader = discovery::services::leader(&self.etcd, SERVICE)
            .await
            .map_err(|e| e.to_string())?
            .is_some_and(|i| i.id == self.me);
        if leader != self.is_leader() {
            tracing::info!(leader, "scheduler leadership");
        }
        self.leading
            .store(leader, std::sync::atomic::Ordering::Relaxed);
        let formations = discovery::formations::list(&self.etcd)
            .await
            .map_err(|e| e.to_string())?;
        let left = self.hosts_left.load(std::sync::atomic::Ordering::Relaxed);
        let observed = tokio::select! {
            r = self.observe() => r,
            () = self.host_leaves(left) => {
                // A host waited on may be the one gone: start over at once (its
                // jobs are replaced by the next pass, not one a time-out later).
                self.poke();
                return Ok(());
            }
        };
        let (hosts, jobs) = observed?;
        let now = self.now_ms();
        let by_key: HashMap<FormationKey, &FormationRecord> =
            formations.iter().map(|f| (key(f), f)).collect();
        let api_of: HashMap<&str, &str> = hosts
            .iter()
            .filter_map(|h| Some((h.id.as_str(), h.api.as_deref()?)))
            .collect();

        let stopping: HashMap<String, u64> = {
            let mut st = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
            // A stop takes 10 s at most, then the job is removed: older marks are stale.
            st.retain(|_, at| now.saturating_sub(*at) < 120_000);
            st.clone()
        };
        // Exited jobs: unless we stopped them or their formation keeps them as
        // finished, a crash of their formation; removed (history stays bounded).
        let mut live_jobs = Vec::new();
        for (j, _) in &jobs {
            if j.state == "exited" {
                let k = FormationKey {
                    app: j.app.clone(),
                    process_type: j.process_type.clone(),
                };
                let code = j.exit_code.unwrap_or(-1);
                let kept = !stopping.contains_key(&j.id)
                    && by_key.get(&k).is_some_and(|f| !f.restart.replaces(code));
                if kept {
                    // `rectify` counts it; it leaves through the plan (scale down,
                    // formation removed) like any job.
                    live_jobs.push(j.clone());
                    continue;
                }
                if leader {
                    if !stopping.contains_key(&j.id) {
                        self.crashed(k, now);
                        tracing::info!(job = %j.id, host = %j.host, code, "a scheduled job exited; it will be replaced");
                    }
                    if let Some(api) = api_of.get(j.host.as_str()) {
                        let _ = call(
                            &self.client(api)?,
                            Method::DELETE,
                            &format!("/jobs/{}?force=true", j.id),
                            None,
                        )
                        .await;
                    }
                }
                continue;
            }
            if j.state == "removing" {
                continue;
            }
            let mut j = j.clone();
            if stopping.contains_key(&j.id) {
                j.state = "stopping".into();
                j.healthy = false;
            }
            live_jobs.push(j);
        }
        // A formation whole and calm for a minute forgets its crashes.
        {
            let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
            b.retain(|_, v| now.saturating_sub(v.last_crash_ms) < 60_000);
        }
        let state = scheduler::State {
            hosts: hosts
                .iter()
                .map(|h| scheduler::Host {
                    id: h.id.clone(),
                    tags: h.tags.clone(),
                    capacity: Resources {
                        memory_mb: h.memory_mb,
                        cpu_milli: u64::from(h.cpus) * 1000,
                    },
                    draining: h.draining,
                    images: h.images.clone(),
                })
                .collect(),
            formations: formations
                .iter()
                .map(|f| scheduler::Formation {
                    key: key(f),
                    count: f.count,
                    omni: f.omni,
                    tags: f.tags.clone(),
                    resources: resources(f),
                    release: f.release.clone(),
                    image: pinned_digest(&f.image),
                    restart: f.restart,
                })
                .collect(),
            jobs: live_jobs
                .iter()
                .map(|j| {
                    let k = FormationKey {
                        app: j.app.clone(),
                        process_type: j.process_type.clone(),
                    };
                    scheduler::Job {
                        resources: by_key.get(&k).map(|f| resources(f)).unwrap_or_default(),
                        id: j.id.clone(),
                        formation: k,
                        host: j.host.clone(),
                        state: match (j.state.as_str(), j.exit_code) {
                            ("stopping", _) => scheduler::JobState::Stopping,
                            ("exited", code) => scheduler::JobState::Exited {
                                code: code.unwrap_or(-1),
                            },
                            _ => scheduler::JobState::Running,
                        },
                        release: j.release.clone(),
                        healthy: j.healthy,
                        started_ms: chrono::DateTime::parse_from_rfc3339(&j.created_at)
                            .map(|t| t.timestamp_millis().max(0) as u64)
                            .unwrap_or(0),
                    }
                })
                .collect(),
            backoff: self
                .backoff
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            now_ms: now,
        };
        let plan = scheduler::rectify(&state);
        if leader {
            for s in &plan.start {
                let (Some(f), Some(api)) = (by_key.get(&s.formation), api_of.get(s.host.as_str()))
                else {
                    continue;
                };
                let req = job_request(f);
                match call(&self.client(api)?, Method::POST, "/jobs", Some(&req)).await {
                    Ok(job) => {
                        tracing::info!(formation = %s.formation, host = %s.host, job = %job["id"], "started")
                    }
                    Err(e) => {
                        // A start that fails is a crash too: it backs off, and is retried.
                        tracing::warn!(formation = %s.formation, host = %s.host, error = %e, "starting a job");
                        self.crashed(s.formation.clone(), now);
                    }
                }
            }
            self.spread_images(&hosts, &formations, now)?;
            for st in &plan.stop {
                let Some(j) = live_jobs.iter().find(|j| j.id == st.job) else {
                    continue;
                };
                let Some(api) = api_of.get(j.host.as_str()) else {
                    continue;
                };
                let client = self.client(api)?;
                let id = j.id.clone();
                tracing::info!(job = %id, host = %j.host, reason = ?st.reason, "stopping");
                self.stopping
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), now);
                // Stopped in the background (a stop drains, then waits for the exit).
                tokio::spawn(async move {
                    let _ = call(
                        &client,
                        Method::POST,
                        &format!("/jobs/{id}/stop?t=10"),
                        None,
                    )
                    .await;
                    let _ = call(
                        &client,
                        Method::DELETE,
                        &format!("/jobs/{id}?force=true"),
                        None,
                    )
                    .await;
                });
            }
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Snapshot {
            hosts,
            jobs: live_jobs,
            formations,
            plan,
            error: None,
        };
        Ok(())
    }

    /// `POST /jobs`: an ephemeral job (`{app, request}`, `request` being the agent's
    /// `JobRequest` with `start: false`) placed like a formation's, created on its host;
    /// the caller attaches and starts it there. Not restarted, not counted.
    pub async fn run_ephemeral(&self, body: &Value) -> Result<Value, (hyper::StatusCode, String)> {
        use hyper::StatusCode;
        let app = body["app"].as_str().unwrap_or("").to_string();
        discovery::apps::check_app(&app).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        let mut req = body["request"].clone();
        if !req.is_object() || !req["image"].is_string() {
            return Err((
                StatusCode::BAD_REQUEST,
                "give {app, request: {image, ...}} (the agent's job request)".into(),
            ));
        }
        let snap = self.snapshot();
        let res = Resources {
            memory_mb: req["resources"]["memory"]
                .as_u64()
                .unwrap_or(DEFAULT_MEMORY)
                / MIB,
            cpu_milli: req["resources"]["cpus"]
                .as_f64()
                .map_or(0, |c| (c * 1000.0) as u64),
        };
        let hosts: Vec<scheduler::Host> = snap
            .hosts
            .iter()
            .map(|h| scheduler::Host {
                id: h.id.clone(),
                tags: h.tags.clone(),
                capacity: Resources {
                    memory_mb: h.memory_mb,
                    cpu_milli: u64::from(h.cpus) * 1000,
                },
                draining: h.draining,
                images: h.images.clone(),
            })
            .collect();
        let host = scheduler::place_one(&hosts, &[], &BTreeMap::new(), &res).map_err(|why| {
            (
                StatusCode::CONFLICT,
                format!("no host can take the job: {why}"),
            )
        })?;
        let Some(api) = snap
            .hosts
            .iter()
            .find(|h| h.id == host)
            .and_then(|h| h.api.clone())
        else {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("host {host} has no API address"),
            ));
        };
        req["start"] = json!(false);
        req["labels"]["flynn.app"] = json!(app);
        req["labels"]["flynn.type"] = json!("run");
        req["labels"]["flynn.ephemeral"] = json!("1");
        let client = self
            .client(&api)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let job = call(&client, Method::POST, "/jobs", Some(&req))
            .await
            .map_err(|e| (StatusCode::BAD_GATEWAY, format!("host {host}: {e}")))?;
        Ok(json!({ "host_id": host, "host_api": api, "job": job }))
    }

    /// Returns once a host's record has left discovery since `seen` was read.
    async fn host_leaves(&self, seen: u64) {
        while self.hosts_left.load(std::sync::atomic::Ordering::Relaxed) == seen {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn crashed(&self, k: FormationKey, now: u64) {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let e = b.entry(k).or_default();
        e.crashes += 1;
        e.last_crash_ms = now;
    }

    pub fn snapshot(&self) -> Snapshot {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn poke(&self) {
        self.wake.notify_one();
    }
}

/// Whether something accepts a TCP connection at the address of the API `api`
/// (`https://HOST:PORT`) within [`PROBE_CONNECT`]; `true` when the address cannot
/// be read (the full probe then decides).
async fn accepts(api: &str) -> bool {
    let Ok(uri) = api.parse::<hyper::Uri>() else {
        return true;
    };
    let Some(host) = uri.host() else {
        return true;
    };
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    matches!(
        tokio::time::timeout(PROBE_CONNECT, tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

/// Whether every service a job declares (`config.services`) has its instance in
/// discovery (`services[].registered`: the agent registers one once its check passes).
/// Records `hosts` as seen at `now` (ms) in `recent`, forgets hosts unseen for longer
/// than `grace`, and returns the remembered hosts that `hosts` lacks.
fn lapsed(
    recent: &mut HashMap<String, (HostView, u64)>,
    hosts: &[HostView],
    now: u64,
    grace: u64,
) -> Vec<HostView> {
    for h in hosts {
        recent.insert(h.id.clone(), (h.clone(), now));
    }
    recent.retain(|_, (_, seen)| now.saturating_sub(*seen) <= grace);
    let mut gone: Vec<HostView> = recent
        .values()
        .filter(|(h, _)| !hosts.iter().any(|l| l.id == h.id))
        .map(|(h, _)| h.clone())
        .collect();
    gone.sort_by(|a, b| a.id.cmp(&b.id));
    gone
}

/// A job's exit code from the agent's job (`exit.exit_code`, Docker's: 128+N for
/// signal N); -1 when it does not say (a failure for the restart policy: an
/// unknown end is not a success).
fn exit_code(job: &Value) -> i32 {
    job["exit"]["exit_code"]
        .as_i64()
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(-1)
}

fn services_up(job: &Value) -> bool {
    let declared = job["config"]["services"].as_array().map_or(0, Vec::len);
    let registered = job["services"]
        .as_array()
        .map_or(0, |v| v.iter().filter(|i| i["registered"] == true).count());
    registered >= declared
}

/// The agent's `POST /jobs` body for one job of a formation.
fn job_request(f: &FormationRecord) -> Value {
    let mut req = json!({
        "image": f.image,
        "env": f.env,
        "services": f.services,
        "labels": {
            "flynn.scheduler": "1",
            "flynn.app": f.app,
            "flynn.type": f.process_type,
            "flynn.formation": format!("{}/{}", f.app, f.process_type),
        },
        "start": true,
    });
    if !f.cmd.is_empty() {
        req["cmd"] = json!(f.cmd);
    }
    let mut res = serde_json::Map::new();
    if let Some(m) = f.memory {
        res.insert("memory".into(), json!(m));
    }
    if let Some(c) = f.cpus {
        res.insert("cpus".into(), json!(c));
    }
    if !res.is_empty() {
        req["resources"] = Value::Object(res);
    }
    if let Some(n) = &f.network {
        req["network"] = json!(n);
    }
    if let Some(r) = &f.release {
        req["labels"]["flynn.release"] = json!(r);
    }
    req
}

/// Serves until the process is stopped.
pub async fn run(args: SchedulerArgs) -> Result<(), SchedulerError> {
    let tls = match &args.tls_dir {
        Some(dir) => {
            let resolver = flynn_tls::HostCertResolver::watching_dir(dir)
                .map_err(|e| SchedulerError::Tls(e.to_string()))?;
            let config = flynn_tls::server_config(resolver)
                .map_err(|e| SchedulerError::Tls(e.to_string()))?;
            Some(tokio_rustls::TlsAcceptor::from(config))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| SchedulerError::Listen {
            addr: args.listen,
            source,
        })?;
    let etcd = loop {
        match Etcd::connect(&args.etcd, Duration::from_secs(3)).await {
            Ok(e) if e.ping().await.is_ok() => break e,
            Ok(_) => tracing::warn!("etcd does not answer yet"),
            Err(e) => tracing::warn!(error = %e, "connecting to etcd"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Unique per process: a restarted scheduler campaigns anew (as the newest), so
    // a killed leader's place goes to the other instance once its lease ends.
    let me = format!(
        "sched-{}-{}",
        args.listen,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    )
    .replace([':', '.'], "-");
    let svc = Arc::new(Service {
        etcd: etcd.clone(),
        token: args.token.clone(),
        me: me.clone(),
        last: Mutex::new(Snapshot::default()),
        backoff: Mutex::new(HashMap::new()),
        stopping: Mutex::new(HashMap::new()),
        wake: tokio::sync::Notify::new(),
        hosts_left: std::sync::atomic::AtomicU64::new(0),
        leading: std::sync::atomic::AtomicBool::new(false),
        started: std::time::Instant::now(),
        recent: Mutex::default(),
        fetching: Arc::default(),
    });
    let addr = args.listen;
    let inst = discovery::Instance {
        service: SERVICE.into(),
        id: me,
        addr,
        host_id: addr.ip().to_string(),
        job_id: std::env::var("FLYNN_JOB_ID").ok(),
        meta: if tls.is_some() {
            BTreeMap::from([(META_TLS.to_string(), "1".to_string())])
        } else {
            BTreeMap::new()
        },
        registered_at: chrono::Utc::now(),
    };
    tokio::spawn(discovery::services::announce(etcd.clone(), inst, LEASE_TTL));
    for prefix in [
        discovery::schema::HOSTS,
        discovery::schema::FORMATIONS,
        discovery::schema::DRAIN,
        discovery::schema::SERVICES,
    ] {
        let (s, e) = (svc.clone(), etcd.clone());
        tokio::spawn(async move {
            let mut w = discovery::watch::PrefixWatch::new(e, prefix);
            loop {
                let change = w.next().await;
                // Only a host leaving: host records are rewritten every few
                // seconds, and restarting passes on those would starve them.
                if prefix == discovery::schema::HOSTS
                    && matches!(change, discovery::watch::Change::Delete { .. })
                {
                    s.hosts_left
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                s.poke();
            }
        });
    }
    let s = svc.clone();
    tokio::spawn(async move {
        loop {
            s.pass().await;
            let _ = tokio::time::timeout(RESYNC, s.wake.notified()).await;
        }
    });
    tracing::info!(listen = %args.listen, "scheduler serving");
    api::serve(svc, listener, args.token, tls).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str) -> HostView {
        HostView {
            id: id.into(),
            address: "10.0.0.1".into(),
            api: Some("http://10.0.0.1:1113".into()),
            draining: false,
            memory_mb: 1024,
            cpus: 2,
            tags: BTreeMap::new(),
            images: None,
        }
    }

    #[test]
    fn only_a_pinned_image_is_a_placement_constraint() {
        assert_eq!(
            pinned_digest("docker.io/library/busybox:latest@sha256:abcd").as_deref(),
            Some("sha256:abcd")
        );
        assert_eq!(pinned_digest("busybox:latest"), None);
        assert_eq!(pinned_digest("registry:5000/x:1"), None);
    }

    fn formation(process_type: &str, image: &str, count: u32, tags: Value) -> FormationRecord {
        serde_json::from_value(json!({
            "app": "imp", "process_type": process_type, "image": image,
            "count": count, "tags": tags,
        }))
        .unwrap()
    }

    #[test]
    fn hosts_lacking_a_pinned_image_fetch_it_from_those_holding_it() {
        let pinned = "docker.io/flynn-test/iperf3:latest@sha256:aa";
        let with = |id: &str, held: &[&str]| HostView {
            images: Some(held.iter().map(|d| d.to_string()).collect()),
            ..host(id)
        };
        let mut draining = with("d", &[]);
        draining.draining = true;
        let mut tagged = with("t", &[]);
        tagged.tags.insert("disk".into(), "ssd".into());
        let hosts = [
            with("a", &["sha256:aa"]),
            with("b", &["sha256:aa"]),
            with("c", &[]),
            host("unknown"),
            draining,
            tagged,
        ];
        let spread = images_to_spread(
            &hosts,
            &[
                formation("web", pinned, 2, json!({})),
                // The same image for another type: asked once.
                formation("worker", pinned, 1, json!({})),
                // Scaled to zero, unpinned, or held nowhere: nothing to fetch.
                formation("idle", "x@sha256:bb", 0, json!({})),
                formation("plain", "busybox:latest", 3, json!({})),
                formation("lost", "y@sha256:cc", 1, json!({})),
            ],
        );
        let asked: Vec<(&str, &str, Vec<&str>)> = spread
            .iter()
            .map(|(h, _, i, from)| {
                (
                    h.as_str(),
                    i.as_str(),
                    from.iter().map(|f| f.as_str()).collect(),
                )
            })
            .collect();
        // Not the draining host, nor one that did not say what it holds.
        assert_eq!(
            asked,
            [("c", pinned, vec!["a", "b"]), ("t", pinned, vec!["a", "b"])]
        );
        // A formation's tags limit the hosts that need its image.
        let spread = images_to_spread(
            &hosts,
            &[formation("web", pinned, 1, json!({"disk": "ssd"}))],
        );
        assert_eq!(spread.len(), 1);
        assert_eq!(spread[0].0, "t");
    }

    #[tokio::test]
    async fn a_host_that_accepts_no_connection_is_told_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        assert!(accepts(&format!("https://{open}")).await);
        drop(listener);
        // Refused: told without waiting for the time-out.
        let t = std::time::Instant::now();
        assert!(!accepts(&format!("https://{open}")).await);
        assert!(t.elapsed() < PROBE_CONNECT);
        // Not an address: the full probe decides.
        assert!(accepts("not a uri at all").await);
    }

    #[test]
    fn a_vanished_host_is_probed_for_the_grace_then_forgotten() {
        let mut recent = HashMap::new();
        assert!(lapsed(&mut recent, &[host("a"), host("b")], 0, 15_000).is_empty());
        let gone = lapsed(&mut recent, &[host("a")], 1_000, 15_000);
        assert_eq!(gone.iter().map(|h| &h.id[..]).collect::<Vec<_>>(), ["b"]);
        // Back in discovery: no longer lapsed.
        assert!(lapsed(&mut recent, &[host("a"), host("b")], 2_000, 15_000).is_empty());
        assert_eq!(lapsed(&mut recent, &[host("a")], 17_000, 15_000).len(), 1);
        // Unseen for longer than the grace: lost, not probed any more.
        assert!(lapsed(&mut recent, &[host("a")], 17_001, 15_000).is_empty());
        assert!(!recent.contains_key("b"));
    }
}
