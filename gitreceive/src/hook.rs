//! What a push runs (`flynn-host gitreceive-hook pre-receive|post-receive`, from the
//! repository's hooks, inside git-http-backend: everything written to stderr here
//! reaches the pushing client as `remote:` lines, while it happens).
//!
//! pre-receive, for a push to `main` or `master`:
//! 1. `git archive` of the pushed commit (still in git's quarantine) and the app's
//!    build cache go into `builds/<id>/`, served to the build job.
//! 2. The build job: a one-off job of the app from the `flynn/slugbuilder` image,
//!    placed by the scheduler through the controller (`POST /apps/{app}/jobs`), its
//!    log followed through the controller's relay to its host. It sends the slug,
//!    the new cache and its meta (the buildpack) back.
//! 3. The slug goes into the slug store by digest, and to every peer.
//! 4. A release: the slugbuilder image (pinned by the controller), the Procfile's
//!    types run by `/stack/runner TYPE`, the app's env plus `SLUG_URL` and
//!    `SLUG_DIGEST`, meta `git_commit`, `buildpack`, `slug`; then its deploy is
//!    waited for (a first release of a web app is scaled to web=1).
//!
//! Any failure exits 1: git refuses the push (its refs do not move) and the running
//! release is untouched. post-receive copies the repository and the build cache to
//! the peers.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flynn_client::Client;
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{Value, json};

use crate::store::Store;

const ZERO: &str = "0000000000000000000000000000000000000000";
/// How long a build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a first release's web job has to come up once scaled.
const SCALE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the build job's host is looked for among the live hosts.
const HOST_CHECK: Duration = Duration::from_secs(2);
/// The port a slug's web process listens on ($PORT).
const WEB_PORT: u16 = 8080;

#[derive(clap::Args, Debug)]
pub struct HookArgs {
    /// Which hook git runs: pre-receive (build and deploy) or post-receive (copies).
    pub hook: String,
    #[arg(long, env = "FLYNN_APP")]
    pub app: String,
    #[arg(long, env = "FLYNN_GITRECEIVE_DATA")]
    pub data: PathBuf,
    /// This receiver as build jobs reach it.
    #[arg(long, env = "FLYNN_GITRECEIVE_URL")]
    pub url: String,
    #[arg(long, env = "FLYNN_GITRECEIVE_PORT", default_value_t = crate::PORT)]
    pub port: u16,
    #[arg(long, env = "FLYNN_CONTROLLER_URL")]
    pub controller: String,
    #[arg(long, env = "FLYNN_CONTROLLER_KEY", hide_env_values = true)]
    pub key: String,
    #[arg(long, env = "FLYNN_TOKEN", hide_env_values = true)]
    pub token: String,
    #[arg(long, env = "FLYNN_HOST")]
    pub agent: String,
    #[arg(long, env = "FLYNN_SLUGBUILDER_IMAGE")]
    pub image: String,
}

/// The push's output: each line prefixed the way Heroku's is.
fn say(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "-----> {msg}");
    let _ = e.flush();
}

/// Runs a hook; the exit code git sees.
pub async fn run(args: HookArgs) -> i32 {
    let result = match args.hook.as_str() {
        "pre-receive" => pre_receive(&args).await,
        "post-receive" => post_receive(&args).await,
        other => Err(anyhow::anyhow!(
            "unknown hook {other:?}: pre-receive or post-receive"
        )),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, " !     {e:#}");
            let _ = writeln!(
                err,
                " !     push rejected: the running release is unchanged"
            );
            let _ = err.flush();
            1
        }
    }
}

/// Whether the controller knows the app.
pub async fn app_exists(controller: &str, key: &str, app: &str) -> Result<bool> {
    let c = Client::from_options(Some(controller), Some(key))?;
    match c
        .request(
            Method::GET,
            &format!("/apps/{app}"),
            None,
            flynn_client::empty(),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) => match e.downcast_ref::<flynn_client::ApiFailure>() {
            Some(f) if f.status == hyper::StatusCode::NOT_FOUND => Ok(false),
            _ => Err(e),
        },
    }
}

/// The (old, new, ref) lines git gives a hook on stdin.
fn updates() -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading the hook's input")?;
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [old, new, r] = f.as_slice() {
            out.push((old.to_string(), new.to_string(), r.to_string()));
        }
    }
    Ok(out)
}

async fn pre_receive(args: &HookArgs) -> Result<()> {
    let mut build = None;
    for (_, new, r) in updates()? {
        if r == "refs/heads/main" || r == "refs/heads/master" {
            if new == ZERO {
                bail!("{r} cannot be deleted: it is what the app is built from");
            }
            build = Some(new);
        } else {
            say(&format!("{r}: only main and master are built"));
        }
    }
    let Some(commit) = build else {
        return Ok(());
    };
    let started = Instant::now();
    let store = Store::open(&args.data).context("the receiver's data directory")?;
    let id = flynn_random::hex(16, flynn_random::Use::Secret)?;
    let dir = store.build_dir(&id);
    std::fs::create_dir_all(&dir)?;
    let result = build_and_release(args, &store, &dir, &id, &commit).await;
    let _ = std::fs::remove_dir_all(&dir);
    let release = result?;
    say(&format!(
        "Deployed release {release} in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn build_and_release(
    args: &HookArgs,
    store: &Store,
    dir: &Path,
    id: &str,
    commit: &str,
) -> Result<String> {
    let short = &commit[..commit.len().min(12)];
    say(&format!("Building {} from commit {short}", args.app));
    archive(commit, &dir.join("source.tar"))?;
    if store.cache(&args.app).is_file() {
        std::fs::copy(store.cache(&args.app), dir.join("cache.tgz"))?;
    }
    let controller = Client::from_options(Some(&args.controller), Some(&args.key))?;
    let app = &args.app;
    let build_url = format!("{}/builds/{id}", args.url.trim_end_matches('/'));
    // The app's environment is the buildpacks' ENV_DIR (Heroku's config vars at
    // build time); the builder writes each FLYNN_BUILD_ENV_NAME there as NAME.
    let info: Value = controller
        .call(Method::GET, &format!("/apps/{app}"), None::<&()>)
        .await
        .context("reading the app")?;
    let mut job_env = serde_json::Map::new();
    job_env.insert("FLYNN_BUILD_URL".into(), json!(build_url));
    if let Some(vars) = info["release"]["env"].as_object() {
        for (k, v) in vars {
            if k != "SLUG_URL" && k != "SLUG_DIGEST" && is_var_name(k) {
                job_env.insert(format!("FLYNN_BUILD_ENV_{k}"), v.clone());
            }
        }
    }
    let placed: Value = controller
        .call(
            Method::POST,
            &format!("/apps/{app}/jobs"),
            Some(&json!({
                "image": args.image,
                "cmd": ["/stack/builder"],
                "env": job_env,
                "keep": true,
            })),
        )
        .await
        .context("starting the build job")?;
    let host = placed["host_id"]
        .as_str()
        .context("the controller named no host for the build job")?;
    let job = placed["job"]["id"]
        .as_str()
        .context("the controller's answer has no job id")?
        .to_string();
    let on_host = Client::from_options(Some(&args.controller), Some(&args.key))?
        .with_prefix(&format!("/apps/{app}/hosts/{host}"));
    // A host that dies without closing its connections (power, network) would leave
    // the log stream open until the time-out: its leaving the cluster ends it too.
    let code = tokio::time::timeout(BUILD_TIMEOUT, async {
        tokio::select! {
            r = follow_job(&on_host, &job) => r,
            e = watch_host(args, host) => Err(e),
        }
    })
    .await;
    // Bounded: the job's host may be the one that is gone.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        on_host.request(
            Method::DELETE,
            &format!("/jobs/{job}?force=true"),
            None,
            flynn_client::empty(),
        ),
    )
    .await;
    match code {
        Err(_) => bail!("the build took more than {} s", BUILD_TIMEOUT.as_secs()),
        Ok(Err(e)) => return Err(e.context("following the build job")),
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => bail!("the build failed (exit code {n})"),
    }
    let slug_file = dir.join("slug.tgz");
    if !slug_file.is_file() {
        bail!("the build job ended without sending a slug");
    }
    let procfile = read_procfile(&slug_file)?;
    let types = crate::procfile::parse(&procfile).map_err(anyhow::Error::msg)?;
    if types.is_empty() {
        bail!("the slug's Procfile names no process type");
    }
    let meta_text = std::fs::read_to_string(dir.join("meta")).unwrap_or_default();
    let buildpack = meta_text
        .lines()
        .find_map(|l| l.strip_prefix("buildpack="))
        .unwrap_or("unknown")
        .to_string();
    let hex = store.add_slug(&slug_file)?;
    let copies = copy_to_peers(
        args,
        &format!("/slugs/{hex}.tgz"),
        &std::fs::read(store.slug(&hex))?,
    )
    .await;
    say(&format!(
        "Slug sha256:{} stored ({} cop{} on peers)",
        &hex[..12],
        copies,
        if copies == 1 { "y" } else { "ies" }
    ));

    // The release: the app's environment, the slug, the Procfile's types.
    let info: Value = controller
        .call(Method::GET, &format!("/apps/{app}"), None::<&()>)
        .await?;
    let mut env: BTreeMap<String, String> = info["release"]["env"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    env.insert(
        "SLUG_URL".into(),
        format!(
            "http://{}.discoverd:{}/slugs/{hex}.tgz",
            crate::SERVICE,
            args.port
        ),
    );
    env.insert("SLUG_DIGEST".into(), hex.clone());
    let processes: BTreeMap<String, Value> = types
        .keys()
        .map(|ty| {
            let mut p = json!({"cmd": ["/stack/runner", ty]});
            if ty == "web" {
                p["port"] = json!(WEB_PORT);
            }
            (ty.clone(), p)
        })
        .collect();
    let release: Value = controller
        .call(
            Method::POST,
            &format!("/apps/{app}/releases"),
            Some(&json!({
                "image": args.image,
                "env": env,
                "processes": processes,
                "meta": {"git_commit": commit, "buildpack": buildpack, "slug": format!("sha256:{hex}")},
            })),
        )
        .await
        .context("making the release")?;
    let rel_id = release["id"].as_str().unwrap_or("?").to_string();
    say(&format!("Release {rel_id}: deploying"));
    if let Some(deploy) = release["deploy"]["id"].as_str() {
        wait_deploy(&controller, app, deploy).await?;
    }
    if types.contains_key("web") {
        scale_first_web(&controller, app, &rel_id).await?;
    }
    // The build's cache becomes the app's (a failed build never gets here).
    let new_cache = dir.join("cache.tgz");
    if new_cache.is_file() {
        // Visible: a cache lost to a crash only makes the next build slower.
        flynn_fsutil::replace_with(&store.cache(app), flynn_fsutil::Durability::Visible, |f| {
            std::io::copy(&mut std::fs::File::open(&new_cache)?, f).map(drop)
        })?;
    }
    let routes: Value = controller
        .call(Method::GET, &format!("/apps/{app}/routes"), None::<&()>)
        .await
        .unwrap_or(Value::Null);
    if let Some(domain) = routes
        .as_array()
        .and_then(|r| r.iter().find_map(|r| r["domain"].as_str()))
    {
        say(&format!("{app} is at http://{domain}/"));
    }
    Ok(rel_id)
}

/// A name the builder can write as a file and a shell can export.
fn is_var_name(k: &str) -> bool {
    let mut b = k.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `git archive` of the pushed commit (readable in the hook: git's quarantine is
/// in the hook's environment).
fn archive(commit: &str, to: &Path) -> Result<()> {
    let out = std::fs::File::create(to)?;
    let status = std::process::Command::new("git")
        .args(["archive", "--format=tar", commit])
        .stdout(out)
        .status()
        .context("running git archive")?;
    if !status.success() {
        bail!("git archive {commit} failed ({status})");
    }
    Ok(())
}

/// Returns once `host` has been missing from the cluster's live hosts (the local
/// agent's view: hosts whose lease lives) twice in a row, 2 s apart.
async fn watch_host(args: &HookArgs, host: &str) -> anyhow::Error {
    let mut misses = 0;
    loop {
        tokio::time::sleep(HOST_CHECK).await;
        let listed = async {
            let agent = Client::from_options(Some(&args.agent), Some(&args.token))?;
            agent
                .call::<Vec<Value>>(Method::GET, "/cluster/hosts", None::<&()>)
                .await
        }
        .await;
        match listed {
            Ok(hosts) if !hosts.iter().any(|h| h["id"] == host) => misses += 1,
            Ok(_) => misses = 0,
            // The local agent not answering says nothing about the build's host.
            Err(_) => {}
        }
        if misses >= 2 {
            return anyhow::anyhow!(
                "the build job's host {host} left the cluster: push again to build elsewhere"
            );
        }
    }
}

/// Starts the job, prints its log as it comes, and returns its exit code.
async fn follow_job(on_host: &Client, job: &str) -> Result<i64> {
    let _: Value = on_host
        .call(Method::POST, &format!("/jobs/{job}/start"), None::<&()>)
        .await
        .context("starting the build job")?;
    let resp = on_host
        .request(
            Method::GET,
            &format!("/jobs/{job}/logs?follow=true"),
            None,
            flynn_client::empty(),
        )
        .await?;
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the build's log")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            if let Ok(entry) = serde_json::from_slice::<Value>(&line)
                && let Some(text) = entry["log"].as_str()
            {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(text.as_bytes());
                if !text.ends_with('\n') {
                    let _ = err.write_all(b"\n");
                }
                let _ = err.flush();
            }
        }
    }
    let exit: Value = on_host
        .call(Method::GET, &format!("/jobs/{job}/wait"), None::<&()>)
        .await
        .context("waiting for the build job")?;
    if let Some(e) = exit["error"].as_str() {
        bail!("the build job did not run: {e}");
    }
    exit["exit_code"]
        .as_i64()
        .context("the build job's exit has no code")
}

/// The Procfile in a slug (`./Procfile`).
fn read_procfile(slug: &Path) -> Result<String> {
    let f = std::fs::File::open(slug)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for entry in archive.entries().context("reading the slug")? {
        let mut entry = entry.context("reading the slug")?;
        let path = entry.path()?.into_owned();
        if path == Path::new("./Procfile") || path == Path::new("Procfile") {
            let mut text = String::new();
            entry
                .by_ref()
                .take(1 << 20)
                .read_to_string(&mut text)
                .context("the slug's Procfile")?;
            return Ok(text);
        }
    }
    bail!("the slug has no Procfile")
}

async fn wait_deploy(controller: &Client, app: &str, deploy: &str) -> Result<()> {
    loop {
        let d: Value = controller
            .call(
                Method::GET,
                &format!("/apps/{app}/deploys/{deploy}"),
                None::<&()>,
            )
            .await
            .context("following the deploy")?;
        match d["state"].as_str() {
            Some("complete") => return Ok(()),
            Some("failed") => bail!(
                "the deploy failed: {}",
                d["reason"].as_str().unwrap_or("no reason given")
            ),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A web app's first release runs one web job (as Flynn's receiver did): scaled
/// when the formation wants none, and waited for until it is healthy.
async fn scale_first_web(controller: &Client, app: &str, release: &str) -> Result<()> {
    let formation: Vec<Value> = controller
        .call(Method::GET, &format!("/apps/{app}/formation"), None::<&()>)
        .await?;
    let web = formation
        .iter()
        .find(|f| f["type"] == "web")
        .and_then(|f| f["count"].as_u64())
        .unwrap_or(0);
    if web > 0 {
        return Ok(());
    }
    say("Scaling web to 1");
    let _: Value = controller
        .call(
            Method::PUT,
            &format!("/apps/{app}/formation"),
            Some(&json!({"processes": {"web": 1}})),
        )
        .await
        .context("scaling web to 1")?;
    let deadline = Instant::now() + SCALE_TIMEOUT;
    loop {
        let jobs: Vec<Value> = controller
            .call(Method::GET, &format!("/apps/{app}/jobs"), None::<&()>)
            .await
            .unwrap_or_default();
        if jobs
            .iter()
            .any(|j| j["type"] == "web" && j["release"] == release && j["healthy"] == true)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the web job of release {release} was not up within {} s (flynn -a {app} log shows why)",
                SCALE_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The other receivers, as the local agent's discovery lists them (`IP:PORT`).
async fn peers(args: &HookArgs) -> Result<Vec<String>> {
    let agent = Client::from_options(Some(&args.agent), Some(&args.token))?;
    let state: Value = agent
        .call(
            Method::GET,
            &format!("/discovery/services/{}", crate::SERVICE),
            None::<&()>,
        )
        .await?;
    let me = args
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    Ok(state["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["addr"].as_str().map(str::to_string))
                .filter(|a| *a != me)
                .collect()
        })
        .unwrap_or_default())
}

/// PUTs `bytes` at `path` on every peer; how many took it. A peer that fails is
/// reported, not fatal: this instance holds the original.
async fn copy_to_peers(args: &HookArgs, path: &str, bytes: &[u8]) -> usize {
    let peers = match peers(args).await {
        Ok(p) => p,
        Err(e) => {
            say(&format!("warning: no peers to copy {path} to: {e:#}"));
            return 0;
        }
    };
    let mut n = 0;
    for peer in peers {
        let put = async {
            let c = Client::from_options(Some(&format!("http://{peer}")), Some(&args.token))?;
            c.request(
                Method::PUT,
                path,
                Some("application/octet-stream"),
                flynn_client::full(bytes.to_vec()),
            )
            .await
        };
        match put.await {
            Ok(_) => n += 1,
            Err(e) => say(&format!("warning: copying {path} to {peer}: {e:#}")),
        }
    }
    n
}

/// After the refs moved: the repository and the build cache go to the peers, so
/// the next push finds them wherever the router sends it.
async fn post_receive(args: &HookArgs) -> Result<()> {
    let _ = updates()?;
    let store = Store::open(&args.data)?;
    let app = &args.app;
    let repo = store.repo_tar(app)?;
    let n = copy_to_peers(args, &format!("/repos/{app}"), &repo).await;
    if let Ok(cache) = std::fs::read(store.cache(app)) {
        copy_to_peers(args, &format!("/caches/{app}"), &cache).await;
    }
    say(&format!("Repository copied to {n} peer(s)"));
    Ok(())
}
