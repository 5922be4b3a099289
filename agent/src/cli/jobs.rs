//! `ps`, `inspect`, `logs`, `wait`, `start`, `stop`, `kill`, `rm`, `version`.

use anyhow::Result;
use hyper::Method;

use super::format::{ago, duration, table};
use super::images::familiar;
use super::{ListArgs, for_each, stream};
use crate::client::{Client, encode};
use crate::model::{Job, JobState, Version};

pub async fn ps(client: &Client, all: bool, args: &ListArgs) -> Result<i32> {
    let jobs: Vec<Job> = client
        .call(Method::GET, &format!("/jobs?all={all}"), None::<&()>)
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(0);
    }
    if args.quiet {
        for job in &jobs {
            println!("{}", &job.id[..12.min(job.id.len())]);
        }
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            vec![
                job.id.chars().take(12).collect(),
                familiar(&job.image),
                command(&job.config.args),
                ago(job.created_at),
                status(job),
                ports(job),
                job.name.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "JOB ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES",
        ],
        &rows,
    );
    Ok(0)
}

/// The command, quoted and cut to fit a table cell.
fn command(args: &[String]) -> String {
    let joined = args.join(" ");
    let cut: String = joined.chars().take(20).collect();
    if cut.len() < joined.len() {
        format!("\"{cut}…\"")
    } else {
        format!("\"{joined}\"")
    }
}

/// Published ports as Docker shows them: `0.0.0.0:8080->80/tcp`.
fn ports(job: &Job) -> String {
    job.network
        .as_ref()
        .map(|n| {
            n.ports
                .iter()
                .map(|p| {
                    format!(
                        "{}:{}->{}/{}",
                        p.bind_ip(),
                        p.host_port,
                        p.container_port,
                        p.protocol
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn status(job: &Job) -> String {
    let now = chrono::Utc::now();
    match job.state {
        JobState::Created => "Created".to_string(),
        JobState::Running => {
            let since = job.started_at.unwrap_or(job.created_at);
            format!("Up {}", duration((now - since).num_seconds()))
        }
        JobState::Exited | JobState::Removing | JobState::Removed => match &job.exit {
            Some(exit) => {
                let oom = if exit.oom_killed { " (OOM killed)" } else { "" };
                let removing = if job.state == JobState::Removing {
                    " (removing)"
                } else {
                    ""
                };
                let verb = if job.restart_at.is_some() {
                    "Restarting"
                } else {
                    "Exited"
                };
                format!(
                    "{verb} ({}){oom} {}{removing}",
                    exit.exit_code,
                    ago(exit.finished_at)
                )
            }
            None => job.state.as_str().to_string(),
        },
    }
}

pub async fn inspect(client: &Client, jobs: &[String]) -> Result<i32> {
    let mut found = Vec::new();
    let mut code = 0;
    for id in jobs {
        match client
            .call::<serde_json::Value>(Method::GET, &format!("/jobs/{}", encode(id)), None::<&()>)
            .await
        {
            Ok(job) => found.push(job),
            Err(e) => {
                eprintln!("flynn-host: error: {id}: {e:#}");
                code = 1;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&found)?);
    Ok(code)
}

pub async fn logs(
    client: &Client,
    job: &str,
    follow: bool,
    timestamps: bool,
    tail: Option<usize>,
) -> Result<i32> {
    stream::follow_logs(
        client,
        job,
        &stream::LogOptions {
            follow,
            timestamps,
            tail,
        },
        None,
    )
    .await?;
    Ok(0)
}

pub async fn wait(client: &Client, jobs: &[String]) -> Result<i32> {
    for_each(jobs, |id| async move {
        let exit = stream::wait_for_exit(client, &id, "exited", None).await?;
        println!("{}", exit.exit_code);
        Ok(())
    })
    .await
}

pub async fn start(client: &Client, jobs: &[String]) -> Result<i32> {
    for_each(jobs, |id| async move {
        client
            .call::<Job>(
                Method::POST,
                &format!("/jobs/{}/start", encode(&id)),
                None::<&()>,
            )
            .await?;
        println!("{id}");
        Ok(())
    })
    .await
}

pub async fn stop(client: &Client, time: u64, jobs: &[String]) -> Result<i32> {
    for_each(jobs, |id| async move {
        client
            .call::<Job>(
                Method::POST,
                &format!("/jobs/{}/stop?t={time}", encode(&id)),
                None::<&()>,
            )
            .await?;
        println!("{id}");
        Ok(())
    })
    .await
}

pub async fn kill(client: &Client, signal: &str, jobs: &[String]) -> Result<i32> {
    for_each(jobs, |id| async move {
        client
            .send_json(
                Method::POST,
                &format!("/jobs/{}/kill?signal={}", encode(&id), encode(signal)),
                None::<&()>,
            )
            .await?;
        println!("{id}");
        Ok(())
    })
    .await
}

pub async fn rm(client: &Client, force: bool, jobs: &[String]) -> Result<i32> {
    for_each(jobs, |id| async move {
        client
            .send_json(
                Method::DELETE,
                &format!("/jobs/{}?force={force}", encode(&id)),
                None::<&()>,
            )
            .await?;
        println!("{id}");
        Ok(())
    })
    .await
}

pub async fn version(client: &Client) -> Result<i32> {
    println!("Client: {}", env!("CARGO_PKG_VERSION"));
    let daemon: Version = client.call(Method::GET, "/version", None::<&()>).await?;
    println!("Daemon: {} (API {})", daemon.version, daemon.api_version);
    Ok(0)
}
