//! The job supervisor: job records, their life cycle, and the composition of
//! `image` (rootfs) and `runtime` (shim) that turns a request into a process.
//!
//! Each job has one `watch` channel holding its record: it is the single source
//! of truth that handlers read, that `wait` and log followers subscribe to, and
//! that is written to `jobs/<id>/job.json` after every change.

pub(crate) mod config;
mod error;
mod etc;
mod exec;
mod netslot;
mod record;
mod recover;
mod release;
mod restart;
mod userns;

pub use config::{DEFAULT_PIDS_LIMIT, Defaults};

pub use exec::exit_of;
pub use netslot::{NetSlot, NetSlotSetter};
pub use record::{new_id, recorded_ids};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use image::ImageStore;
use nix::sys::signal::Signal;
use tokio::sync::{RwLock, broadcast, watch};

pub use error::JobError;

use crate::model::{
    Event, ExitInfo, Job, JobCounts, JobRequest, JobState, NetworkMode, NetworkStatus, Promised,
};

/// A job's network teardown under way: its sequence number and its task.
type Teardown = (u64, tokio::task::JoinHandle<()>);

/// How long `stop` and `rm -f` wait for a killed process to be reported gone.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// The bound on the daemon's own steps of a start (the root filesystem's mount; the
/// network's and the shim's have theirs): 60 s, or `FLYNN_STEP_TIMEOUT` seconds
/// (tests, slow machines).
fn step_timeout() -> Duration {
    std::env::var("FLYNN_STEP_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(60))
}

/// A job known to the daemon.
pub struct JobHandle {
    pub id: String,
    record: watch::Sender<Job>,
    /// Serialises start / stop / remove of this job.
    op: tokio::sync::Mutex<()>,
    backoff: Mutex<restart::Backoff>,
    /// Serialises record updates: the monitor's exit and an operation may update the
    /// same job at once, and each write goes through the same temp file; it also keeps
    /// the file's order of updates that of memory.
    saving: Mutex<()>,
}

impl JobHandle {
    fn new(job: Job) -> Arc<JobHandle> {
        Arc::new(JobHandle {
            id: job.id.clone(),
            record: watch::Sender::new(job),
            op: tokio::sync::Mutex::new(()),
            backoff: Mutex::new(restart::Backoff::default()),
            saving: Mutex::new(()),
        })
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, restart::Backoff> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Job {
        self.record.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Job> {
        self.record.subscribe()
    }
}

/// Directories the supervisor owns under the state dir.
#[derive(Clone, Debug)]
pub struct Paths {
    /// `jobs/<id>/`: job.json, the shim's files, log.json, rootfs, upper, work.
    pub jobs: PathBuf,
    /// libcontainer's root (container state dirs).
    pub containers: PathBuf,
    /// `<id>.json`: the exit of a removed job, kept a while for late waiters (a
    /// `run --rm` whose wait was cut by a daemon upgrade asks the successor);
    /// `<id>.log`: an auto-removed job's log, kept for the same reason.
    pub removed: PathBuf,
}

impl Paths {
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.jobs.join(id)
    }
}

pub struct JobManager {
    paths: Paths,
    images: Arc<ImageStore>,
    /// The binary that runs shims (`flynn-host shim JOB_DIR`).
    exe: PathBuf,
    /// A shim started ahead of the next job's start.
    spares: Arc<runtime::shim::Spares>,
    jobs: Mutex<HashMap<String, Arc<JobHandle>>>,
    /// Held for reading while a job is being tied to an image, for writing while an
    /// image is removed: an image cannot vanish between resolve and job creation.
    image_gate: RwLock<()>,
    events: broadcast::Sender<Event>,
    network: NetSlot,
    /// Network teardowns under way, by job (see `release_network`).
    detaching: Arc<Mutex<HashMap<String, Teardown>>>,
    detach_seq: std::sync::atomic::AtomicU64,
    /// Takes a job's services out of discovery before it is stopped (set in a cluster).
    drain: std::sync::OnceLock<Arc<dyn Drain>>,
    /// The daemon's `log_opts`, for jobs that give none (see [`JobManager::set_log_defaults`]).
    log_defaults: std::sync::OnceLock<std::collections::BTreeMap<String, String>>,
    /// What a request leaves to the daemon (user namespace, pids limit).
    defaults: config::Defaults,
}

/// What a stop does first for a job that provides services: take them out of
/// discovery, and wait until routers and clients have seen it, so the requests they
/// send meanwhile still find the job running (a deploy or a scale-down fails none).
pub trait Drain: Send + Sync {
    fn drain<'a>(
        &'a self,
        job_id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

/// Empties a job's log files (`log.json` and its rotated files).
fn empty_logs(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(record::LOG_FILE)
            && let Ok(f) = std::fs::OpenOptions::new().write(true).open(e.path())
        {
            let _ = f.set_len(0);
        }
    }
}

/// The longest a stop waits for a drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

impl JobManager {
    /// Loads the job records under `paths.jobs` and re-adopts running jobs.
    pub async fn open(
        paths: Paths,
        images: Arc<ImageStore>,
        network: NetSlot,
        exe: PathBuf,
        events: broadcast::Sender<Event>,
        defaults: config::Defaults,
    ) -> Result<Arc<JobManager>, JobError> {
        std::fs::create_dir_all(&paths.jobs).map_err(|e| JobError::io(&paths.jobs, e))?;
        std::fs::create_dir_all(&paths.containers)
            .map_err(|e| JobError::io(&paths.containers, e))?;
        std::fs::create_dir_all(&paths.removed).map_err(|e| JobError::io(&paths.removed, e))?;
        let manager = Arc::new(JobManager {
            paths,
            images,
            spares: runtime::shim::Spares::new(&exe),
            exe,
            jobs: Mutex::new(HashMap::new()),
            image_gate: RwLock::new(()),
            events,
            network,
            detaching: Arc::new(Mutex::new(HashMap::new())),
            detach_seq: std::sync::atomic::AtomicU64::new(0),
            drain: std::sync::OnceLock::new(),
            log_defaults: std::sync::OnceLock::new(),
            defaults,
        });
        manager.recover().await;
        let removed = manager.paths.removed.clone();
        tokio::spawn(async move {
            loop {
                let dir = removed.clone();
                let _ = tokio::task::spawn_blocking(move || record::prune_tombstones(&dir)).await;
                tokio::time::sleep(record::REMOVED_LOG_TTL).await;
            }
        });
        Ok(manager)
    }

    /// Installs the drain done before a service-providing job is stopped (once).
    pub fn set_drain(&self, drain: Arc<dyn Drain>) {
        let _ = self.drain.set(drain);
    }

    /// The log options of jobs that give none (the daemon's `log_opts`); jobs whose
    /// log is shipped (label `flynn.app`) keep theirs unrotated.
    pub fn set_log_defaults(&self, opts: std::collections::BTreeMap<String, String>) {
        let _ = self.log_defaults.set(opts);
    }

    fn emit(&self, kind: &str, action: &str, id: &str, job: Option<Job>) {
        // Nobody listening is not an error.
        let _ = self.events.send(Event {
            kind: kind.to_string(),
            action: action.to_string(),
            id: id.to_string(),
            time: Utc::now(),
            job,
        });
    }

    pub fn emit_image(&self, action: &str, id: &str) {
        self.emit("image", action, id, None);
    }

    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<JobHandle>>> {
        // A panic while holding this lock cannot leave the map half-updated (every
        // critical section is a single insert/remove/read), so poisoning is ignored.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self, all: bool) -> Vec<Job> {
        let mut jobs: Vec<Job> = self
            .lock_jobs()
            .values()
            .map(|h| h.snapshot())
            .filter(|j| all || j.state == JobState::Running)
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_at));
        jobs
    }

    /// How many jobs there are, and the sum of running jobs' limits.
    pub fn usage(&self) -> (JobCounts, Promised) {
        let jobs = self.lock_jobs();
        let mut promised = Promised::default();
        let mut running = 0;
        for handle in jobs.values() {
            let job = handle.record.borrow();
            if job.state != JobState::Running {
                continue;
            }
            running += 1;
            let r = &job.config.resources;
            match r.memory {
                Some(m) => promised.memory += m.max(0) as u64,
                None => promised.unlimited_memory_jobs += 1,
            }
            promised.cpus += r.cpus.unwrap_or(0.0);
            promised.pids += r.pids_limit.unwrap_or(0).max(0) as u64;
        }
        (
            JobCounts {
                running,
                total: jobs.len() as u64,
            },
            promised,
        )
    }

    /// Finds a job by full id, unique id prefix, or name.
    pub fn get(&self, key: &str) -> Result<Arc<JobHandle>, JobError> {
        let jobs = self.lock_jobs();
        if let Some(h) = jobs.get(key) {
            return Ok(h.clone());
        }
        if let Some(h) = jobs
            .values()
            .find(|h| h.record.borrow().name.as_deref() == Some(key))
        {
            return Ok(h.clone());
        }
        if key.len() >= 4 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found = jobs.values().filter(|h| h.id.starts_with(key));
            if let Some(first) = found.next() {
                if found.next().is_some() {
                    return Err(JobError::Ambiguous(key.to_string()));
                }
                return Ok(first.clone());
            }
        }
        Err(JobError::NotFound(key.to_string()))
    }

    /// True while any job (in any state) was created from this image id.
    pub fn image_in_use(&self, image_id: &str) -> bool {
        self.lock_jobs()
            .values()
            .any(|h| h.record.borrow().image_id == image_id)
    }

    /// Removes an image unless a job uses it.
    pub async fn remove_image(&self, name: &str) -> Result<image::Removed, JobError> {
        let _gate = self.image_gate.write().await;
        let store = self.images.clone();
        let name = name.to_string();
        let in_use: Vec<String> = self
            .lock_jobs()
            .values()
            .map(|h| h.record.borrow().image_id.clone())
            .collect();
        let removed = tokio::task::spawn_blocking(move || {
            store.remove(&name, &|id: &str| in_use.iter().any(|u| u == id))
        })
        .await
        .map_err(JobError::join)??;
        for id in &removed.untagged {
            self.emit_image("untag", id);
        }
        for id in &removed.deleted {
            self.emit_image("delete", id);
        }
        Ok(removed)
    }

    /// Records a job and, unless `req.start` is false, starts it.
    pub async fn create(self: &Arc<Self>, mut req: JobRequest) -> Result<Job, JobError> {
        if req.log_opts.is_empty()
            && !req.labels.contains_key(config::SHIPPED_LABEL)
            && let Some(defaults) = self.log_defaults.get()
        {
            req.log_opts = defaults.clone();
        }
        if let Some(name) = &req.name {
            config::validate_name(name)?;
        }
        if req.network != NetworkMode::Host
            && let Some(state) = self.paths.jobs.parent()
        {
            config::refuse_state_volumes(&req.volumes, state)?;
        }
        // A port that cannot be had is refused before anything is created. A job just
        // removed may still hold its ports for the moment its teardown takes.
        config::validate_ports(&req)?;
        if !req.ports.is_empty() {
            self.all_detached().await;
            self.network.check_ports(&req.ports)?;
        }
        let handle = {
            let _gate = self.image_gate.read().await;
            let store = self.images.clone();
            let image_ref = req.image.clone();
            let (image, image_config) = tokio::task::spawn_blocking(move || {
                let image = store.resolve(&image_ref)?;
                let config = store.config(&image)?;
                Ok::<_, image::StoreError>((image, config))
            })
            .await
            .map_err(JobError::join)??;
            let id = record::new_id()?;
            let config = config::resolve(&req, &image_config, &id, self.defaults)?;
            // The daemon's default leaves host-network jobs out: they are the platform's
            // own (etcd, the router, the scheduler), which bind the host's low ports and
            // read its platform certificates, neither of which a mapped root may do.
            // Asked for in so many words, a user namespace is still given.
            let userns = req
                .userns
                .unwrap_or(self.defaults.userns && config.network != NetworkMode::Host);
            let mut job = Job {
                id: id.clone(),
                name: req.name.clone(),
                image: req.image.clone(),
                image_id: image.id.clone(),
                state: JobState::Created,
                pid: None,
                created_at: Utc::now(),
                started_at: None,
                exit: None,
                error: None,
                removal_error: None,
                restart_count: 0,
                restart_at: None,
                manually_stopped: false,
                network: None,
                services: Vec::new(),
                config,
            };
            let handle = {
                let mut jobs = self.lock_jobs();
                if let Some(name) = &req.name
                    && jobs
                        .values()
                        .any(|h| h.record.borrow().name.as_deref() == Some(name))
                {
                    return Err(JobError::NameInUse(name.clone()));
                }
                if userns {
                    // Under the jobs' lock: two creates never take the same range.
                    let taken = jobs
                        .values()
                        .filter_map(|h| h.record.borrow().config.userns);
                    job.config.userns = Some(userns::allocate(taken)?);
                }
                let handle = JobHandle::new(job.clone());
                jobs.insert(id.clone(), handle.clone());
                handle
            };
            let dir = self.paths.job_dir(&id);
            if let Err(e) = record::create_dir(&dir, &job) {
                self.lock_jobs().remove(&id);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            handle
        };
        crate::failpoint::hit("create.recorded");
        self.emit("job", "create", &handle.id, Some(handle.snapshot()));
        if req.start
            && let Err(e) = self.start(&handle).await
        {
            if req.auto_remove {
                let _ = self.remove(&handle, true).await;
            }
            return Err(e);
        }
        Ok(handle.snapshot())
    }

    /// Changes the record, persists it, and notifies subscribers.
    fn update(&self, handle: &JobHandle, f: impl FnOnce(&mut Job)) -> Result<Job, JobError> {
        self.update_then(handle, true, f)
    }

    /// As [`Self::update`], persisting only if `persist`: for a change that the next
    /// save follows at once and that a crash before it loses nothing of (recovery
    /// reaches the same state from the record before it).
    fn update_then(
        &self,
        handle: &JobHandle,
        persist: bool,
        f: impl FnOnce(&mut Job),
    ) -> Result<Job, JobError> {
        let _saving = handle.saving.lock().unwrap_or_else(|p| p.into_inner());
        handle.record.send_modify(f);
        let job = handle.snapshot();
        if persist {
            record::save(&self.paths.job_dir(&handle.id), &job)?;
        }
        Ok(job)
    }

    /// Starts a created or exited job (by hand: this clears a stop and a pending restart).
    pub async fn start(self: &Arc<Self>, handle: &Arc<JobHandle>) -> Result<Job, JobError> {
        let _op = handle.op.lock().await;
        handle.backoff().reset();
        self.start_locked(handle, false).await
    }

    async fn start_locked(
        self: &Arc<Self>,
        handle: &Arc<JobHandle>,
        by_policy: bool,
    ) -> Result<Job, JobError> {
        let job = handle.snapshot();
        match job.state {
            JobState::Created | JobState::Exited => {}
            JobState::Running => return Err(JobError::Running(job.id)),
            JobState::Removing | JobState::Removed => return Err(JobError::Removing(job.id)),
        }
        match self.launch(&job).await {
            Ok((pid, network)) => {
                let job = self.update(handle, |j| {
                    j.state = JobState::Running;
                    j.pid = Some(pid);
                    j.network = network;
                    j.started_at = Some(Utc::now());
                    j.exit = None;
                    j.error = None;
                    j.restart_at = None;
                    j.manually_stopped = false;
                    if by_policy {
                        j.restart_count += 1;
                    }
                })?;
                self.emit("job", "start", &job.id, Some(job.clone()));
                self.monitor(handle.clone());
                Ok(job)
            }
            Err(e) => {
                let message = e.to_string();
                self.update(handle, |j| {
                    j.error = Some(message);
                    j.restart_at = None;
                })?;
                Err(e)
            }
        }
    }

    /// After `delay`, starts the job again if nothing changed its mind meanwhile
    /// (a stop, a removal, a start by hand).
    fn schedule_restart(self: &Arc<Self>, handle: Arc<JobHandle>, delay: Duration) {
        let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        if let Err(e) = self.update(&handle, |j| j.restart_at = Some(at)) {
            tracing::error!(job = %handle.id, error = %e, "recording a pending restart");
        }
        let manager = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _op = handle.op.lock().await;
            let job = handle.snapshot();
            if job.state != JobState::Exited || job.restart_at.is_none() {
                return;
            }
            tracing::info!(job = %job.id, attempt = job.restart_count + 1, "restarting (restart policy)");
            if let Err(e) = manager.start_locked(&handle, true).await {
                tracing::warn!(job = %job.id, error = %e, "restart failed; trying again later");
                // A start that fails counts as a quick exit: back off and retry.
                let mut retry = handle.snapshot();
                retry.restart_count += 1;
                if let Err(e) = manager.update(&handle, |j| j.restart_count = retry.restart_count) {
                    tracing::error!(job = %job.id, error = %e, "recording a failed restart");
                }
                if restart::should_restart(&retry) {
                    let delay = handle.backoff().after_run(Duration::ZERO);
                    drop(_op);
                    manager.schedule_restart(handle.clone(), delay);
                }
            }
        });
    }

    /// Mounts the rootfs and brings the container up through a shim. On error
    /// nothing stays mounted or running.
    async fn launch(&self, job: &Job) -> Result<(i32, Option<NetworkStatus>), JobError> {
        let dir = self.paths.job_dir(&job.id);
        let rootfs = dir.join("rootfs");
        let store = self.images.clone();
        let image_id = job.image_id.clone();
        let mount_dir = dir.clone();
        let step = StartStep::new(&job.id);
        let userns = job.config.userns;
        let traverse = [
            self.paths.jobs.parent().map(PathBuf::from),
            Some(self.paths.jobs.clone()),
            Some(dir.clone()),
        ];
        let mut mount = tokio::task::spawn_blocking(move || {
            crate::failpoint::hang("start.mount");
            if userns.is_some() {
                let dirs: Vec<&std::path::Path> =
                    traverse.iter().flatten().map(|p| p.as_path()).collect();
                userns::make_traversable(&dirs)?;
            }
            let image = store.resolve(&image_id)?;
            let lowers = store.layer_dirs(&image)?;
            record::mount_rootfs(&mount_dir, &lowers, userns)
        });
        // Bounded like every step of a start. A mount that finishes after the start
        // gave up is undone then, so nothing of the job stays mounted.
        let limit = step_timeout();
        match tokio::time::timeout(limit, &mut mount).await {
            Ok(done) => done.map_err(JobError::join)??,
            Err(_) => {
                let late = dir.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(())) = mount.await {
                        let _ = tokio::task::spawn_blocking(move || record::unmount_rootfs(&late))
                            .await;
                    }
                });
                return Err(JobError::TimedOut {
                    step: "mounting the root filesystem",
                    waited: limit,
                });
            }
        }
        step.done("root filesystem mounted");
        crate::failpoint::hit("start.mounted");

        if job.config.network == NetworkMode::Bridge {
            // A restart follows the teardown of the previous run's network.
            self.detached(&job.id).await;
        }
        let endpoint = match job.config.network {
            NetworkMode::Bridge => match self.network.attach(&job.id, &job.config.ports).await {
                Ok(endpoint) => {
                    step.done("network attached");
                    Some(endpoint)
                }
                Err(e) => {
                    let _ = record::unmount_rootfs(&dir);
                    return Err(e.into());
                }
            },
            NetworkMode::Host | NetworkMode::None => None,
        };
        let started = async {
            let mut mounts = etc::write(
                &dir,
                job.config.network,
                &job.config.hostname,
                endpoint.as_ref().map(|e| e.ip),
                &self.network.job_dns(&job.config.dns, endpoint.as_ref()),
            )?;
            if let Some(range) = job.config.userns {
                userns::chown_files(&mounts, range)?;
            }
            mounts.extend(config::volume_mounts(&job.config.volumes)?);
            let network_mode = match (&endpoint, job.config.network) {
                (Some(endpoint), _) => runtime::NetworkMode::Path(endpoint.netns.clone()),
                (None, NetworkMode::Host) => runtime::NetworkMode::Host,
                (None, _) => runtime::NetworkMode::New,
            };
            let shim_config = runtime::shim::ShimConfig {
                container: config::container_config(job, &rootfs, network_mode, mounts)?,
                state_root: self.paths.containers.clone(),
                log_path: dir.join(record::LOG_FILE),
                log_rotation: crate::model::logopts::rotation(&job.config.log_opts)
                    .map_err(JobError::BadRequest)?,
            };
            step.done("config written");
            let created = self.spares.spawn(&dir, &shim_config).await?;
            step.done("container created");
            crate::failpoint::hit("start.created");
            let pid = created.start().await?;
            step.done("container started");
            crate::failpoint::hit("start.started");
            Ok::<_, JobError>(pid)
        }
        .await;
        match started {
            Ok(pid) => Ok((pid, endpoint.as_ref().map(NetworkStatus::of))),
            Err(e) => {
                let _ = runtime::shim::cleanup(&self.paths.containers, &job.id);
                let _ = record::unmount_rootfs(&dir);
                if endpoint.is_some()
                    && let Err(e) = self.network.detach(&job.id).await
                {
                    tracing::warn!(job = %job.id, error = %e, "releasing the network of a job that did not start");
                }
                Err(e)
            }
        }
    }

    /// Follows a running job's shim until the process exits, then records the exit.
    fn monitor(self: &Arc<Self>, handle: Arc<JobHandle>) {
        let manager = self.clone();
        tokio::spawn(async move {
            let dir = manager.paths.job_dir(&handle.id);
            let exit = match runtime::shim::ShimClient::connect(&dir).await {
                Ok(client) => client.wait().await.map(|s| ExitInfo::from_status(&s)),
                Err(e) => Err(e),
            };
            let exit = match exit {
                Ok(exit) => exit,
                // The shim is gone: its exit file is the last word, if it wrote one.
                Err(e) => match runtime::shim::read_exit(&dir) {
                    Ok(Some(status)) => ExitInfo::from_status(&status),
                    _ => lost_exit(&e.to_string()),
                },
            };
            crate::failpoint::hit("exit.received");
            manager.finish(&handle, exit).await;
        });
    }

    async fn finish(self: &Arc<Self>, handle: &Arc<JobHandle>, exit: ExitInfo) {
        // A job that is removed on exit is next saved as being removed. Until then its
        // record says running, and a daemon that dies meanwhile finds the shim gone
        // and its exit file, and finishes the job from there as this does: the two
        // saves between would only cost its start-to-removal an fsync each.
        let persist = !handle.snapshot().config.auto_remove;
        // Waiters hear of the exit first; the mount goes after.
        let job = match self.update_then(handle, persist, |j| {
            j.state = JobState::Exited;
            j.pid = None;
            j.exit = Some(exit);
        }) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(job = %handle.id, error = %e, "recording a job's exit");
                handle.snapshot()
            }
        };
        self.emit("job", "exit", &job.id, Some(job.clone()));
        crate::failpoint::hit("exit.recorded");
        {
            // Under the op lock, and only if no start has come in meanwhile: the
            // mount may already belong to the job's next run.
            let _op = handle.op.lock().await;
            if handle.snapshot().state == JobState::Exited {
                if let Err(e) = record::unmount_rootfs(&self.paths.job_dir(&handle.id)) {
                    tracing::warn!(job = %handle.id, error = %e, "unmounting the rootfs of an exited job");
                }
                self.release_network_then(handle, persist).await;
            }
        }
        if job.config.auto_remove {
            if let Err(e) = self.remove(handle, false).await {
                tracing::error!(job = %handle.id, error = %e, "auto-removing an exited job; trying again later");
                self.retry_removal(handle.clone());
            }
        } else if restart::should_restart(&job) {
            let ran = match (job.started_at, &job.exit) {
                (Some(start), Some(exit)) => {
                    (exit.finished_at - start).to_std().unwrap_or_default()
                }
                _ => Duration::ZERO,
            };
            let delay = handle.backoff().after_run(ran);
            self.schedule_restart(handle.clone(), delay);
        }
    }

    /// Sends a signal to a running job.
    pub async fn signal(&self, handle: &JobHandle, signal: Signal) -> Result<(), JobError> {
        let job = handle.snapshot();
        if job.state != JobState::Running {
            return Err(JobError::NotRunning(job.id));
        }
        let client = runtime::shim::ShimClient::connect(&self.paths.job_dir(&job.id)).await?;
        client.signal(signal as i32).await?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the job once it has exited.
    pub async fn stop(&self, handle: &Arc<JobHandle>, grace: Duration) -> Result<Job, JobError> {
        let _op = handle.op.lock().await;
        // Recorded first, so the exit this causes is not restarted by the policy.
        self.update(handle, |j| {
            j.manually_stopped = true;
            j.restart_at = None;
        })?;
        self.stop_locked(handle, grace).await
    }

    async fn stop_locked(&self, handle: &Arc<JobHandle>, grace: Duration) -> Result<Job, JobError> {
        let mut rx = handle.subscribe();
        if rx.borrow().state != JobState::Running {
            return Ok(handle.snapshot());
        }
        if !grace.is_zero() {
            let has_services = !rx.borrow().config.services.is_empty();
            if has_services
                && let Some(d) = self.drain.get()
                && tokio::time::timeout(DRAIN_TIMEOUT, d.drain(&handle.id))
                    .await
                    .is_err()
            {
                tracing::warn!(job = %handle.id, "draining took over {DRAIN_TIMEOUT:?}; stopping anyway");
            }
            self.signal(handle, Signal::SIGTERM)
                .await
                .or_else(ignore_not_running)?;
            if tokio::time::timeout(grace, rx.wait_for(|j| j.state != JobState::Running))
                .await
                .is_ok()
            {
                return Ok(handle.snapshot());
            }
        }
        self.signal(handle, Signal::SIGKILL)
            .await
            .or_else(ignore_not_running)?;
        match tokio::time::timeout(KILL_GRACE, rx.wait_for(|j| j.state != JobState::Running)).await
        {
            Ok(_) => Ok(handle.snapshot()),
            Err(_) => Err(JobError::StopTimeout(handle.id.clone())),
        }
    }

    /// Removes a job and everything it left: rootfs mount, container state, cgroups,
    /// its directory. A running job is refused unless `force` (then it is killed).
    pub async fn remove(&self, handle: &Arc<JobHandle>, force: bool) -> Result<(), JobError> {
        let _op = handle.op.lock().await;
        let job = handle.snapshot();
        if job.state == JobState::Running {
            if !force {
                return Err(JobError::Running(job.id));
            }
            self.stop_locked(handle, Duration::ZERO).await?;
        }
        // The network is released below, in the background; a daemon that dies
        // meanwhile finishes the removal, which releases it again (by id).
        let mark = |j: &mut Job| {
            j.state = JobState::Removing;
            j.network = None;
        };
        let job = match self.update(handle, mark) {
            // A full disk must not keep a job (and the space it holds) from going:
            // its logs, about to be deleted, make room for the mark.
            Err(JobError::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                tracing::warn!(job = %handle.id, "the disk is full: emptying the log of a job being removed");
                empty_logs(&self.paths.job_dir(&handle.id));
                self.update(handle, mark)?
            }
            other => other?,
        };
        crate::failpoint::hit("rm.marked");
        if let Some(exit) = &job.exit {
            record::write_tombstone(&self.paths.removed, &job.id, exit);
            if job.config.auto_remove {
                record::keep_log(&self.paths.job_dir(&job.id), &self.paths.removed, &job.id);
            }
        }
        self.release_network(handle).await;
        let dir = self.paths.job_dir(&handle.id);
        let containers = self.paths.containers.clone();
        let id = handle.id.clone();
        let destroyed =
            tokio::task::spawn_blocking(move || record::destroy(&dir, &containers, &id))
                .await
                .map_err(JobError::join)
                .and_then(|r| r);
        if let Err(e) = destroyed {
            // Said on the record, so that waiters for the removal get their answer
            // (with this reason) instead of waiting for ever, and `ps` shows why.
            let why = e.to_string();
            if let Err(e) = self.update(handle, |j| j.removal_error = Some(why)) {
                tracing::error!(job = %handle.id, error = %e, "recording a failed removal");
            }
            return Err(e);
        }
        self.lock_jobs().remove(&handle.id);
        // The record file is gone; subscribers still get the last word.
        handle.record.send_modify(|j| j.state = JobState::Removed);
        self.emit("job", "remove", &handle.id, None);
        Ok(())
    }

    /// Tries again to remove an auto-removed job whose removal failed (a busy
    /// mount, a file that cannot be deleted), backing off from 1 s to a minute,
    /// until it is gone or someone else removed it.
    fn retry_removal(self: &Arc<Self>, handle: Arc<JobHandle>) {
        let manager = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                tokio::time::sleep(delay).await;
                if handle.snapshot().state != JobState::Removing || manager.get(&handle.id).is_err()
                {
                    return;
                }
                match manager.remove(&handle, false).await {
                    Ok(()) => {
                        tracing::info!(job = %handle.id, "removed on a later attempt");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(job = %handle.id, error = %e, retry_in = ?delay * 2, "removing an exited job failed again");
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        });
    }

    /// The exit of a job removed a short while ago, if it had one.
    pub fn removed_exit(&self, id: &str) -> Option<ExitInfo> {
        record::read_tombstone(&self.paths.removed, id)
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.paths.job_dir(id)
    }

    /// Resizes the terminal of a job (or, with `exec`, of one of its execs).
    pub async fn resize(
        &self,
        handle: &JobHandle,
        exec: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), JobError> {
        let (dir, tty) = match exec {
            Some(exec_id) => (
                self.exec_dir(&handle.id, exec_id)?,
                self.exec_info(&handle.id, exec_id)?.config.tty,
            ),
            None => (self.paths.job_dir(&handle.id), handle.snapshot().config.tty),
        };
        if !tty {
            return Err(JobError::NoTerminal(handle.id.clone()));
        }
        let client = runtime::shim::ShimClient::connect(&dir).await?;
        client.resize(rows, cols).await?;
        Ok(())
    }

    /// The log of an auto-removed job, kept a short while (see `removed_exit`).
    pub fn removed_log(&self, id: &str) -> Option<PathBuf> {
        record::removed_log(&self.paths.removed, id)
    }

    /// The log file of a job.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.paths.job_dir(id).join(record::LOG_FILE)
    }
}

fn ignore_not_running(e: JobError) -> Result<(), JobError> {
    match e {
        JobError::NotRunning(_) => Ok(()),
        e => Err(e),
    }
}

fn lost_exit(reason: &str) -> ExitInfo {
    ExitInfo {
        exit_code: 255,
        code: None,
        signal: None,
        oom_killed: false,
        finished_at: Utc::now(),
        error: Some(format!("exit status lost: {reason}")),
    }
}

/// True once the job has exited (or is being removed after exiting): what waiters
/// and log followers wait for.
pub fn has_exited(job: &Job) -> bool {
    matches!(
        job.state,
        JobState::Exited | JobState::Removing | JobState::Removed
    ) && job.exit.is_some()
}

/// True once an exited job has been removed: what `run --rm` waits for, as
/// `docker run --rm` returns only after the container is gone.
pub fn has_been_removed(job: &Job) -> bool {
    job.state == JobState::Removed
}

/// Logs each step of a start at debug level with the time it took, so that a start
/// that stops somewhere says where (`FLYNN_LOG=debug`). Every step is bounded by its
/// own time-out (the network's and the shim's), so a start always ends.
struct StartStep<'a> {
    job: &'a str,
    last: std::sync::Mutex<std::time::Instant>,
}

impl<'a> StartStep<'a> {
    fn new(job: &'a str) -> StartStep<'a> {
        tracing::debug!(job, "start: mounting the root filesystem");
        StartStep {
            job,
            last: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    fn done(&self, what: &str) {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let ms = now
            .duration_since(std::mem::replace(&mut *last, now))
            .as_secs_f64()
            * 1e3;
        tracing::debug!(
            job = self.job,
            ms = format_args!("{ms:.1}"),
            "start: {what}"
        );
    }
}
