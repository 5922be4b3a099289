//! `GET /host/status` and `GET /host/log`.

use hyper::{Response, StatusCode};

use super::{ApiError, ApiState, Body, json};
use crate::host;
use crate::model::HostStatus;

pub fn status(state: &ApiState) -> Result<Response<Body>, ApiError> {
    let internal = |e: anyhow::Error| ApiError::Internal(format!("{e:#}"));
    let (jobs, promised) = state.jobs.usage();
    json(
        StatusCode::OK,
        &HostStatus {
            id: state.host_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: host::kernel(),
            cpus: host::cpus(),
            memory: host::memory().map_err(internal)?,
            disk: host::disk(&state.state_dir).map_err(internal)?,
            cgroup: host::cgroup_mode(),
            jobs,
            promised,
            started_at: state.started_at,
            cluster: state.grid().map(|g| g.cluster_status()),
        },
    )
}

/// The most lines `GET /host/log` gives.
const LOG_LINES_MAX: usize = 10_000;
/// How far from its end the daemon's log is read for them.
const LOG_READ_MAX: u64 = 8 << 20;

/// `GET /host/log?tail=N`: the last N lines (200 by default) of the daemon's own
/// log, where its standard error goes when that is a file (the appliance's init
/// sends it to /var/log/flynn/daemon.log). An appliance has no shell: this is how
/// its agent's log is read, as Talos's `talosctl logs` reads its services'.
pub async fn log(req: &hyper::Request<hyper::body::Incoming>) -> Result<Response<Body>, ApiError> {
    let tail = super::Query::of(req)
        .number::<usize>("tail")?
        .unwrap_or(200);
    if tail == 0 || tail > LOG_LINES_MAX {
        return Err(ApiError::BadRequest(format!(
            "invalid tail {tail}: give 1 to {LOG_LINES_MAX} lines"
        )));
    }
    let path = std::fs::read_link("/proc/self/fd/2")
        .map_err(|e| ApiError::Internal(format!("cannot tell where the daemon's log goes: {e}")))?;
    let meta = tokio::fs::metadata(&path).await.ok();
    if !meta.as_ref().is_some_and(|m| m.is_file()) {
        return Err(ApiError::NotFound(format!(
            "the daemon's log is not a file ({}): read it where its supervisor keeps it \
             (journalctl -u flynn-host, say)",
            path.display()
        )));
    }
    let text = read_tail(&path, tail, LOG_READ_MAX).await.map_err(|e| {
        ApiError::Internal(format!("reading the daemon's log {}: {e}", path.display()))
    })?;
    Ok(super::with_type(
        StatusCode::OK,
        super::full(text.into_bytes()),
        "text/plain",
    ))
}

/// The last `lines` lines of the file at `path`, reading at most its last
/// `window` bytes (a line cut by the window's start is left out).
async fn read_tail(path: &std::path::Path, lines: usize, window: u64) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    let start = len.saturating_sub(window);
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut bytes = Vec::new();
    file.take(window).read_to_end(&mut bytes).await?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        all.remove(0);
    }
    let kept = &all[all.len().saturating_sub(lines)..];
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_tail_is_the_last_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            read_tail(&path, 2, 1 << 20).await.unwrap(),
            "line 49\nline 50\n"
        );
        assert_eq!(read_tail(&path, 100, 1 << 20).await.unwrap(), text);
        // A window that starts inside "line 49": that line is left out.
        assert_eq!(
            read_tail(&path, 100, 12).await.unwrap(),
            "line 50\n",
            "a cut line is dropped"
        );
        std::fs::write(&path, "").unwrap();
        assert_eq!(read_tail(&path, 5, 1 << 20).await.unwrap(), "");
    }
}
