//! This host's etcd (Debian's, from the image the fixtures and the appliance build) as
//! an ordinary job: `flynn-etcd`, on the host network (it must not need the overlay it
//! coordinates), restarted always. Two ways in: `--run-etcd` (a one-member cluster of
//! its own, data in the job's writable layer, kept as long as the job is) and the
//! bootstrap's `PUT /cluster/etcd` (a member of a static cluster, data in
//! `<state>/etcd`, a volume: it outlives the job, so a re-created job is the same
//! member).

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::config::{ETCD_CLIENT_PORT, GridConfig};
use crate::jobs::{JobError, JobManager};
use crate::model::{
    EtcdMemberRequest, JobRequest, JobState, NetworkMode, RestartPolicy, RestartPolicyName, Volume,
};

pub const JOB_NAME: &str = "flynn-etcd";
/// Where platform jobs (etcd among them) find the host's TLS files: the
/// read-only volume of `<state>/tls/platform` (`flynn_tls::TlsDir::platform_dir`).
pub const TLS_MOUNT: &str = "/run/flynn/tls";
const PEER_PORT: u16 = 2380;
/// Where a cluster member keeps its data, under the state dir.
pub const DATA_DIR: &str = "etcd";

/// Starts the job if it exists and is not running; `Ok(true)` when it did something.
async fn start_existing(jobs: &Arc<JobManager>) -> Result<Option<bool>, JobError> {
    match jobs.get(JOB_NAME) {
        Ok(h) => {
            let job = h.snapshot();
            if job.state != JobState::Running && job.restart_at.is_none() {
                tracing::info!(job = %job.id, "starting the etcd job");
                jobs.start(&h).await?;
                return Ok(Some(true));
            }
            Ok(Some(false))
        }
        Err(JobError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// This host's member of the cluster's etcd (`PUT /cluster/etcd`): created if
/// missing, started if stopped. `Ok(true)` when it did either.
///
/// With `https://` member URLs the member serves clients and peers over TLS with
/// this host's certificate (`tls`: the platform directory of the host's TLS,
/// mounted read-only), verifies both against the cluster's CA and requires
/// their certificates (`--client-cert-auth`, `--peer-client-cert-auth`): only
/// agents and the platform's jobs, which the agents give a certificate, get in.
/// etcd reads the files at each handshake, so the host's renewals reach it.
pub async fn ensure_member(
    jobs: &Arc<JobManager>,
    cfg: &GridConfig,
    state_dir: &std::path::Path,
    tls: Option<&std::path::Path>,
    req: &EtcdMemberRequest,
) -> Result<bool, JobError> {
    if let Some(changed) = start_existing(jobs).await? {
        return Ok(changed);
    }
    let Some(me) = req.members.iter().find(|m| m.name == req.name) else {
        return Err(JobError::BadRequest(format!(
            "member {} is not in the member list",
            req.name
        )));
    };
    let https = me.client_url.starts_with("https://");
    let mut volumes = vec![Volume {
        source: state_dir.join(DATA_DIR).to_string_lossy().into_owned(),
        target: "/var/lib/etcd".into(),
        read_only: false,
    }];
    let mut tls_flags: Vec<String> = Vec::new();
    if https {
        let Some(dir) = tls else {
            return Err(JobError::BadRequest(
                "this daemon serves plain HTTP (--plain-http): it has no certificate for an https:// etcd member".into(),
            ));
        };
        let (volume, flags) = tls_setup(dir);
        volumes.push(volume);
        tls_flags = flags;
    }
    let scheme = if https { "https" } else { "http" };
    let mut cmd: Vec<String> = vec![
        "etcd".into(),
        "--name".into(),
        me.name.clone(),
        "--data-dir".into(),
        "/var/lib/etcd".into(),
        "--listen-client-urls".into(),
        format!("{},{scheme}://127.0.0.1:{ETCD_CLIENT_PORT}", me.client_url),
        "--advertise-client-urls".into(),
        me.client_url.clone(),
        "--listen-peer-urls".into(),
        me.peer_url.clone(),
        "--initial-advertise-peer-urls".into(),
        me.peer_url.clone(),
        "--initial-cluster".into(),
        initial_cluster(req),
        "--initial-cluster-token".into(),
        req.cluster_id.clone(),
        // Ignored once the data dir holds a member: a re-created job rejoins.
        "--initial-cluster-state".into(),
        "new".into(),
        // A member that missed the leader's heartbeats (paused, starved of CPU)
        // asks the others whether they would vote before it raises the term: a
        // leader the quorum still hears is kept. Without it (etcd 3.4's default),
        // three appliances under QEMU TCG raised the term 60 times in ten minutes,
        // every rise a leaderless stretch in which reads and lease renewals failed.
        "--pre-vote".into(),
    ];
    cmd.extend(tls_flags);
    if let Some(ms) = cfg.etcd_election_ms {
        // etcd's own ratio (100 ms : 1 s): a heartbeat a tenth of the election.
        cmd.extend([
            "--heartbeat-interval".into(),
            (ms / 10).to_string(),
            "--election-timeout".into(),
            ms.to_string(),
        ]);
    }
    let job = jobs
        .create(JobRequest {
            image: cfg.etcd_image.clone(),
            name: Some(JOB_NAME.to_string()),
            cmd: Some(cmd),
            network: NetworkMode::Host,
            restart: RestartPolicy {
                policy: RestartPolicyName::Always,
                max_retries: 0,
            },
            volumes,
            // The platform's own job: its data volume belongs to the host's root.
            userns: Some(false),
            start: true,
            ..JobRequest::default()
        })
        .await?;
    tracing::info!(job = %job.id, member = %me.name, members = req.members.len(), "this host runs a member of the cluster's etcd");
    Ok(true)
}

/// `--initial-cluster`: every member's name and peer URL.
fn initial_cluster(req: &EtcdMemberRequest) -> String {
    req.members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",")
}

/// What an etcd member needs to serve clients and peers over TLS with this host's
/// certificate (`dir`: the platform directory, mounted read-only) and to require
/// theirs, signed by the cluster's CA: only agents and the platform's jobs get in.
fn tls_setup(dir: &std::path::Path) -> (Volume, Vec<String>) {
    let volume = Volume {
        source: dir.to_string_lossy().into_owned(),
        target: TLS_MOUNT.into(),
        read_only: true,
    };
    let file = |name: &str| format!("{TLS_MOUNT}/{name}");
    let mut flags = Vec::new();
    for (flag, value) in [
        ("--cert-file", file("cert.pem")),
        ("--key-file", file("key.pem")),
        ("--trusted-ca-file", file("ca.pem")),
        ("--peer-cert-file", file("cert.pem")),
        ("--peer-key-file", file("key.pem")),
        ("--peer-trusted-ca-file", file("ca.pem")),
    ] {
        flags.push(flag.into());
        flags.push(value);
    }
    flags.push("--client-cert-auth".into());
    flags.push("--peer-client-cert-auth".into());
    (volume, flags)
}

/// Creates the etcd job if there is none, and starts it if it is not running.
///
/// With the daemon's TLS (`tls`, the platform directory), the host's address is
/// served over HTTPS with client certificates required, as a bootstrapped member's;
/// loopback stays plain HTTP, where this agent connects (the wall closes it to
/// bridge jobs). A job made before keeps its URLs: remove it to get these.
pub async fn ensure(
    jobs: &Arc<JobManager>,
    cfg: &GridConfig,
    address: Ipv4Addr,
    host_id: &str,
    tls: Option<std::path::PathBuf>,
) -> Result<(), JobError> {
    if start_existing(jobs).await?.is_some() {
        return Ok(());
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client = format!("{scheme}://{address}:{ETCD_CLIENT_PORT}");
    let peer = format!("{scheme}://{address}:{PEER_PORT}");
    let (volumes, tls_flags) = match tls.as_deref().map(tls_setup) {
        Some((volume, flags)) => (vec![volume], flags),
        None => (Vec::new(), Vec::new()),
    };
    let name = format!("etcd-{}", &host_id[..host_id.len().min(12)]);
    let mut cmd: Vec<String> = vec![
        "etcd".into(),
        "--name".into(),
        name.clone(),
        "--data-dir".into(),
        "/var/lib/etcd".into(),
        "--listen-client-urls".into(),
        format!("{client},http://127.0.0.1:{ETCD_CLIENT_PORT}"),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--initial-cluster".into(),
        format!("{name}={peer}"),
    ];
    cmd.extend(tls_flags);
    let req = JobRequest {
        image: cfg.etcd_image.clone(),
        name: Some(JOB_NAME.to_string()),
        cmd: Some(cmd),
        volumes,
        network: NetworkMode::Host,
        restart: RestartPolicy {
            policy: RestartPolicyName::Always,
            max_retries: 0,
        },
        // The platform's own job: its data volume belongs to the host's root.
        userns: Some(false),
        start: true,
        ..JobRequest::default()
    };
    let job = jobs.create(req).await?;
    tracing::info!(job = %job.id, image = %cfg.etcd_image, "etcd runs as a job on this host");
    Ok(())
}
