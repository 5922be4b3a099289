//! Deploys: a new current release of an app becomes its formations' release, the
//! scheduler rolls the jobs over (see the `scheduler` crate: at most one job beyond
//! the count, an old job stops only for a healthy new one), and this module follows
//! the rollout until every formation runs its count of healthy jobs of the new
//! release and none of another. One that is not there within its time-out is rolled
//! back: the formations and the app go back to the previous release, and the deploy
//! says why it failed.
//!
//! The jobs are read from the scheduler's API (the leader of `flynn-scheduler` in
//! discovery): it already reads every agent each second and knows each job's app,
//! type, release and health, so one request answers what N agents would.

use std::collections::BTreeMap;
use std::time::Duration;

use discovery::Etcd;
use discovery::apps::{Process, Release};
use discovery::deploys::{Deploy, DeployState};
use discovery::formations::{FormationRecord, Restart};
use flynn_client::Client;
use hyper::Method;
use serde_json::{Value, json};

/// How often a pending deploy is looked at.
const POLL: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a deploy's follower needs: etcd and the cluster's token (for the scheduler).
#[derive(Clone)]
pub struct Deployer {
    pub etcd: Etcd,
    pub token: Option<String>,
}

/// Why the jobs of an app cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(
        "the controller was started without the cluster's token (--token or FLYNN_TOKEN): it cannot reach the scheduler"
    )]
    NoToken,
    #[error("no scheduler is running (discovery has no flynn-scheduler): bootstrap the cluster")]
    NoScheduler,
    #[error("asking the scheduler: {0}")]
    Scheduler(String),
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
}

/// The service a process's jobs register: `<app>-<type>`.
pub fn service_name(app: &str, process_type: &str) -> String {
    format!("{app}-{process_type}")
}

/// The formation of one process type of a release, with `count` jobs.
pub fn formation(
    release: &Release,
    process_type: &str,
    p: &Process,
    count: u32,
) -> FormationRecord {
    let mut env: Vec<String> = release
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut services = Vec::new();
    if let Some(port) = p.port {
        env.push(format!("PORT={port}"));
        // A TCP check by default: a job counts (and gets traffic) once it listens.
        services.push(json!({
            "name": service_name(&release.app, process_type),
            "port": port,
            "check": {"kind": "tcp", "interval_ms": 500, "rise": 1},
        }));
    }
    FormationRecord {
        app: release.app.clone(),
        process_type: process_type.to_string(),
        image: release.image.clone(),
        cmd: p.cmd.clone(),
        env,
        services,
        memory: p.memory,
        cpus: p.cpus,
        count,
        omni: false,
        tags: BTreeMap::new(),
        network: None,
        release: Some(release.id.clone()),
        // An app's processes are services: every exit is replaced.
        restart: Restart::Always,
    }
}

/// Makes the app's formations those of `release`, keeping each type's count (a new
/// type starts at 0); types the release does not have are removed.
pub async fn write_formations(
    etcd: &Etcd,
    release: &Release,
) -> Result<(), discovery::DiscoveryError> {
    let now = discovery::formations::of_app(etcd, &release.app).await?;
    let counts: BTreeMap<&str, u32> = now
        .iter()
        .map(|f| (f.process_type.as_str(), f.count))
        .collect();
    for (ty, p) in &release.processes {
        let count = counts.get(ty.as_str()).copied().unwrap_or(0);
        discovery::formations::put(etcd, &formation(release, ty, p, count)).await?;
    }
    for f in &now {
        if !release.processes.contains_key(&f.process_type) {
            discovery::formations::delete(etcd, &f.app, &f.process_type).await?;
        }
    }
    Ok(())
}

impl Deployer {
    /// The scheduler's API, with the cluster's token.
    pub async fn scheduler(&self) -> Result<Client, JobsError> {
        let token = self.token.as_deref().ok_or(JobsError::NoToken)?;
        let leader = discovery::services::leader(&self.etcd, "flynn-scheduler")
            .await?
            .ok_or(JobsError::NoScheduler)?;
        // HTTPS when the scheduler says so, verified against the cluster's CA
        // (FLYNN_TLS_PIN).
        let scheme = if leader.meta.get("tls").map(String::as_str) == Some("1") {
            "https"
        } else {
            "http"
        };
        Client::from_options(Some(&format!("{scheme}://{}", leader.addr)), Some(token))
            .map_err(|e| JobsError::Scheduler(format!("{e:#}")))
    }

    /// The app's jobs as the scheduler last saw them.
    pub async fn jobs(&self, app: &str) -> Result<Vec<Value>, JobsError> {
        let s = self.scheduler().await?;
        let all: Vec<Value> =
            match tokio::time::timeout(CALL_TIMEOUT, s.call(Method::GET, "/jobs", None::<&()>))
                .await
            {
                Ok(r) => r.map_err(|e| JobsError::Scheduler(format!("{e:#}")))?,
                Err(_) => return Err(JobsError::Scheduler("no answer within 5 s".into())),
            };
        Ok(all.into_iter().filter(|j| j["app"] == app).collect())
    }

    /// Follows a deploy to its end (in the background of the request that made it,
    /// or of a controller that found it pending at its start).
    pub fn follow(&self, d: Deploy) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.follow_inner(d.clone()).await {
                tracing::warn!(app = %d.app, deploy = %d.id, error = %e, "following a deploy");
            }
        });
    }

    async fn follow_inner(&self, d: Deploy) -> Result<(), discovery::DiscoveryError> {
        let deadline = d.created_at + chrono::Duration::seconds(d.timeout_secs as i64);
        loop {
            let Some(mut now) = discovery::deploys::get(&self.etcd, &d.app, &d.id).await? else {
                return Ok(());
            };
            if now.state != DeployState::Pending {
                return Ok(());
            }
            let app = discovery::apps::get(&self.etcd, &d.app).await?;
            let current = app.as_ref().and_then(|a| a.release.clone());
            if current.as_deref() != Some(d.release.as_str()) {
                let by = current.unwrap_or_else(|| "none (the app is gone)".into());
                return self
                    .finish(
                        &mut now,
                        DeployState::Failed,
                        format!("superseded: the app's release is now {by}"),
                    )
                    .await;
            }
            let view = match self.progress(&d).await {
                Ok(None) => {
                    return self
                        .finish(
                            &mut now,
                            DeployState::Complete,
                            "every job runs the new release".into(),
                        )
                        .await;
                }
                Ok(Some(view)) => view,
                Err(e) => e.to_string(),
            };
            if chrono::Utc::now() >= deadline {
                return self.roll_back(&mut now, &view).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `None` when the deploy is done; what is missing otherwise.
    async fn progress(&self, d: &Deploy) -> Result<Option<String>, JobsError> {
        let formations = discovery::formations::of_app(&self.etcd, &d.app).await?;
        let ours: Vec<&FormationRecord> = formations
            .iter()
            .filter(|f| f.release.as_deref() == Some(d.release.as_str()))
            .collect();
        // Nothing to run: nothing to wait for (and no scheduler needed).
        if ours.iter().all(|f| f.count == 0) && self.token.is_none() {
            return Ok(None);
        }
        let jobs = self.jobs(&d.app).await?;
        let mut missing = Vec::new();
        for f in &formations {
            let of_type: Vec<&Value> = jobs
                .iter()
                .filter(|j| j["process_type"] == f.process_type.as_str())
                .collect();
            let new = of_type
                .iter()
                .filter(|j| j["release"] == d.release.as_str())
                .count();
            let healthy = of_type
                .iter()
                .filter(|j| j["release"] == d.release.as_str() && j["healthy"] == true)
                .count();
            let old = of_type.len() - new;
            if healthy < f.count as usize || old > 0 {
                missing.push(format!(
                    "{}: {healthy} of {} new jobs healthy ({new} started), {old} of the old release still running",
                    f.process_type, f.count
                ));
            }
        }
        Ok((!missing.is_empty()).then(|| missing.join("; ")))
    }

    async fn finish(
        &self,
        d: &mut Deploy,
        state: DeployState,
        reason: String,
    ) -> Result<(), discovery::DiscoveryError> {
        tracing::info!(app = %d.app, deploy = %d.id, release = %d.release, ?state, %reason, "deploy ended");
        d.state = state;
        d.reason = Some(reason);
        d.finished_at = Some(chrono::Utc::now());
        discovery::deploys::put(&self.etcd, d).await
    }

    /// Not healthy in time: the formations and the app go back to the previous
    /// release (the old jobs never stopped: the new ones were not healthy).
    async fn roll_back(&self, d: &mut Deploy, view: &str) -> Result<(), discovery::DiscoveryError> {
        let why = format!("not healthy within {} s ({view})", d.timeout_secs);
        let Some(prev) = d.previous.clone() else {
            return self
                .finish(
                    d,
                    DeployState::Failed,
                    format!("{why}; there is no earlier release to roll back to"),
                )
                .await;
        };
        let Some(rel) = discovery::apps::release(&self.etcd, &d.app, &prev).await? else {
            return self
                .finish(
                    d,
                    DeployState::Failed,
                    format!("{why}; release {prev} to roll back to is missing"),
                )
                .await;
        };
        if !discovery::apps::revert(
            &self.etcd,
            &d.app,
            &d.release,
            &prev,
            d.previous_previous.clone(),
        )
        .await?
        {
            return self
                .finish(
                    d,
                    DeployState::Failed,
                    format!("{why}; not rolled back: another deploy came since"),
                )
                .await;
        }
        write_formations(&self.etcd, &rel).await?;
        self.finish(
            d,
            DeployState::Failed,
            format!("{why}; rolled back to release {prev}"),
        )
        .await
    }
}
