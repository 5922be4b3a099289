//! `attach` and `exec`.

use anyhow::Result;
use clap::Args;
use hyper::Method;

use super::stream::wait_for_exit;
use super::{attach, tty};
use crate::client::{Client, encode};
use crate::model::{Exec, ExecRequest, ExitInfo, Job};

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Keep stdin open and send ours.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Give the process a terminal.
    #[arg(long, short = 't')]
    tty: bool,
    /// Start it and print its id, without attaching.
    #[arg(long, short = 'd')]
    detach: bool,
    /// User (name|uid[:group|gid]); default: the job's.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Working directory; default: the job's.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// Set an environment variable (KEY=VALUE).
    #[arg(long, short = 'e')]
    env: Vec<String>,
    job: String,
    #[arg(required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub async fn exec(client: &Client, args: ExecArgs) -> Result<i32> {
    let job = encode(&args.job);
    let request = ExecRequest {
        cmd: args.command.clone(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        tty: args.tty,
        stdin: args.interactive,
    };
    let exec: Exec = match client
        .call(Method::POST, &format!("/jobs/{job}/exec"), Some(&request))
        .await
    {
        Ok(exec) => exec,
        Err(e) => {
            eprintln!("flynn-host: error: {e:#}");
            return Ok(super::run::start_failure_code(&e));
        }
    };
    if args.detach {
        println!("{}", exec.id);
        return Ok(0);
    }
    let base = format!("/jobs/{job}/exec/{}", exec.id);
    let io = attach::open(client, &format!("{base}/attach?stdin={}", args.interactive)).await?;
    let raw = if args.tty {
        tty::RawMode::enter()
    } else {
        None
    };
    let session = async {
        let result = attach::session(io, args.tty, args.interactive).await;
        let exit: Result<ExitInfo> = client
            .call(Method::GET, &format!("{base}/wait"), None::<&()>)
            .await;
        (result, exit)
    };
    let (result, exit) = if args.tty {
        super::run::alongside(
            session,
            attach::follow_size(client, format!("{base}/resize")),
        )
        .await
    } else {
        session.await
    };
    drop(raw);
    if let Err(e) = result {
        eprintln!("flynn-host: the session ended early: {e:#}");
    }
    Ok(exit?.exit_code)
}

pub async fn attach(client: &Client, job: &str, no_stdin: bool) -> Result<i32> {
    let info: Job = client
        .call(Method::GET, &format!("/jobs/{}", encode(job)), None::<&()>)
        .await?;
    let send_stdin = info.config.stdin && !no_stdin;
    let tty = info.config.tty;
    let io = attach::open(
        client,
        &format!("/jobs/{}/attach?stdin={send_stdin}", info.id),
    )
    .await?;
    let raw = if tty { tty::RawMode::enter() } else { None };
    let session = async {
        let result = attach::session(io, tty, send_stdin).await;
        let exit = wait_for_exit(client, &info.id, "exited", None).await;
        (result, exit)
    };
    let (result, exit) = if tty {
        super::run::alongside(
            session,
            attach::follow_size(client, format!("/jobs/{}/resize", info.id)),
        )
        .await
    } else {
        session.await
    };
    drop(raw);
    if let Err(e) = result {
        eprintln!("flynn-host: the session ended early: {e:#}");
    }
    Ok(exit?.exit_code)
}
