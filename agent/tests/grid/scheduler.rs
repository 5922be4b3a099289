//! The scheduler on a bootstrapped cluster of three netns hosts (real etcd, real
//! agents and containers; the two schedulers are jobs of the flynn/host image):
//! spread, images pinned by digest, ephemeral jobs (followed, piped, on a terminal),
//! omni on every host and on a host that joins later, a job too large for every host
//! blocked with its reason, restart policies, leader failover within the lease
//! without restarts, a host's power cut healed within its lease without ever running
//! more than wanted, drain without dropping below the count, crash back-off, and
//! bounded history.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, Host, Terminal, wait_for};

const TOKEN: &str = "scheduler-test-token-0123456789";
/// The hosts' lease (`--cluster-ttl`).
const TTL: Duration = Duration::from_secs(3);
/// The schedulers' own lease (scheduler-service's `LEASE_TTL`).
const SCHEDULER_TTL: Duration = Duration::from_secs(5);

pub(crate) fn bootstrap_with(c: &Cluster, peers: &str, token: &str) {
    let out = c
        .on_switch()
        .args(["bootstrap", "--peers", peers, "--timeout", "90"])
        .env("FLYNN_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bootstrap(c: &Cluster, peers: &str) {
    bootstrap_with(c, peers, TOKEN);
}

pub(crate) fn prepare(c: &Cluster, i: u8) {
    c.host(i).import_platform_images();
}

/// Jobs of `app`/`ty` per host id, as `cluster ps` shows them.
fn placement(c: &Cluster, via: u8, app: &str, ty: &str) -> BTreeMap<String, usize> {
    let out = c.host(via).cli(&["cluster", "ps", "--json"]);
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut m = BTreeMap::new();
    for j in jobs.iter().filter(|j| {
        j["app"] == app
            && j["process_type"] == ty
            && j["state"] != "stopping"
            && j["state"] != "exited"
    }) {
        *m.entry(j["host"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

fn total(m: &BTreeMap<String, usize>) -> usize {
    m.values().sum()
}

/// Jobs of demo's type `ty` running on the hosts `on`, as their agents say (the
/// truth, not the scheduler's view of its last pass).
fn running(c: &Cluster, on: &[u8], ty: &str) -> usize {
    on.iter()
        .map(|n| {
            c.host(*n)
                .jobs_labelled(&format!("flynn.formation=demo/{ty}"))
                .iter()
                .filter(|j| j["state"] == "running")
                .count()
        })
        .sum()
}

/// Records (finished jobs too) of demo's type `ty` on the hosts `on`.
fn records(c: &Cluster, on: &[u8], ty: &str) -> usize {
    on.iter()
        .map(|n| {
            c.host(*n)
                .jobs_labelled(&format!("flynn.formation=demo/{ty}"))
                .len()
        })
        .sum()
}

/// The formation `ty` of app demo, as `cluster formations --json` shows it.
fn formation(h: &Host, ty: &str) -> serde_json::Value {
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&h.cli(&["cluster", "formations", "--json"]).stdout)
            .unwrap_or_default();
    list.into_iter()
        .find(|f| f["formation"]["app"] == "demo" && f["formation"]["process_type"] == ty)
        .unwrap_or_default()
}

/// The manifest digest under which `h` holds the image named `full`.
fn digest_of(h: &Host, full: &str) -> String {
    let (_, images) = h.api("GET", "/images", None);
    images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["names"].as_array().unwrap().iter().any(|n| n == full))
        .unwrap_or_else(|| panic!("host {} holds no {full}: {images}", h.n))["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The host (1..=3, the etcd members) whose etcd member leads, asked of each member
/// with the host's client certificate.
fn etcd_leader(c: &Cluster) -> Option<u8> {
    (1..=3u8).find(|n| {
        let h = c.host(*n);
        let dir = h.state.path().join("tls/platform");
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", h.netns))
            .args(["--", "curl", "-sS", "-m", "3", "-X", "POST", "-d", "{}"])
            .arg("--cacert")
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"))
            .arg(format!("https://{}:2379/v3/maintenance/status", h.ip))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["leader"].is_string() && v["leader"] == v["header"]["member_id"]
    })
}

/// The leading scheduler as discovery says: (its instance id, the host it runs on).
fn scheduler_leader(c: &Cluster) -> Option<(String, u8)> {
    let l: serde_json::Value = serde_json::from_slice(
        &c.host(1)
            .cli(&["discover", "list", "flynn-scheduler", "--json"])
            .stdout,
    )
    .unwrap_or_default();
    let id = l[0]["leader"].as_str()?.to_string();
    let inst = l[0]["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id.as_str())?
        .clone();
    let addr = inst["addr"].as_str()?;
    let host = c
        .hosts
        .iter()
        .find(|h| addr.starts_with(&format!("{}:", h.ip)))?
        .n;
    Some((id, host))
}

#[test]
fn the_scheduler_spreads_blocks_heals_fails_over_and_drains() {
    // It holds the heal and the failover to their bounds: no other cluster competes
    // for the cores.
    let _alone = crate::harness::alone();
    let ttl = TTL.as_secs().to_string();
    let mut c = Cluster::bare_shared(3, &["--cluster-ttl", &ttl], TOKEN);
    for i in 1..=3 {
        prepare(&c, i);
    }
    bootstrap(&c, "192.0.2.1,192.0.2.2,192.0.2.3");
    let h1 = c.host(1);
    h1.ok(&[
        "cluster",
        "scale",
        "web=5",
        "--app",
        "demo",
        "--image",
        "busybox",
        "-s",
        "demo-web:8080",
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    wait_for("5 web jobs", Duration::from_secs(60), || {
        total(&placement(&c, 1, "demo", "web")) == 5
    });
    let mut spread: Vec<usize> = placement(&c, 1, "demo", "web").into_values().collect();
    spread.sort();
    assert_eq!(spread, [1, 2, 2], "a formation of 5 spreads 2/2/1");

    // The image's name was resolved to the digest host 1 holds it under, and every
    // job, on every host, was created from that digest.
    let busybox = "docker.io/library/busybox:latest";
    let pinned = format!("{busybox}@{}", digest_of(h1, busybox));
    assert_eq!(formation(h1, "web")["formation"]["image"], pinned.as_str());
    for n in 1..=3 {
        for j in c.host(n).jobs_labelled("flynn.formation=demo/web") {
            assert_eq!(j["image"], pinned.as_str(), "host {n}: {j}");
        }
    }

    // An ephemeral job: placed by the scheduler, followed (or attached) where it runs.
    let out = h1.ok(&[
        "cluster",
        "run",
        "--rm",
        "--app",
        "demo",
        "busybox",
        "echo",
        "hi-from-the-cluster",
    ]);
    assert_eq!(out, "hi-from-the-cluster\n");
    let mut child = h1
        .command()
        .args([
            "cluster", "run", "-i", "--rm", "--app", "demo", "busybox", "cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    // On a terminal: `-it` gives the job a terminal of the user's size, keys reach
    // it, and its exit code comes back.
    let mut cmd = h1.command();
    cmd.args([
        "cluster", "run", "-it", "--rm", "--app", "demo", "busybox", "sh",
    ]);
    let mut term = Terminal::spawn(cmd, 30, 100);
    let within = Duration::from_secs(30);
    let mut at = term.expect(0, "# ", within);
    term.type_keys("tty; stty size; echo sum-$((40+2))\r");
    at = term.expect(at, "/dev/pts/", within);
    at = term.expect(at, "30 100", within);
    term.expect(at, "sum-42", within);
    term.type_keys("exit 4\r");
    let code = term.wait(within);
    assert_eq!(code, Some(4), "{}", term.screen());

    // Omni: one on every host.
    h1.ok(&[
        "cluster", "scale", "agent", "--omni", "--app", "demo", "--image", "busybox", "--",
        "sleep", "1d",
    ]);
    wait_for(
        "an agent job on every host",
        Duration::from_secs(60),
        || {
            let p = placement(&c, 1, "demo", "agent");
            p.len() == 3 && p.values().all(|n| *n == 1)
        },
    );
    // Too large for every host: blocked, with the reason.
    h1.ok(&[
        "cluster", "scale", "huge=1", "--app", "demo", "--image", "busybox", "-m", "100000g", "--",
        "sleep", "1d",
    ]);
    wait_for("the huge job blocked", Duration::from_secs(20), || {
        h1.ok(&["cluster", "formations"])
            .lines()
            .any(|l| l.contains("huge") && l.contains("1 missing"))
    });
    let formations = h1.ok(&["cluster", "formations"]);
    assert!(
        formations.contains("web") && formations.contains("5"),
        "{formations}"
    );

    // A fourth host joins: the omni type runs there too.
    c.add_host(4, &["--cluster-ttl", &ttl]);
    prepare(&c, 4);
    bootstrap(&c, "192.0.2.1,192.0.2.2,192.0.2.3,192.0.2.4");
    wait_for(
        "an agent job on host 4 too",
        Duration::from_secs(60),
        || placement(&c, 1, "demo", "agent").len() == 4,
    );

    // Pinned and run once: an image only host 4 holds (its entrypoint prints a line
    // and exits 0), scaled from host 4 with `--restart never`. Both jobs go to host
    // 4, the one host holding that digest; they finish, stay finished, and are not
    // run again.
    let (h1, h4) = (c.host(1), c.host(4));
    h4.import("layered-docker.tar");
    let layered = "docker.io/flynn-test/layered:latest";
    let layered_pin = format!("{layered}@{}", digest_of(h4, layered));
    h4.ok(&[
        "cluster",
        "scale",
        "hello=2",
        "--app",
        "demo",
        "--image",
        "flynn-test/layered",
        "--restart",
        "never",
    ]);
    // (The scheduler lists formations as of its last pass.)
    wait_for(
        "the hello formation listed",
        Duration::from_secs(10),
        || !formation(h4, "hello").is_null(),
    );
    let hello = formation(h4, "hello");
    assert_eq!(hello["formation"]["image"], layered_pin.as_str());
    assert_eq!(hello["formation"]["restart"], "never");
    wait_for("2 finished hello jobs", Duration::from_secs(60), || {
        formation(h4, "hello")["finished"] == 2
    });
    // On-failure: a job that exits 0 is done as well.
    h1.ok(&[
        "cluster",
        "scale",
        "once=2",
        "--app",
        "demo",
        "--image",
        "busybox",
        "--restart",
        "on-failure",
        "--",
        "true",
    ]);
    wait_for("2 finished once jobs", Duration::from_secs(60), || {
        formation(h1, "once")["finished"] == 2
    });
    std::thread::sleep(Duration::from_secs(3));
    let hello_jobs = h4.jobs_labelled("flynn.formation=demo/hello");
    assert_eq!(hello_jobs.len(), 2, "{hello_jobs:?}");
    assert!(
        hello_jobs.iter().all(|j| j["state"] == "exited"
            && j["exit"]["exit_code"] == 0
            && j["image"] == layered_pin.as_str()),
        "{hello_jobs:?}"
    );
    assert_eq!(records(&c, &[1, 2, 3], "hello"), 0, "only host 4 holds it");
    assert_eq!(records(&c, &[1, 2, 3, 4], "once"), 2, "not run again");
    assert_eq!(formation(h1, "hello")["running"], 0);

    // Leader failover: the leading scheduler's job is killed; the other leads within
    // the schedulers' lease, and nothing is restarted.
    let before: Vec<serde_json::Value> =
        serde_json::from_slice(&c.host(1).cli(&["cluster", "ps", "--json"]).stdout).unwrap();
    let (old_leader, leader_host) = scheduler_leader(&c).expect("a leading scheduler");
    c.host(leader_host).ok(&["kill", "flynn-scheduler"]);
    let killed_at = Instant::now();
    wait_for("another scheduler to lead", SCHEDULER_TTL * 3, || {
        scheduler_leader(&c).is_some_and(|(id, _)| id != old_leader)
    });
    let failover = killed_at.elapsed();
    // The lease, plus a second for the watch and this polling through the CLI.
    assert!(
        failover <= SCHEDULER_TTL + Duration::from_secs(1),
        "the follower led {failover:?} after the leader died (lease {SCHEDULER_TTL:?})"
    );
    println!("scheduler failover in {failover:?} (lease {SCHEDULER_TTL:?})");
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<serde_json::Value> =
        serde_json::from_slice(&c.host(1).cli(&["cluster", "ps", "--json"]).stdout).unwrap();
    let ids = |v: &[serde_json::Value]| {
        let mut ids: Vec<String> = v
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&before),
        ids(&after),
        "the new leader adopted every job: none restarted"
    );

    // Host loss: a power cut (its agent, its containers and its network gone at
    // once) of a host with web jobs. Its jobs are replaced on the others within
    // the lease + 5 s, and never do more than 5 run. The host taken is neither the
    // etcd leader (a new one extends every lease by a TTL) nor the leading
    // scheduler's (a failover waits out the schedulers' lease): those are timed on
    // their own above and in the etcd test.
    let (_, sched_host) = scheduler_leader(&c).expect("a leading scheduler");
    let etcd_host = etcd_leader(&c);
    println!("leaders: etcd on host {etcd_host:?}, scheduler on host {sched_host}");
    let on = placement(&c, 1, "demo", "web");
    let lost_n = (1..=3u8)
        .find(|n| Some(*n) != etcd_host && *n != sched_host && on.contains_key(&c.host(*n).id()))
        .expect("a host with web jobs that leads nothing");
    let live: Vec<u8> = (1..=4u8).filter(|n| *n != lost_n).collect();
    let lost = c.host(lost_n).id();
    assert_eq!(running(&c, &live, "web") + on[&lost], 5);
    c.host_mut(lost_n).power_cut();
    let cut_at = Instant::now();
    let mut most = 0;
    wait_for(
        "5 web jobs running on the remaining hosts",
        Duration::from_secs(30),
        || {
            let n = running(&c, &live, "web");
            most = most.max(n);
            n == 5
        },
    );
    let healed = cut_at.elapsed();
    // A few more looks: nothing beyond 5 either.
    for _ in 0..10 {
        most = most.max(running(&c, &live, "web"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(most <= 5, "at most 5 at any time, saw {most}");
    println!("whole again {healed:?} after the power cut (lease TTL {TTL:?})");
    assert!(
        healed <= TTL + Duration::from_secs(5),
        "the formation was whole again only {healed:?} after the host was lost (lease {TTL:?})"
    );
    // The scheduler's own view follows.
    wait_for("the scheduler to see 5", Duration::from_secs(30), || {
        let p = placement(&c, live[0], "demo", "web");
        total(&p) == 5 && !p.contains_key(&lost)
    });

    // Drain: a host with web jobs empties, and while it does, never fewer than 5 web
    // jobs run (watched from the agents, every 200 ms).
    let on = placement(&c, live[0], "demo", "web");
    let drained_n = *live
        .iter()
        .find(|n| on.contains_key(&c.host(**n).id()))
        .unwrap();
    let drained = c.host(drained_n).id();
    let via = c.host(live[0]);
    let mut fewest = usize::MAX;
    let mut out = None;
    // (Under a loaded machine a host's 3 s lease may lapse for a moment: retry.)
    for _ in 0..10 {
        let mut drain = via
            .command()
            .args(["cluster", "drain", &drained, "--timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = loop {
            fewest = fewest.min(running(&c, &live, "web"));
            if let Some(s) = drain.try_wait().unwrap() {
                break s;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let o = drain.wait_with_output().unwrap();
        let ok = status.success();
        out = Some(o);
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fewest >= 5,
        "the formation dropped to {fewest} during the drain"
    );
    let others: Vec<u8> = live.iter().copied().filter(|n| *n != drained_n).collect();
    wait_for(
        "5 web jobs, none on the drained host",
        Duration::from_secs(15),
        || running(&c, &others, "web") == 5 && running(&c, &[drained_n], "web") == 0,
    );

    // A job that crashes at once is replaced with back-off (0, 10, 30 s), not in a loop:
    // count the jobs created on the live hosts while it crashes for 14 s.
    let created = |c: &Cluster| -> usize {
        live.iter()
            .map(|i| {
                // Request lines (the log may hold colour codes between field and value).
                c.host(*i)
                    .log_text()
                    .lines()
                    .filter(|l| {
                        l.contains("POST")
                            && l.contains("/jobs")
                            && !l.contains("/jobs/")
                            && l.contains("201")
                    })
                    .count()
            })
            .sum()
    };
    let before = created(&c);
    via.ok(&[
        "cluster", "scale", "crash=1", "--app", "demo", "--image", "busybox", "--", "sh", "-c",
        "exit 3",
    ]);
    let mut crash_records = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(14) {
        crash_records = crash_records.max(records(&c, &live, "crash"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let starts = created(&c) - before;
    assert!(
        (2..=4).contains(&starts),
        "in 14 s a crash-looping job is started 2-4 times (at 0 s, at once, after 10 s), not {starts}"
    );

    // Bounded history: a crashed job's record is removed when it is replaced (at
    // most the one running and the one just exited are seen), and a formation keeps
    // at most its count of finished jobs, however many ran.
    assert!(
        crash_records <= 2,
        "{crash_records} records of a formation of 1 that crashed {starts} times"
    );
    via.ok(&[
        "cluster",
        "scale",
        "batch=8",
        "--app",
        "demo",
        "--image",
        "busybox",
        "--restart",
        "never",
        "--",
        "true",
    ]);
    wait_for("8 finished batch jobs", Duration::from_secs(60), || {
        formation(via, "batch")["finished"] == 8
    });
    assert_eq!(records(&c, &live, "batch"), 8);
    via.ok(&["cluster", "scale", "batch=2", "--app", "demo"]);
    wait_for("2 batch records left", Duration::from_secs(30), || {
        records(&c, &live, "batch") == 2
    });
    assert_eq!(formation(via, "batch")["formation"]["restart"], "never");
    // On disk too: each host keeps a directory per job it lists, no more.
    for n in &live {
        let h = c.host(*n);
        let listed = h.jobs_labelled("flynn.scheduler=1").len();
        let dirs = std::fs::read_dir(h.state.path().join("jobs"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
            .count();
        // The schedulers' own jobs and etcd's are not the scheduler's.
        let all = h.api("GET", "/jobs?all=true", None).1;
        let others = all.as_array().map_or(0, Vec::len).saturating_sub(listed);
        assert!(
            dirs <= listed + others + 1,
            "host {n}: {dirs} job directories for {listed} scheduled and {others} other jobs"
        );
    }
}
