//! The agent's side: spawning a shim, the start-up handshake, and control requests.
//! Async (tokio); never forks itself beyond spawning the shim binary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{ChildStdin, ChildStdout, Command};

use super::protocol::{self, Handshake, Request, Response, ShimState};
use super::{ExecShimConfig, JobFiles, ShimConfig, exec_dir};
use crate::config::ExecConfig;
use crate::exit::{self, ExitFileError, ExitStatus};
use flynn_fsutil::Durability;

/// Replies and handshake lines are short; anything longer is a protocol error.
const MAX_LINE_BYTES: u64 = 64 * 1024;

/// How long a spawned shim may take to detach (its first process only forks and exits).
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shim may take from its job to `created` (spec, seccomp, libcontainer's
/// create, cgroups): seconds even on an emulated machine, so a minute means it is stuck.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a created container may take to start.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `default`, or `FLYNN_SHIM_TIMEOUT` seconds for every step (for tests, and for a
/// machine slower than any we know).
fn step_timeout(default: Duration) -> Duration {
    std::env::var("FLYNN_SHIM_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(default)
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error(
        "control socket path {path:?} is {len} bytes, over the 107-byte limit of unix \
         sockets: use a shorter job directory"
    )]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The container or exec'd process could not be created; the message says why.
    #[error("{0}")]
    Create(String),
    #[error("the shim could not start the container: {0}")]
    Start(String),
    #[error("unexpected message from the shim: {0}")]
    Protocol(String),
    #[error("the shim refused the request: {0}")]
    Control(String),
    #[error(
        "the shim for {0:?} is gone without recording an exit status; \
         call runtime::shim::cleanup to remove what is left of the container"
    )]
    Gone(PathBuf),
    #[error(
        "the shim of {dir:?} is still running after {waited:?}: it may be stuck deleting \
         the container; see its shim.log"
    )]
    StillRunning {
        dir: PathBuf,
        waited: std::time::Duration,
    },
    /// A step of a start did not finish in time; the shim was killed.
    #[error(
        "the shim did not finish {step} within {}s; it was killed and the job was not \
         started: see {log:?}{tail}",
        waited.as_secs()
    )]
    TimedOut {
        step: &'static str,
        waited: Duration,
        log: PathBuf,
        /// The last line of the shim's log, if any, as `" (last line: ...)"`.
        tail: String,
    },
    #[error(transparent)]
    Exit(#[from] ExitFileError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
    let what = what.into();
    move |source| ShimError::Io { what, source }
}

/// A shim whose container is created (init waits) but not started.
#[derive(Debug)]
pub struct CreatedShim {
    pid: i32,
    shim_pid: i32,
    job_dir: PathBuf,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Writes a config file atomically, off the async threads. Visible only: shim.json is
/// read only while this boot's processes live (a crash of the host kills them anyway),
/// so fsyncs would only add latency.
async fn write_config<T: serde::Serialize>(path: &Path, cfg: &T) -> Result<(), ShimError> {
    let data = serde_json::to_vec_pretty(cfg).map_err(|e| ShimError::Io {
        what: format!("encoding {path:?}"),
        source: std::io::Error::other(e),
    })?;
    let target = path.to_owned();
    tokio::task::spawn_blocking(move || {
        flynn_fsutil::write_atomic(&target, &data, Durability::Visible)
    })
    .await
    .map_err(|e| ShimError::Io {
        what: format!("writing {path:?}"),
        source: std::io::Error::other(e),
    })?
    .map_err(io(format!("writing {path:?}")))
}

/// A shim process, detached: its handshake pipes.
struct Spawned {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// How the process we spawned (which forks the real shim) exited.
    status: std::process::ExitStatus,
}

/// Runs `exe shim <dir>`. Its first child only forks the real (detached) shim and exits.
async fn spawn_shim(exe: &Path, dir: &Path) -> Result<Spawned, ShimError> {
    let files = JobFiles::new(dir);
    // Until the shim redirects its own stderr, early failures (an exec error, a panic)
    // land in shim.log too.
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(files.shim_log())
        .map_err(io(format!("opening {:?}", files.shim_log())))?;
    let mut cmd = Command::new(exe);
    cmd.arg("shim").arg(dir).stderr(log);
    spawn_detaching(cmd, format!("spawning the shim {exe:?}")).await
}

/// Spawns `cmd` (a shim) with its handshake pipes and waits for the process to exit:
/// it only forks the real, detached shim.
async fn spawn_detaching(mut cmd: Command, what: String) -> Result<Spawned, ShimError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(false)
        .spawn()
        .map_err(io(what.clone()))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(ShimError::Protocol(
            "shim spawned without stdio pipes".into(),
        ));
    };
    let status = match tokio::time::timeout(DETACH_TIMEOUT, child.wait()).await {
        Ok(status) => status.map_err(io("waiting for the shim to detach"))?,
        Err(_) => {
            let _ = child.start_kill();
            return Err(ShimError::Protocol(format!(
                "{what}: the process did not detach within {}s (killed)",
                DETACH_TIMEOUT.as_secs()
            )));
        }
    };
    Ok(Spawned {
        stdin,
        stdout: BufReader::new(stdout),
        status,
    })
}

/// Runs `exe shim --spare`: a shim that waits for its job ([`Spares`]).
async fn spawn_spare(exe: &Path) -> Result<Spawned, ShimError> {
    let mut cmd = Command::new(exe);
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            // Its loading and start-up only take CPU time that nothing else wants: a
            // spare started while a job starts must not slow that job down. The spare
            // takes the normal policy back once it has a job. Best effort.
            let _ = super::sys::set_sched_policy(libc::SCHED_IDLE);
            Ok(())
        });
    }
    // Until it has a job (and that job's shim.log) a spare has nothing to say.
    cmd.arg("shim").arg(super::SPARE_ARG).stderr(Stdio::null());
    let spawned = spawn_detaching(cmd, format!("spawning a spare shim {exe:?}")).await?;
    let status = spawned.status;
    if !status.success() {
        return Err(ShimError::Protocol(format!(
            "a spare shim failed to detach ({status})"
        )));
    }
    Ok(spawned)
}

/// One container shim kept started ahead of its job, so that a job's start does not
/// wait for a process to be executed and to detach: the binary's loading, its start-up
/// and the detaching fork happen while nothing waits for them. Each use starts the
/// next spare in the background. A spare that is gone (killed, or from a binary that
/// was replaced and failed) is noticed when its job is written to it, and a shim is
/// then spawned the usual way. Spares exit when the agent does (EOF on their stdin).
pub struct Spares {
    exe: PathBuf,
    slot: tokio::sync::Mutex<Option<Spawned>>,
}

impl Spares {
    /// Starts the first spare in the background (needs a tokio runtime).
    pub fn new(exe: &Path) -> std::sync::Arc<Spares> {
        let spares = std::sync::Arc::new(Spares {
            exe: exe.to_owned(),
            slot: tokio::sync::Mutex::new(None),
        });
        spares.refill();
        spares
    }

    /// Whether a spare waits in the pool now (the next start takes it). A spare's
    /// process runs a moment before it is in the pool: a start in between spawns a
    /// shim the usual way.
    pub async fn is_ready(&self) -> bool {
        self.slot.lock().await.is_some()
    }

    /// As [`spawn`], with a spare shim when one is ready.
    pub async fn spawn(
        self: &std::sync::Arc<Self>,
        job_dir: &Path,
        cfg: &ShimConfig,
    ) -> Result<CreatedShim, ShimError> {
        let files = prepare(job_dir, cfg).await?;
        let spare = self.slot.lock().await.take();
        self.refill();
        let had_spare = spare.is_some();
        let handed = match spare {
            Some(spare) => hand_job(spare, job_dir).await,
            None => None,
        };
        let spawned = match handed {
            Some(spawned) => {
                tracing::debug!(dir = ?job_dir, "start: job handed to a spare shim");
                spawned
            }
            None => {
                tracing::debug!(dir = ?job_dir, had_spare, "start: spawning a shim (no usable spare)");
                spawn_shim(&self.exe, job_dir).await?
            }
        };
        handshake(&files, spawned).await
    }

    fn refill(self: &std::sync::Arc<Self>) {
        let spares = self.clone();
        tokio::spawn(async move {
            if spares.slot.lock().await.is_some() {
                return;
            }
            match spawn_spare(&spares.exe).await {
                Ok(spare) => {
                    let mut slot = spares.slot.lock().await;
                    if slot.is_none() {
                        *slot = Some(spare);
                    }
                    // Else another refill won: this spare's stdin closes, it exits.
                }
                Err(e) => tracing::warn!(error = %e, "starting a spare shim"),
            }
        });
    }
}

/// Tells a spare its job directory; None if the spare is gone.
async fn hand_job(mut spare: Spawned, job_dir: &Path) -> Option<Spawned> {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::path::absolute(job_dir).ok()?;
    let mut line = dir.as_os_str().as_bytes().to_vec();
    if line.contains(&b'\n') {
        return None;
    }
    line.push(b'\n');
    spare.stdin.write_all(&line).await.ok()?;
    spare.stdin.flush().await.ok()?;
    Some(spare)
}

/// Writes `shim.json`, spawns `exe shim <job_dir>` and waits until the container is
/// created. The job directory must exist.
pub async fn spawn(exe: &Path, job_dir: &Path, cfg: &ShimConfig) -> Result<CreatedShim, ShimError> {
    let files = prepare(job_dir, cfg).await?;
    let spawned = spawn_shim(exe, job_dir).await?;
    handshake(&files, spawned).await
}

/// What every container shim needs before it runs: a usable socket path and `shim.json`.
async fn prepare(job_dir: &Path, cfg: &ShimConfig) -> Result<JobFiles, ShimError> {
    let files = JobFiles::new(job_dir);
    files.check_socket_path()?;
    // A previous run's pid could be anyone's by now: only this run's shim writes it
    // again, so a stuck start never kills a stranger (see `timed_out`).
    match tokio::fs::remove_file(files.shim_pid()).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(format!("removing {:?}", files.shim_pid()))(e));
        }
        _ => {}
    }
    write_config(&files.shim_config(), cfg).await?;
    Ok(files)
}

/// Waits until the shim has created the container.
async fn handshake(files: &JobFiles, spawned: Spawned) -> Result<CreatedShim, ShimError> {
    let job_dir = files.dir();
    let Spawned {
        stdin,
        mut stdout,
        status,
    } = spawned;
    let started = Instant::now();
    let limit = step_timeout(CREATE_TIMEOUT);
    let line = match tokio::time::timeout(limit, read_line(&mut stdout)).await {
        Ok(line) => line?,
        Err(_) => {
            drop(stdin);
            return Err(timed_out(files, "creating the container", limit, None).await);
        }
    };
    tracing::debug!(
        dir = ?job_dir,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "start: the shim answered the create"
    );
    match line {
        Some(Handshake::Created { pid, shim_pid }) => Ok(CreatedShim {
            pid,
            shim_pid,
            job_dir: job_dir.to_owned(),
            stdin,
            stdout,
        }),
        Some(Handshake::Error(msg)) => Err(ShimError::Create(format!(
            "the shim could not create the container: {msg}"
        ))),
        Some(other) => Err(ShimError::Protocol(format!("{other:?} before created"))),
        None => Err(ShimError::Create(format!(
            "the shim could not create the container: the shim exited ({status}) without \
             reporting; see {:?}{}",
            files.shim_log(),
            log_tail(files)
        ))),
    }
}

/// Runs `cfg` in the running container of the job in `job_dir`: writes `exec.json` into
/// [`exec_dir`]`(job_dir, &cfg.exec_id)` (created; it must not hold an exec already),
/// spawns an exec shim (`exe shim <exec_dir>`) and waits until the process runs its
/// program. Returns the process's pid (in the host's pid namespace). `state_root` is
/// libcontainer's root (the job's [`ShimConfig::state_root`]).
///
/// From then on the exec dir works like a job dir: [`ShimClient::connect`] on it (wait,
/// signal, state, resize, [`ShimClient::attach_stdin`]), output in its `log.json`, exit in
/// its `exit.json` ([`read_exit`]), [`super::wait_shim_gone`]. On failure (an invalid
/// config, a container that is not running, a program that cannot be run:
/// [`ShimError::Create`] with the reason) the exec dir is removed again.
pub async fn spawn_exec(
    exe: &Path,
    job_dir: &Path,
    cfg: &ExecConfig,
    state_root: &Path,
) -> Result<i32, ShimError> {
    cfg.validate()
        .map_err(|e| ShimError::Create(format!("cannot exec: {e}")))?;
    let dir = exec_dir(job_dir, &cfg.exec_id);
    let files = JobFiles::new(&dir);
    files.check_socket_path()?;
    match tokio::fs::create_dir(dir.parent().unwrap_or(job_dir)).await {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(io(format!("creating the exec directory of {job_dir:?}"))(e));
        }
        _ => {}
    }
    tokio::fs::create_dir(&dir).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ShimError::Create(format!(
                "exec {} already exists in {job_dir:?}: give each exec a new id",
                cfg.exec_id
            ))
        } else {
            io(format!("creating {dir:?}"))(e)
        }
    })?;
    let result = run_exec_shim(exe, &files, cfg, state_root).await;
    if result.is_err() {
        // The shim has reported and is on its way out; once it is gone, nothing of the
        // exec is left (its id never reached anyone).
        let gone_dir = dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = super::wait_shim_gone(&gone_dir, std::time::Duration::from_secs(10));
            std::fs::remove_dir_all(&gone_dir)
        })
        .await;
    }
    result
}

async fn run_exec_shim(
    exe: &Path,
    files: &JobFiles,
    cfg: &ExecConfig,
    state_root: &Path,
) -> Result<i32, ShimError> {
    let file = ExecShimConfig {
        exec: cfg.clone(),
        state_root: state_root.to_owned(),
    };
    write_config(&files.exec_config(), &file).await?;
    let Spawned {
        stdin,
        mut stdout,
        status,
    } = spawn_shim(exe, files.dir()).await?;
    // The exec shim has no start phase.
    drop(stdin);
    let limit = step_timeout(CREATE_TIMEOUT);
    let reply = match tokio::time::timeout(limit, read_line(&mut stdout)).await {
        Ok(reply) => reply?,
        Err(_) => return Err(timed_out(files, "starting the exec", limit, None).await),
    };
    match reply {
        Some(Handshake::Started { pid }) => Ok(pid),
        Some(Handshake::Error(msg)) => Err(ShimError::Create(format!("cannot exec: {msg}"))),
        Some(other) => Err(ShimError::Protocol(format!("{other:?} from an exec shim"))),
        None => Err(ShimError::Create(format!(
            "cannot exec: the exec shim exited ({status}) without reporting; see {:?}{}",
            files.shim_log(),
            log_tail(files)
        ))),
    }
}

impl CreatedShim {
    /// The container's init process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The detached shim process.
    pub fn shim_pid(&self) -> i32 {
        self.shim_pid
    }

    pub fn job_dir(&self) -> &Path {
        &self.job_dir
    }

    /// Lets the container run. Returns its init pid.
    pub async fn start(mut self) -> Result<i32, ShimError> {
        let line = format!("{}\n", protocol::START);
        let files = JobFiles::new(&self.job_dir);
        let send = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        };
        let limit = step_timeout(START_TIMEOUT);
        let reply = tokio::time::timeout(limit, async {
            send.await.map_err(io("sending start to the shim"))?;
            read_line(&mut self.stdout).await
        })
        .await;
        let reply = match reply {
            Ok(reply) => reply?,
            Err(_) => {
                let pid = self.shim_pid;
                drop(self);
                return Err(timed_out(&files, "starting the container", limit, Some(pid)).await);
            }
        };
        match reply {
            Some(Handshake::Started { pid }) => Ok(pid),
            Some(Handshake::Error(msg)) => Err(ShimError::Start(msg)),
            Some(other) => Err(ShimError::Protocol(format!("{other:?} after start"))),
            None => Err(ShimError::Start(format!(
                "the shim exited without confirming the start; see {:?}{}",
                JobFiles::new(&self.job_dir).shim_log(),
                log_tail(&JobFiles::new(&self.job_dir))
            ))),
        }
    }

    /// Gives up on the container: the shim kills and deletes it, then exits. Returns once
    /// the shim has finished (its stdout reaches EOF).
    pub async fn abort(self) {
        let CreatedShim {
            stdin, mut stdout, ..
        } = self;
        drop(stdin);
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut stdout, &mut sink).await;
    }
}

/// A shim that did not finish `step` in time: killed (its pid from `shim.pid` when it
/// has not told us yet), so that nothing of the job runs on; the caller cleans up the
/// container. A spare that never read its job needs nothing: it sees EOF on its stdin.
async fn timed_out(
    files: &JobFiles,
    step: &'static str,
    waited: Duration,
    shim_pid: Option<i32>,
) -> ShimError {
    let pid = shim_pid.or_else(|| {
        std::fs::read_to_string(files.shim_pid())
            .ok()
            .and_then(|p| p.trim().parse().ok())
    });
    tracing::warn!(dir = ?files.dir(), step, ?pid, "a shim step timed out; killing the shim");
    if let Some(pid) = pid.filter(|p| *p > 1) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        // It holds shim.lock until it is gone; the caller's cleanup must come after.
        let dir = files.dir().to_owned();
        let _ = tokio::task::spawn_blocking(move || {
            super::wait_shim_gone(&dir, Duration::from_secs(5))
        })
        .await;
    }
    ShimError::TimedOut {
        step,
        waited,
        log: files.shim_log(),
        tail: log_tail(files),
    }
}

async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> Result<Option<Handshake>, ShimError> {
    let mut line = String::new();
    let n = AsyncBufReadExt::read_line(
        &mut tokio::io::AsyncReadExt::take(reader, MAX_LINE_BYTES),
        &mut line,
    )
    .await
    .map_err(io("reading from the shim"))?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_str(line.trim_end())
        .map(Some)
        .map_err(|e| ShimError::Protocol(format!("{line:?}: {e}")))
}

fn log_tail(files: &JobFiles) -> String {
    let Ok(text) = std::fs::read_to_string(files.shim_log()) else {
        return String::new();
    };
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => format!(" (last line: {last})"),
        None => String::new(),
    }
}

/// Talks to a running shim over its control socket. Every request uses its own
/// connection, so one task can wait while another signals.
#[derive(Debug, Clone)]
pub struct ShimClient {
    job_dir: PathBuf,
    socket: PathBuf,
}

impl ShimClient {
    /// Connects to the shim of `job_dir`, checking that it answers, or that it has
    /// already finished and recorded the exit status (short-lived containers do that
    /// before the agent gets here).
    pub async fn connect(job_dir: &Path) -> Result<ShimClient, ShimError> {
        let socket = JobFiles::new(job_dir).check_socket_path()?;
        let client = ShimClient {
            job_dir: job_dir.to_owned(),
            socket,
        };
        match client.state().await {
            Ok(_) => Ok(client),
            Err(e @ (ShimError::Io { .. } | ShimError::Protocol(_))) => match read_exit(job_dir)? {
                Some(_) => Ok(client),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn open(&self) -> Result<UnixStream, ShimError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(io(format!("connecting to the shim at {:?}", self.socket)))
    }

    async fn request(&self, req: &Request) -> Result<Option<Response>, ShimError> {
        let stream = self.open().await?;
        self.exchange(stream, req).await
    }

    async fn exchange(
        &self,
        mut stream: UnixStream,
        req: &Request,
    ) -> Result<Option<Response>, ShimError> {
        stream
            .write_all(&protocol::line(req))
            .await
            .map_err(io("sending a request to the shim"))?;
        let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(stream, MAX_LINE_BYTES));
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(io("reading the shim's reply"))?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(line.trim_end())
            .map(Some)
            .map_err(|e| ShimError::Protocol(format!("{line:?}: {e}")))
    }

    pub async fn state(&self) -> Result<ShimState, ShimError> {
        match self.request(&Request::State).await? {
            Some(Response::State(state)) => Ok(state),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `sig` to the container's init. Note that an init process (PID 1 of its
    /// namespace) ignores signals it has no handler for, except SIGKILL.
    pub async fn signal(&self, sig: i32) -> Result<(), ShimError> {
        match self.request(&Request::Signal { signal: sig }).await? {
            Some(Response::Ok { .. }) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Sets the window size of the process's terminal (the kernel sends SIGWINCH to its
    /// foreground process group). An error for a process without a terminal.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ShimError> {
        match self.request(&Request::Resize { rows, cols }).await? {
            Some(Response::Ok { .. }) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Attaches to the stdin of the process of `dir` (a job or an exec directory): the
    /// returned stream is the process's input. Shutting down its writing side (or
    /// dropping it) closes a stdin pipe, so the program reads EOF; a terminal stays open.
    /// Nothing is ever read from it. One client at a time: a second gets
    /// [`ShimError::Control`] ("stdin is already attached"), as does a process started
    /// without stdin.
    pub async fn attach_stdin(dir: &Path) -> Result<UnixStream, ShimError> {
        let socket = JobFiles::new(dir).check_socket_path()?;
        let mut stream = UnixStream::connect(&socket)
            .await
            .map_err(io(format!("connecting to the shim at {socket:?}")))?;
        stream
            .write_all(&protocol::line(&Request::Stdin))
            .await
            .map_err(io("sending a request to the shim"))?;
        // Byte by byte up to the newline: what follows on this connection is not ours to
        // buffer (the shim sends nothing more, but the stream must be handed over clean).
        let mut line = Vec::with_capacity(64);
        loop {
            let mut byte = [0u8];
            let n = tokio::io::AsyncReadExt::read(&mut stream, &mut byte)
                .await
                .map_err(io("reading the shim's reply"))?;
            if n == 0 || byte[0] == b'\n' || line.len() as u64 >= MAX_LINE_BYTES {
                break;
            }
            line.push(byte[0]);
        }
        if line.is_empty() {
            return Err(unexpected(None));
        }
        match serde_json::from_slice(&line) {
            Ok(Response::Ok { .. }) => Ok(stream),
            Ok(other) => Err(unexpected(Some(other))),
            Err(e) => Err(ShimError::Protocol(format!(
                "{:?}: {e}",
                String::from_utf8_lossy(&line)
            ))),
        }
    }

    /// Waits until the container has exited and returns how. Also works after the shim
    /// has exited, from `exit.json`.
    pub async fn wait(&self) -> Result<ExitStatus, ShimError> {
        use std::io::ErrorKind;
        let reply = match UnixStream::connect(&self.socket).await {
            Ok(stream) => self.exchange(stream, &Request::Wait).await,
            // No socket or nobody listening: the shim is done; exit.json tells the rest.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                Ok(None)
            }
            Err(source) => {
                return Err(ShimError::Io {
                    what: format!("connecting to the shim at {:?}", self.socket),
                    source,
                });
            }
        };
        match reply {
            Ok(Some(Response::Exit { exit })) => Ok(exit),
            // Connection closed without an answer: the shim exited meanwhile.
            Ok(None) | Err(ShimError::Io { .. }) => {
                read_exit(&self.job_dir)?.ok_or_else(|| ShimError::Gone(self.job_dir.clone()))
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        }
    }
}

fn unexpected(reply: Option<Response>) -> ShimError {
    match reply {
        Some(Response::Error { error }) => ShimError::Control(error),
        Some(other) => ShimError::Protocol(format!("{other:?}")),
        None => ShimError::Protocol("the shim closed the connection without replying".into()),
    }
}

/// The recorded exit status of the job in `job_dir`, if its container has exited.
pub fn read_exit(job_dir: &Path) -> Result<Option<ExitStatus>, ShimError> {
    Ok(exit::read(&JobFiles::new(job_dir).exit_status())?)
}
