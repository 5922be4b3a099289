//! The scheduling core alone on simulated clusters: one `rectify` that places
//! every job of an empty cluster, and one after a host is lost. Prints placements
//! per second (medians of 5 rounds) against the anchor measured in the same run:
//! round-robin assignment of the same jobs (no fit, no spread: the floor of merely
//! producing the plan). Target: at least 10 000 placements/s at 10 000 hosts and
//! 100 000 jobs (Nomad's C1M: about 3 300/s).
//!
//! `cargo bench -p flynn-scheduler --bench rectify`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use scheduler::{
    Formation, FormationKey, Host, Job, JobState, Resources, Restart, Start, State, rectify,
};

fn cluster(hosts: usize, jobs: usize) -> State {
    let per_formation = 50;
    State {
        hosts: (0..hosts)
            .map(|i| Host {
                id: format!("host-{i:05}"),
                tags: BTreeMap::from([("zone".to_string(), format!("z{}", i % 3))]),
                capacity: Resources {
                    memory_mb: 64 * 1024,
                    cpu_milli: 32_000,
                },
                draining: false,
                images: None,
            })
            .collect(),
        formations: (0..jobs / per_formation)
            .map(|i| Formation {
                key: FormationKey {
                    app: format!("app-{}", i / 4),
                    process_type: format!("type-{}", i % 4),
                },
                count: per_formation as u32,
                omni: false,
                release: None,
                image: None,
                restart: Restart::Always,
                tags: if i % 10 == 0 {
                    BTreeMap::from([("zone".to_string(), "z1".to_string())])
                } else {
                    BTreeMap::new()
                },
                resources: Resources {
                    memory_mb: 256,
                    cpu_milli: 100,
                },
            })
            .collect(),
        ..State::default()
    }
}

fn round_robin(s: &State) -> Vec<Start> {
    let mut out = Vec::new();
    let mut h = 0;
    for f in &s.formations {
        for _ in 0..f.count {
            out.push(Start {
                formation: f.key.clone(),
                host: s.hosts[h % s.hosts.len()].id.clone(),
            });
            h += 1;
        }
    }
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    println!("scheduler rectify, medians of 5 rounds (anchor: round-robin of the same jobs)");
    // Hosts ×10 at each job count, and jobs ×10 at each host count: how a
    // placement's cost grows with either.
    for (hosts, jobs) in [
        (1_000, 10_000),
        (10_000, 10_000),
        (1_000, 100_000),
        (10_000, 100_000),
    ] {
        let s = cluster(hosts, jobs);
        let (mut ours, mut anchor, mut lost) = (Vec::new(), Vec::new(), Vec::new());
        let mut placed = 0;
        let mut replaced = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let plan = rectify(&s);
            ours.push(t.elapsed());
            placed = plan.start.len();
            assert!(plan.blocked.is_empty(), "{:?}", &plan.blocked[..1]);

            let t = Instant::now();
            let rr = round_robin(&s);
            anchor.push(t.elapsed());
            assert_eq!(rr.len(), placed);

            // Everything runs; then one host's lease expires.
            let mut after = s.clone();
            after.jobs = plan
                .start
                .iter()
                .enumerate()
                .map(|(n, st)| Job {
                    id: format!("j{n}"),
                    formation: st.formation.clone(),
                    host: st.host.clone(),
                    state: JobState::Running,
                    started_ms: 0,
                    resources: Resources {
                        memory_mb: 256,
                        cpu_milli: 100,
                    },
                    release: None,
                    healthy: true,
                })
                .collect();
            after.hosts.remove(0);
            let t = Instant::now();
            let plan = rectify(&after);
            lost.push(t.elapsed());
            replaced = plan.start.len();
        }
        let (o, a, l) = (median(ours), median(anchor), median(lost));
        let rate = placed as f64 / o.as_secs_f64();
        println!(
            "  {hosts:>6} hosts {jobs:>7} jobs: place all {:>8.1} ms = {:>9.0} placements/s \
             (anchor {:>7.1} ms, ratio {:.1}x); host lost ({replaced} replaced) {:>7.1} ms{}",
            o.as_secs_f64() * 1e3,
            rate,
            a.as_secs_f64() * 1e3,
            o.as_secs_f64() / a.as_secs_f64(),
            l.as_secs_f64() * 1e3,
            if hosts == 10_000 && jobs == 100_000 {
                format!(
                    "  [target >= 10000/s: {}]",
                    if rate >= 10_000.0 { "met" } else { "short" }
                )
            } else {
                String::new()
            }
        );
    }
}
