//! Benchmark of `git push` on three test hosts (namespaces on a switch, the cluster
//! bootstrapped with its git receivers; tests/grid/harness.rs), not a test: it
//! reports, it asserts nothing.
//!
//! Measured, per round and per app (a new app each round: a Python app without
//! dependencies, a Go module with a vendored module, a Node.js app with a package in
//! `node_modules/`): `git push` of the first commit to the app serving it through
//! the router, then of a one-line change to the change being served. Anchor, in the
//! same run: the same buildpack's `bin/compile` of the same source run directly in
//! a container of the same image on one host (`flynn-host run --rm`, an empty build
//! cache), which is the build alone; the difference is the receiver's, the build
//! job's, the release's and the deploy's.
//!
//! Run as root: `cargo bench -p flynn-host --bench gitpush` (ROUNDS=3,
//! APPS=python,go,node).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

#[path = "../tests/grid/harness.rs"]
mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Cluster, Flynn, stack_image, wait_for};

const TOKEN: &str = "gitpush-bench-token-0123456789";
/// git reaches `git.cluster.local` (HTTPS, the remote `flynn create` adds) at host 1.
const RESOLVE: &str = "http.curloptResolve=git.cluster.local:443:192.0.2.1";
const APP: &str = r#"import http.server, os
V = "version-1"
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = (V + "\n").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers()
        self.wfile.write(b)
http.server.HTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
"#;

/// One kind of app: its buildpack, its files (the first line of `version-1` is the
/// one the second push changes: it is in `main`, the file named first).
struct Kind {
    name: &'static str,
    buildpack: &'static str,
    files: &'static [(&'static str, &'static str)],
}

const GO_MAIN: &str = r#"package main

import (
	"fmt"
	"net/http"
	"os"

	"example.com/greet"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "version-1", greet.Who()) })
	http.ListenAndServe(":"+os.Getenv("PORT"), nil)
}
"#;

const NODE_SERVER: &str = r#"const http = require("http");
const greeting = require("greeting");
http.createServer((req, res) => res.end("version-1 " + greeting() + "\n")).listen(Number(process.env.PORT));
"#;

const KINDS: &[Kind] = &[
    Kind {
        name: "python",
        buildpack: "10-python",
        files: &[("app.py", APP), ("requirements.txt", "")],
    },
    Kind {
        name: "go",
        buildpack: "20-go",
        files: &[
            ("main.go", GO_MAIN),
            (
                "go.mod",
                "module example.com/web\n\ngo 1.19\n\nrequire example.com/greet v1.0.0\n",
            ),
            (
                "vendor/modules.txt",
                "# example.com/greet v1.0.0\n## explicit; go 1.19\nexample.com/greet\n",
            ),
            (
                "vendor/example.com/greet/greet.go",
                "package greet\n\nfunc Who() string { return \"greet\" }\n",
            ),
        ],
    },
    Kind {
        name: "node",
        buildpack: "30-nodejs",
        files: &[
            ("server.js", NODE_SERVER),
            (
                "package.json",
                r#"{"name": "web", "scripts": {"start": "node server.js"}, "dependencies": {"greeting": "1.0.0"}}"#,
            ),
            (
                "node_modules/greeting/package.json",
                r#"{"name": "greeting", "version": "1.0.0", "main": "index.js"}"#,
            ),
            (
                "node_modules/greeting/index.js",
                "module.exports = () => 'greeting';\n",
            ),
        ],
    },
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn git(f: &Flynn, dir: &Path, args: &[&str]) {
    let out = f
        .command_in(dir, "git")
        .args(["-c", RESOLVE])
        .args(args)
        // It would override the cluster's CA that `flynn create` set.
        .env_remove("GIT_SSL_CAINFO")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `git commit -q ARGS` as a bench user.
fn commit(f: &Flynn, dir: &Path, args: &[&str]) {
    let mut all = vec!["-c", "user.email=b@b", "-c", "user.name=b", "commit", "-q"];
    all.extend_from_slice(args);
    git(f, dir, &all);
}

fn serving(c: &Cluster, app: &str, want: &str) -> bool {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.switch))
        .args(["--", "curl", "-sS", "-m", "5", "-H"])
        .arg(format!("Host: {app}.cluster.local"))
        .arg("http://192.0.2.2/")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(want)
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let c = Cluster::bare_shared(3, &["--cluster-ttl", "5"], TOKEN);
    let stack = stack_image();
    for h in &c.hosts {
        h.import_platform_images();
        h.ok(&["import", stack.to_str().unwrap()]);
    }
    let out = c
        .on_switch()
        .args([
            "bootstrap",
            "--peers",
            "192.0.2.1,192.0.2.2,192.0.2.3",
            "--timeout",
            "180",
            "--json",
        ])
        .env("FLYNN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|e| e["data"]["key"].as_str().map(str::to_string))
        .unwrap();
    let f = Flynn::new(&c);
    f.add_cluster(&c, "default", 1, &key);
    let image = format!("flynn/slugbuilder:{}", env!("CARGO_PKG_VERSION"));
    let wanted = std::env::var("APPS").unwrap_or_else(|_| "python,go,node".into());
    let mut summary = Vec::new();
    for kind in KINDS
        .iter()
        .filter(|k| wanted.split(',').any(|w| w == k.name))
    {
        let (mut first, mut second, mut anchor) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            for (name, content) in kind.files {
                let p = d.join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, content).unwrap();
            }
            git(&f, d, &["init", "-q", "-b", "main"]);
            git(&f, d, &["add", "-A"]);
            commit(&f, d, &["-m", "v1"]);
            let app = format!("bench-{}{round}", kind.name);
            let out = f
                .command_in(d, f.path().to_str().unwrap())
                .args(["create", &app])
                .output()
                .unwrap();
            assert!(out.status.success());

            // The anchor: bin/compile of the same source in a container on host 1.
            let t = Instant::now();
            c.host(1).ok(&[
                "run",
                "--rm",
                "-v",
                &format!("{}:/src", d.display()),
                &image,
                "sh",
                "-c",
                &format!(
                    "mkdir -p /app /tmp/cache /tmp/env && cp -a /src/. /app/ && rm -rf /app/.git && /stack/buildpacks/{}/bin/compile /app /tmp/cache /tmp/env",
                    kind.buildpack
                ),
            ]);
            anchor.push(t.elapsed().as_secs_f64());

            let t = Instant::now();
            git(&f, d, &["push", "-q", "flynn", "main"]);
            wait_for("v1 served", Duration::from_secs(180), || {
                serving(&c, &app, "version-1")
            });
            first.push(t.elapsed().as_secs_f64());

            let main_file = d.join(kind.files[0].0);
            let src = std::fs::read_to_string(&main_file).unwrap();
            std::fs::write(&main_file, src.replace("version-1", "version-2")).unwrap();
            commit(&f, d, &["-am", "v2"]);
            let t = Instant::now();
            git(&f, d, &["push", "-q", "flynn", "main"]);
            wait_for("v2 served", Duration::from_secs(180), || {
                serving(&c, &app, "version-2")
            });
            second.push(t.elapsed().as_secs_f64());
            println!(
                "{} round {round}: first push {:.2} s, second push {:.2} s, bin/compile in a container {:.2} s",
                kind.name, first[round], second[round], anchor[round]
            );
        }
        let (a, b, k) = (median(first), median(second), median(anchor));
        let line = format!(
            "BENCH gitpush {}: median of {rounds}: first push to serving {a:.2} s, second (cached) {b:.2} s; anchor bin/compile in a container {k:.2} s; ratios {:.1}x, {:.1}x",
            kind.name,
            a / k,
            b / k
        );
        println!("{line}");
        summary.push(line);
    }
    for line in summary {
        println!("{line}");
    }
}
