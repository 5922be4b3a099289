//! `flynn-host cluster hosts` and `flynn-host discover list|watch`.

use anyhow::{Context, Result};
use clap::Subcommand;
use http_body_util::BodyExt;
use hyper::Method;

use crate::client::{Client, encode};
use crate::model::{HostRecord, ServiceEvent, ServiceState};

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// The hosts whose lease is alive.
    Hosts {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DiscoverCommand {
    /// Instances of one service, or of every service.
    List {
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Follow a service: its instances now, then every change (up, down, update, leader).
    Watch {
        service: String,
        /// One JSON event per line.
        #[arg(long)]
        json: bool,
    },
}

pub async fn cluster(client: &Client, cmd: ClusterCommand) -> Result<i32> {
    match cmd {
        ClusterCommand::Hosts { json } => {
            let hosts: Vec<HostRecord> = client
                .call(Method::GET, "/cluster/hosts", None::<&()>)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hosts)?);
                return Ok(0);
            }
            println!(
                "{:<34} {:<16} {:<18} {:>4} {:>10} {:>5}  TAGS",
                "ID", "ADDRESS", "SUBNET", "CPUS", "MEM FREE", "JOBS"
            );
            for h in hosts {
                let tags: Vec<String> = h.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:<34} {:<16} {:<18} {:>4} {:>10} {:>5}  {}",
                    h.id,
                    h.address.to_string(),
                    h.subnet.as_deref().unwrap_or("-"),
                    h.resources.cpus,
                    format!("{} MiB", h.resources.memory_free >> 20),
                    h.resources.jobs_running,
                    tags.join(",")
                );
            }
            Ok(0)
        }
    }
}

pub async fn discover(client: &Client, cmd: DiscoverCommand) -> Result<i32> {
    match cmd {
        DiscoverCommand::List { service, json } => {
            let states: Vec<ServiceState> = match &service {
                Some(s) => vec![
                    client
                        .call(
                            Method::GET,
                            &format!("/discovery/services/{}", encode(s)),
                            None::<&()>,
                        )
                        .await?,
                ],
                None => {
                    client
                        .call(Method::GET, "/discovery/services", None::<&()>)
                        .await?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&states)?);
                return Ok(0);
            }
            println!(
                "{:<16} {:<40} {:<22} {:<34} LEADER",
                "SERVICE", "INSTANCE", "ADDRESS", "HOST"
            );
            for st in &states {
                for i in &st.instances {
                    let leader = if st.leader.as_deref() == Some(i.id.as_str()) {
                        "*"
                    } else {
                        ""
                    };
                    println!(
                        "{:<16} {:<40} {:<22} {:<34} {leader}",
                        st.service,
                        i.id,
                        i.addr.to_string(),
                        i.host_id
                    );
                }
            }
            Ok(0)
        }
        DiscoverCommand::Watch { service, json } => {
            let path = format!("/discovery/services/{}/watch", encode(&service));
            let resp = client
                .request(Method::GET, &path, None, crate::client::empty())
                .await?;
            let mut body = resp.into_body();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.context("the watch stream broke")?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                buf.extend_from_slice(data);
                while let Some(end) = find(&buf, b"\n\n") {
                    let block: Vec<u8> = buf.drain(..end + 2).collect();
                    let text = String::from_utf8_lossy(&block);
                    for line in text.lines() {
                        let Some(d) = line.strip_prefix("data: ") else {
                            continue;
                        };
                        let ev: ServiceEvent =
                            serde_json::from_str(d).context("an event the CLI cannot read")?;
                        if json {
                            println!("{d}");
                        } else {
                            print_event(&ev);
                        }
                    }
                }
            }
            Ok(0)
        }
    }
}

fn print_event(ev: &ServiceEvent) {
    use discovery::ServiceEventKind::*;
    let kind = match ev.kind {
        Up => "up",
        Down => "down",
        Update => "update",
        Leader => "leader",
        Current => "current",
    };
    match &ev.instance {
        Some(i) => println!("{kind:<8} {} {} {} {}", ev.service, i.id, i.addr, i.host_id),
        None if ev.kind == Current => println!("current"),
        None => println!("{kind:<8} {} (none)", ev.service),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
