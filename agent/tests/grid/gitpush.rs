//! `git push` to a cluster of three netns hosts, offline: the bootstrap starts two
//! git receivers behind the routers' `git.cluster.local` route; `flynn create`
//! adds the remote; a Python app without dependencies, a static site and a
//! Procfile-only shell app each build with our buildpacks in a build job and
//! serve through every host's router; a second push sends only the new objects
//! and restores the build cache; a failing build fails the push with the
//! buildpack's message and leaves the running release serving; a push without
//! the key (or with a wrong one) is refused.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::harness::{Cluster, Flynn, sh, stack_image, wait_for};
use crate::platform::{TOKEN, bootstrap, curl};

/// git reaches `git.cluster.local` at host 1's router (the test has no DNS): HTTPS,
/// the remote `flynn create` adds, and plain HTTP (to show the key is not taken there).
const RESOLVE: [&str; 2] = [
    "http.curloptResolve=git.cluster.local:443:192.0.2.1",
    "http.curloptResolve=git.cluster.local:80:192.0.2.1",
];

fn cluster() -> Cluster {
    let c = Cluster::bare_shared(3, &["--cluster-ttl", "3"], TOKEN);
    let stack = stack_image();
    for h in &c.hosts {
        h.import_platform_images();
        h.ok(&["import", stack.to_str().unwrap()]);
    }
    c
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn git(f: &Flynn, dir: &Path, args: &[&str]) -> Output {
    f.command_in(dir, "git")
        .args(["-c", RESOLVE[0], "-c", RESOLVE[1]])
        .args(args)
        // It would override the cluster's CA that `flynn create` set (see there).
        .env_remove("GIT_SSL_CAINFO")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("HOME", dir)
        .output()
        .unwrap()
}

fn git_ok(f: &Flynn, dir: &Path, args: &[&str]) -> String {
    let out = git(f, dir, args);
    assert!(out.status.success(), "git {args:?}:\n{}", text(&out));
    text(&out)
}

/// A repository with `files`, committed on main.
fn repo(f: &Flynn, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git_ok(f, dir.path(), &["init", "-q", "-b", "main"]);
    git_ok(f, dir.path(), &["config", "user.email", "test@flynn.local"]);
    git_ok(f, dir.path(), &["config", "user.name", "test"]);
    commit(f, dir.path(), files, "first");
    dir
}

fn commit(f: &Flynn, dir: &Path, files: &[(&str, &str)], msg: &str) -> String {
    for (name, content) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    git_ok(f, dir, &["add", "-A"]);
    git_ok(f, dir, &["commit", "-q", "-m", msg]);
    git_ok(f, dir, &["rev-parse", "HEAD"]).trim().to_string()
}

fn create(f: &Flynn, dir: &Path, app: &str) {
    let out = f
        .command_in(dir, f.path().to_str().unwrap())
        .args(["create", app])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "flynn create {app}: {t}");
    assert!(
        t.contains(&format!(
            "Added git remote flynn: https://git.cluster.local/{app}.git"
        )),
        "{t}"
    );
}

fn push(f: &Flynn, dir: &Path) -> Output {
    git(f, dir, &["push", "--progress", "flynn", "main"])
}

fn push_ok(f: &Flynn, dir: &Path) -> String {
    let out = push(f, dir);
    let t = text(&out);
    assert!(out.status.success(), "git push failed:\n{t}");
    t
}

/// The app's answer through every host's router, once all three give `want`.
fn serves(c: &Cluster, app: &str, want: &str) {
    let host = format!("Host: {app}.cluster.local");
    let mut last = Vec::new();
    wait_for(
        &format!("{app} serving {want:?} through every router"),
        Duration::from_secs(60),
        || {
            last = (1..=3)
                .map(|n| curl(c, &["-H", &host, &format!("http://192.0.2.{n}/")]))
                .collect();
            last.iter()
                .all(|(code, body)| *code == 200 && body.contains(want))
        },
    );
}

/// "Writing objects: 100% (N/N)": how many objects the push sent.
fn objects_written(push_output: &str) -> Option<u32> {
    let line = push_output
        .split(['\n', '\r'])
        .rfind(|l| l.contains("Writing objects: 100%"))?;
    let inner = line.split('(').nth(1)?.split('/').next()?;
    inner.trim().parse().ok()
}

const PY_APP: &str = r#"import http.server, os

GREETING = "hello from python v1"

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (GREETING + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
"#;

#[test]
fn git_push_builds_and_deploys_apps() {
    let c = cluster();
    let key = bootstrap(&c);
    let f = Flynn::new(&c);
    f.add_cluster(&c, "default", 1, &key);

    // A Python app without dependencies.
    let py = repo(&f, &[("app.py", PY_APP), ("requirements.txt", "")]);
    create(&f, py.path(), "py");
    let first_sha = git_ok(&f, py.path(), &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    let t = push_ok(&f, py.path());
    for want in [
        "Python app detected",
        "Deployed release",
        "py is at http://py.cluster.local/",
    ] {
        assert!(t.contains(want), "{want:?} not in the push's output:\n{t}");
    }
    println!("first push of py:\n{t}");
    let first_objects = objects_written(&t).unwrap_or_else(|| panic!("no object count:\n{t}"));
    serves(&c, "py", "hello from python v1");
    let rel: serde_json::Value =
        serde_json::from_str(&f.ok(&["-a", "py", "release", "show"])).unwrap();
    assert_eq!(rel["meta"]["git_commit"], first_sha.as_str(), "{rel}");
    assert_eq!(rel["meta"]["buildpack"], "10-python", "{rel}");
    assert!(
        rel["meta"]["slug"].as_str().unwrap().starts_with("sha256:"),
        "{rel}"
    );

    // A one-line change (and a post_compile hook that shows the build sees the
    // app's config vars): only the new objects go, the cache comes back.
    f.ok(&["-a", "py", "env", "set", "GREETING=hi-from-env"]);
    let second_sha = commit(
        &f,
        py.path(),
        &[
            ("app.py", &PY_APP.replace("python v1", "python v2")),
            (
                "bin/post_compile",
                "echo \"post_compile sees GREETING=$GREETING\"\n",
            ),
        ],
        "v2",
    );
    let t = push_ok(&f, py.path());
    let second_objects = objects_written(&t).unwrap_or_else(|| panic!("no object count:\n{t}"));
    println!("objects sent: first push {first_objects}, second push {second_objects}");
    // New: app.py's blob, bin/post_compile's blob, the bin tree, the root tree and
    // the commit; the whole history would be 9.
    assert!(
        second_objects == 5,
        "the second push sent {second_objects} objects (first: {first_objects}):\n{t}"
    );
    assert!(t.contains("Restoring the build cache"), "{t}");
    assert!(t.contains("post_compile sees GREETING=hi-from-env"), "{t}");
    serves(&c, "py", "hello from python v2");
    let rel: serde_json::Value =
        serde_json::from_str(&f.ok(&["-a", "py", "release", "show"])).unwrap();
    assert_eq!(rel["meta"]["git_commit"], second_sha.as_str(), "{rel}");

    // A failing build fails the push with the buildpack's message; v2 keeps serving.
    commit(
        &f,
        py.path(),
        &[("requirements.txt", "flask==3.0\n")],
        "needs flask",
    );
    let out = push(&f, py.path());
    let t = text(&out);
    assert!(!out.status.success(), "a failing build was accepted:\n{t}");
    assert!(
        t.contains("requirement flask has no wheel in vendor/"),
        "{t}"
    );
    assert!(t.contains("pre-receive hook declined"), "{t}");
    let rel: serde_json::Value =
        serde_json::from_str(&f.ok(&["-a", "py", "release", "show"])).unwrap();
    assert_eq!(rel["meta"]["git_commit"], second_sha.as_str(), "{rel}");
    serves(&c, "py", "hello from python v2");

    // A Python app with a dependency vendored as a wheel: installed once, then
    // taken from the build cache while requirements.txt and the wheels stay.
    let wheels = repo(
        &f,
        &[
            (
                "app.py",
                &PY_APP.replace(
                    "GREETING = \"hello from python v1\"",
                    "import greet\nGREETING = greet.WORDS",
                ),
            ),
            ("requirements.txt", "greet==1.0\n"),
        ],
    );
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("greet.py"), "WORDS = 'greet says hello'\n").unwrap();
    std::fs::create_dir_all(wheels.path().join("vendor")).unwrap();
    let zipped = std::process::Command::new("python3")
        .current_dir(src.path())
        .args(["-m", "zipfile", "-c"])
        .arg(wheels.path().join("vendor/greet-1.0-py3-none-any.whl"))
        .arg("greet.py")
        .status()
        .unwrap();
    assert!(zipped.success());
    commit(&f, wheels.path(), &[], "the wheel");
    create(&f, wheels.path(), "wheels");
    let t = push_ok(&f, wheels.path());
    assert!(t.contains("Installing greet-1.0-py3-none-any.whl"), "{t}");
    serves(&c, "wheels", "greet says hello");
    commit(&f, wheels.path(), &[("README", "a change\n")], "readme");
    let t = push_ok(&f, wheels.path());
    assert!(
        t.contains("Using cached dependencies (requirements.txt unchanged)"),
        "{t}"
    );
    assert!(!t.contains("Installing greet"), "{t}");
    serves(&c, "wheels", "greet says hello");

    // A static site.
    let site = repo(
        &f,
        &[
            ("index.html", "<h1>static site</h1>\n"),
            ("about.html", "about\n"),
        ],
    );
    create(&f, site.path(), "site");
    let t = push_ok(&f, site.path());
    assert!(t.contains("Static site app detected"), "{t}");
    serves(&c, "site", "<h1>static site</h1>");

    // A Procfile-only shell app.
    let shell = repo(
        &f,
        &[(
            "Procfile",
            "web: mkdir -p /tmp/w && echo \"shell app on $PORT\" > /tmp/w/index.html && exec httpd -f -p $PORT -h /tmp/w\n",
        )],
    );
    create(&f, shell.path(), "shell");
    let t = push_ok(&f, shell.path());
    assert!(t.contains("Procfile app detected"), "{t}");
    serves(&c, "shell", "shell app on 8080");

    // A Go module with a dependency vendored (a local module, no network): built
    // with -mod=vendor and no proxy; a second push compiles from the build cache.
    let go = repo(
        &f,
        &[
            ("go.mod", GO_MOD),
            ("main.go", GO_MAIN),
            ("vendor/modules.txt", GO_MODULES_TXT),
            ("vendor/example.com/greet/greet.go", GO_GREET),
        ],
    );
    create(&f, go.path(), "goapp");
    let t = push_ok(&f, go.path());
    println!("first push of goapp:\n{t}");
    for want in [
        "Go app detected",
        "Building example.com/web",
        "Built: bin/web",
    ] {
        assert!(t.contains(want), "{want:?} not in the push's output:\n{t}");
    }
    serves(&c, "goapp", "hello from go via a vendored module");
    let rel: serde_json::Value =
        serde_json::from_str(&f.ok(&["-a", "goapp", "release", "show"])).unwrap();
    assert_eq!(rel["meta"]["buildpack"], "20-go", "{rel}");
    commit(
        &f,
        go.path(),
        &[("main.go", &GO_MAIN.replace("hello from", "hi again from"))],
        "v2",
    );
    let t = push_ok(&f, go.path());
    assert!(t.contains("Restoring Go's build cache"), "{t}");
    serves(&c, "goapp", "hi again from go via a vendored module");
    // A requirement that is not vendored fails the push, saying how to vendor it.
    commit(
        &f,
        go.path(),
        &[(
            "go.mod",
            &format!("{GO_MOD}require example.com/absent v1.2.3\n"),
        )],
        "an unvendored requirement",
    );
    let out = push(&f, go.path());
    let t = text(&out);
    assert!(
        !out.status.success(),
        "a build without its module was accepted:\n{t}"
    );
    assert!(t.contains("go mod vendor"), "{t}");
    serves(&c, "goapp", "hi again from go via a vendored module");

    // A Node.js app with a dependency committed in node_modules/ (and an
    // index.html: the Node.js buildpack is tried before the static site's), started
    // by package.json's start script after its build script ran.
    let node = repo(
        &f,
        &[
            ("package.json", NODE_PACKAGE),
            ("server.js", NODE_SERVER),
            ("index.html", "<h1>not served as a static site</h1>\n"),
            (
                "node_modules/greeting/package.json",
                r#"{"name": "greeting", "version": "1.0.0", "main": "index.js"}"#,
            ),
            (
                "node_modules/greeting/index.js",
                "module.exports = (who) => 'hello from ' + who + ' with a vendored package';\n",
            ),
        ],
    );
    create(&f, node.path(), "nodeapp");
    let t = push_ok(&f, node.path());
    println!("first push of nodeapp:\n{t}");
    for want in [
        "Node.js app detected",
        "Using the committed node_modules/ (1 package(s))",
        "Running the build script",
    ] {
        assert!(t.contains(want), "{want:?} not in the push's output:\n{t}");
    }
    serves(
        &c,
        "nodeapp",
        "hello from node with a vendored package (built)",
    );
    let rel: serde_json::Value =
        serde_json::from_str(&f.ok(&["-a", "nodeapp", "release", "show"])).unwrap();
    assert_eq!(rel["meta"]["buildpack"], "30-nodejs", "{rel}");

    // The runner fetches a slug from any address of its URL's name: the first
    // instance of the service `slugs` accepts no connection (registered first, so
    // first in DNS answers), the second serves the slug.
    runner_tries_every_address(&c);

    // Rolling back goes to the previous slug without a build.
    f.ok(&["-a", "py", "release", "rollback"]);
    serves(&c, "py", "hello from python v1");
    let rel: serde_json::Value =
        serde_json::from_str(&f.ok(&["-a", "py", "release", "show"])).unwrap();
    assert_eq!(rel["meta"]["git_commit"], first_sha.as_str(), "{rel}");

    // An image archive imported through the controller (no registry): every host
    // holds it after, and it serves.
    let images = |n: u8| String::from_utf8_lossy(&c.host(n).cli(&["images"]).stdout).into_owned();
    assert!(!images(3).contains("flynn-test/iperf3"), "{}", images(3));
    // Created outside any git repository (no remote to add).
    let plain = tempfile::tempdir().unwrap();
    let out = f
        .command_in(plain.path(), f.path().to_str().unwrap())
        .args(["create", "imp"])
        .env("GIT_CEILING_DIRECTORIES", plain.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("git remote"), "{}", text(&out));
    let archive = crate::harness::fixtures().join("iperf3-docker.tar");
    let out = f.ok(&[
        "-a",
        "imp",
        "import",
        archive.to_str().unwrap(),
        "--process",
        "web=mkdir -p /tmp/w && echo imported app > /tmp/w/index.html && exec httpd -f -p $PORT -h /tmp/w",
    ]);
    assert!(out.contains("on 3 host(s)"), "{out}");
    for n in 1..=3 {
        assert!(
            images(n).contains("flynn-test/iperf3"),
            "host {n}: {}",
            images(n)
        );
    }
    f.ok(&["-a", "imp", "scale", "web=1"]);
    // The controller passes the archive on as it comes: a 32 MiB incompressible
    // layer moves the controllers' peak memory by a few MiB at most (printed: the
    // figure, not a bound; it held the archive whole, and a copy per host, before).
    let big = tempfile::tempdir().unwrap();
    let big_tar = big.path().join("big-docker.tar");
    sh(&[
        "skopeo",
        "copy",
        "-q",
        &format!(
            "oci:{}:big",
            crate::harness::fixtures().join("big-oci").display()
        ),
        &format!("docker-archive:{}:flynn-test/big:1", big_tar.display()),
    ]);
    // This cluster's controllers (other tests' may run beside them): host-network
    // jobs, so their network namespace is one of this cluster's hosts'.
    let ours = |pid: &str| {
        use std::os::unix::fs::MetadataExt;
        let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            return false;
        };
        c.hosts.iter().any(|h| {
            std::fs::metadata(format!("/run/netns/{}", h.netns))
                .is_ok_and(|m| m.dev() == ns.dev() && m.ino() == ns.ino())
        })
    };
    let peaks = || -> Vec<(String, u64)> {
        sh(&["pgrep", "-f", "flynn-host controller"])
            .split_whitespace()
            .filter(|pid| ours(pid))
            .filter_map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let kb = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some((pid.to_string(), kb))
            })
            .collect()
    };
    let before = peaks();
    let out = f.ok(&["-a", "imp", "import", big_tar.to_str().unwrap()]);
    assert!(out.contains("on 3 host(s)"), "{out}");
    let after = peaks();
    println!(
        "import of a {} MiB archive: controllers' peak RSS (KiB) before {before:?}, after {after:?}",
        std::fs::metadata(&big_tar).unwrap().len() >> 20
    );
    for n in 1..=3 {
        assert!(
            images(n).contains("flynn-test/big"),
            "host {n}: {}",
            images(n)
        );
    }
    // An archive every host refuses is refused, and names the hosts' reason.
    let junk = big.path().join("junk.tar");
    std::fs::write(&junk, vec![b'x'; 300_000]).unwrap();
    let out = f.run(&["-a", "imp", "import", junk.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("hosts refused the archive"),
        "{}",
        text(&out)
    );

    // A host without a release's image (as one that joined after the import
    // would be) is made to fetch it from a host that holds it, with its digests
    // (no registry has it), and then takes its jobs like the others.
    wait_for(
        "host 3 to let go of flynn-test/iperf3",
        Duration::from_secs(60),
        || {
            c.host(3)
                .cli(&["rmi", "flynn-test/iperf3:latest"])
                .status
                .success()
        },
    );
    assert!(!images(3).contains("flynn-test/iperf3"), "{}", images(3));
    let digest_on = |n: u8| -> Option<String> {
        let out = c.host(n).cli(&["images", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        list.iter()
            .find(|i| {
                i["names"].as_array().is_some_and(|n| {
                    n.iter()
                        .any(|n| n.as_str() == Some("docker.io/flynn-test/iperf3:latest"))
                })
            })
            .and_then(|i| i["manifest_digest"].as_str().map(str::to_string))
    };
    let held = digest_on(1).expect("host 1 holds the imported image");
    f.ok(&["-a", "imp", "release", "rollback"]);
    wait_for(
        "host 3 to fetch flynn-test/iperf3 from a peer",
        Duration::from_secs(90),
        || digest_on(3).as_deref() == Some(held.as_str()),
    );
    f.ok(&["-a", "imp", "scale", "web=4"]);
    serves(&c, "imp", "imported app");
    let imp_jobs = |n: u8| {
        let out = c.host(n).cli(&["ps", "--json"]);
        let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        jobs.iter()
            .filter(|j| j["config"]["labels"]["flynn.app"] == "imp" && j["state"] == "running")
            .count()
    };
    wait_for(
        "four imp jobs, one of them on host 3",
        Duration::from_secs(60),
        || imp_jobs(1) + imp_jobs(2) + imp_jobs(3) == 4 && imp_jobs(3) >= 1,
    );
    serves(&c, "imp", "imported app");

    // Without the key, or with a wrong one, the push is refused.
    let out = git(
        &f,
        py.path(),
        &[
            "-c",
            "credential.helper=",
            "push",
            "https://git.cluster.local/py.git",
            "main",
        ],
    );
    assert!(
        !out.status.success(),
        "a push without the key was accepted:\n{}",
        text(&out)
    );
    let out = git(
        &f,
        py.path(),
        &[
            "-c",
            "credential.helper=",
            "push",
            "https://flynn:not-the-key@git.cluster.local/py.git",
            "main",
        ],
    );
    let t = text(&out);
    assert!(
        !out.status.success(),
        "a push with a wrong key was accepted:\n{t}"
    );
    assert!(
        t.contains("Authentication failed") || t.contains("401"),
        "{t}"
    );
    serves(&c, "py", "hello from python v1");
}

/// The app's answer through the routers of `hosts`, once all give `want`.
fn serves_on(c: &Cluster, hosts: &[u8], app: &str, want: &str) {
    let host = format!("Host: {app}.cluster.local");
    wait_for(
        &format!("{app} serving {want:?} through routers {hosts:?}"),
        Duration::from_secs(90),
        || {
            hosts.iter().all(|n| {
                let (code, body) = curl(c, &["-H", &host, &format!("http://192.0.2.{n}/")]);
                code == 200 && body.contains(want)
            })
        },
    );
}

/// The host (test number) running the app's one-off build job (labelled
/// `flynn.type=run`; the scheduler lists only formations' jobs), as each host's
/// agent says.
fn build_host(c: &Cluster, app: &str) -> Option<u8> {
    (1..=3).find(|n| {
        let out = c.host(*n).cli(&["ps", "--json"]);
        let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        jobs.iter().any(|j| {
            let labels = &j["config"]["labels"];
            labels["flynn.app"] == app && labels["flynn.type"] == "run" && j["state"] == "running"
        })
    })
}

#[test]
fn a_host_lost_during_a_build_fails_the_push_cleanly_and_the_app_keeps_serving() {
    let mut c = cluster();
    let key = bootstrap(&c);
    let f = Flynn::new(&c);
    f.add_cluster(&c, "default", 1, &key);
    let py = repo(&f, &[("app.py", PY_APP), ("requirements.txt", "")]);
    create(&f, py.path(), "py");
    push_ok(&f, py.path());
    f.ok(&["-a", "py", "scale", "web=3"]);
    serves(&c, "py", "hello from python v1");

    // v2's build waits in its post_compile hook while the build's host is lost
    // (every process killed, and its link cut: see below).
    let hook = py.path().join("bin/post_compile");
    commit(
        &f,
        py.path(),
        &[
            ("app.py", &PY_APP.replace("python v1", "python v2")),
            (
                "bin/post_compile",
                "echo waiting in post_compile\nsleep 600\n",
            ),
        ],
        "v2, slow to build",
    );
    assert!(hook.is_file());
    let mut cmd = f.command_in(py.path(), "git");
    cmd.args(["-c", RESOLVE[0], "-c", RESOLVE[1], "push", "flynn", "main"])
        .env_remove("GIT_SSL_CAINFO")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("HOME", py.path());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let lost = loop {
        if let Some(n) = build_host(&c, "py") {
            break n;
        }
        if std::time::Instant::now() > deadline {
            let ps = c.host(1).cli(&["cluster", "ps", "--json"]);
            let push = rx.try_recv().ok().map(|o| text(&o.unwrap()));
            panic!(
                "no build job running after 60 s; cluster ps: {}\nthe push, if it ended: {push:?}",
                String::from_utf8_lossy(&ps.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    // Long enough for the job to reach its hook (the build itself takes ~1 s).
    std::thread::sleep(Duration::from_secs(3));
    println!("the build runs on host {lost}: losing it");
    // The link goes too (no connection of the host's is closed, as in a power
    // loss), unless it is host 1, whose router the push goes through: a client's
    // own connection to a vanished host hangs in any HTTP client, so there only its
    // processes die (the kernel resets their connections, as when a host crashes
    // with its network up).
    if lost != 1 {
        sh(&[
            "ip",
            "-n",
            &c.switch,
            "link",
            "set",
            &format!("p{lost}"),
            "down",
        ]);
    }
    c.host_mut(lost).kill9();
    for pid in sh(&["ip", "netns", "pids", &c.host(lost).netns]).split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .status();
    }

    // The push ends (it does not wait out the build's 10 minutes) and fails: either
    // its receiver saw the build's host leave, or its receiver was on that host.
    let out = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the push did not end within 120 s of the host's loss")
        .unwrap();
    let t = text(&out);
    println!("the push, with host {lost} lost:\n{t}");
    assert!(
        !out.status.success(),
        "the push succeeded without its build:\n{t}"
    );
    assert!(!t.contains("Deployed release"), "{t}");
    // The app keeps serving v1 through the routers left, from the jobs left and
    // their replacements, and its release is v1's.
    let left: Vec<u8> = (1..=3).filter(|n| *n != lost).collect();
    serves_on(&c, &left, "py", "hello from python v1");
    f.add_cluster(&c, "alive", left[0], &key);
    let rel: serde_json::Value =
        serde_json::from_str(&f.ok(&["-c", "alive", "-a", "py", "release", "show"])).unwrap();
    assert_eq!(rel["meta"]["buildpack"], "10-python", "{rel}");
    assert!(
        rel["env"]["SLUG_URL"].is_string() && rel["meta"]["git_commit"] != "",
        "{rel}"
    );
    let head = git_ok(&f, py.path(), &["rev-parse", "HEAD~1"]);
    assert_eq!(
        rel["meta"]["git_commit"],
        head.trim(),
        "still v1's release: {rel}"
    );
}

const GO_MOD: &str = "module example.com/web\n\ngo 1.19\n\nrequire example.com/greet v1.0.0\n";

const GO_MAIN: &str = r#"package main

import (
	"fmt"
	"net/http"
	"os"

	"example.com/greet"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from "+greet.Who())
	})
	if err := http.ListenAndServe(":"+os.Getenv("PORT"), nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
"#;

/// What `go mod vendor` writes for the one requirement.
const GO_MODULES_TXT: &str =
    "# example.com/greet v1.0.0\n## explicit; go 1.19\nexample.com/greet\n";

const GO_GREET: &str = "package greet\n\n// Who is the greeter.\nfunc Who() string { return \"go via a vendored module\" }\n";

const NODE_PACKAGE: &str = r#"{
  "name": "nodeapp",
  "version": "1.0.0",
  "scripts": {
    "build": "echo '(built)' > built.txt",
    "start": "node server.js"
  },
  "dependencies": {"greeting": "1.0.0"}
}
"#;

const NODE_SERVER: &str = r#"const http = require("http");
const fs = require("fs");
const greeting = require("greeting");
const built = fs.readFileSync("built.txt", "utf8").trim();
http.createServer((req, res) => {
  res.end(greeting("node") + " " + built + "\n");
}).listen(Number(process.env.PORT));
"#;

fn runner_tries_every_address(c: &Cluster) {
    let image = format!("flynn/slugbuilder:{}", env!("CARGO_PKG_VERSION"));
    let watch_count = |n: usize| {
        wait_for(
            &format!("{n} instance(s) of slugs"),
            Duration::from_secs(30),
            || {
                let out = c.host(1).cli(&["discover", "list", "slugs", "--json"]);
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                v[0]["instances"].as_array().map_or(0, Vec::len) == n
            },
        )
    };
    // Nothing listens on 8000 in this job: its connections are refused.
    let dead = c
        .host(2)
        .ok(&["run", "-d", "-s", "slugs:8000", "busybox", "sleep", "600"]);
    watch_count(1);
    let serving = c.host(3).ok(&[
        "run",
        "-d",
        "-s",
        "slugs:8000",
        &image,
        "sh",
        "-c",
        "mkdir -p /s /p && printf 'web: echo ran from the slug on $PORT\\n' > /p/Procfile && \
         tar -czf /s/slug.tgz -C /p . && exec httpd -f -p 8000 -h /s",
    ]);
    watch_count(2);
    let answer = c
        .host(1)
        .ok(&["run", "--rm", "busybox", "nslookup", "slugs.discoverd"]);
    println!("slugs.discoverd: {answer}");
    let dead_ip = c.host(2).ip_of(dead.trim());
    let pos = |ip: &str| answer.find(&format!("Address: {ip}\n"));
    let serving_ip = c.host(3).ip_of(serving.trim());
    assert!(
        pos(&dead_ip).is_some() && pos(&dead_ip) < pos(&serving_ip),
        "the refusing instance {dead_ip} is not first in the answer:\n{answer}"
    );
    let out = c.host(1).cli(&[
        "run",
        "--rm",
        "-e",
        "SLUG_URL=http://slugs.discoverd:8000/slug.tgz",
        "-e",
        "PORT=5000",
        &image,
        "/stack/runner",
        "web",
    ]);
    let t = text(&out);
    println!("the runner, its first address refusing:\n{t}");
    assert!(out.status.success(), "{t}");
    assert!(t.contains("ran from the slug on 5000"), "{t}");
    assert!(
        t.contains(&format!("fetching the slug from {dead_ip}:8000")),
        "{t}"
    );
    for (n, id) in [(2, dead.trim()), (3, serving.trim())] {
        c.host(n).ok(&["rm", "-f", id]);
    }
}
