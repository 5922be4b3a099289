//! The client commands that talk to the daemon (`main.rs` adds `flynn-host daemon`
//! beside them). They know the API's wire types (`model`) and the client, nothing else.

mod attach;
mod exec;
mod format;
mod grid;
mod host;
mod images;
mod jobs;
mod pull;
pub mod run;
mod stream;
mod tls;
mod tty;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::client::Client;

/// Where the daemon is and how to reach it: the client commands' global options.
#[derive(Args, Debug)]
pub struct Connection {
    /// The daemon: https://HOST:PORT, http://HOST:PORT (loopback) or unix:///PATH
    /// [default: the local unix socket /run/flynn/host.sock when it exists, else
    /// http://127.0.0.1:1113].
    #[arg(long, global = true, env = "FLYNN_HOST")]
    pub host: Option<String>,
    /// API token for TCP [default: read from /var/lib/flynn/token when readable].
    #[arg(long, global = true, env = "FLYNN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For https://: the CA file the daemon's certificate must chain to
    /// [default: /var/lib/flynn/tls/ca.pem when readable].
    #[arg(long, global = true, env = "FLYNN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// For https://: the pin of the cluster's CA (`flynn-host tls pin` on a host).
    #[arg(long, global = true, env = "FLYNN_TLS_PIN")]
    pub tls_pin: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Import images from a `docker save` archive, an OCI layout directory, or an OCI archive.
    Import {
        path: PathBuf,
        /// Name the image (for archives that carry no full name).
        #[arg(long, short = 't')]
        tag: Option<String>,
    },
    /// Save an imported image as an OCI archive (with the digests it was imported with).
    Save {
        image: String,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Pull an image from a registry (Docker Hub by default), with progress.
    Pull {
        /// Image reference: busybox, me/tool:1.0, host:5000/x@sha256:...
        reference: String,
        /// Which image of a multi-platform index: os/arch[/variant] [default: the host's].
        #[arg(long)]
        platform: Option<String>,
    },
    /// List images.
    Images(ListArgs),
    /// Remove images (refused while a job uses them).
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Run a command in a new job.
    Run(Box<run::RunArgs>),
    /// Attach to a job: its output, and its stdin if it was started with -i.
    Attach {
        job: String,
        /// Do not send our stdin.
        #[arg(long)]
        no_stdin: bool,
    },
    /// Run a command in a running job.
    Exec(exec::ExecArgs),
    /// Start created or exited jobs.
    Start {
        #[arg(required = true)]
        jobs: Vec<String>,
    },
    /// List jobs.
    Ps {
        /// Show all jobs (by default only running ones).
        #[arg(long, short = 'a')]
        all: bool,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show jobs' full records as JSON.
    Inspect {
        #[arg(required = true)]
        jobs: Vec<String>,
    },
    /// Show a job's output.
    Logs {
        job: String,
        /// Keep following the output until the job exits.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Prefix each line with its timestamp.
        #[arg(long, short = 't')]
        timestamps: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Wait for jobs to exit and print their exit codes.
    Wait {
        #[arg(required = true)]
        jobs: Vec<String>,
    },
    /// Stop jobs: SIGTERM, then SIGKILL after the grace period.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(long, short = 't', default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        jobs: Vec<String>,
    },
    /// Send a signal to jobs.
    Kill {
        /// Signal name or number.
        #[arg(long, short = 's', default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        jobs: Vec<String>,
    },
    /// Remove jobs.
    Rm {
        /// Kill running jobs first.
        #[arg(long, short = 'f')]
        force: bool,
        #[arg(required = true)]
        jobs: Vec<String>,
    },
    /// Show the last lines of the daemon's own log (on the appliance, which has no shell).
    DaemonLog {
        /// How many lines, from the end.
        #[arg(long = "tail", short = 'n', default_value_t = 200)]
        tail: usize,
    },
    /// Show the host: id, version, kernel, CPUs, memory, disk, cgroups, jobs, promised resources.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the client and daemon versions.
    Version,
    /// The cluster this host is in.
    #[command(subcommand)]
    Cluster(grid::ClusterCommand),
    /// Service discovery.
    #[command(subcommand)]
    Discover(grid::DiscoverCommand),
    /// The API's TLS: the CA, its pin, the host certificate.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print only ids.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs a client command; returns the process exit code.
pub async fn run(connection: Connection, command: Command) -> Result<i32> {
    let trust = flynn_client::TlsOptions {
        ca: connection.tls_ca.clone(),
        pin: connection.tls_pin.clone(),
    };
    let client = Client::from_options_tls(
        connection.host.as_deref(),
        connection.token.as_deref(),
        &trust,
    )?;
    match command {
        Command::Import { path, tag } => images::import(&client, &path, tag.as_deref()).await,
        Command::Pull {
            reference,
            platform,
        } => pull::pull(&client, &reference, platform.as_deref()).await,
        Command::Save { image, output } => images::save(&client, &image, output.as_deref()).await,
        Command::Images(list) => images::list(&client, &list).await,
        Command::Rmi { images } => images::remove(&client, &images).await,
        Command::Run(args) => run::run(&client, *args).await,
        Command::Start { jobs } => jobs::start(&client, &jobs).await,
        Command::Attach { job, no_stdin } => exec::attach(&client, &job, no_stdin).await,
        Command::Exec(args) => exec::exec(&client, args).await,
        Command::Ps { all, list } => jobs::ps(&client, all, &list).await,
        Command::Inspect { jobs } => jobs::inspect(&client, &jobs).await,
        Command::Logs {
            job,
            follow,
            timestamps,
            tail,
        } => jobs::logs(&client, &job, follow, timestamps, tail).await,
        Command::Wait { jobs } => jobs::wait(&client, &jobs).await,
        Command::Stop { time, jobs } => jobs::stop(&client, time, &jobs).await,
        Command::Kill { signal, jobs } => jobs::kill(&client, &signal, &jobs).await,
        Command::Rm { force, jobs } => jobs::rm(&client, force, &jobs).await,
        Command::Status { json } => host::status(&client, json).await,
        Command::DaemonLog { tail } => host::daemon_log(&client, tail).await,
        Command::Version => jobs::version(&client).await,
        Command::Cluster(cmd) => grid::cluster(&client, cmd).await,
        Command::Discover(cmd) => grid::discover(&client, cmd).await,
        Command::Tls(cmd) => tls::tls(&client, cmd).await,
    }
}

/// Runs `f` for each item, printing errors as they come; exit code 1 if any failed.
async fn for_each<F, Fut>(items: &[String], mut f: F) -> Result<i32>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut code = 0;
    for item in items {
        if let Err(e) = f(item.clone()).await {
            eprintln!("flynn-host: error: {item}: {e:#}");
            code = 1;
        }
    }
    Ok(code)
}
