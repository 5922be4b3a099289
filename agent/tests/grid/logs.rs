//! Job lines shipped to the log aggregators: two `flynn-host logaggregator` processes
//! (registered in discovery by themselves) on two hosts, labelled jobs on both; every
//! line reaches both aggregators in order, one aggregator killed and restarted loses
//! none (it fills from its peer, the shippers resume), a job does not wait for an
//! aggregator that is down, a job that ended and was removed is shipped all the same,
//! and `flynn log -f` through a controller shows lines of jobs on both hosts.
//! Both aggregator ports are TLS (each host's certificate, under one CA as a
//! bootstrap leaves them): the shippers and the controller verify it, and a
//! client without the CA, with another CA, or speaking plain TCP gets nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{BIN, Cluster, ETCD_IP, Host, tail, wait_for};

const TOKEN: &str = "logagg-test-token-0123456789";
const KEY: &str = "logs-test-controller-key-0123456789";
/// Lines each long job writes (one every 50 ms).
const LINES: usize = 300;

/// An aggregator process in a host's namespace.
struct Agg {
    netns: String,
    ip: String,
    child: Option<Child>,
    log: std::path::PathBuf,
    /// The host's platform TLS directory: its certificate, and the CA.
    tls: std::path::PathBuf,
}

impl Agg {
    fn start(h: &Host) -> Agg {
        let mut a = Agg {
            netns: h.netns.clone(),
            ip: h.ip.clone(),
            child: None,
            log: h.state.path().join("logagg.log"),
            tls: h.state.path().join("tls/platform"),
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", BIN, "logaggregator"])
            .args(["--syslog", &format!("{}:5140", self.ip)])
            .args(["--http", &format!("{}:5141", self.ip)])
            .args(["--etcd", &format!("http://{ETCD_IP}:2379")])
            .arg("--tls-dir")
            .arg(&self.tls)
            .env("FLYNN_TOKEN", TOKEN)
            .env("FLYNN_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let registered = self.log_text().matches("registered in discovery").count();
        wait_for(
            "the aggregator to register",
            Duration::from_secs(30),
            || self.log_text().matches("registered in discovery").count() > registered,
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// curl to this aggregator's HTTP API over HTTPS, trusting `ca` (none:
    /// curl's own roots): whether it succeeded, and its output.
    fn curl(&self, ca: Option<&std::path::Path>, path: &str) -> (bool, String) {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "curl", "-sS", "--max-time", "5"])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
        if let Some(ca) = ca {
            cmd.arg("--cacert").arg(ca);
        }
        let out = cmd
            .arg(format!("https://{}:5141{path}", self.ip))
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// The messages of `job` this aggregator holds, in its order.
    fn msgs(&self, job: &str) -> Vec<String> {
        let (_, out) = self.curl(
            Some(&self.tls.join("ca.pem")),
            &format!("/logs/demo?lines=100000&job={job}"),
        );
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["msg"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

impl Drop for Agg {
    fn drop(&mut self) {
        self.kill();
    }
}

fn expected(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix} {i}")).collect()
}

/// A labelled job writing `n` numbered lines, one every 50 ms, then idling.
fn writer(h: &Host, ty: &str, prefix: &str, n: usize) -> String {
    h.ok(&[
        "run",
        "-d",
        "-l",
        "flynn.app=demo",
        "-l",
        &format!("flynn.type={ty}"),
        "busybox",
        "sh",
        "-c",
        &format!(
            "i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo \"{prefix} $i\"; sleep 0.05; done; exec sleep 100000"
        ),
    ])
    .trim()
    .to_string()
}

/// Lines the job itself has logged (on its host, through the agent).
fn local_lines(h: &Host, job: &str) -> usize {
    String::from_utf8_lossy(&h.cli(&["logs", job]).stdout)
        .lines()
        .count()
}

#[test]
fn job_lines_reach_every_aggregator_through_a_restart_and_flynn_log() {
    let c = Cluster::start(2, &["--cluster-ttl", "3"]);
    c.wait_joined(2);
    for h in &c.hosts {
        h.import("busybox-docker.tar");
    }
    // One CA for both hosts, as the bootstrap's `tls` step leaves them.
    let (code, ca) = c.host(1).api("GET", "/cluster/tls", None);
    assert_eq!(code, 200, "{ca}");
    let (code, info) = c.host(2).api("PUT", "/cluster/tls", Some(&ca));
    assert_eq!(code, 200, "{info}");
    let a1 = Agg::start(c.host(1));
    let mut a2 = Agg::start(c.host(2));

    let web = writer(c.host(1), "web", "h1-web", LINES);
    let worker = writer(c.host(2), "worker", "h2-worker", LINES);
    // An unlabelled job is not shipped.
    let plain = c
        .host(1)
        .ok(&[
            "run",
            "-d",
            "busybox",
            "sh",
            "-c",
            "echo plain; exec sleep 100000",
        ])
        .trim()
        .to_string();

    // Lines from both hosts reach both aggregators.
    wait_for(
        "lines from both hosts at both aggregators",
        Duration::from_secs(60),
        || {
            [&a1, &a2]
                .iter()
                .all(|a| a.msgs(&web).len() >= 20 && a.msgs(&worker).len() >= 20)
        },
    );

    // Those lines came over TLS: the aggregators take nothing else. A client
    // without the cluster's CA, or with another CA, is refused the API; a line
    // sent in plain TCP to the shippers' port is never taken.
    let (ok, out) = a2.curl(None, "/health");
    println!("the aggregator's API without the cluster's CA: {out}");
    assert!(!ok, "{out}");
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca.pem");
    crate::harness::sh(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        other.path().join("ca.key").to_str().unwrap(),
        "-out",
        other_ca.to_str().unwrap(),
        "-days",
        "1",
        "-subj",
        "/CN=another CA",
    ]);
    let (ok, out) = a2.curl(Some(&other_ca), "/health");
    println!("the aggregator's API with another CA: {out}");
    assert!(!ok, "{out}");
    let (ok, out) = a2.curl(Some(&a2.tls.join("ca.pem")), "/health");
    assert!(ok, "with the cluster's CA: {out}");
    let plain_line = logagg::LogLine {
        app: "demo".into(),
        process_type: "plain".into(),
        job_id: "sent-in-clear".into(),
        host_id: "nobody".into(),
        stream: "stdout".into(),
        time: chrono::Utc::now(),
        seq: 1,
        msg: "sent in clear".into(),
    };
    let frame = String::from_utf8(plain_line.frame()).unwrap();
    let sent = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.host(1).netns))
        .args(["--", "bash", "-c"])
        .arg(format!(
            "exec 3<>/dev/tcp/{}/5140 && printf '%s' \"$0\" >&3 && sleep 1",
            a2.ip
        ))
        .arg(&frame)
        .status()
        .unwrap();
    assert!(sent.success());
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        a2.msgs("sent-in-clear").is_empty(),
        "a plain line was taken"
    );

    // One aggregator goes away: the jobs go on writing, the other keeps getting lines.
    a2.kill();
    let at_kill = local_lines(c.host(1), &web);
    let at_kill_a1 = a1.msgs(&web).len();
    wait_for(
        "the job to go on while an aggregator is down",
        Duration::from_secs(60),
        || local_lines(c.host(1), &web) >= at_kill + 40 && a1.msgs(&web).len() >= at_kill_a1 + 40,
    );

    // It comes back: it fills from its peer and the shippers resume where it stopped.
    a2.spawn();
    assert!(
        a2.log_text().contains("filled from a peer"),
        "{}",
        tail(&a2.log_text(), 20)
    );

    // A job that ends and is removed at once is shipped all the same.
    let quick = c.host(2).ok(&[
        "run",
        "--rm",
        "-l",
        "flynn.app=demo",
        "-l",
        "flynn.type=once",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo \"quick $i\"; done",
    ]);
    assert_eq!(quick.lines().count(), 5, "{quick}");
    let quick_id = {
        // The job's id is in the aggregators' lines; find it through its type.
        let mut id = String::new();
        wait_for("the quick job's lines", Duration::from_secs(30), || {
            let (_, text) = a1.curl(
                Some(&a1.tls.join("ca.pem")),
                "/logs/demo?lines=100&type=once",
            );
            if let Some(v) = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .next()
            {
                id = v["job_id"].as_str().unwrap_or("").to_string();
            }
            !id.is_empty()
        });
        id
    };

    // Every line of every job at both aggregators, in order, none twice.
    let want_web = expected("h1-web", LINES);
    let want_worker = expected("h2-worker", LINES);
    let want_quick = expected("quick", 5);
    wait_for(
        "every line at both aggregators",
        Duration::from_secs(120),
        || {
            [&a1, &a2].iter().all(|a| {
                a.msgs(&web) == want_web
                    && a.msgs(&worker) == want_worker
                    && a.msgs(&quick_id) == want_quick
            })
        },
    );
    assert!(a1.msgs(&plain).is_empty() && a2.msgs(&plain).is_empty());

    // flynn log through a controller (on the switch, which reaches every host).
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(BIN, dir.path().join("flynn")).unwrap();
    let mut controller = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.switch))
        .args([
            "--",
            BIN,
            "controller",
            "--listen",
            &format!("{ETCD_IP}:8081"),
        ])
        .args(["--etcd", &format!("http://{ETCD_IP}:2379")])
        .env("FLYNN_CONTROLLER_KEY", KEY)
        .env("FLYNN_LOGAGG_TOKEN", TOKEN)
        // The aggregators are verified against the hosts' CA.
        .env("FLYNN_TLS_CA", a1.tls.join("ca.pem"))
        .stderr(std::fs::File::create(dir.path().join("controller.log")).unwrap())
        .spawn()
        .unwrap();
    let flynn = |args: &[&str]| {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", c.switch))
            .arg("--")
            .arg(dir.path().join("flynn"))
            .args(args)
            .env("FLYNNRC", dir.path().join("flynnrc"))
            .env_remove("FLYNN_APP");
        cmd
    };
    let url = format!("http://{ETCD_IP}:8081");
    wait_for("the controller", Duration::from_secs(30), || {
        flynn(&["cluster", "add", "default", &url, KEY])
            .output()
            .unwrap()
            .status
            .success()
            && flynn(&["apps"]).output().unwrap().status.success()
    });
    assert!(
        flynn(&["create", "demo"])
            .output()
            .unwrap()
            .status
            .success()
    );

    let out = flynn(&["-a", "demo", "log", "-n", "1000", "-t", "web"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), LINES, "{}", tail(&text, 5));
    assert!(
        lines[0].ends_with(&format!(" demo[web.{web}]: h1-web 1")),
        "{}",
        lines[0]
    );
    let times: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");

    let mut follow = flynn(&["-a", "demo", "log", "-f", "-n", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    // Lines written after the follow started, on both hosts.
    std::thread::sleep(Duration::from_millis(500));
    let live1 = writer(c.host(1), "web", "live-h1", 3);
    let live2 = writer(c.host(2), "worker", "live-h2", 3);
    let mut seen = Vec::new();
    wait_for(
        "flynn log -f to show both hosts' lines",
        Duration::from_secs(60),
        || {
            while let Ok(l) = rx.try_recv() {
                seen.push(l);
            }
            seen.iter()
                .any(|l| l.ends_with(&format!("demo[web.{live1}]: live-h1 3")))
                && seen
                    .iter()
                    .any(|l| l.ends_with(&format!("demo[worker.{live2}]: live-h2 3")))
        },
    );
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = controller.kill();
    let _ = controller.wait();
    // The follow showed only new lines (-n 0), each once.
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "{seen:?}");
}
