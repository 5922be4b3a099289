//! The scheduler's decisions, as pure functions of the cluster's state: which
//! jobs to start where, which to stop, and which formations cannot be satisfied
//! and why. State in, a [`Plan`] out; no I/O, no clock, no randomness, so every
//! rule is tested exhaustively and benchmarked on simulated clusters of any size.
//!
//! The caller (the scheduler service) reads the state from etcd and the agents,
//! carries the plan out through the agents' APIs, and calls [`rectify`] again on
//! every event and on a periodic resync. Must not know etcd, HTTP or containers.
//!
//! The rules, after Flynn's scheduler and what its users suffered from:
//! - Only live hosts count: a host whose lease expired is not in [`State::hosts`],
//!   and its jobs are replaced elsewhere. While its lease lives its jobs count,
//!   so a partitioned host's jobs are never doubled.
//! - A job goes to a host whose tags match and whose free memory and CPU fit it;
//!   among those, the one with the fewest jobs of its formation, then the fewest
//!   jobs, then the lowest id (deterministic). A formation spreads 2/2/1 over three
//!   hosts. A job that fits nowhere is [`Blocked`] with the reason.
//! - Omni formations run `count` jobs on every matching host.
//! - Surplus jobs stop newest first.
//! - Crashes back off per formation: 0 s, then 10 s, then 30 s between restarts.
//! - A formation's [`Restart`] policy says which exited jobs are replaced: every
//!   one (`always`, the default and Flynn's only rule), those that failed
//!   (`on-failure`), or none (`never`). A job that is not replaced keeps its
//!   place in the count as [`JobState::Exited`] (its work is done), so the kept
//!   records of a formation never exceed its count.
//! - A draining host gets no new jobs; its jobs are started elsewhere first and
//!   stopped there once enough replacements run.
//! - A formation's release changing is a rolling deploy: jobs of the new release
//!   start at most [`SURGE`] beyond the count at a time, and a job of an older
//!   release stops only once a new one is healthy, so the healthy jobs never drop
//!   below the count. A new release that never gets healthy leaves the old jobs
//!   running (the caller's deploy times out and rolls the formation back).

mod place;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use place::{Placer, place_one};

/// Jobs a rolling deploy may run beyond the count: one, so a deploy needs room
/// for one more job of the formation and replaces the jobs one at a time.
pub const SURGE: usize = 1;

/// Memory (MiB) and CPU (thousandths of a core).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resources {
    pub memory_mb: u64,
    pub cpu_milli: u64,
}

impl Resources {
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.memory_mb <= free.memory_mb && self.cpu_milli <= free.cpu_milli
    }

    fn minus(&self, other: &Resources) -> Resources {
        Resources {
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
            cpu_milli: self.cpu_milli.saturating_sub(other.cpu_milli),
        }
    }
}

/// A live host (its lease is current).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    pub tags: BTreeMap<String, String>,
    /// What jobs may be promised in all.
    pub capacity: Resources,
    /// No new jobs; its jobs move away.
    pub draining: bool,
    /// The images it holds (manifest digests, `sha256:…`): a formation whose
    /// release pins an image starts jobs only where it is (an image imported before
    /// the host joined is not on it, and a job there would be refused). `None`:
    /// not known, taken to hold every image.
    #[serde(default)]
    pub images: Option<BTreeSet<String>>,
}

/// What a formation is known by: an app's process type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FormationKey {
    pub app: String,
    pub process_type: String,
}

impl std::fmt::Display for FormationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app, self.process_type)
    }
}

/// Which of a formation's jobs that exit on their own (the scheduler did not stop
/// them) are replaced. The agent's restart policies restart a job in place on its
/// host; this one is the formation's: a replacement may go to another host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Every exited job is replaced (with the crash back-off): a service. The
    /// default, so a formation stored before the policy existed keeps its rule.
    #[default]
    Always,
    /// Only a job that failed (exit code other than 0) is replaced: one that
    /// finished its work stays finished.
    OnFailure,
    /// No exited job is replaced: each job runs once.
    Never,
}

impl Restart {
    /// The names users give, in the order the help lists them.
    pub const NAMES: [&'static str; 3] = ["always", "on-failure", "never"];

    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "never",
        }
    }

    pub fn is_always(&self) -> bool {
        *self == Restart::Always
    }

    /// Whether a job that exited with `code` is replaced.
    pub fn replaces(self, code: i32) -> bool {
        match self {
            Restart::Always => true,
            Restart::OnFailure => code != 0,
            Restart::Never => false,
        }
    }
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A restart policy's name that is none of [`Restart::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRestart(pub String);

impl fmt::Display for UnknownRestart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid restart policy {:?}: use always, on-failure or never",
            self.0
        )
    }
}

impl std::error::Error for UnknownRestart {}

impl FromStr for Restart {
    type Err = UnknownRestart;

    fn from_str(s: &str) -> Result<Restart, UnknownRestart> {
        match s {
            "always" => Ok(Restart::Always),
            "on-failure" => Ok(Restart::OnFailure),
            "never" => Ok(Restart::Never),
            other => Err(UnknownRestart(other.to_string())),
        }
    }
}

/// What is wanted of one process type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Formation {
    pub key: FormationKey,
    /// Jobs wanted (on every matching host when `omni`).
    pub count: u32,
    pub omni: bool,
    /// Host tags every job's host must carry.
    pub tags: BTreeMap<String, String>,
    /// What each job is promised.
    pub resources: Resources,
    /// The release its jobs run; jobs of another release are replaced by a
    /// rolling deploy. `None`: any job counts (formations made without releases).
    #[serde(default)]
    pub release: Option<String>,
    /// The manifest digest of the image its jobs run (the release pins it);
    /// `None`: any host will do.
    #[serde(default)]
    pub image: Option<String>,
    /// Which exited jobs are replaced.
    #[serde(default)]
    pub restart: Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Starting,
    Running,
    /// Being stopped: it no longer counts toward its formation, but holds its
    /// resources until it is gone.
    Stopping,
    /// It exited on its own with `code` and its record is still there. It holds
    /// nothing; it counts toward its formation when the formation's [`Restart`]
    /// does not replace it, and is otherwise stopped with [`StopReason::Exited`]
    /// (its record removed) and replaced.
    Exited {
        code: i32,
    },
}

/// A job of a formation that is not finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub formation: FormationKey,
    pub host: String,
    pub state: JobState,
    /// When it was started (ms, the caller's clock): surplus stops newest first.
    pub started_ms: u64,
    /// What it was promised when it started (it holds them until it is gone).
    pub resources: Resources,
    /// The release it runs.
    #[serde(default)]
    pub release: Option<String>,
    /// Up: running, and registered in discovery when it declares a service. A
    /// rolling deploy stops an old job only for a healthy new one.
    #[serde(default)]
    pub healthy: bool,
}

impl Job {
    /// Whether it runs the formation's release (any job does when the formation
    /// names none).
    fn current(&self, f: &Formation) -> bool {
        f.release.is_none() || self.release == f.release
    }

    fn exited(&self) -> bool {
        matches!(self.state, JobState::Exited { .. })
    }

    /// Running, or exited and not to be replaced: it does its formation's part.
    fn settled(&self) -> bool {
        matches!(self.state, JobState::Running | JobState::Exited { .. })
    }

    /// Up for a rolling deploy: a finished job has done what it was for, so a
    /// deploy of run-once jobs does not wait forever for it to be healthy.
    fn up(&self) -> bool {
        self.healthy || self.exited()
    }

    /// Healthy and still running: which jobs a rollout or a scale-down keeps
    /// longest (a finished job's record serves nobody).
    fn serving(&self) -> bool {
        self.healthy && !self.exited()
    }
}

/// A formation's recent crashes, kept by the caller.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Backoff {
    /// Crashes in a row (reset by the caller when a job has run long enough).
    pub crashes: u32,
    pub last_crash_ms: u64,
}

impl Backoff {
    /// Flynn's: the first restart at once, then 10 s, then 30 s.
    pub fn delay_ms(&self) -> u64 {
        match self.crashes {
            0 | 1 => 0,
            2 => 10_000,
            _ => 30_000,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct State {
    pub hosts: Vec<Host>,
    pub formations: Vec<Formation>,
    pub jobs: Vec<Job>,
    pub backoff: HashMap<FormationKey, Backoff>,
    /// The caller's clock (ms), for back-off.
    pub now_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    pub formation: FormationKey,
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    pub job: String,
    pub reason: StopReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// More jobs run than the formation wants.
    Surplus,
    /// Its formation is gone.
    Removed,
    /// Its host is draining and a replacement runs elsewhere.
    Drained,
    /// Its host no longer matches the formation's tags.
    Mismatch,
    /// It runs an older release and a job of the formation's release is up.
    Replaced,
    /// It exited and its formation's restart policy replaces it: its record goes.
    Exited,
}

/// Jobs of a formation that cannot be placed now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    pub formation: FormationKey,
    pub missing: u32,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub start: Vec<Start>,
    pub stop: Vec<Stop>,
    pub blocked: Vec<Blocked>,
    /// When back-off ends for a formation that waits (ms): rectify again then.
    pub wake_ms: Option<u64>,
}

fn tags_match(want: &BTreeMap<String, String>, host: &Host) -> bool {
    want.iter().all(|(k, v)| host.tags.get(k) == Some(v))
}

/// Whether `host` holds `image` (a manifest digest; `None` needs nothing).
fn holds(image: Option<&str>, host: &Host) -> bool {
    match (image, &host.images) {
        (Some(digest), Some(held)) => held.contains(digest),
        _ => true,
    }
}

/// Why an omni formation's job cannot start on `host`, which lacks its image.
fn lacks_image(image: &str, host: &Host) -> String {
    format!(
        "host {} does not hold the image {image} (import it there: flynn import)",
        host.id
    )
}

/// What to do to bring the cluster to its formations.
pub fn rectify(state: &State) -> Plan {
    let mut plan = Plan::default();
    let mut placer = Placer::new(&state.hosts, &state.jobs);
    let live: HashMap<&str, &Host> = state.hosts.iter().map(|h| (h.id.as_str(), h)).collect();

    let policy: HashMap<&FormationKey, Restart> = state
        .formations
        .iter()
        .map(|f| (&f.key, f.restart))
        .collect();
    // Jobs by formation, on live hosts only (the others are lost with their host).
    // An exited job its formation replaces is no longer one of its jobs: its record
    // goes, so finished jobs never pile up (Flynn's hosts died of crashed-job
    // records).
    let mut by_formation: HashMap<&FormationKey, Vec<&Job>> = HashMap::new();
    let mut replaced: Vec<&Job> = Vec::new();
    for job in &state.jobs {
        if !live.contains_key(job.host.as_str()) || job.state == JobState::Stopping {
            continue;
        }
        if let JobState::Exited { code } = job.state
            && policy.get(&job.formation).is_some_and(|p| p.replaces(code))
        {
            replaced.push(job);
            continue;
        }
        by_formation.entry(&job.formation).or_default().push(job);
    }
    replaced.sort_by(|a, b| a.id.cmp(&b.id));
    for job in replaced {
        plan.stop.push(Stop {
            job: job.id.clone(),
            reason: StopReason::Exited,
        });
    }
    let known: std::collections::HashSet<&FormationKey> =
        state.formations.iter().map(|f| &f.key).collect();
    let mut removed: Vec<&Job> = by_formation
        .iter()
        .filter(|(k, _)| !known.contains(**k))
        .flat_map(|(_, jobs)| jobs.iter().copied())
        .collect();
    removed.sort_by(|a, b| a.id.cmp(&b.id));
    for job in removed {
        plan.stop.push(Stop {
            job: job.id.clone(),
            reason: StopReason::Removed,
        });
    }

    let mut formations: Vec<&Formation> = state.formations.iter().collect();
    formations.sort_by(|a, b| a.key.cmp(&b.key));
    for f in formations {
        let jobs = by_formation.get(&f.key).map(Vec::as_slice).unwrap_or(&[]);
        let backoff = state.backoff.get(&f.key).copied().unwrap_or_default();
        let ready_at = backoff.last_crash_ms.saturating_add(backoff.delay_ms());
        let may_start = backoff.crashes == 0 || state.now_ms >= ready_at;
        if !may_start {
            plan.wake_ms = Some(plan.wake_ms.map_or(ready_at, |w| w.min(ready_at)));
        }
        // Jobs on hosts that no longer match are replaced like a draining host's.
        let misplaced = |j: &Job| {
            live.get(j.host.as_str())
                .is_none_or(|h| !tags_match(&f.tags, h))
        };
        if f.omni {
            omni(f, jobs, state, &mut placer, may_start, &mut plan);
        } else if jobs.iter().any(|j| !j.current(f)) {
            rollout(f, jobs, &mut placer, may_start, &mut plan);
        } else {
            spread(
                f,
                jobs,
                &live,
                &misplaced,
                &mut placer,
                may_start,
                &mut plan,
            );
        }
    }
    plan
}

/// A formation of `count` jobs anywhere.
fn spread(
    f: &Formation,
    jobs: &[&Job],
    live: &HashMap<&str, &Host>,
    misplaced: &dyn Fn(&Job) -> bool,
    placer: &mut Placer,
    may_start: bool,
    plan: &mut Plan,
) {
    // A finished job stays where it ended: moving it would run its work again.
    let leaving = |j: &Job| {
        !j.exited() && (misplaced(j) || live.get(j.host.as_str()).is_some_and(|h| h.draining))
    };
    let (mut staying, moving): (Vec<&Job>, Vec<&Job>) = jobs.iter().partition(|j| !leaving(j));
    let want = f.count as usize;
    if staying.len() > want {
        // Finished jobs' records first (scaling down keeps the work running), then
        // newest first; ties by id, so the plan is the same every time.
        staying.sort_by(|a, b| {
            b.exited()
                .cmp(&a.exited())
                .then(b.started_ms.cmp(&a.started_ms))
                .then(b.id.cmp(&a.id))
        });
        for j in &staying[..staying.len() - want] {
            plan.stop.push(Stop {
                job: j.id.clone(),
                reason: StopReason::Surplus,
            });
            placer.release(j);
        }
    }
    let running = staying.iter().filter(|j| j.settled()).count();
    let mut moving = moving;
    moving.sort_by(|a, b| a.id.cmp(&b.id));
    // A leaving job stops once enough replacements run; a job beyond the count
    // stops at once.
    let keep_leaving = want.saturating_sub(running);
    for (i, j) in moving.iter().enumerate() {
        if i >= keep_leaving {
            let reason = if misplaced(j) {
                StopReason::Mismatch
            } else {
                StopReason::Drained
            };
            plan.stop.push(Stop {
                job: j.id.clone(),
                reason,
            });
            placer.release(j);
        }
    }
    let missing = want.saturating_sub(staying.len()) as u32;
    if missing == 0 {
        return;
    }
    if !may_start {
        plan.blocked.push(Blocked {
            formation: f.key.clone(),
            missing,
            reason: "restarting after crashes: backing off".into(),
        });
        return;
    }
    for placed in 0..missing {
        match placer.place(&f.key, &f.tags, f.image.as_deref(), &f.resources) {
            Ok(host) => plan.start.push(Start {
                formation: f.key.clone(),
                host,
            }),
            Err(reason) => {
                plan.blocked.push(Blocked {
                    formation: f.key.clone(),
                    missing: missing - placed,
                    reason,
                });
                return;
            }
        }
    }
}

/// A rolling deploy's next step for `want` jobs: how many jobs of the new release
/// to start and how many of the old ones to stop. An old job stops only while the
/// healthy new jobs and the old ones left are at least `want` (the old ones served
/// before the deploy, so they count as serving); a new job starts only while the
/// formation has fewer than `want + SURGE` jobs that are not being stopped. A job
/// being stopped no longer serves and is gone within its stop's grace period (its
/// resources stay promised until then: the placer counts them), so it does not hold
/// the rollout up: an app that ignores SIGTERM (a busybox httpd as PID 1) would
/// otherwise make each step last the whole grace period.
pub fn rollout_step(want: usize, new: usize, new_healthy: usize, old: usize) -> (usize, usize) {
    let stops = (new_healthy + old).saturating_sub(want).min(old);
    let left = new + old - stops;
    let starts = want
        .saturating_sub(new)
        .min((want + SURGE).saturating_sub(left));
    (starts, stops)
}

/// The `n` old jobs to stop: those not up first, then those on the host with the
/// most jobs of the formation (`new` and `old` together), so the formation ends up
/// spread as a fresh one would be, then the oldest (ties by id).
fn pick_old<'a>(old: &[&'a Job], new: &[&Job], n: usize) -> Vec<&'a Job> {
    let mut on_host: HashMap<&str, usize> = HashMap::new();
    for j in new.iter().chain(old.iter()) {
        *on_host.entry(j.host.as_str()).or_default() += 1;
    }
    let mut left: Vec<&Job> = old.to_vec();
    let mut picked = Vec::new();
    for _ in 0..n {
        let best = left.iter().enumerate().min_by(|(_, a), (_, b)| {
            let (ca, cb) = (
                on_host.get(a.host.as_str()).copied().unwrap_or(0),
                on_host.get(b.host.as_str()).copied().unwrap_or(0),
            );
            a.serving()
                .cmp(&b.serving())
                .then(cb.cmp(&ca))
                .then(a.started_ms.cmp(&b.started_ms))
                .then(a.id.cmp(&b.id))
        });
        let Some((i, _)) = best else {
            break;
        };
        let j = left.swap_remove(i);
        if let Some(c) = on_host.get_mut(j.host.as_str()) {
            *c = c.saturating_sub(1);
        }
        picked.push(j);
    }
    picked
}

/// Surplus new jobs (the count went down during a deploy): those not up first,
/// then the newest.
fn surplus_new(jobs: &mut Vec<&Job>, want: usize, placer: &mut Placer, plan: &mut Plan) {
    if jobs.len() <= want {
        return;
    }
    jobs.sort_by(|a, b| {
        b.serving()
            .cmp(&a.serving())
            .then(a.started_ms.cmp(&b.started_ms))
            .then(a.id.cmp(&b.id))
    });
    for j in jobs.drain(want..) {
        plan.stop.push(Stop {
            job: j.id.clone(),
            reason: StopReason::Surplus,
        });
        placer.release(j);
    }
}

/// A formation whose jobs run more than one release: the old release's jobs are
/// replaced by the formation's, [`rollout_step`] at a time. Draining hosts get no
/// new jobs (the placer skips them); their old jobs are among the first to stop
/// because they are the oldest or not up, and the rest is the next passes' work.
fn rollout(f: &Formation, jobs: &[&Job], placer: &mut Placer, may_start: bool, plan: &mut Plan) {
    let (mut new, old): (Vec<&Job>, Vec<&Job>) = jobs.iter().copied().partition(|j| j.current(f));
    let want = f.count as usize;
    surplus_new(&mut new, want, placer, plan);
    let healthy = new.iter().filter(|j| j.up()).count();
    let (starts, stops) = rollout_step(want, new.len(), healthy, old.len());
    for j in pick_old(&old, &new, stops) {
        plan.stop.push(Stop {
            job: j.id.clone(),
            reason: StopReason::Replaced,
        });
        placer.release(j);
    }
    if starts == 0 {
        return;
    }
    if !may_start {
        plan.blocked.push(Blocked {
            formation: f.key.clone(),
            missing: starts as u32,
            reason: "restarting after crashes: backing off".into(),
        });
        return;
    }
    let mut new_on: HashMap<String, u32> = HashMap::new();
    for j in &new {
        *new_on.entry(j.host.clone()).or_default() += 1;
    }
    for placed in 0..starts {
        match placer.place_spread_by(&f.key, &f.tags, f.image.as_deref(), &f.resources, &new_on) {
            Ok(host) => {
                *new_on.entry(host.clone()).or_default() += 1;
                plan.start.push(Start {
                    formation: f.key.clone(),
                    host,
                });
            }
            Err(reason) => {
                plan.blocked.push(Blocked {
                    formation: f.key.clone(),
                    missing: (starts - placed) as u32,
                    reason: format!("deploying release: {reason}"),
                });
                return;
            }
        }
    }
}

/// An omni formation: `count` jobs on every matching host that is not draining.
fn omni(
    f: &Formation,
    jobs: &[&Job],
    state: &State,
    placer: &mut Placer,
    may_start: bool,
    plan: &mut Plan,
) {
    let mut on_host: HashMap<&str, Vec<&Job>> = HashMap::new();
    for j in jobs {
        on_host.entry(j.host.as_str()).or_default().push(j);
    }
    let mut hosts: Vec<&Host> = state.hosts.iter().collect();
    hosts.sort_by(|a, b| a.id.cmp(&b.id));
    let want = f.count as usize;
    let mut missing_total = 0u32;
    let mut first_reason = None;
    for h in hosts {
        let mut here = on_host.remove(h.id.as_str()).unwrap_or_default();
        let wanted_here = if h.draining || !tags_match(&f.tags, h) {
            0
        } else {
            want
        };
        if wanted_here > 0 && here.iter().any(|j| !j.current(f)) {
            let (mut new, old): (Vec<&Job>, Vec<&Job>) =
                here.iter().copied().partition(|j| j.current(f));
            surplus_new(&mut new, wanted_here, placer, plan);
            let healthy = new.iter().filter(|j| j.up()).count();
            let (starts, stops) = rollout_step(wanted_here, new.len(), healthy, old.len());
            for j in pick_old(&old, &new, stops) {
                plan.stop.push(Stop {
                    job: j.id.clone(),
                    reason: StopReason::Replaced,
                });
                placer.release(j);
            }
            for _ in 0..starts {
                if !may_start {
                    missing_total += 1;
                    first_reason
                        .get_or_insert_with(|| "restarting after crashes: backing off".into());
                    continue;
                }
                if !holds(f.image.as_deref(), h) {
                    missing_total += 1;
                    first_reason.get_or_insert_with(|| {
                        lacks_image(f.image.as_deref().unwrap_or_default(), h)
                    });
                    continue;
                }
                match placer.place_on(&h.id, &f.key, &f.resources) {
                    Ok(()) => plan.start.push(Start {
                        formation: f.key.clone(),
                        host: h.id.clone(),
                    }),
                    Err(reason) => {
                        missing_total += 1;
                        first_reason.get_or_insert(reason);
                    }
                }
            }
            continue;
        }
        if here.len() > wanted_here {
            here.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then(b.id.cmp(&a.id)));
            let reason = if h.draining {
                StopReason::Drained
            } else if wanted_here == 0 {
                StopReason::Mismatch
            } else {
                StopReason::Surplus
            };
            for j in &here[..here.len() - wanted_here] {
                plan.stop.push(Stop {
                    job: j.id.clone(),
                    reason,
                });
                placer.release(j);
            }
            continue;
        }
        for _ in here.len()..wanted_here {
            if !may_start {
                missing_total += 1;
                first_reason.get_or_insert_with(|| "restarting after crashes: backing off".into());
                continue;
            }
            if !holds(f.image.as_deref(), h) {
                missing_total += 1;
                first_reason
                    .get_or_insert_with(|| lacks_image(f.image.as_deref().unwrap_or_default(), h));
                continue;
            }
            match placer.place_on(&h.id, &f.key, &f.resources) {
                Ok(()) => plan.start.push(Start {
                    formation: f.key.clone(),
                    host: h.id.clone(),
                }),
                Err(reason) => {
                    missing_total += 1;
                    first_reason.get_or_insert(reason);
                }
            }
        }
    }
    if let Some(reason) = first_reason {
        plan.blocked.push(Blocked {
            formation: f.key.clone(),
            missing: missing_total,
            reason,
        });
    }
}

#[cfg(test)]
mod tests;
