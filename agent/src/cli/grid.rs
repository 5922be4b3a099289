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
    /// Run TYPE=N jobs of an app's process type across the cluster (the scheduler
    /// keeps them running): scale web=5 --app demo --image busybox -- httpd -f -p 8080
    Scale {
        /// TYPE=COUNT (with --omni: COUNT per host), or TYPE with --omni.
        formation: String,
        #[arg(long)]
        app: String,
        /// The image [default: the formation's, when it exists]. A name is pinned
        /// to the digest this host holds it under (pulled first when missing), so
        /// every host runs the same bytes: NAME@sha256:… is stored.
        #[arg(long)]
        image: Option<String>,
        /// Which exited jobs are replaced: always, on-failure (exit code not 0) or
        /// never [default: the formation's, else always].
        #[arg(long, value_parser = parse_restart)]
        restart: Option<discovery::formations::Restart>,
        /// On every host (COUNT jobs each, 1 if not given).
        #[arg(long)]
        omni: bool,
        /// A service the jobs provide (as `run -s`).
        #[arg(long = "service", short = 's', value_parser = crate::model::services::parse_decl)]
        services: Vec<crate::model::ServiceDecl>,
        /// Memory per job (e.g. 128m).
        #[arg(long, short = 'm', value_parser = super::format::parse_size)]
        memory: Option<i64>,
        #[arg(long)]
        cpus: Option<f64>,
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// Host tags the jobs need, KEY=VALUE.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// host for platform jobs; bridge by default.
        #[arg(long = "net")]
        net: Option<String>,
        /// The command (the image's when none).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// An ephemeral job placed by the scheduler on some host, then attached (-it) or
    /// followed there, as `run` does: cluster run -it --app demo busybox sh
    Run {
        #[arg(long)]
        app: String,
        #[command(flatten)]
        run: Box<super::run::RunArgs>,
    },
    /// Every formation: wanted, running, blocked and why.
    Formations {
        #[arg(long)]
        json: bool,
    },
    /// Every job the scheduler runs: app, type, host, state.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Move a host's jobs away (before maintenance); waits until it has none.
    Drain {
        /// The host's id (`cluster hosts`); without it, the host the CLI talks to.
        #[arg(value_name = "HOST")]
        host_id: Option<String>,
        /// Let the host take jobs again.
        #[arg(long)]
        undo: bool,
        /// For a power-off or reboot: the host takes jobs again when its agent
        /// starts next. A drain already in place (an operator's) stays as it is.
        #[arg(long, conflicts_with = "undo")]
        until_restart: bool,
        /// Seconds to wait for the host to empty.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

/// Whether a live host other than `host` takes jobs (is not being drained).
async fn others_take_jobs(sched: &Client, host: &str) -> Result<bool> {
    let hosts: Vec<serde_json::Value> = sched.call(Method::GET, "/hosts", None::<&()>).await?;
    Ok(hosts
        .iter()
        .any(|h| h["id"] != host && h["draining"] != true))
}

/// The scheduler's leader, through the local agent's discovery.
async fn scheduler(client: &Client) -> Result<Client> {
    let leader: serde_json::Value = client
        .call(
            Method::GET,
            "/discovery/services/flynn-scheduler/leader",
            None::<&()>,
        )
        .await
        .context("finding the scheduler (is the cluster bootstrapped?)")?;
    let addr = leader["addr"]
        .as_str()
        .context("the scheduler's instance has no address")?;
    // HTTPS when the scheduler says so, verified against the cluster's CA.
    if leader["meta"]["tls"] == "1" {
        let trust = cluster_trust(client).await?;
        return Client::from_options_tls(Some(&format!("https://{addr}")), client.token(), &trust);
    }
    Client::from_options_tls(
        Some(&format!("http://{addr}")),
        client.token(),
        client.tls_options(),
    )
}

fn parse_restart(text: &str) -> Result<discovery::formations::Restart, String> {
    text.parse()
        .map_err(|e: discovery::formations::UnknownRestart| e.to_string())
}

/// The part of the agent's `GET /images` entry a pin needs.
#[derive(serde::Deserialize)]
struct LocalImage {
    names: Vec<String>,
    manifest_digest: String,
}

/// `full` (a normalized name) with the digest of the image `held` names so.
fn pinned(full: &str, held: &[LocalImage]) -> Option<String> {
    held.iter()
        .find(|i| i.names.iter().any(|n| n == full))
        .map(|i| format!("{full}@{}", i.manifest_digest))
}

/// The image a formation stores: a name pinned to the digest the host this CLI
/// talks to holds it under, pulled there first when it has none (as `run` does).
/// A tag can move (a later pull or import); the digest names the bytes, so every
/// job of the formation, on every host, runs the same image, and the scheduler
/// places its jobs only where that image is. A name given with a digest is kept.
async fn pin_image(client: &Client, image: &str) -> Result<String> {
    let reference: image::Reference = image.parse().map_err(|e| {
        anyhow::anyhow!(
            "image {image:?}: {e}: give a name (busybox, registry:5000/app:tag) or NAME@sha256:DIGEST"
        )
    })?;
    if reference.digest().is_some() {
        return Ok(image.to_string());
    }
    let full = reference.to_string();
    let held: Vec<LocalImage> = client.call(Method::GET, "/images", None::<&()>).await?;
    if let Some(p) = pinned(&full, &held) {
        return Ok(p);
    }
    eprintln!(
        "Unable to find image '{}' locally",
        super::images::familiar(image)
    );
    super::pull::pull_image(client, image, None, super::pull::Output::Stderr).await?;
    let held: Vec<LocalImage> = client.call(Method::GET, "/images", None::<&()>).await?;
    pinned(&full, &held).with_context(|| {
        format!("{full} was pulled but this host does not list it: run the scale again")
    })
}

async fn scale(client: &Client, cmd: ClusterCommand) -> Result<i32> {
    let ClusterCommand::Scale {
        formation,
        app,
        image,
        restart,
        omni,
        services,
        memory,
        cpus,
        env,
        tags,
        net,
        command,
    } = cmd
    else {
        return Ok(2);
    };
    let (ty, count) = match formation.split_once('=') {
        Some((t, n)) => (
            t.to_string(),
            n.parse::<u32>()
                .with_context(|| format!("{formation:?}: give TYPE=COUNT"))?,
        ),
        None if omni => (formation.clone(), 1),
        None => anyhow::bail!("{formation:?}: give TYPE=COUNT (or TYPE with --omni)"),
    };
    let sched = scheduler(client).await?;
    let existing: Vec<serde_json::Value> =
        sched.call(Method::GET, "/formations", None::<&()>).await?;
    let old = existing
        .iter()
        .map(|f| &f["formation"])
        .find(|f| f["app"] == app.as_str() && f["process_type"] == ty.as_str())
        .cloned();
    let image = match (image, &old) {
        (Some(i), _) => pin_image(client, &i).await?,
        (None, Some(f)) => f["image"].as_str().unwrap_or_default().to_string(),
        (None, None) => anyhow::bail!("{app}/{ty} is a new formation: give its --image"),
    };
    let mut tag_map = serde_json::Map::new();
    for t in &tags {
        let (k, v) = t
            .split_once('=')
            .with_context(|| format!("tag {t:?}: give KEY=VALUE"))?;
        tag_map.insert(k.into(), v.into());
    }
    let keep = |field: &str, new: serde_json::Value, empty: bool| {
        if empty {
            old.as_ref()
                .map(|f| f[field].clone())
                .filter(|v| !v.is_null())
                .unwrap_or(new)
        } else {
            new
        }
    };
    let body = serde_json::json!({
        "image": image,
        "cmd": keep("cmd", serde_json::json!(command), command.is_empty()),
        "env": keep("env", serde_json::json!(env), env.is_empty()),
        "services": keep("services", serde_json::json!(services), services.is_empty()),
        "memory": keep("memory", serde_json::json!(memory), memory.is_none()),
        "cpus": keep("cpus", serde_json::json!(cpus), cpus.is_none()),
        "count": count,
        "omni": omni,
        "tags": tag_map,
        "network": keep("network", serde_json::json!(net), net.is_none()),
        "restart": keep("restart", serde_json::json!(restart.unwrap_or_default()), restart.is_none()),
    });
    let _: serde_json::Value = sched
        .call(Method::PUT, &format!("/formations/{app}/{ty}"), Some(&body))
        .await?;
    println!(
        "{app}/{ty}: {count}{} of {image}",
        if omni { " per host" } else { "" }
    );
    Ok(0)
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

/// What another host's API is verified against: what the user said, else the
/// CA of the host this CLI talks to (the cluster's, once bootstrapped), asked of
/// it over the connection already trusted.
async fn cluster_trust(client: &Client) -> Result<flynn_client::TlsOptions> {
    if client.tls_options().is_set() {
        return Ok(client.tls_options().clone());
    }
    let info: crate::model::TlsInfo = client
        .call(Method::GET, "/cluster/tls/ca", None::<&()>)
        .await
        .context("reading the cluster's CA from this host (give --tls-pin to skip it)")?;
    Ok(flynn_client::TlsOptions::pinned(&info.pin))
}

pub async fn cluster(client: &Client, cmd: ClusterCommand) -> Result<i32> {
    match cmd {
        cmd @ ClusterCommand::Scale { .. } => scale(client, cmd).await,
        ClusterCommand::Run { app, run } => {
            if run.detach {
                anyhow::bail!(
                    "cluster run is for a job you follow; for one that keeps running, use cluster scale"
                );
            }
            let body = serde_json::json!({ "app": app, "request": run.request(false) });
            let placed: serde_json::Value = scheduler(client)
                .await?
                .call(Method::POST, "/jobs", Some(&body))
                .await?;
            let api = placed["host_api"]
                .as_str()
                .context("the scheduler named no host")?;
            let job: crate::model::Job = serde_json::from_value(placed["job"].clone())
                .context("the scheduler's answer is not a job")?;
            let trust = cluster_trust(client).await?;
            let host = Client::from_options_tls(Some(api), client.token(), &trust)?;
            super::run::run_created(&host, &run, &job).await
        }
        ClusterCommand::Formations { json } => {
            let list: Vec<serde_json::Value> = scheduler(client)
                .await?
                .call(Method::GET, "/formations", None::<&()>)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            println!(
                "{:<16} {:<12} {:>6} {:>8} {:>8} {:<10}  BLOCKED",
                "APP", "TYPE", "WANTED", "RUNNING", "FINISHED", "RESTART"
            );
            for f in list {
                let want = if f["formation"]["omni"] == true {
                    format!("{}/host", f["formation"]["count"])
                } else {
                    f["formation"]["count"].to_string()
                };
                println!(
                    "{:<16} {:<12} {:>6} {:>8} {:>8} {:<10}  {}",
                    f["formation"]["app"].as_str().unwrap_or(""),
                    f["formation"]["process_type"].as_str().unwrap_or(""),
                    want,
                    f["running"],
                    f["finished"].as_u64().unwrap_or(0),
                    // A scheduler older than the policy stores none: `always`.
                    f["formation"]["restart"].as_str().unwrap_or("always"),
                    f["blocked"]["reason"]
                        .as_str()
                        .map(|r| format!("{} missing: {r}", f["blocked"]["missing"]))
                        .unwrap_or_else(|| "-".into())
                );
            }
            Ok(0)
        }
        ClusterCommand::Ps { json } => {
            let jobs: Vec<serde_json::Value> = scheduler(client)
                .await?
                .call(Method::GET, "/jobs", None::<&()>)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
                return Ok(0);
            }
            println!(
                "{:<34} {:<16} {:<12} {:<34} STATE",
                "JOB", "APP", "TYPE", "HOST"
            );
            for j in jobs {
                println!(
                    "{:<34} {:<16} {:<12} {:<34} {}",
                    j["id"].as_str().unwrap_or(""),
                    j["app"].as_str().unwrap_or(""),
                    j["process_type"].as_str().unwrap_or(""),
                    j["host"].as_str().unwrap_or(""),
                    j["state"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        ClusterCommand::Drain {
            host_id,
            undo,
            until_restart,
            timeout,
        } => {
            let host = match host_id {
                Some(id) => id,
                None => {
                    let status: crate::model::HostStatus = client
                        .call(Method::GET, "/host/status", None::<&()>)
                        .await?;
                    status.id
                }
            };
            let sched = scheduler(client).await?;
            // A drain with nowhere to go would only leave the host unschedulable and
            // its jobs where they are: say so before marking it.
            if !undo && !others_take_jobs(&sched, &host).await? {
                anyhow::bail!(
                    "no other live host takes jobs, so {host}'s jobs have nowhere to go; nothing was drained"
                );
            }
            let method = if undo { Method::DELETE } else { Method::PUT };
            let query = if until_restart {
                "?until_restart=true"
            } else {
                ""
            };
            let _: serde_json::Value = sched
                .call(method, &format!("/hosts/{host}/drain{query}"), None::<&()>)
                .await?;
            if undo {
                println!("{host} takes jobs again");
                return Ok(0);
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
            loop {
                let jobs: Vec<serde_json::Value> =
                    sched.call(Method::GET, "/jobs", None::<&()>).await?;
                // A finished job (kept by its formation's restart policy) runs
                // nothing and stays where it ended: only running jobs hold a drain.
                let left = jobs
                    .iter()
                    .filter(|j| j["host"] == host.as_str() && j["state"] != "exited")
                    .count();
                if left == 0 {
                    println!("{host} is drained");
                    return Ok(0);
                }
                if std::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "{host} still runs {left} scheduled jobs after {timeout}s: see `flynn-host cluster formations` for formations blocked elsewhere"
                    );
                }
                // Every host powered off at once drains at once: none can take
                // another's jobs, so waiting would only delay the stop.
                if !others_take_jobs(&sched, &host).await? {
                    anyhow::bail!(
                        "{host} still runs {left} scheduled jobs and every other host is draining too: they have nowhere to go"
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
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

#[cfg(test)]
mod tests {
    use clap::Parser;
    use discovery::formations::Restart;

    use super::*;

    #[derive(Parser, Debug)]
    struct Only {
        #[command(subcommand)]
        cmd: ClusterCommand,
    }

    fn scale(args: &[&str]) -> Result<Option<Restart>, clap::Error> {
        let argv = ["cluster", "scale", "web=2", "--app", "demo"]
            .iter()
            .chain(args)
            .copied();
        match Only::try_parse_from(argv)?.cmd {
            ClusterCommand::Scale { restart, .. } => Ok(restart),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn scale_takes_a_restart_policy() {
        assert_eq!(scale(&[]).unwrap(), None);
        assert_eq!(
            scale(&["--restart", "always"]).unwrap(),
            Some(Restart::Always)
        );
        assert_eq!(
            scale(&["--restart", "on-failure", "--", "true"]).unwrap(),
            Some(Restart::OnFailure)
        );
        assert_eq!(scale(&["--restart=never"]).unwrap(), Some(Restart::Never));
        let err = scale(&["--restart", "sometimes"]).unwrap_err().to_string();
        assert!(
            err.contains("invalid restart policy \"sometimes\": use always, on-failure or never"),
            "{err}"
        );
        // The agent's policy names are not the formation's.
        assert!(scale(&["--restart", "unless-stopped"]).is_err());
    }

    #[test]
    fn a_name_is_pinned_to_the_digest_held_under_it() {
        let held = vec![
            LocalImage {
                names: vec!["docker.io/library/busybox:latest".into()],
                manifest_digest: "sha256:aaaa".into(),
            },
            LocalImage {
                names: vec![
                    "docker.io/library/busybox:old".into(),
                    "registry:5000/app:1".into(),
                ],
                manifest_digest: "sha256:bbbb".into(),
            },
        ];
        assert_eq!(
            pinned("docker.io/library/busybox:latest", &held).as_deref(),
            Some("docker.io/library/busybox:latest@sha256:aaaa")
        );
        assert_eq!(
            pinned("registry:5000/app:1", &held).as_deref(),
            Some("registry:5000/app:1@sha256:bbbb")
        );
        assert_eq!(pinned("docker.io/library/alpine:latest", &held), None);
    }
}
