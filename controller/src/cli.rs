//! `flynn`: the platform's CLI (the flynn-host binary called by that name, as busybox
//! is). It talks to the controller with the key `flynn cluster add` saved in
//! `~/.flynnrc` (JSON, mode 0600).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use flynn_client::Client;
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "flynn",
    version,
    about = "Flynn: deploy and run apps on the cluster"
)]
pub struct Flynn {
    /// The app (default: $FLYNN_APP).
    #[arg(short = 'a', long = "app", env = "FLYNN_APP", global = true)]
    app: Option<String>,
    /// The cluster, by the name given to `cluster add` (default: the default one).
    #[arg(short = 'c', long = "cluster", env = "FLYNN_CLUSTER", global = true)]
    cluster: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Clusters this CLI knows.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Create an app (routed at <app>.<cluster domain>); inside a git repository,
    /// also the remote `flynn` that `git push flynn main` deploys through.
    Create { name: String },
    /// git's credential helper for the cluster's git receiver (set by `create`).
    #[command(hide = true)]
    GitCredentials { op: String },
    /// List apps.
    Apps,
    /// Show an app and its release.
    Info,
    /// Delete an app, its releases and routes.
    Delete {
        name: String,
        /// Do not ask.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Releases: add, show, list, rollback.
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// The app's environment (a change makes a new release).
    Env {
        #[command(subcommand)]
        cmd: Option<EnvCmd>,
    },
    /// The app's routes.
    Route {
        #[command(subcommand)]
        cmd: Option<RouteCmd>,
    },
    /// The app's log: TIME APP[TYPE.JOB]: line, in time order.
    Log {
        /// Keep following new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// The last N lines (default: the aggregator's, 100).
        #[arg(short = 'n', long)]
        lines: Option<usize>,
        /// Only this process type.
        #[arg(short = 't', long = "type")]
        process_type: Option<String>,
        /// Only this job.
        #[arg(short = 'j', long)]
        job: Option<String>,
    },
    /// A new release of an image archive (`docker save NAME:TAG`, or an OCI
    /// archive), imported into every host through the controller: no registry.
    /// Process types as given, else the current release's.
    Import {
        archive: PathBuf,
        /// TYPE=COMMAND (run by sh -c; `web` gets $PORT=8080).
        #[arg(short = 'p', long = "process")]
        processes: Vec<String>,
        #[command(flatten)]
        deploy: DeployOpts,
    },
    /// Jobs wanted per process type: scale web=3 worker=1 (without any: print them).
    Scale { counts: Vec<String> },
    /// The app's jobs across the cluster: id, type, host, state, release.
    Ps,
    /// A one-off job of the current release anywhere in the cluster: run [-it] [-d] CMD...
    #[command(trailing_var_arg = true)]
    Run {
        /// Keep stdin open and attached.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Give the job a terminal.
        #[arg(short = 't', long)]
        tty: bool,
        /// Start it and print its id (it is kept after it exits).
        #[arg(short = 'd', long)]
        detach: bool,
        /// KEY=VALUE, beside the release's environment.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// The command and its arguments (the image's when none).
        #[arg(allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

/// How a deploy is waited for (release add, env set/unset, rollback).
#[derive(clap::Args, Debug, Clone, Copy)]
struct DeployOpts {
    /// Return once the release is made; do not wait for the deploy.
    #[arg(long)]
    no_wait: bool,
    /// Seconds the new jobs have to get healthy before the deploy is rolled back
    /// (default: the app's or the controller's, 60).
    #[arg(long)]
    timeout: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Save a cluster: -p PIN NAME URL KEY (the line the bootstrap prints).
    Add {
        name: String,
        url: String,
        key: String,
        /// Make it the default.
        #[arg(long)]
        default: bool,
        /// The pin of the cluster's TLS CA (base64 SHA-256 of its certificate;
        /// the bootstrap prints it, `flynn-host tls pin` on a host too): the
        /// controller's certificate is verified against that CA.
        #[arg(long, short = 'p')]
        tls_pin: Option<String>,
    },
    /// List the saved clusters.
    List,
    /// Forget a cluster.
    Remove { name: String },
    /// Make a cluster the default.
    Default { name: String },
}

#[derive(Subcommand, Debug)]
enum ReleaseCmd {
    /// A release of IMAGE with process types: --process web='httpd -f -p $PORT'.
    Add {
        image: String,
        /// TYPE=COMMAND (run by sh -c; `web` gets $PORT=8080).
        #[arg(long = "process", short = 'p')]
        processes: Vec<String>,
        /// KEY=VALUE.
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        #[command(flatten)]
        deploy: DeployOpts,
    },
    /// The current release.
    Show,
    /// Every release, oldest first.
    List,
    /// Deploy the release before the current one again.
    Rollback {
        #[command(flatten)]
        deploy: DeployOpts,
    },
    /// The app's deploys, oldest first: state and why.
    Deploys,
}

#[derive(Subcommand, Debug)]
enum EnvCmd {
    /// KEY=VALUE...
    Set {
        pairs: Vec<String>,
        #[command(flatten)]
        deploy: DeployOpts,
    },
    /// KEY...
    Unset {
        keys: Vec<String>,
        #[command(flatten)]
        deploy: DeployOpts,
    },
    /// One variable's value.
    Get { key: String },
}

#[derive(Subcommand, Debug)]
enum RouteCmd {
    /// http DOMAIN [--path P] [--sticky] [--tls-cert FILE --tls-key FILE] | tcp --port N
    Add {
        kind: String,
        domain: Option<String>,
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        sticky: bool,
        /// TCP: the port every router listens on (in the controller's range,
        /// 3000-3500 by default).
        #[arg(long)]
        port: Option<u16>,
        /// HTTP: the route's own certificate chain (PEM file, the server's
        /// certificate first), served on 443 for DOMAIN instead of the cluster's.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// HTTP: the certificate's private key (PEM file).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The process type served.
        #[arg(long = "type", short = 't', default_value = "web")]
        process_type: String,
    },
    /// Remove a route by id.
    Remove { id: String },
}

#[derive(Serialize, Deserialize, Default)]
struct Rc {
    #[serde(default)]
    clusters: Vec<RcCluster>,
    #[serde(default)]
    default: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
struct RcCluster {
    name: String,
    url: String,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls_pin: Option<String>,
}

impl RcCluster {
    /// A client of this cluster's controller (or of a path it relays).
    fn client(&self) -> Result<Client> {
        let tls = match &self.tls_pin {
            Some(pin) => flynn_client::TlsOptions {
                ca: None,
                pin: Some(pin.clone()),
            },
            None => flynn_client::TlsOptions::from_env(),
        };
        let client = Client::from_options_tls(Some(&self.url), Some(&self.key), &tls)?;
        // Port 81 of any host passes through to any controller instance, so an
        // address names a router's host, not the controller: the certificate
        // must then carry the controller's own name (still under the pinned CA).
        Ok(if client.dials_address() {
            client.with_server_name(flynn_tls::CONTROLLER_NAME)
        } else {
            client
        })
    }
}

fn rc_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FLYNNRC") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .context("HOME is not set: set FLYNNRC to the file to keep clusters in")?;
    Ok(PathBuf::from(home).join(".flynnrc"))
}

fn load_rc() -> Result<Rc> {
    let p = rc_path()?;
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{} is not valid: fix or remove it", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Rc::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save_rc(rc: &Rc) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = rc_path()?;
    let data = serde_json::to_vec_pretty(rc)?;
    // 0600 before a byte is written: the file holds the clusters' keys. Durable: a
    // `cluster add` that returned is not lost to a crash.
    flynn_fsutil::replace_with(&p, flynn_fsutil::Durability::Durable, |f| {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        std::io::Write::write_all(f, &data)
    })
    .with_context(|| format!("writing {}", p.display()))
}

/// A one-off job the scheduler placed, to be followed to its end through the
/// controller's relay of its host's job routes: the client (already prefixed with
/// `/apps/{app}/hosts/{host}`), the job (the agent's JSON), `interactive`, `tty`.
/// The `flynn-host` binary gives its `run`'s follower (this crate cannot depend on it).
pub type Attach = fn(
    Client,
    Value,
    bool,
    bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<i32>>>>;

pub async fn main(args: Flynn, attach: Attach) -> Result<i32> {
    if let Cmd::Cluster(c) = &args.command {
        return cluster(c).await;
    }
    let rc = load_rc()?;
    let name = args
        .cluster
        .clone()
        .or(rc.default.clone())
        .or_else(|| rc.clusters.first().map(|c| c.name.clone()));
    let Some(cl) = name.and_then(|n| rc.clusters.iter().find(|c| c.name == n).cloned()) else {
        bail!(
            "no cluster: add one with `flynn cluster add NAME URL KEY` (the bootstrap prints the line)"
        );
    };
    let client = cl.client()?;
    let app = || {
        args.app
            .clone()
            .context("which app? give -a APP (or set FLYNN_APP)")
    };
    match args.command {
        Cmd::Cluster(_) => Ok(0),
        Cmd::Create { name } => {
            let a: Value = client
                .call(Method::POST, "/apps", Some(&json!({"name": name})))
                .await?;
            println!("Created {}", a["name"].as_str().unwrap_or(&name));
            if in_git_repo() {
                let routes: Vec<Value> = client
                    .call(Method::GET, &format!("/apps/{name}/routes"), None::<&()>)
                    .await?;
                let domain = routes
                    .iter()
                    .filter_map(|r| r["domain"].as_str())
                    .find_map(|d| d.strip_prefix(&format!("{name}.")))
                    .context("the app's default route names no domain")?
                    .to_string();
                let ca = git_ca_file(&client, &cl).await?;
                add_git_remote(&name, &domain, &cl.name, ca.as_deref())?;
            }
            Ok(0)
        }
        Cmd::Import {
            archive,
            processes,
            deploy,
        } => {
            let a = app()?;
            let file = tokio::fs::File::open(&archive)
                .await
                .with_context(|| format!("reading {}", archive.display()))?;
            let resp = client
                .request(
                    Method::POST,
                    &format!("/apps/{a}/import"),
                    Some("application/x-tar"),
                    file_body(file, archive.clone()),
                )
                .await?;
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .context("reading the controller's answer")?
                .to_bytes();
            let imported: Value = serde_json::from_slice(&body)
                .context("the controller's answer is not the JSON expected")?;
            let image = imported["image"]
                .as_str()
                .context("the controller named no image")?
                .to_string();
            println!(
                "Imported {image} on {} host(s)",
                imported["hosts"].as_array().map_or(0, Vec::len)
            );
            let info: Value = client
                .call(Method::GET, &format!("/apps/{a}"), None::<&()>)
                .await?;
            let procs = if processes.is_empty() {
                info["release"]["processes"].clone()
            } else {
                process_types(&processes)?
            };
            if procs.as_object().is_none_or(|m| m.is_empty()) {
                bail!("{a} has no release to take process types from: give --process web=COMMAND");
            }
            let env = info["release"]["env"].clone();
            let body = json!({"image": image, "env": if env.is_null() { json!({}) } else { env }, "processes": procs});
            let rel: Value = client
                .call(
                    Method::POST,
                    &with_timeout(format!("/apps/{a}/releases"), deploy),
                    Some(&body),
                )
                .await?;
            deployed(&client, &a, &rel, "Created", deploy).await
        }
        Cmd::GitCredentials { op } => {
            // git asks `get`, and says `store` or `erase` after: only `get` answers.
            if op == "get" {
                let mut input = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)?;
                println!("username=flynn\npassword={}", cl.key);
            }
            Ok(0)
        }
        Cmd::Apps => {
            let apps: Vec<Value> = client.call(Method::GET, "/apps", None::<&()>).await?;
            println!("{:<24} {:<32} CREATED", "NAME", "RELEASE");
            for a in apps {
                println!(
                    "{:<24} {:<32} {}",
                    a["name"].as_str().unwrap_or(""),
                    a["release"].as_str().unwrap_or("-"),
                    a["created_at"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        Cmd::Info => {
            let a = app()?;
            let info: Value = client
                .call(Method::GET, &format!("/apps/{a}"), None::<&()>)
                .await?;
            println!("=== {a}");
            println!(
                "release:  {}",
                info["app"]["release"].as_str().unwrap_or("-")
            );
            if let Some(img) = info["release"]["image"].as_str() {
                println!("image:    {img}");
            }
            if let Some(p) = info["release"]["processes"].as_object() {
                for (ty, proc_) in p {
                    println!("process:  {ty}: {}", proc_["cmd"]);
                }
            }
            Ok(0)
        }
        Cmd::Delete { name, yes } => {
            if !yes {
                bail!("deleting {name} removes its releases and routes: run again with --yes");
            }
            let _: Value = client
                .call(Method::DELETE, &format!("/apps/{name}"), None::<&()>)
                .await?;
            println!("Deleted {name}");
            Ok(0)
        }
        Cmd::Release(r) => release(&client, &app()?, r).await,
        Cmd::Env { cmd } => env(&client, &app()?, cmd).await,
        Cmd::Route { cmd } => route(&client, &app()?, cmd).await,
        Cmd::Log {
            follow,
            lines,
            process_type,
            job,
        } => crate::logs::cli(&client, &app()?, follow, lines, process_type, job).await,
        Cmd::Scale { counts } => scale(&client, &app()?, &counts).await,
        Cmd::Ps => ps(&client, &app()?).await,
        Cmd::Run {
            interactive,
            tty,
            detach,
            env,
            command,
        } => {
            let a = app()?;
            let body = json!({
                "cmd": command, "env": pairs(&env)?, "tty": tty,
                "stdin": interactive, "keep": detach,
            });
            let placed: Value = client
                .call(Method::POST, &format!("/apps/{a}/jobs"), Some(&body))
                .await?;
            let host = placed["host_id"]
                .as_str()
                .context("the controller named no host")?;
            let id = placed["job"]["id"]
                .as_str()
                .context("the controller's answer has no job id")?
                .to_string();
            let on_host = cl.client()?.with_prefix(&format!("/apps/{a}/hosts/{host}"));
            if detach {
                let _: Value = on_host
                    .call(Method::POST, &format!("/jobs/{id}/start"), None::<&()>)
                    .await?;
                println!("{id}");
                return Ok(0);
            }
            attach(on_host, placed["job"].clone(), interactive, tty).await
        }
    }
}

async fn scale(client: &Client, app: &str, counts: &[String]) -> Result<i32> {
    let list: Vec<Value> = if counts.is_empty() {
        client
            .call(Method::GET, &format!("/apps/{app}/formation"), None::<&()>)
            .await?
    } else {
        let mut processes = BTreeMap::new();
        for (ty, n) in pairs(counts)? {
            let n: u32 = n
                .parse()
                .with_context(|| format!("{ty}={n}: give TYPE=COUNT (a whole number)"))?;
            processes.insert(ty, n);
        }
        client
            .call(
                Method::PUT,
                &format!("/apps/{app}/formation"),
                Some(&json!({ "processes": processes })),
            )
            .await?
    };
    let line: Vec<String> = list
        .iter()
        .map(|f| format!("{}={}", f["type"].as_str().unwrap_or("?"), f["count"]))
        .collect();
    println!("{}", line.join(" "));
    Ok(0)
}

async fn ps(client: &Client, app: &str) -> Result<i32> {
    let jobs: Vec<Value> = client
        .call(Method::GET, &format!("/apps/{app}/jobs"), None::<&()>)
        .await?;
    println!(
        "{:<34} {:<10} {:<34} {:<10} RELEASE",
        "ID", "TYPE", "HOST", "STATE"
    );
    for j in jobs {
        let state = match (j["state"].as_str().unwrap_or(""), j["healthy"] == true) {
            ("running", false) => "starting".to_string(),
            (s, _) => s.to_string(),
        };
        println!(
            "{:<34} {:<10} {:<34} {:<10} {}",
            j["id"].as_str().unwrap_or(""),
            j["type"].as_str().unwrap_or(""),
            j["host"].as_str().unwrap_or(""),
            state,
            j["release"].as_str().unwrap_or("-")
        );
    }
    Ok(0)
}

/// Path with the deploy's time-out, if one was given.
fn with_timeout(path: String, o: DeployOpts) -> String {
    match o.timeout {
        Some(t) => format!("{path}?timeout={t}"),
        None => path,
    }
}

/// Prints what the release made, then (unless told not to) waits for its deploy:
/// exit 0 when it completed, 1 when it failed (and was rolled back).
async fn deployed(
    client: &Client,
    app: &str,
    rel: &Value,
    verb: &str,
    o: DeployOpts,
) -> Result<i32> {
    let id = rel["id"].as_str().unwrap_or("?");
    println!("{verb} release {id}");
    let Some(deploy) = rel["deploy"]["id"].as_str() else {
        return Ok(0);
    };
    if o.no_wait {
        println!("Deploying (flynn -a {app} release deploys follows it)");
        return Ok(0);
    }
    let budget = rel["deploy"]["timeout_secs"].as_u64().unwrap_or(60) + 30;
    let started = std::time::Instant::now();
    loop {
        let d: Value = client
            .call(
                Method::GET,
                &format!("/apps/{app}/deploys/{deploy}"),
                None::<&()>,
            )
            .await?;
        match d["state"].as_str() {
            Some("complete") => {
                println!("Deployed release {id}");
                return Ok(0);
            }
            Some("failed") => {
                eprintln!(
                    "Deploy of release {id} failed: {}",
                    d["reason"].as_str().unwrap_or("no reason given")
                );
                return Ok(1);
            }
            _ => {}
        }
        if started.elapsed().as_secs() > budget {
            bail!(
                "deploy {deploy} is still pending after {budget} s: see flynn -a {app} release deploys"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A cluster's name names a file (its CA for git) and goes into git's config (the
/// credential helper's command line): letters, digits, `-`, `_` and `.`, not first.
fn check_cluster_name(name: &str) -> Result<()> {
    let fits = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !fits {
        bail!(
            "cluster name {name:?}: use letters, digits, '-', '_' and '.' (not first), at most 64"
        );
    }
    Ok(())
}

async fn cluster(c: &ClusterCmd) -> Result<i32> {
    let mut rc = load_rc()?;
    match c {
        ClusterCmd::Add {
            name,
            url,
            key,
            default,
            tls_pin,
        } => {
            check_cluster_name(name)?;
            if !url.starts_with("http://") && !url.starts_with("https://") {
                bail!("the URL must start with https:// (as the bootstrap prints it)");
            }
            if url.starts_with("https://")
                && tls_pin.is_none()
                && !flynn_client::TlsOptions::from_env().is_set()
            {
                bail!(
                    "an https:// controller is verified against the cluster's CA: give its pin, \
                     flynn cluster add -p PIN {name} {url} KEY (the bootstrap's last line has it; \
                     `flynn-host tls pin` on a host prints it)"
                );
            }
            let entry = RcCluster {
                name: name.clone(),
                url: url.clone(),
                key: key.clone(),
                tls_pin: tls_pin.clone(),
            };
            if let Some(pin) = tls_pin {
                // Checked now, not at the first call: a typo is found while the
                // line the bootstrap printed is still at hand.
                flynn_client::TlsOptions {
                    ca: None,
                    pin: Some(pin.clone()),
                }
                .client_config()
                .context("the TLS pin (-p)")?;
            }
            rc.clusters.retain(|c| c.name != *name);
            rc.clusters.push(entry);
            if *default || rc.default.is_none() {
                rc.default = Some(name.clone());
            }
            save_rc(&rc)?;
            println!("Cluster {name} added");
        }
        ClusterCmd::List => {
            for c in &rc.clusters {
                let mark = if rc.default.as_deref() == Some(c.name.as_str()) {
                    " (default)"
                } else {
                    ""
                };
                println!("{:<16} {}{mark}", c.name, c.url);
            }
        }
        ClusterCmd::Remove { name } => {
            let before = rc.clusters.len();
            rc.clusters.retain(|c| c.name != *name);
            if rc.clusters.len() == before {
                bail!("no cluster named {name} (flynn cluster list)");
            }
            if rc.default.as_deref() == Some(name.as_str()) {
                rc.default = rc.clusters.first().map(|c| c.name.clone());
            }
            save_rc(&rc)?;
        }
        ClusterCmd::Default { name } => {
            if !rc.clusters.iter().any(|c| c.name == *name) {
                bail!("no cluster named {name} (flynn cluster list)");
            }
            rc.default = Some(name.clone());
            save_rc(&rc)?;
        }
    }
    Ok(0)
}

fn pairs(items: &[String]) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{p:?}: give KEY=VALUE"))
        })
        .collect()
}

async fn release(client: &Client, app: &str, r: ReleaseCmd) -> Result<i32> {
    match r {
        ReleaseCmd::Add {
            image,
            processes,
            env,
            deploy,
        } => {
            let procs = process_types(&processes)?;
            let body = json!({"image": image, "env": pairs(&env)?, "processes": procs});
            let rel: Value = client
                .call(
                    Method::POST,
                    &with_timeout(format!("/apps/{app}/releases"), deploy),
                    Some(&body),
                )
                .await?;
            return deployed(client, app, &rel, "Created", deploy).await;
        }
        ReleaseCmd::Show => {
            let info: Value = client
                .call(Method::GET, &format!("/apps/{app}"), None::<&()>)
                .await?;
            println!("{}", serde_json::to_string_pretty(&info["release"])?);
        }
        ReleaseCmd::List => {
            let rels: Vec<Value> = client
                .call(Method::GET, &format!("/apps/{app}/releases"), None::<&()>)
                .await?;
            println!("{:<32} {:<24} CREATED", "ID", "IMAGE");
            for r in rels {
                println!(
                    "{:<32} {:<24} {}",
                    r["id"].as_str().unwrap_or(""),
                    r["image"].as_str().unwrap_or(""),
                    r["created_at"].as_str().unwrap_or("")
                );
            }
        }
        ReleaseCmd::Rollback { deploy } => {
            let rel: Value = client
                .call(
                    Method::POST,
                    &with_timeout(format!("/apps/{app}/rollback"), deploy),
                    None::<&()>,
                )
                .await?;
            return deployed(client, app, &rel, "Rolled back to", deploy).await;
        }
        ReleaseCmd::Deploys => {
            let list: Vec<Value> = client
                .call(Method::GET, &format!("/apps/{app}/deploys"), None::<&()>)
                .await?;
            println!("{:<26} {:<26} {:<9} REASON", "DEPLOY", "RELEASE", "STATE");
            for d in list {
                println!(
                    "{:<26} {:<26} {:<9} {}",
                    d["id"].as_str().unwrap_or(""),
                    d["release"].as_str().unwrap_or(""),
                    d["state"].as_str().unwrap_or(""),
                    d["reason"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(0)
}

async fn env(client: &Client, app: &str, cmd: Option<EnvCmd>) -> Result<i32> {
    let current = || async {
        let info: Value = client
            .call(Method::GET, &format!("/apps/{app}"), None::<&()>)
            .await?;
        Ok::<_, anyhow::Error>(
            info["release"]["env"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
    };
    match cmd {
        None => {
            for (k, v) in current().await? {
                println!("{k}={}", v.as_str().unwrap_or(""));
            }
        }
        Some(EnvCmd::Get { key }) => match current().await?.get(&key) {
            Some(v) => println!("{}", v.as_str().unwrap_or("")),
            None => bail!("{key} is not set"),
        },
        Some(EnvCmd::Set { pairs: p, deploy }) => {
            let rel: Value = client
                .call(
                    Method::POST,
                    &with_timeout(format!("/apps/{app}/env"), deploy),
                    Some(&json!({"set": pairs(&p)?})),
                )
                .await?;
            return deployed(client, app, &rel, "Created", deploy).await;
        }
        Some(EnvCmd::Unset { keys, deploy }) => {
            let rel: Value = client
                .call(
                    Method::POST,
                    &with_timeout(format!("/apps/{app}/env"), deploy),
                    Some(&json!({"unset": keys})),
                )
                .await?;
            return deployed(client, app, &rel, "Created", deploy).await;
        }
    }
    Ok(0)
}

async fn route(client: &Client, app: &str, cmd: Option<RouteCmd>) -> Result<i32> {
    match cmd {
        None => {
            let routes: Vec<Value> = client
                .call(Method::GET, &format!("/apps/{app}/routes"), None::<&()>)
                .await?;
            println!("{:<40} {:<5} {:<32} SERVICE", "ID", "KIND", "ROUTE");
            for r in routes {
                let what = match r["kind"].as_str() {
                    Some("tcp") => format!(":{}", r["port"]),
                    _ => format!(
                        "{}{}",
                        r["domain"].as_str().unwrap_or(""),
                        r["path"].as_str().unwrap_or("")
                    ),
                };
                println!(
                    "{:<40} {:<5} {:<32} {}",
                    r["id"].as_str().unwrap_or(""),
                    r["kind"].as_str().unwrap_or(""),
                    what,
                    r["service"].as_str().unwrap_or("")
                );
            }
        }
        Some(RouteCmd::Add {
            kind,
            domain,
            path,
            sticky,
            port,
            tls_cert,
            tls_key,
            process_type,
        }) => {
            let body = match kind.as_str() {
                "http" => {
                    let d = domain.context("route add http DOMAIN: give the domain")?;
                    let mut body = json!({"kind": "http", "domain": d, "path": path, "sticky": sticky, "type": process_type});
                    if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
                        let read = |p: &PathBuf| {
                            std::fs::read_to_string(p)
                                .with_context(|| format!("reading {}", p.display()))
                        };
                        body["certificate"] = json!({"cert": read(&cert)?, "key": read(&key)?});
                    }
                    body
                }
                "tcp" if tls_cert.is_some() => {
                    bail!(
                        "a TCP route passes bytes through: the app's own TLS is its certificate (--tls-cert is for http routes)"
                    )
                }
                "tcp" => {
                    json!({"kind": "tcp", "port": port.context("route add tcp --port N: give the port")?, "type": process_type})
                }
                other => bail!("route kind {other:?}: give http or tcp"),
            };
            let r: Value = client
                .call(Method::POST, &format!("/apps/{app}/routes"), Some(&body))
                .await?;
            println!("Created route {}", r["id"].as_str().unwrap_or("?"));
        }
        Some(RouteCmd::Remove { id }) => {
            let _: Value = client
                .call(
                    Method::DELETE,
                    &format!("/apps/{app}/routes/{id}"),
                    None::<&()>,
                )
                .await?;
            println!("Removed route {id}");
        }
    }
    Ok(0)
}

fn git(args: &[&str]) -> Result<std::process::Output> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .context("running git (is it installed?)")
}

fn in_git_repo() -> bool {
    git(&["rev-parse", "--is-inside-work-tree"]).is_ok_and(|o| o.status.success())
}

/// For a cluster reached over HTTPS with a pin: its CA certificate, from the
/// controller's `GET /ca-cert`, checked against the pin and written beside the rc
/// file (`<rc>.d/<cluster>-ca.pem`), for git to verify the routers' certificate.
/// `None` for a cluster reached in plain HTTP (a host's own loopback).
async fn git_ca_file(client: &Client, cl: &RcCluster) -> Result<Option<PathBuf>> {
    let Some(pin) = cl
        .tls_pin
        .as_deref()
        .filter(|_| cl.url.starts_with("https://"))
    else {
        return Ok(None);
    };
    let response = client
        .request(Method::GET, "/ca-cert", None, flynn_client::empty())
        .await?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .context("reading the controller's CA certificate")?
        .to_bytes();
    let pem = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!(
            "the controller's CA certificate (GET /ca-cert): {status}: {}",
            pem.trim()
        );
    }
    let got = flynn_tls::pin_of_pem(&pem).context("the controller's CA certificate")?;
    // Compared as pins, not as text: the stored one may carry what parsing trims.
    if flynn_tls::Pin::parse(pin).ok().as_ref() != Some(&got) {
        bail!(
            "the controller's CA certificate is not the one pinned for cluster {} (pin {got}, expected {pin}): not trusting it for git",
            cl.name
        );
    }
    // Names added before names were checked may hold anything.
    check_cluster_name(&cl.name)?;
    let rc = rc_path()?;
    let dir = PathBuf::from(format!("{}.d", rc.display()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("{}-ca.pem", cl.name));
    flynn_fsutil::write_atomic(&file, pem.as_bytes(), flynn_fsutil::Durability::Durable)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(Some(file))
}

/// The remote `flynn` → `https://git.<domain>/<app>.git` (git verifying the routers'
/// certificate by the cluster's CA, `ca`), or `http://` without one, with this CLI
/// as git's credential helper for that host (the key stays in ~/.flynnrc, not in
/// .git/config).
fn add_git_remote(app: &str, domain: &str, cluster: &str, ca: Option<&Path>) -> Result<()> {
    let host = format!("git.{domain}");
    let scheme = if ca.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{host}/{app}.git");
    let set = if git(&["remote", "get-url", "flynn"])?.status.success() {
        git(&["remote", "set-url", "flynn", &url])?
    } else {
        git(&["remote", "add", "flynn", &url])?
    };
    if !set.status.success() {
        bail!(
            "adding the git remote flynn: {}",
            String::from_utf8_lossy(&set.stderr).trim()
        );
    }
    // This program as the user ran it: `flynn` is this binary under that name, so
    // the resolved path (flynn-host) would not be the CLI.
    let me = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .filter(|p| p.components().count() > 1)
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "flynn".to_string());
    if let Some(ca) = ca {
        let key = format!("http.https://{host}/.sslCAInfo");
        let out = git(&["config", &key, &ca.display().to_string()])?;
        if !out.status.success() {
            bail!(
                "setting git's CA for {host}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if std::env::var_os("GIT_SSL_CAINFO").is_some() {
            eprintln!(
                "warning: GIT_SSL_CAINFO is set in this environment and overrides the cluster's CA for git: \
                 unset it when you push to {host} (the CA is {})",
                ca.display()
            );
        }
    }
    let key = format!("credential.{scheme}://{host}.helper");
    let helper = format!("!'{me}' -c '{cluster}' git-credentials");
    let _ = git(&["config", "--unset-all", &key]);
    let out = git(&["config", "--add", &key, &helper])?;
    if !out.status.success() {
        bail!(
            "setting git's credential helper: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!("Added git remote flynn: {url}");
    Ok(())
}

/// `--process TYPE=COMMAND` flags as a release's processes (`sh -c COMMAND`; `web`
/// listens on $PORT, 8080).
fn process_types(processes: &[String]) -> Result<Value> {
    let mut procs = serde_json::Map::new();
    for p in processes {
        let (ty, cmd) = p
            .split_once('=')
            .with_context(|| format!("--process {p:?}: give TYPE=COMMAND"))?;
        let mut v = json!({"cmd": ["sh", "-c", cmd]});
        if ty == "web" {
            v["port"] = json!(8080);
        }
        procs.insert(ty.to_string(), v);
    }
    Ok(Value::Object(procs))
}

/// A file as a request body, read as it is sent: an archive of gigabytes is never
/// in memory.
fn file_body(mut file: tokio::fs::File, path: std::path::PathBuf) -> flynn_client::RequestBody {
    use tokio::io::AsyncReadExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::spawn(async move {
        loop {
            let mut buf = bytes::BytesMut::with_capacity(1 << 20);
            match file.read_buf(&mut buf).await {
                Ok(0) => return,
                Ok(_) => {
                    if tx.send(Ok(buf.freeze())).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let e =
                        std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()));
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let stream =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |c| {
            c.map(hyper::body::Frame::data)
        });
    http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(stream))
}

#[cfg(test)]
mod tests {
    use super::check_cluster_name;

    #[test]
    fn cluster_names_that_fit_a_file_and_git_config() {
        for ok in ["default", "prod-eu.1", "a_b"] {
            assert!(check_cluster_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "../x", "a/b", "it's", "a b", &"x".repeat(65)] {
            assert!(check_cluster_name(bad).is_err(), "{bad}");
        }
    }
}
