//! Pulls from real registries (Debian's `docker-registry`, images pushed with skopeo),
//! all inside the daemon's network namespace: plain pulls and runs, digests, index
//! platform choice, zstd layers, Docker Hub names through a mirror, insecure registries,
//! basic auth, token auth, and, through a proxy, single-flight blobs, resumed and cut
//! downloads, corrupted blobs and a daemon killed mid-pull.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

mod common;
#[path = "support/registry.rs"]
mod registry;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, fixtures, tail};
use registry::{Auth, BlobRule, Proxy, Registry, TokenServer, check_events, free_port};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    fixtures().join(name).to_string_lossy().into_owned()
}

/// `POST /images/pull`: (status, events).
fn pull_api(d: &Daemon, body: Value) -> (u16, Vec<Value>) {
    let (status, text) = d.http("POST", "/images/pull", Some(&body.to_string()));
    if status != 200 {
        return (
            status,
            vec![serde_json::from_str(&text).unwrap_or(Value::Null)],
        );
    }
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    check_events(&events);
    (status, events)
}

/// Pulls through the API and expects success; returns the `done` event.
fn pull_ok(d: &Daemon, reference: &str, extra: Value) -> Value {
    let mut body = json!({ "reference": reference });
    if let (Some(b), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(extra.clone());
    }
    let (status, events) = pull_api(d, body);
    assert_eq!(status, 200, "{events:?}");
    let last = events.last().cloned().unwrap_or(Value::Null);
    assert_eq!(
        last["status"],
        "done",
        "pull {reference} failed: {events:?}\ndaemon log:\n{}",
        tail(&d.log_text(), 30)
    );
    last
}

/// Pulls through the API and expects the stream to end in an error; returns it.
fn pull_err(d: &Daemon, body: Value) -> String {
    let (status, events) = pull_api(d, body);
    assert_eq!(status, 200, "{events:?}");
    let last = events.last().cloned().unwrap_or(Value::Null);
    assert_eq!(last["status"], "error", "expected a failure: {events:?}");
    last["error"].as_str().unwrap_or_default().to_string()
}

fn images(d: &Daemon) -> Vec<Value> {
    serde_json::from_str(&d.ok(&["images", "--json"])).expect("images JSON")
}

fn image_named(d: &Daemon, name: &str) -> Option<Value> {
    images(d).into_iter().find(|i| {
        i["names"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x == name))
    })
}

/// The store holds nothing half-done: no temp files, and every layer directory is
/// complete (has its layer.json).
fn assert_store_clean(d: &Daemon) {
    let store = d.state_dir().join("images");
    let tmp: Vec<_> = std::fs::read_dir(store.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "tmp not empty: {tmp:?}");
    for entry in std::fs::read_dir(store.join("layers")).unwrap() {
        let path = entry.unwrap().path();
        assert!(
            path.join("layer.json").is_file(),
            "incomplete layer {}",
            path.display()
        );
    }
}

#[test]
fn pulls_runs_digests_platforms_and_zstd() {
    let d = Daemon::start();
    let reg = Registry::start(&d.netns, "127.0.0.1", Auth::None);
    let oci = fixture("busybox-oci");
    reg.push(
        &format!("oci:{oci}:layered"),
        "flynn/layered:1",
        None,
        false,
    );
    reg.push(
        &format!("oci:{oci}:busybox"),
        "flynn/busybox:latest",
        None,
        false,
    );
    reg.push(
        &format!(
            "oci:{}:docker.io/flynn-test/busybox-zstd:latest",
            fixture("busybox-zstd-oci")
        ),
        "flynn/zstd:latest",
        None,
        false,
    );
    reg.push(
        &format!("oci:{}:multiarch", fixture("multiarch-oci")),
        "flynn/multi:latest",
        None,
        true,
    );
    let r = &reg.addr;

    // A two-layer image: events in order, every layer fetched, then it runs.
    let layered = format!("{r}/flynn/layered:1");
    let (status, events) = pull_api(&d, json!({ "reference": layered }));
    assert_eq!(status, 200);
    assert_eq!(events[0]["status"], "resolved", "{events:?}");
    assert_eq!(events[0]["layers"].as_array().unwrap().len(), 2);
    assert_eq!(events[0]["platform"], "linux/amd64");
    let done: Vec<&Value> = events
        .iter()
        .filter(|e| e["status"] == "layer" && e["phase"] == "done")
        .collect();
    assert_eq!(done.len(), 2, "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(last["status"], "done");
    assert_eq!(last["downloaded"], true);
    assert_eq!(last["image"]["layers"].as_array().unwrap().len(), 2);
    let out = d.ok(&["run", "--rm", &layered]);
    assert!(out.contains("hello from app in /app with FOO=bar"), "{out}");
    assert_store_clean(&d);

    // Again: nothing to fetch.
    let again = pull_ok(&d, &layered, json!({}));
    assert_eq!(again["downloaded"], false);

    // The CLI, plain lines (not a terminal): Docker's words, the digest, the name.
    let zstd = format!("{r}/flynn/zstd:latest");
    let out = d.ok(&["pull", &zstd]);
    assert!(out.contains("latest: Pulling from"), "{out}");
    assert!(
        out.contains("Already exists"),
        "the zstd layer unpacks to busybox's: {out}"
    );
    let digest = out
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .expect("a Digest line")
        .to_string();
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {zstd}")),
        "{out}"
    );

    // By digest: the zstd layer is fetched (and unpacked) when nothing else has it.
    d.ok(&["rmi", &zstd]);
    d.ok(&["rmi", &layered]);
    assert!(images(&d).is_empty(), "{:?}", images(&d));
    let by_digest = format!("{r}/flynn/zstd@{digest}");
    let done = pull_ok(&d, &by_digest, json!({}));
    assert_eq!(done["digest"], digest.as_str());
    assert_eq!(
        done["image"]["names"],
        json!([]),
        "a digest pull names nothing"
    );
    let out = d.ok(&["run", "--rm", &by_digest, "cat", "/etc/motd"]);
    assert_eq!(out.trim(), "Welcome to the busybox test image");

    // A digest that is not there, a tag that is not there.
    let missing = format!("{r}/flynn/zstd@sha256:{}", "0".repeat(64));
    let err = pull_err(&d, json!({ "reference": missing }));
    assert!(err.contains("not found"), "{err}");
    let err = pull_err(&d, json!({ "reference": format!("{r}/flynn/zstd:nope") }));
    assert!(err.contains("tag nope not found"), "{err}");

    // An index: linux/amd64 by default, linux/arm64 when asked, a clear error otherwise.
    let multi = format!("{r}/flynn/multi:latest");
    let amd = pull_ok(&d, &multi, json!({}));
    assert_eq!(amd["image"]["architecture"], "amd64");
    let out = d.ok(&["run", "--rm", &multi, "cat", "/etc/motd"]);
    assert!(out.contains("Welcome"), "{out}");
    let out = d.ok(&["pull", "--platform", "linux/arm64", &multi]);
    assert!(out.contains("Status: Downloaded newer image"), "{out}");
    let arm = image_named(&d, &multi).expect("the arm64 image has the name now");
    assert_eq!(arm["architecture"], "arm64");
    // The arm64 variant of the fixture carries a marker file (its binaries are the
    // host's busybox, so it runs here).
    let out = d.ok(&["run", "--rm", &multi, "cat", "/etc/flynn-arch"]);
    assert_eq!(out.trim(), "arm64");
    let err = pull_err(&d, json!({ "reference": multi, "platform": "linux/s390x" }));
    assert!(
        err.contains("no image for linux/s390x") && err.contains("linux/amd64, linux/arm64/v8"),
        "{err}"
    );

    // `run` of an image that is not local pulls it first.
    let busybox = format!("{r}/flynn/busybox:latest");
    let out = d.cli(&["run", "--rm", &busybox, "echo", "pulled and ran"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "pulled and ran");
    assert!(stderr.contains("Unable to find image"), "{stderr}");
    // A run of a name no registry has fails as docker's does (125) and says why.
    let out = d.cli(&["run", "--rm", &format!("{r}/flynn/absent:1"), "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    // Requests that are wrong are refused before anything starts.
    let (status, body) = pull_api(&d, json!({ "reference": "Bad/Name" }));
    assert_eq!(status, 400, "{body:?}");
    let (status, body) = pull_api(&d, json!({ "reference": "busybox", "platform": "linux" }));
    assert_eq!(status, 400, "{body:?}");
    assert!(
        body[0]["error"].as_str().unwrap().contains("os/arch"),
        "{body:?}"
    );
    assert_store_clean(&d);
}

#[test]
fn docker_hub_names_via_a_mirror_and_insecure_registries() {
    // The insecure registry has an address that is not loopback (inside the test's own
    // namespace): plain HTTP to it only when the config says so.
    let insecure_ip = "192.0.2.10";
    let insecure = format!("{insecure_ip}:{}", free_port());
    let mirror = format!("127.0.0.1:{}", free_port());
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("host.json");
    std::fs::write(
        &config,
        json!({"registry": {"mirrors": {"docker.io": [format!("http://{mirror}")]}, "insecure": [insecure]}})
            .to_string(),
    )
    .unwrap();
    let mut d = Daemon::start();
    let ok = Command::new("ip")
        .args([
            "-n",
            &d.netns,
            "addr",
            "add",
            &format!("{insecure_ip}/32"),
            "dev",
            "lo",
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    let plain = Registry::start_at(&d.netns, &insecure, Auth::None);
    let hub_mirror = Registry::start_at(&d.netns, &mirror, Auth::None);
    let oci = fixture("busybox-oci");
    plain.push(
        &format!("oci:{oci}:busybox"),
        "tools/busybox:1",
        None,
        false,
    );
    hub_mirror.push(
        &format!("oci:{oci}:layered"),
        "library/busybox:latest",
        None,
        false,
    );

    // Without the config: HTTPS to a plain-HTTP registry fails, saying where.
    let err = pull_err(
        &d,
        json!({ "reference": format!("{insecure}/tools/busybox:1") }),
    );
    assert!(err.contains(&insecure), "{err}");
    // Docker Hub is not reachable from the namespace: without a mirror, an error.
    let err = pull_err(&d, json!({ "reference": "busybox" }));
    assert!(err.contains("registry-1.docker.io"), "{err}");

    d.kill9();
    d.extra_args = vec!["--config".into(), config.to_string_lossy().into_owned()];
    d.spawn();
    let done = pull_ok(&d, &format!("{insecure}/tools/busybox:1"), json!({}));
    assert_eq!(
        done["image"]["names"],
        json!([format!("{insecure}/tools/busybox:1")])
    );
    // `busybox` is docker.io/library/busybox:latest, served by the mirror.
    let out = d.ok(&["pull", "busybox"]);
    assert!(out.contains("Pulling from library/busybox"), "{out}");
    assert!(out.contains("docker.io/library/busybox:latest"), "{out}");
    let out = d.ok(&["images"]);
    assert!(out.lines().any(|l| l.starts_with("busybox ")), "{out}");
    let out = d.ok(&["run", "--rm", "busybox"]);
    assert!(
        out.contains("hello from app"),
        "the mirror's image runs: {out}"
    );
}

#[test]
fn basic_auth_and_token_auth() {
    let mut d = Daemon::start();
    let (user, password) = ("flynn", "s3cret-pass");
    let basic = Registry::start(
        &d.netns,
        "127.0.0.1",
        Auth::Basic {
            user: user.into(),
            password: password.into(),
        },
    );
    let oci = fixture("busybox-oci");
    basic.push(
        &format!("oci:{oci}:busybox"),
        "private/busybox:1",
        Some((user, password)),
        false,
    );
    let private = format!("{}/private/busybox:1", basic.addr);

    // No credentials, then a wrong password: refused, and the message says which.
    let err = pull_err(&d, json!({ "reference": private }));
    assert!(err.contains("denied") && err.contains("log in"), "{err}");
    let err = pull_err(
        &d,
        json!({ "reference": private, "auth": {"username": user, "password": "wrong"} }),
    );
    assert!(
        err.contains("denied") && err.contains("password is wrong"),
        "{err}"
    );
    assert!(images(&d).is_empty());

    // The CLI sends what the user's Docker config holds for the registry.
    let docker = tempfile::tempdir().unwrap();
    let auth = base64_of(&format!("{user}:{password}"));
    std::fs::write(
        docker.path().join("config.json"),
        json!({"auths": {basic.addr.clone(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let out = d
        .command()
        .args(["pull", &private])
        .env("DOCKER_CONFIG", docker.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.ok(&["rmi", &private]);

    // The daemon reads its own Docker config when the request carries none.
    d.kill9();
    d.extra_env = vec![(
        "DOCKER_CONFIG".into(),
        docker.path().to_string_lossy().into_owned(),
    )];
    d.spawn();
    pull_ok(&d, &private, json!({}));

    // Token auth: the registry sends us to the token server, which grants anonymous pulls.
    let tokens = TokenServer::start(&d.netns, None);
    let token_reg = Registry::start(&d.netns, "127.0.0.1", tokens.auth());
    token_reg.push(&format!("oci:{oci}:layered"), "team/layered:2", None, false);
    tokens.requests.lock().unwrap().clear();
    let layered = format!("{}/team/layered:2", token_reg.addr);
    let done = pull_ok(&d, &layered, json!({}));
    assert_eq!(done["image"]["layers"].as_array().unwrap().len(), 2);
    let requests = tokens.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|q| q.contains("scope=repository%3Ateam%2Flayered%3Apull")
                && q.contains("service=flynn-test-registry")),
        "the token server saw: {requests:?}"
    );
    let out = d.ok(&["run", "--rm", &layered]);
    assert!(out.contains("hello from app"), "{out}");
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The digest of the manifest's layers and config of an image in an OCI layout, by ref.
fn layout_blobs(layout: &str, reference: &str) -> (String, Vec<String>) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(format!("{layout}/index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == reference)
        .expect("ref in index.json");
    let hex = desc["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(format!("{layout}/blobs/sha256/{hex}")).unwrap())
            .unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (
        manifest["config"]["digest"].as_str().unwrap().to_string(),
        layers,
    )
}

#[test]
fn single_flight_resume_corruption_and_kill_through_a_proxy() {
    let mut d = Daemon::start();
    let reg = Registry::start(&d.netns, "127.0.0.1", Auth::None);
    let proxy = Proxy::start(&d.netns, &reg.addr);
    let oci = fixture("busybox-oci");
    let big_layout = fixture("big-oci");
    reg.push(&format!("oci:{oci}:layered"), "p/layered:1", None, false);
    reg.push(&format!("oci:{big_layout}:big"), "p/big:1", None, false);
    let (layered_config, layered_layers) = layout_blobs(&oci, "layered");
    let (_, big_layers) = layout_blobs(&big_layout, "big");
    let big_layer = big_layers.last().unwrap().clone();
    let layered = format!("{}/p/layered:1", proxy.addr);
    let big = format!("{}/p/big:1", proxy.addr);

    // Two pulls of the same image at once fetch each blob once. The layers are held back
    // a second, so the second pull surely asks while the first is fetching.
    for layer in &layered_layers {
        proxy.set_rule(
            layer,
            BlobRule {
                delay: Some(Duration::from_secs(1)),
                ..BlobRule::default()
            },
        );
    }
    let pulls: Vec<_> = (0..2)
        .map(|_| {
            d.command()
                .args(["pull", &layered])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for pull in pulls {
        let out = pull.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let gets = proxy.gets();
    for digest in layered_layers.iter().chain([&layered_config]) {
        let n = gets.iter().filter(|g| &g.digest == digest).count();
        assert_eq!(n, 1, "{digest} fetched {n} times: {gets:?}");
    }
    assert_eq!(images(&d).len(), 1);
    proxy.clear_rules();

    // A registry serving a wrong blob: the pull fails naming the blob, nothing of the
    // image is visible, and the store keeps working.
    proxy.set_rule(
        &big_layer,
        BlobRule {
            corrupt_from: Some(1 << 20),
            ..BlobRule::default()
        },
    );
    let err = pull_err(&d, json!({ "reference": big }));
    assert!(err.contains(&big_layer), "the error names the blob: {err}");
    assert!(err.contains("corrupt"), "{err}");
    assert!(image_named(&d, &big).is_none());
    assert_store_clean(&d);
    let out = d.ok(&["run", "--rm", &layered]);
    assert!(out.contains("hello from app"), "{out}");

    // A connection cut mid-blob: resumed where it broke (a Range request), verified whole.
    proxy.clear_rules();
    proxy.clear_gets();
    proxy.set_rule(
        &big_layer,
        BlobRule {
            cut_after: Some((4 << 20, 1)),
            ..BlobRule::default()
        },
    );
    let (_, events) = pull_api(&d, json!({ "reference": big }));
    assert_eq!(events.last().unwrap()["status"], "done", "{events:?}");
    assert!(
        events.iter().any(|e| e["phase"] == "resuming"),
        "{events:?}"
    );
    let ranges: Vec<_> = proxy
        .gets()
        .into_iter()
        .filter(|g| g.digest == big_layer)
        .map(|g| g.range)
        .collect();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    let resumed_at: u64 = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    assert!(resumed_at > 0, "the second request resumes: {ranges:?}");
    let out = d.ok(&["run", "--rm", &big, "wc", "-c", "/big.bin"]);
    assert!(out.contains("33554432"), "{out}");
    assert_store_clean(&d);

    // kill -9 of the daemon mid-pull (the big layer crawls), then a new daemon pulls
    // the image again: complete and consistent.
    d.ok(&["rmi", &big]);
    proxy.clear_rules();
    proxy.clear_gets();
    proxy.set_rule(
        &big_layer,
        BlobRule {
            rate: Some(2 << 20),
            ..BlobRule::default()
        },
    );
    let mut crawling = d
        .command()
        .args(["pull", &big])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.gets().iter().any(|g| g.digest == big_layer) {
        assert!(
            Instant::now() < deadline,
            "the pull never reached the big layer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    d.kill9();
    let _ = crawling.wait();
    let layers_dir = d.state_dir().join("images/layers");
    d.spawn();
    proxy.clear_rules();
    assert_store_clean(&d);
    assert!(
        image_named(&d, &big).is_none(),
        "no half-pulled image is visible"
    );
    let (_, events) = pull_api(&d, json!({ "reference": big }));
    assert_eq!(events.last().unwrap()["status"], "done", "{events:?}");
    let out = d.ok(&["run", "--rm", &big, "wc", "-c", "/big.bin"]);
    assert!(out.contains("33554432"), "{out}");
    assert_store_clean(&d);
    // Every layer directory belongs to an image.
    let used: std::collections::BTreeSet<String> = images(&d)
        .iter()
        .flat_map(|i| i["layers"].as_array().unwrap().clone())
        .map(|l| {
            l.as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect();
    d.kill9();
    d.spawn();
    let on_disk: std::collections::BTreeSet<String> = std::fs::read_dir(&layers_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, used);

    // On a terminal, a bar per layer with bytes, speed and ETA (the big layer crawls a
    // little so the bar is drawn while it moves).
    d.ok(&["rmi", &big]);
    proxy.set_rule(
        &big_layer,
        BlobRule {
            rate: Some(16 << 20),
            ..BlobRule::default()
        },
    );
    let inner = format!(
        "stty cols 150; nsenter --net=/run/netns/{} -- {} pull {big}",
        d.netns,
        common::BIN
    );
    let out = Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .env("FLYNN_HOST", d.url())
        .env("FLYNN_TOKEN", &d.token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    for part in [
        "Downloading [",
        "MiB/",
        "/s",
        "ETA",
        "Already exists",
        "Pull complete",
        "Status: Downloaded newer image",
    ] {
        assert!(
            screen.contains(part),
            "no {part:?} on the terminal: {screen}"
        );
    }
    assert!(
        screen.contains('\u{1b}'),
        "a terminal gets redrawn bars: {screen}"
    );
}
