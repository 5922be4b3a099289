//! `--run-etcd`: this host runs etcd (Debian's, from the image the fixtures and the
//! appliance build) as an ordinary job: `flynn-etcd`, on the host network (it must not
//! need the overlay it coordinates), restarted always. Its data lives in the job's
//! own writable layer, which is kept for as long as the job is (restarts of the job
//! and of the agent included).

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::config::{ETCD_CLIENT_PORT, GridConfig};
use crate::jobs::{JobError, JobManager};
use crate::model::{JobRequest, JobState, NetworkMode, RestartPolicy, RestartPolicyName};

pub const JOB_NAME: &str = "flynn-etcd";
const PEER_PORT: u16 = 2380;

/// Creates the etcd job if there is none, and starts it if it is not running.
pub async fn ensure(
    jobs: &Arc<JobManager>,
    cfg: &GridConfig,
    address: Ipv4Addr,
    host_id: &str,
) -> Result<(), JobError> {
    match jobs.get(JOB_NAME) {
        Ok(h) => {
            let job = h.snapshot();
            if job.state != JobState::Running && job.restart_at.is_none() {
                tracing::info!(job = %job.id, "starting the etcd job");
                jobs.start(&h).await?;
            }
            Ok(())
        }
        Err(JobError::NotFound(_)) => {
            let client = format!("http://{address}:{ETCD_CLIENT_PORT}");
            let peer = format!("http://{address}:{PEER_PORT}");
            let name = format!("etcd-{}", &host_id[..host_id.len().min(12)]);
            let req = JobRequest {
                image: cfg.etcd_image.clone(),
                name: Some(JOB_NAME.to_string()),
                cmd: Some(vec![
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
                ]),
                network: NetworkMode::Host,
                restart: RestartPolicy {
                    policy: RestartPolicyName::Always,
                    max_retries: 0,
                },
                start: true,
                ..JobRequest::default()
            };
            let job = jobs.create(req).await?;
            tracing::info!(job = %job.id, image = %cfg.etcd_image, "etcd runs as a job on this host");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
