//! `flynn-host run`: create a job, and in the foreground stream its output and
//! exit with its exit code, as `docker run` does.

use anyhow::{Context, Result};
use clap::Args;
use hyper::Method;
use tokio::signal::unix::{SignalKind, signal};

use super::format::parse_size;
use super::stream::{LogOptions, follow_logs, wait_for_exit};
use super::{attach, tty};
use crate::client::{ApiFailure, Client, encode};
use crate::model::{Job, JobRequest, NetworkMode, Resources, RestartPolicy};

/// `docker run`'s exit code when the run itself failed (not the command).
const EXIT_RUN_FAILED: i32 = 125;
const EXIT_NOT_EXECUTABLE: i32 = 126;
const EXIT_NOT_FOUND: i32 = 127;

#[derive(Args, Debug)]
#[command(trailing_var_arg = true, disable_help_flag = true)]
pub struct RunArgs {
    /// Print help (-h is --hostname, as in Docker).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Remove the job when it exits.
    #[arg(long)]
    rm: bool,
    /// Run in the background and print the job id.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Keep stdin open and attached (send ours to the job).
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Give the job a terminal.
    #[arg(long, short = 't')]
    tty: bool,
    /// Name the job.
    #[arg(long)]
    name: Option<String>,
    /// Memory limit, e.g. 64M or 1g.
    #[arg(long, short = 'm', value_parser = parse_size)]
    memory: Option<i64>,
    /// CPU limit in CPUs, e.g. 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// Maximum number of processes; 0 or -1: unlimited [default: the daemon's, 4096].
    #[arg(long, allow_negative_numbers = true)]
    pids_limit: Option<i64>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass the client's value).
    #[arg(long, short = 'e')]
    env: Vec<String>,
    /// Working directory inside the job.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// User (name|uid[:group|gid]).
    #[arg(long, short = 'u')]
    user: Option<String>,
    #[arg(long, short = 'h')]
    hostname: Option<String>,
    /// Publish a port: [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp].
    #[arg(long = "publish", short = 'p')]
    publish: Vec<network::PortMapping>,
    /// Network: bridge (default), host or none.
    #[arg(long = "net", alias = "network", default_value = "bridge")]
    net: NetworkMode,
    /// Nameserver for the job's /etc/resolv.conf (repeatable).
    #[arg(long)]
    dns: Vec<std::net::IpAddr>,
    /// A service the job provides, registered in discovery while it runs:
    /// NAME:PORT[,check=tcp|http[:/PATH]][,interval=MS][,timeout=MS][,fall=N][,rise=N][,KEY=VALUE] (repeatable).
    #[arg(long = "service", short = 's', value_parser = crate::model::services::parse_decl)]
    services: Vec<crate::model::ServiceDecl>,
    /// Restart policy: no, on-failure[:N], always, unless-stopped.
    #[arg(long, value_parser = crate::model::restart::parse, default_value = "no")]
    restart: RestartPolicy,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", short = 'l', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// A json-file log option KEY=VALUE (repeatable), Docker's: max-size=10m (rotate
    /// the log past this size), max-file=3 (files kept, the current one included).
    #[arg(long = "log-opt", value_parser = crate::model::logopts::parse_pair)]
    log_opts: Vec<(String, String)>,
    /// Bind-mount a host directory: HOST_PATH:JOB_PATH[:ro] (repeatable; the host
    /// directory is created if missing).
    #[arg(long = "volume", short = 'v', value_parser = crate::model::parse_volume)]
    volumes: Vec<crate::model::Volume>,
    /// Override the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// When the image must be pulled: which image of an index, os/arch[/variant].
    #[arg(long)]
    platform: Option<String>,
    // Security (grouped: `security_request` turns them into the request's fields).
    /// A user namespace: `--userns` maps the job's root to ids of its own (no one on
    /// the host), `--userns=host` shares the host's [default: the daemon's setting].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "private",
          value_parser = parse_userns)]
    userns: Option<bool>,
    /// Mount the job's root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Add a Linux capability (NET_ADMIN, CAP_SYS_TIME, ALL; repeatable).
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop a Linux capability (NET_RAW, ALL; repeatable).
    #[arg(long)]
    cap_drop: Vec<String>,
    /// seccomp=unconfined, seccomp=PROFILE.json (Docker's format), no-new-privileges[:true|false] (repeatable).
    #[arg(long, value_parser = parse_security_opt)]
    security_opt: Vec<String>,
    /// Image reference or id.
    pub image: String,
    /// Command and arguments (replace the image's Cmd).
    #[arg(allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_userns(text: &str) -> Result<bool, String> {
    match text {
        "private" | "auto" | "" => Ok(true),
        "host" => Ok(false),
        other => Err(format!(
            "--userns={other}: give --userns (a range of ids of its own) or --userns=host"
        )),
    }
}

/// `seccomp=FILE` becomes `seccomp=` and the file's content, as Docker's CLI sends it
/// (the file is the client's; the daemon may run elsewhere).
fn parse_security_opt(text: &str) -> Result<String, String> {
    match text.split_once(['=', ':']) {
        Some(("seccomp", "unconfined")) => Ok(text.to_string()),
        Some(("seccomp", file)) => std::fs::read_to_string(file)
            .map(|profile| format!("seccomp={profile}"))
            .map_err(|e| format!("seccomp profile {file}: {e}")),
        _ => Ok(text.to_string()),
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {text:?}: give KEY=VALUE")),
    }
}

/// `RunArgs` alone, for [`RunArgs::follow_only`].
#[derive(clap::Parser)]
struct Only {
    #[command(flatten)]
    run: RunArgs,
}

impl RunArgs {
    /// The options of a job made elsewhere (the platform's one-off jobs) that
    /// [`run_created`] follows: whether stdin is attached, a terminal, and whether
    /// the job is removed when it exits. (The rest is the request's, already made.)
    pub fn follow_only(interactive: bool, tty: bool, rm: bool) -> Result<RunArgs> {
        use clap::Parser as _;
        let mut argv = vec!["run"];
        argv.extend(interactive.then_some("-i"));
        argv.extend(tty.then_some("-t"));
        argv.extend(rm.then_some("--rm"));
        // The image is the request's; this is only the parser's required argument.
        argv.push("-");
        Ok(Only::try_parse_from(argv)?.run)
    }

    pub fn request(&self, start: bool) -> JobRequest {
        let env = self
            .env
            .iter()
            .filter_map(|e| {
                if e.contains('=') {
                    Some(e.clone())
                } else {
                    // Docker passes the client's value, and drops unset names.
                    std::env::var(e).ok().map(|v| format!("{e}={v}"))
                }
            })
            .collect();
        JobRequest {
            image: self.image.clone(),
            name: self.name.clone(),
            cmd: (!self.command.is_empty()).then(|| self.command.clone()),
            entrypoint: self.entrypoint.as_ref().map(|e| vec![e.clone()]),
            env,
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            resources: Resources {
                memory: self.memory,
                cpus: self.cpus,
                pids_limit: self.pids_limit,
            },
            auto_remove: self.rm,
            restart: self.restart.clone(),
            tty: self.tty,
            stdin: self.interactive,
            network: self.net,
            ports: self.publish.clone(),
            dns: self.dns.clone(),
            services: self.services.clone(),
            start,
            volumes: self.volumes.clone(),
            labels: self.labels.iter().cloned().collect(),
            log_opts: self.log_opts.iter().cloned().collect(),
            userns: self.userns,
            read_only: self.read_only,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            security_opt: self.security_opt.clone(),
        }
    }
}

/// Creates the job; an image that is not local is pulled first, as `docker run` does.
async fn create(client: &Client, args: &RunArgs, start: bool) -> Result<Job> {
    match client
        .call(Method::POST, "/jobs", Some(&args.request(start)))
        .await
    {
        Err(e) if is_missing_image(&e) && args.image.parse::<image::Reference>().is_ok() => {
            let familiar = super::images::familiar(&args.image);
            eprintln!("Unable to find image '{familiar}' locally");
            super::pull::pull_image(
                client,
                &args.image,
                args.platform.as_deref(),
                super::pull::Output::Stderr,
            )
            .await?;
            client
                .call(Method::POST, "/jobs", Some(&args.request(start)))
                .await
        }
        other => other,
    }
}

fn is_missing_image(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>().is_some_and(|f| {
        f.status == hyper::StatusCode::NOT_FOUND && f.message.starts_with("no such image")
    })
}

pub async fn run(client: &Client, args: RunArgs) -> Result<i32> {
    if args.detach {
        let job: Job = match create(client, &args, true).await {
            Ok(job) => job,
            Err(e) => return Ok(report_start_failure(&e)),
        };
        println!("{}", job.id);
        return Ok(0);
    }

    // Subscribe to the exit and the output before starting, so neither is missed
    // even when the command exits at once and the job is auto-removed.
    let job: Job = match create(client, &args, false).await {
        Ok(job) => job,
        Err(e) => return Ok(report_start_failure(&e)),
    };
    run_created(client, &args, &job).await
}

/// A job created with `start: false` (here, or by the scheduler on another host):
/// subscribe to its exit and output (or attach), start it, follow it to its end.
pub async fn run_created(client: &Client, args: &RunArgs, job: &Job) -> Result<i32> {
    let id = job.id.clone();
    let condition = if args.rm { "removed" } else { "exited" };
    let wait_path = format!("/jobs/{id}/wait?condition={condition}");
    let wait = client.send_json(Method::GET, &wait_path, None::<&()>);
    if args.interactive || args.tty {
        return interactive(client, args, &id, condition, wait.await?.into_body()).await;
    }
    // Both subscriptions at once: the start waits for the two answers, not one after
    // the other.
    let logs_path = format!("/jobs/{id}/logs?follow=true");
    let (wait, logs) = tokio::join!(wait, client.send_json(Method::GET, &logs_path, None::<&()>));
    let (wait, logs) = (wait?, logs?);
    if let Err(e) = client
        .call::<Job>(Method::POST, &format!("/jobs/{id}/start"), None::<&()>)
        .await
    {
        if args.rm {
            let _ = client
                .send_json(
                    Method::DELETE,
                    &format!("/jobs/{id}?force=true"),
                    None::<&()>,
                )
                .await;
        }
        return Ok(report_start_failure(&e));
    }

    let options = LogOptions {
        follow: true,
        timestamps: false,
        tail: None,
    };
    let (output, exit) = tokio::join!(
        // Ends once the daemon has sent everything the job wrote.
        follow_logs(client, &id, &options, Some(logs.into_body())),
        forward_signals(
            client,
            &id,
            wait_for_exit(client, &id, condition, Some(wait.into_body()))
        )
    );
    let exit = exit??;
    if let Err(e) = output {
        eprintln!("flynn-host: the job's output may be incomplete: {e:#}");
    }
    if let Some(why) = &exit.error {
        eprintln!("flynn-host: {why}");
    }
    Ok(exit.exit_code)
}

/// `run -i` / `run -t`: attach before starting, then pump the terminal or stdin
/// until the job exits.
async fn interactive(
    client: &Client,
    args: &RunArgs,
    id: &str,
    condition: &str,
    wait: hyper::body::Incoming,
) -> Result<i32> {
    let io = attach::open(
        client,
        &format!("/jobs/{id}/attach?stdin={}", args.interactive),
    )
    .await?;
    if let Err(e) = start(client, id).await {
        if args.rm {
            let _ = client
                .send_json(
                    Method::DELETE,
                    &format!("/jobs/{id}?force=true"),
                    None::<&()>,
                )
                .await;
        }
        return Ok(report_start_failure(&e));
    }
    let raw = if args.tty {
        tty::RawMode::enter()
    } else {
        None
    };
    let session = async {
        let result = attach::session(io, args.tty, args.interactive).await;
        let exit = wait_for_exit(client, id, condition, Some(wait)).await;
        (result, exit)
    };
    let (result, exit) = if args.tty {
        // In raw mode Ctrl-C is a byte for the job's terminal, not a signal for
        // us; what we follow instead is our terminal's size.
        alongside(
            session,
            attach::follow_size(client, format!("/jobs/{id}/resize")),
        )
        .await
    } else {
        forward_signals(client, id, session).await?
    };
    drop(raw);
    if let Err(e) = result {
        eprintln!("flynn-host: the session ended early: {e:#}");
    }
    let exit = exit?;
    if let Some(why) = &exit.error {
        eprintln!("flynn-host: {why}");
    }
    Ok(exit.exit_code)
}

/// Runs `main` to completion while also driving `side` (until it ends, if it does).
pub async fn alongside<T>(
    main: impl std::future::Future<Output = T>,
    side: impl std::future::Future<Output = ()>,
) -> T {
    tokio::pin!(main);
    tokio::pin!(side);
    let mut side_done = false;
    loop {
        tokio::select! {
            out = &mut main => return out,
            () = &mut side, if !side_done => side_done = true,
        }
    }
}

async fn start(client: &Client, id: &str) -> Result<Job> {
    client
        .call::<Job>(Method::POST, &format!("/jobs/{id}/start"), None::<&()>)
        .await
}

/// Runs `work`, passing SIGINT/SIGTERM/SIGHUP/SIGQUIT received meanwhile on to
/// the job (Docker's --sig-proxy).
async fn forward_signals<T>(
    client: &Client,
    id: &str,
    work: impl std::future::Future<Output = T>,
) -> Result<T> {
    let kinds = [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::quit(), "SIGQUIT"),
    ];
    let mut streams = Vec::new();
    for (kind, name) in kinds {
        streams.push((signal(kind).context("installing signal handlers")?, name));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(8);
    for (mut stream, name) in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(name).await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            Some(name) = rx.recv() => {
                let path = format!("/jobs/{}/kill?signal={}", encode(id), name);
                if let Err(e) = client.send_json(Method::POST, &path, None::<&()>).await {
                    eprintln!("flynn-host: could not pass {name} on to the job: {e:#}");
                }
            }
        }
    }
}

/// Prints why a job could not be started; returns Docker's exit code for it.
fn report_start_failure(e: &anyhow::Error) -> i32 {
    eprintln!("flynn-host: error: {e:#}");
    start_failure_code(e)
}

/// Docker's exit code for a process that could not be started.
pub fn start_failure_code(e: &anyhow::Error) -> i32 {
    let Some(failure) = e.downcast_ref::<ApiFailure>() else {
        return EXIT_RUN_FAILED;
    };
    let message = failure.message.to_ascii_lowercase();
    if message.contains("not found")
        && (message.contains("executable") || message.contains("no such file"))
    {
        EXIT_NOT_FOUND
    } else if message.contains("permission denied") {
        EXIT_NOT_EXECUTABLE
    } else {
        EXIT_RUN_FAILED
    }
}
