//! Processes run inside a running job's container (`exec`). Each has its own
//! shim and directory under the job's (`exec/<id>/`): config, log, exit status.
//! Nothing about them is kept in memory, so they survive a daemon restart.

use std::path::PathBuf;

use super::{JobError, JobHandle, JobManager, record};
use crate::model::{Exec, ExecRequest, ExitInfo, JobState};

/// Exec ids are 12 hex characters (short enough for the socket path limit).
fn new_exec_id() -> Result<String, JobError> {
    Ok(record::new_id()?[..12].to_string())
}

fn valid_exec_id(id: &str) -> bool {
    id.len() == 12
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl JobManager {
    /// Starts `req.cmd` in the job's container.
    pub async fn exec(&self, handle: &JobHandle, req: ExecRequest) -> Result<Exec, JobError> {
        let job = handle.snapshot();
        if job.state != JobState::Running {
            return Err(JobError::NotRunning(job.id));
        }
        if req.cmd.is_empty() || req.cmd[0].is_empty() {
            return Err(JobError::BadRequest("exec needs a command".to_string()));
        }
        for entry in &req.env {
            if !entry.contains('=') || entry.starts_with('=') {
                return Err(JobError::BadRequest(format!(
                    "invalid environment entry {entry:?}: expected KEY=VALUE"
                )));
            }
        }
        let id = new_exec_id()?;
        let config = runtime::shim::ExecConfig {
            exec_id: id.clone(),
            args: req.cmd.clone(),
            env: req.env.clone(),
            cwd: req.workdir.clone(),
            user: req.user.clone(),
            tty: req.tty,
            stdin: req.stdin,
        };
        let job_dir = self.paths.job_dir(&job.id);
        runtime::shim::spawn_exec(&self.exe, &job_dir, &config, &self.paths.containers).await?;
        Ok(Exec {
            id,
            job_id: job.id,
            config: req,
            running: true,
            exit: None,
        })
    }

    pub fn exec_dir(&self, job_id: &str, exec_id: &str) -> Result<PathBuf, JobError> {
        let dir = runtime::shim::exec_dir(&self.paths.job_dir(job_id), exec_id);
        if !valid_exec_id(exec_id) || !dir.join("exec.json").exists() {
            return Err(JobError::NotFound(format!(
                "exec {exec_id} in job {job_id}"
            )));
        }
        Ok(dir)
    }

    /// An exec's record, from its directory.
    pub fn exec_info(&self, job_id: &str, exec_id: &str) -> Result<Exec, JobError> {
        let dir = self.exec_dir(job_id, exec_id)?;
        let path = dir.join("exec.json");
        let data = std::fs::read(&path).map_err(|e| JobError::io(&path, e))?;
        let config: runtime::shim::ExecConfig = serde_json::from_slice(&data)
            .map_err(|e| JobError::Internal(format!("{}: {e}", path.display())))?;
        let exit = runtime::shim::read_exit(&dir)?.map(|s| ExitInfo::from_status(&s));
        Ok(Exec {
            id: exec_id.to_string(),
            job_id: job_id.to_string(),
            running: exit.is_none(),
            exit,
            config: ExecRequest {
                cmd: config.args,
                env: config.env,
                workdir: config.cwd,
                user: config.user,
                tty: config.tty,
                stdin: config.stdin,
            },
        })
    }

    /// Waits for an exec'd process to exit.
    pub async fn exec_wait(&self, job_id: &str, exec_id: &str) -> Result<ExitInfo, JobError> {
        let dir = self.exec_dir(job_id, exec_id)?;
        exit_of(dir).await
    }
}

/// How the process of a shim dir exited, waiting if it is still running.
pub async fn exit_of(dir: PathBuf) -> Result<ExitInfo, JobError> {
    if let Some(status) = runtime::shim::read_exit(&dir)? {
        return Ok(ExitInfo::from_status(&status));
    }
    let status = match runtime::shim::ShimClient::connect(&dir).await {
        Ok(client) => client.wait().await?,
        // Gone between the two looks: its exit file is written by now.
        Err(e) => match runtime::shim::read_exit(&dir)? {
            Some(status) => status,
            None => return Err(e.into()),
        },
    };
    Ok(ExitInfo::from_status(&status))
}
