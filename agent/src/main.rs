//! `flynn-host`: the Flynn host agent. One binary: the daemon, the CLI that talks
//! to it, and the per-container shim (`flynn-host shim JOB_DIR`).

use clap::{Parser, Subcommand};
use flynn_host::{cli, daemon};

#[derive(Parser, Debug)]
#[command(
    name = "flynn-host",
    version,
    about = "Flynn's host agent: runs OCI/Docker images natively",
    propagate_version = true
)]
struct Args {
    #[command(flatten)]
    connection: cli::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host daemon (API, job supervisor, image store).
    Daemon(daemon::DaemonArgs),
    /// Run the cluster's HTTP and TCP router (a job of the platform).
    Router(router::service::RouterArgs),
    /// Run a log aggregator (a job of the platform).
    Logaggregator(logagg::AggArgs),
    /// Run the controller (a job of the platform).
    Controller(controller::ControllerArgs),
    /// Run a git receiver: `git push` builds and deploys (a job of the platform).
    Gitreceive(gitreceive::GitReceiveArgs),
    /// A git receiver's hook (run by git inside a push, not by hand).
    #[command(hide = true)]
    GitreceiveHook(gitreceive::hook::HookArgs),
    /// Build a cluster from hosts that share a token: etcd, the grid (resumable).
    Bootstrap(bootstrap::BootstrapArgs),
    /// Run a scheduler (a job of the platform).
    Scheduler(scheduler_service::SchedulerArgs),
    // The client commands (`cli`).
    #[command(flatten)]
    Client(cli::Command),
}

fn main() {
    // The shim must stay single-threaded (libcontainer forks): dispatch it before
    // anything starts a thread, clap and tokio included.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // PID 1 of the appliance: the kernel starts us as /init with its own arguments.
    if args.get(1).is_some_and(|a| a == "init")
        || args.first().is_some_and(|a| flynn_init::wanted(a))
    {
        std::process::exit(flynn_init::main());
    }
    // `flynn`: the platform's CLI is this binary under that name (a symlink).
    if args
        .first()
        .is_some_and(|a| std::path::Path::new(a).file_name() == Some(std::ffi::OsStr::new("flynn")))
    {
        std::process::exit(flynn_cli());
    }
    if args.get(1).is_some_and(|a| a == "shim") {
        let Some(job_dir) = args.get(2).filter(|_| args.len() == 3) else {
            eprintln!("usage: flynn-host shim JOB_DIR (started by the daemon, not by hand)");
            std::process::exit(2);
        };
        std::process::exit(runtime::shim::main(std::path::Path::new(job_dir)));
    }

    let args = Args::parse();
    // Sockets handed over by a daemon upgrading in place; read before any thread.
    let inherited = match daemon::upgrade::take_from_env() {
        Ok(inherited) => inherited,
        Err(e) => {
            eprintln!("flynn-host: error: {e:#}");
            std::process::exit(1);
        }
    };
    let code = match tokio_main(args, inherited) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flynn-host: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// `flynn run`'s follower: `run`'s own, through the controller's relay of the
/// job's host.
fn flynn_attach(
    host: flynn_host::client::Client,
    job: serde_json::Value,
    interactive: bool,
    tty: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<i32>>>> {
    Box::pin(async move {
        let job: flynn_host::model::Job = serde_json::from_value(job)
            .map_err(|e| anyhow::anyhow!("the controller's answer is not a job: {e}"))?;
        let args = flynn_host::cli::run::RunArgs::follow_only(interactive, tty, true)?;
        flynn_host::cli::run::run_created(&host, &args, &job).await
    })
}

fn flynn_cli() -> i32 {
    use clap::Parser as _;
    let args = controller::cli::Flynn::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flynn: error: {e}");
            return 1;
        }
    };
    let result = rt.block_on(controller::cli::main(args, flynn_attach));
    // As in `tokio_main`: a `run -i`/`-it` session that ended with the job leaves
    // a read of our stdin in a blocking thread (a terminal never sends EOF);
    // dropping the runtime would wait for that read, i.e. for the user's next key.
    rt.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flynn: error: {e:#}");
            1
        }
    }
}

fn tokio_main(args: Args, inherited: Option<daemon::upgrade::Inherited>) -> anyhow::Result<i32> {
    // The router runs its own worker threads (one runtime each); its main runtime
    // only follows etcd and serves as worker 0.
    let is_daemon = matches!(
        args.command,
        Command::Daemon(_)
            | Command::Logaggregator(_)
            | Command::Controller(_)
            | Command::Gitreceive(_)
            | Command::Scheduler(_)
    );
    let runtime = if is_daemon {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        // A client command needs no thread pool; starting one costs start-up time.
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()?;
    let result = runtime.block_on(async move {
        match args.command {
            Command::Daemon(daemon_args) => {
                init_tracing();
                daemon::run(daemon_args, inherited).await?;
                Ok(0)
            }
            Command::Router(router_args) => {
                init_tracing();
                router::service::run(router_args).await?;
                Ok(0)
            }
            Command::Logaggregator(agg_args) => {
                init_tracing();
                logagg::run(agg_args).await?;
                Ok(0)
            }
            Command::Controller(c_args) => {
                init_tracing();
                controller::run(c_args).await?;
                Ok(0)
            }
            Command::Gitreceive(g_args) => {
                init_tracing();
                gitreceive::run(g_args).await?;
                Ok(0)
            }
            Command::GitreceiveHook(h_args) => Ok(gitreceive::hook::run(h_args).await),
            Command::Bootstrap(b_args) => Ok(bootstrap::run(b_args).await),
            Command::Scheduler(s_args) => {
                init_tracing();
                scheduler_service::run(s_args).await?;
                Ok(0)
            }
            Command::Client(command) => cli::run(args.connection, command).await,
        }
    });
    // A read of our stdin may still sit in a blocking thread (an interactive
    // session that has ended): do not wait for it.
    runtime.shutdown_background();
    result
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLYNN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
