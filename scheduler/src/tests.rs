use super::*;

fn key(t: &str) -> FormationKey {
    FormationKey {
        app: "demo".into(),
        process_type: t.into(),
    }
}

fn host(id: &str, mem: u64) -> Host {
    Host {
        id: id.into(),
        tags: BTreeMap::new(),
        capacity: Resources {
            memory_mb: mem,
            cpu_milli: 4000,
        },
        draining: false,
        images: None,
    }
}

fn web(count: u32) -> Formation {
    Formation {
        key: key("web"),
        count,
        omni: false,
        tags: BTreeMap::new(),
        resources: Resources {
            memory_mb: 100,
            cpu_milli: 100,
        },
        release: None,
        image: None,
        restart: Restart::Always,
    }
}

fn job(id: &str, t: &str, host: &str, state: JobState, started_ms: u64) -> Job {
    Job {
        id: id.into(),
        formation: key(t),
        host: host.into(),
        state,
        started_ms,
        resources: Resources {
            memory_mb: 100,
            cpu_milli: 100,
        },
        release: None,
        healthy: true,
    }
}

/// Carries a plan out: started jobs run, stopped ones are gone.
fn apply(state: &mut State, plan: &Plan) {
    let stopped: std::collections::HashSet<&str> =
        plan.stop.iter().map(|s| s.job.as_str()).collect();
    state.jobs.retain(|j| !stopped.contains(j.id.as_str()));
    for (n, s) in plan.start.iter().enumerate() {
        let f = state
            .formations
            .iter()
            .find(|f| f.key == s.formation)
            .unwrap();
        state.jobs.push(Job {
            id: format!("j{}-{n}", state.now_ms),
            formation: s.formation.clone(),
            host: s.host.clone(),
            state: JobState::Running,
            started_ms: state.now_ms,
            resources: f.resources,
            release: f.release.clone(),
            healthy: true,
        });
    }
    state.now_ms += 1;
}

fn per_host(state: &State, t: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for j in state.jobs.iter().filter(|j| j.formation == key(t)) {
        *m.entry(j.host.clone()).or_default() += 1;
    }
    m
}

fn three_hosts() -> State {
    State {
        hosts: vec![host("a", 4096), host("b", 4096), host("c", 4096)],
        formations: vec![web(5)],
        ..State::default()
    }
}

#[test]
fn five_jobs_spread_two_two_one_and_a_second_pass_does_nothing() {
    let mut s = three_hosts();
    let plan = rectify(&s);
    assert_eq!(plan.start.len(), 5);
    assert!(plan.stop.is_empty() && plan.blocked.is_empty());
    apply(&mut s, &plan);
    let counts: Vec<usize> = per_host(&s, "web").into_values().collect();
    assert_eq!(counts, vec![2, 2, 1]);
    assert_eq!(rectify(&s), Plan::default());
}

#[test]
fn a_lost_host_is_replaced_on_the_others_never_above_the_count() {
    let mut s = three_hosts();
    let plan = rectify(&s);
    apply(&mut s, &plan);
    // Host a's lease expires: it is no longer live; its jobs are lost.
    s.hosts.retain(|h| h.id != "a");
    let plan = rectify(&s);
    let lost = 5 - s.jobs.iter().filter(|j| j.host != "a").count();
    assert_eq!(plan.start.len(), lost);
    assert!(plan.start.iter().all(|st| st.host != "a"));
    apply(&mut s, &plan);
    let live: usize = s.jobs.iter().filter(|j| j.host != "a").count();
    assert_eq!(live, 5);
    assert_eq!(
        per_host(&s, "web").get("b").copied().unwrap_or(0)
            + per_host(&s, "web").get("c").copied().unwrap_or(0),
        5
    );
}

#[test]
fn while_a_lease_lives_nothing_is_doubled() {
    let mut s = three_hosts();
    let plan = rectify(&s);
    apply(&mut s, &plan);
    // Partitioned but leased: still live, so its jobs count and nothing starts.
    assert!(rectify(&s).start.is_empty());
}

#[test]
fn surplus_stops_newest_first() {
    let mut s = three_hosts();
    s.formations = vec![web(2)];
    s.jobs = vec![
        job("old", "web", "a", JobState::Running, 1),
        job("mid", "web", "b", JobState::Running, 2),
        job("new", "web", "c", JobState::Running, 3),
    ];
    let plan = rectify(&s);
    assert_eq!(
        plan.stop,
        vec![Stop {
            job: "new".into(),
            reason: StopReason::Surplus
        }]
    );
    assert!(plan.start.is_empty());
}

#[test]
fn jobs_of_a_removed_formation_stop() {
    let mut s = three_hosts();
    s.formations.clear();
    s.jobs = vec![job("x", "web", "a", JobState::Running, 1)];
    let plan = rectify(&s);
    assert_eq!(plan.stop[0].reason, StopReason::Removed);
}

#[test]
fn omni_runs_on_every_host_and_on_one_that_joins() {
    let mut s = three_hosts();
    s.formations = vec![Formation {
        omni: true,
        count: 1,
        ..web(1)
    }];
    let plan = rectify(&s);
    apply(&mut s, &plan);
    assert_eq!(per_host(&s, "web").len(), 3);
    s.hosts.push(host("d", 4096));
    let plan = rectify(&s);
    assert_eq!(
        plan.start,
        vec![Start {
            formation: key("web"),
            host: "d".into()
        }]
    );
}

#[test]
fn a_job_too_large_for_every_host_is_blocked_with_the_reason() {
    let mut s = three_hosts();
    s.formations = vec![Formation {
        resources: Resources {
            memory_mb: 8192,
            cpu_milli: 100,
        },
        ..web(1)
    }];
    let plan = rectify(&s);
    assert!(plan.start.is_empty());
    assert_eq!(plan.blocked.len(), 1);
    assert_eq!(plan.blocked[0].missing, 1);
    assert!(
        plan.blocked[0].reason.contains("8192 MB"),
        "{}",
        plan.blocked[0].reason
    );
}

#[test]
fn resources_already_promised_count() {
    let mut s = State {
        hosts: vec![host("a", 250)],
        formations: vec![web(3)],
        ..State::default()
    };
    let plan = rectify(&s);
    assert_eq!(plan.start.len(), 2, "two of 100 MB fit in 250 MB");
    assert_eq!(plan.blocked[0].missing, 1);
    apply(&mut s, &plan);
    s.hosts[0].capacity.memory_mb = 400;
    assert_eq!(rectify(&s).start.len(), 1, "placed once a host fits");
}

#[test]
fn tags_restrict_placement() {
    let mut s = three_hosts();
    s.hosts[1].tags.insert("disk".into(), "ssd".into());
    let mut f = web(3);
    f.tags.insert("disk".into(), "ssd".into());
    s.formations = vec![f];
    let plan = rectify(&s);
    assert!(plan.start.iter().all(|st| st.host == "b"));
    s.hosts[1].tags.clear();
    let plan = rectify(&s);
    assert!(
        plan.blocked[0].reason.contains("disk=ssd"),
        "{:?}",
        plan.blocked
    );
}

#[test]
fn crashes_back_off_zero_ten_thirty_seconds() {
    let mut s = three_hosts();
    s.formations = vec![web(1)];
    s.now_ms = 100_000;
    for (crashes, waits) in [(1, 0), (2, 10_000), (3, 30_000), (7, 30_000)] {
        s.backoff.insert(
            key("web"),
            Backoff {
                crashes,
                last_crash_ms: s.now_ms,
            },
        );
        let plan = rectify(&s);
        if waits == 0 {
            assert_eq!(plan.start.len(), 1, "crash {crashes}");
        } else {
            assert!(plan.start.is_empty(), "crash {crashes}");
            assert_eq!(plan.wake_ms, Some(s.now_ms + waits));
            let mut later = s.clone();
            later.now_ms += waits;
            assert_eq!(
                rectify(&later).start.len(),
                1,
                "crash {crashes}, after {waits} ms"
            );
        }
    }
}

#[test]
fn drain_starts_elsewhere_first_then_stops_there() {
    let mut s = three_hosts();
    let plan = rectify(&s);
    apply(&mut s, &plan);
    s.hosts[0].draining = true;
    let on_a = per_host(&s, "web")["a"];
    // First pass: replacements start elsewhere; a's jobs still run.
    let plan = rectify(&s);
    assert_eq!(plan.start.len(), on_a);
    assert!(plan.start.iter().all(|st| st.host != "a"));
    assert!(plan.stop.is_empty(), "{:?}", plan.stop);
    // The replacements start (not yet running): still nothing stops.
    let mut starting = s.clone();
    apply(&mut starting, &plan);
    for j in starting
        .jobs
        .iter_mut()
        .filter(|j| j.host != "a" && j.started_ms == s.now_ms)
    {
        j.state = JobState::Starting;
    }
    assert!(rectify(&starting).stop.is_empty());
    // Once they run, a's jobs stop, and the formation never fell below 5.
    apply(&mut s, &plan);
    let plan = rectify(&s);
    assert_eq!(plan.stop.len(), on_a);
    assert!(plan.stop.iter().all(|st| st.reason == StopReason::Drained));
    assert!(plan.start.is_empty());
    apply(&mut s, &plan);
    assert!(!per_host(&s, "web").contains_key("a"));
    assert_eq!(s.jobs.len(), 5);
}

#[test]
fn ephemeral_jobs_go_where_there_is_room() {
    let s = three_hosts();
    let jobs = vec![
        job("1", "web", "a", JobState::Running, 1),
        job("2", "web", "b", JobState::Running, 1),
    ];
    let res = Resources {
        memory_mb: 10,
        cpu_milli: 10,
    };
    assert_eq!(
        place_one(&s.hosts, &jobs, &BTreeMap::new(), &res).unwrap(),
        "c"
    );
    let huge = Resources {
        memory_mb: 1 << 20,
        cpu_milli: 1,
    };
    assert!(place_one(&s.hosts, &jobs, &BTreeMap::new(), &huge).is_err());
}

#[test]
fn no_live_host_is_a_reason_not_a_panic() {
    let s = State {
        formations: vec![web(2)],
        ..State::default()
    };
    let plan = rectify(&s);
    assert_eq!(plan.blocked[0].reason, "no live host");
}

/// Every combination of a small cluster converges in one pass: after applying
/// the plan, each formation has exactly its count (or is blocked), and a second
/// pass is empty.
#[test]
fn small_clusters_converge_in_one_pass() {
    for hosts in 0..5usize {
        for count in 0..7u32 {
            for existing in 0..5usize {
                for omni in [false, true] {
                    let mut s = State {
                        hosts: (0..hosts).map(|i| host(&format!("h{i}"), 350)).collect(),
                        formations: vec![Formation { omni, ..web(count) }],
                        ..State::default()
                    };
                    for e in 0..existing.min(hosts) {
                        s.jobs.push(job(
                            &format!("e{e}"),
                            "web",
                            &format!("h{e}"),
                            JobState::Running,
                            0,
                        ));
                    }
                    let plan = rectify(&s);
                    apply(&mut s, &plan);
                    let n = s.jobs.len() as u32;
                    let want = if omni { count * hosts as u32 } else { count };
                    let fits = 3 * hosts as u32; // three 100 MB jobs in 350 MB
                    assert_eq!(
                        n,
                        want.min(fits),
                        "hosts {hosts} count {count} existing {existing} omni {omni}"
                    );
                    let again = rectify(&s);
                    assert!(again.start.is_empty() && again.stop.is_empty(), "{again:?}");
                    for (_, c) in per_host(&s, "web") {
                        assert!(c <= 3);
                    }
                }
            }
        }
    }
}

/// A formation of `count` web jobs of release `rel` running on three hosts.
fn deployed(count: u32, rel: &str) -> State {
    let mut s = three_hosts();
    s.formations = vec![Formation {
        release: Some(rel.into()),
        ..web(count)
    }];
    let plan = rectify(&s);
    apply(&mut s, &plan);
    s
}

fn of_release(s: &State, rel: &str) -> usize {
    s.jobs
        .iter()
        .filter(|j| j.release.as_deref() == Some(rel))
        .count()
}

/// Carries a plan out with the new jobs not yet up (starting).
fn apply_unhealthy(state: &mut State, plan: &Plan) {
    let before: std::collections::HashSet<String> =
        state.jobs.iter().map(|j| j.id.clone()).collect();
    apply(state, plan);
    for j in &mut state.jobs {
        if !before.contains(&j.id) {
            j.healthy = false;
        }
    }
}

#[test]
fn a_rollout_replaces_every_job_one_at_a_time_never_below_the_count() {
    for count in 1..=5u32 {
        let mut s = deployed(count, "r1");
        assert_eq!(of_release(&s, "r1"), count as usize);
        s.formations[0].release = Some("r2".into());
        let mut passes = 0;
        while of_release(&s, "r2") < count as usize || of_release(&s, "r1") > 0 {
            passes += 1;
            assert!(passes < 4 * count as usize + 4, "the rollout ends");
            let plan = rectify(&s);
            // New jobs start unhealthy, and an old job may stop only for a healthy new one.
            apply_unhealthy(&mut s, &plan);
            let up = s.jobs.iter().filter(|j| j.healthy).count();
            assert!(up >= count as usize, "{up} up of {count} after {plan:?}");
            assert!(
                s.jobs.len() <= count as usize + SURGE,
                "{} jobs, count {count}",
                s.jobs.len()
            );
            for p in &plan.stop {
                assert_eq!(p.reason, StopReason::Replaced);
            }
            // The new jobs come up.
            for j in &mut s.jobs {
                j.healthy = true;
            }
        }
        assert_eq!(of_release(&s, "r2"), count as usize);
        let again = rectify(&s);
        assert!(again.start.is_empty() && again.stop.is_empty(), "{again:?}");
    }
}

#[test]
fn a_rollout_starts_new_jobs_before_it_stops_old_ones() {
    let mut s = deployed(3, "r1");
    s.formations[0].release = Some("r2".into());
    let plan = rectify(&s);
    assert_eq!(plan.start.len(), 1, "one job beyond the count");
    assert!(plan.stop.is_empty(), "nothing stops before a new job is up");
    apply_unhealthy(&mut s, &plan);
    // Not up yet: nothing more happens.
    let plan = rectify(&s);
    assert!(plan.start.is_empty() && plan.stop.is_empty(), "{plan:?}");
    // Up: one old job stops and the next new one starts in the same pass.
    for j in &mut s.jobs {
        j.healthy = true;
    }
    let plan = rectify(&s);
    assert_eq!(plan.stop.len(), 1);
    assert_eq!(plan.start.len(), 1);
    let stopped = s.jobs.iter().find(|j| j.id == plan.stop[0].job).unwrap();
    assert_eq!(stopped.release.as_deref(), Some("r1"));
}

/// Carries a plan out slowly: stopped jobs linger as `Stopping` for one pass, new
/// ones start unhealthy and get up by the next pass. Those being stopped are out of
/// the surge (they serve no more), not out of the resources.
#[test]
fn with_slow_stops_the_formation_never_has_more_than_count_plus_surge() {
    let mut s = deployed(3, "r1");
    s.formations[0].release = Some("r2".into());
    for _ in 0..40 {
        s.jobs.retain(|j| j.state != JobState::Stopping);
        for j in &mut s.jobs {
            j.healthy = true;
        }
        let plan = rectify(&s);
        let stopped: std::collections::HashSet<&str> =
            plan.stop.iter().map(|p| p.job.as_str()).collect();
        for j in &mut s.jobs {
            if stopped.contains(j.id.as_str()) {
                j.state = JobState::Stopping;
            }
        }
        let n = s.jobs.len();
        let mut next = s.clone();
        next.jobs.clear();
        apply_unhealthy(&mut next, &plan);
        s.jobs.extend(next.jobs);
        let serving = s
            .jobs
            .iter()
            .filter(|j| j.state != JobState::Stopping)
            .count();
        assert!(
            serving <= 3 + SURGE,
            "{serving} jobs after {plan:?} (had {n})"
        );
        let up = s
            .jobs
            .iter()
            .filter(|j| j.healthy && j.state != JobState::Stopping)
            .count();
        assert!(up >= 3, "{up} up");
        s.now_ms += 1;
    }
    s.jobs.retain(|j| j.state != JobState::Stopping);
    assert_eq!(of_release(&s, "r2"), 3, "{:?}", s.jobs);
}

#[test]
fn a_new_release_that_never_gets_up_leaves_the_old_jobs_running() {
    let mut s = deployed(3, "r1");
    s.formations[0].release = Some("bad".into());
    for _ in 0..10 {
        let plan = rectify(&s);
        assert!(plan.stop.is_empty(), "no old job stops: {plan:?}");
        apply_unhealthy(&mut s, &plan);
        assert!(s.jobs.len() <= 4);
    }
    assert_eq!(of_release(&s, "r1"), 3);
    // Rolled back: the stuck new job goes, the old ones stay.
    s.formations[0].release = Some("r1".into());
    let plan = rectify(&s);
    assert!(plan.start.is_empty(), "{plan:?}");
    assert_eq!(plan.stop.len(), 1);
    apply(&mut s, &plan);
    assert_eq!(of_release(&s, "r1"), 3);
    assert_eq!(s.jobs.len(), 3);
}

#[test]
fn the_old_jobs_not_up_go_first_and_a_lost_old_job_is_replaced_by_a_new_one() {
    let mut s = deployed(3, "r1");
    s.jobs[1].healthy = false;
    let sick = s.jobs[1].id.clone();
    s.formations[0].release = Some("r2".into());
    let plan = rectify(&s);
    apply(&mut s, &plan);
    let plan = rectify(&s);
    assert_eq!(plan.stop[0].job, sick);
    // An old job lost (its host or a crash): two new ones may start (count + surge).
    let mut s = deployed(3, "r1");
    s.jobs.pop();
    s.formations[0].release = Some("r2".into());
    assert_eq!(rectify(&s).start.len(), 2);
}

#[test]
fn the_rollout_step_holds_its_bounds() {
    for want in 0..8usize {
        for new in 0..=want + 1 {
            for healthy in 0..=new {
                for old in 0..=want + 1 {
                    let (starts, stops) = rollout_step(want, new, healthy, old);
                    assert!(stops <= old);
                    // Never fewer up than wanted (when that many were up before).
                    if healthy + old >= want {
                        assert!(healthy + old - stops >= want);
                    }
                    // Never more than want + surge jobs not being stopped.
                    if starts > 0 {
                        assert!(new + old - stops + starts <= want + SURGE);
                        assert!(new + starts <= want);
                    }
                }
            }
        }
    }
}

#[test]
fn an_omni_formation_rolls_out_host_by_host() {
    let mut s = three_hosts();
    s.formations = vec![Formation {
        omni: true,
        release: Some("r1".into()),
        ..web(1)
    }];
    let plan = rectify(&s);
    apply(&mut s, &plan);
    s.formations[0].release = Some("r2".into());
    let plan = rectify(&s);
    assert_eq!(plan.start.len(), 3, "one new job beside each old one");
    assert!(plan.stop.is_empty());
    apply(&mut s, &plan);
    let plan = rectify(&s);
    assert_eq!(plan.stop.len(), 3);
    apply(&mut s, &plan);
    assert_eq!(of_release(&s, "r2"), 3);
    assert_eq!(per_host(&s, "web").len(), 3);
}

#[test]
fn a_rollout_ends_spread_like_a_fresh_formation() {
    for count in [3u32, 5, 6] {
        let mut s = deployed(count, "r1");
        s.formations[0].release = Some("r2".into());
        for _ in 0..(4 * count) {
            let plan = rectify(&s);
            apply(&mut s, &plan);
        }
        assert_eq!(of_release(&s, "r2"), count as usize);
        let mut spread: Vec<usize> = per_host(&s, "web").into_values().collect();
        spread.sort();
        let fresh: Vec<usize> = {
            let f = deployed(count, "x");
            let mut v: Vec<usize> = per_host(&f, "web").into_values().collect();
            v.sort();
            v
        };
        assert_eq!(spread, fresh, "count {count}");
    }
}

/// A formation whose release pins an image starts its jobs only on hosts that hold
/// it (a host that joined after an import lacks it); hosts whose images are not
/// known are taken to hold it; running jobs are not moved.
#[test]
fn jobs_start_only_where_their_image_is() {
    let digest = "sha256:1111";
    let holding = |id: &str, held: &[&str]| Host {
        images: Some(held.iter().map(|d| d.to_string()).collect()),
        ..host(id, 4096)
    };
    let state = |hosts: Vec<Host>| State {
        hosts,
        ..State::default()
    };
    let mut s = state(vec![
        holding("a", &[digest]),
        holding("b", &[digest]),
        holding("c", &["sha256:2222"]),
    ]);
    s.formations = vec![Formation {
        image: Some(digest.into()),
        ..web(4)
    }];
    let plan = rectify(&s);
    apply(&mut s, &plan);
    let placed = per_host(&s, "web");
    assert_eq!(placed.get("c").copied().unwrap_or(0), 0, "{placed:?}");
    assert_eq!(placed.values().sum::<usize>(), 4, "{placed:?}");

    // No host holds it: blocked, and the reason names the image.
    let mut s2 = state(vec![holding("c", &[])]);
    s2.formations = vec![Formation {
        image: Some(digest.into()),
        ..web(1)
    }];
    let plan = rectify(&s2);
    assert!(plan.start.is_empty(), "{plan:?}");
    assert!(
        plan.blocked[0]
            .reason
            .contains("holds the image sha256:1111"),
        "{plan:?}"
    );
    // Not known: any host will do.
    s2.hosts[0].images = None;
    assert_eq!(rectify(&s2).start.len(), 1);

    // Omni: every matching host that holds it; the others are named.
    let mut s3 = state(vec![holding("a", &[digest]), holding("c", &[])]);
    s3.formations = vec![Formation {
        omni: true,
        image: Some(digest.into()),
        ..web(1)
    }];
    let plan = rectify(&s3);
    assert_eq!(plan.start.len(), 1, "{plan:?}");
    assert_eq!(plan.start[0].host, "a");
    assert!(
        plan.blocked
            .iter()
            .any(|b| b.reason.contains("host c does not hold the image")),
        "{plan:?}"
    );
}

/// `web(count)` under `restart`, its jobs placed and running.
fn running_under(restart: Restart, count: u32) -> State {
    let mut s = three_hosts();
    s.formations = vec![Formation {
        restart,
        ..web(count)
    }];
    let plan = rectify(&s);
    apply(&mut s, &plan);
    s
}

/// The job `id` of `s` exits with `code`.
fn exits(s: &mut State, id: &str, code: i32) {
    let j = s.jobs.iter_mut().find(|j| j.id == id).unwrap();
    j.state = JobState::Exited { code };
    j.healthy = false;
}

fn ids(s: &State) -> Vec<String> {
    let mut v: Vec<String> = s.jobs.iter().map(|j| j.id.clone()).collect();
    v.sort();
    v
}

#[test]
fn restart_policies_parse_print_and_default_to_always() {
    for name in Restart::NAMES {
        let p: Restart = name.parse().unwrap();
        assert_eq!(p.to_string(), name);
        assert_eq!(serde_json::to_value(p).unwrap(), name);
    }
    let err = "sometimes".parse::<Restart>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid restart policy \"sometimes\": use always, on-failure or never"
    );
    assert!("".parse::<Restart>().is_err());
    assert_eq!(Restart::default(), Restart::Always);
    // A formation stored before the policy existed reads as `always`.
    let old = serde_json::json!({
        "key": {"app": "demo", "process_type": "web"},
        "count": 1, "omni": false, "tags": {},
        "resources": {"memory_mb": 1, "cpu_milli": 1},
    });
    let f: Formation = serde_json::from_value(old).unwrap();
    assert_eq!(f.restart, Restart::Always);
    assert!(Restart::Always.replaces(0) && Restart::Always.replaces(1));
    assert!(!Restart::OnFailure.replaces(0) && Restart::OnFailure.replaces(137));
    assert!(!Restart::Never.replaces(0) && !Restart::Never.replaces(1));
}

#[test]
fn under_on_failure_a_job_that_exited_0_is_not_replaced_and_a_failed_one_is() {
    let mut s = running_under(Restart::OnFailure, 3);
    let first = ids(&s);
    exits(&mut s, &first[0], 0);
    // Finished: it keeps its place in the count, and its record stays.
    assert_eq!(rectify(&s), Plan::default());
    exits(&mut s, &first[1], 2);
    let plan = rectify(&s);
    assert_eq!(
        plan.stop,
        vec![Stop {
            job: first[1].clone(),
            reason: StopReason::Exited
        }]
    );
    assert_eq!(plan.start.len(), 1, "{plan:?}");
    apply(&mut s, &plan);
    assert_eq!(s.jobs.len(), 3);
    assert!(
        s.jobs.iter().any(|j| j.id == first[0]),
        "the finished job stays"
    );
    assert_eq!(rectify(&s), Plan::default());
}

#[test]
fn under_never_no_exited_job_is_replaced() {
    let mut s = running_under(Restart::Never, 3);
    let first = ids(&s);
    exits(&mut s, &first[0], 0);
    exits(&mut s, &first[1], 1);
    exits(&mut s, &first[2], 137);
    assert_eq!(rectify(&s), Plan::default());
    // Scaling up runs more; the finished ones are not run again.
    s.formations[0].count = 4;
    let plan = rectify(&s);
    assert_eq!(plan.start.len(), 1, "{plan:?}");
    assert!(plan.stop.is_empty());
    apply(&mut s, &plan);
    // Scaling down drops finished records before running jobs.
    s.formations[0].count = 1;
    let plan = rectify(&s);
    let stopped: Vec<&str> = plan.stop.iter().map(|st| st.job.as_str()).collect();
    assert_eq!(stopped.len(), 3, "{plan:?}");
    assert!(
        first.iter().all(|id| stopped.contains(&id.as_str())),
        "{plan:?}"
    );
    assert!(plan.stop.iter().all(|st| st.reason == StopReason::Surplus));
}

#[test]
fn under_always_every_exit_is_replaced_with_the_back_off() {
    let mut s = running_under(Restart::Always, 2);
    let first = ids(&s);
    s.now_ms = 50_000;
    exits(&mut s, &first[0], 0);
    // The first crash restarts at once.
    s.backoff.insert(
        key("web"),
        Backoff {
            crashes: 1,
            last_crash_ms: s.now_ms,
        },
    );
    let plan = rectify(&s);
    assert_eq!(plan.stop[0].reason, StopReason::Exited);
    assert_eq!(plan.start.len(), 1);
    // The second within the back-off waits 10 s: the record goes, nothing starts.
    s.backoff.insert(
        key("web"),
        Backoff {
            crashes: 2,
            last_crash_ms: s.now_ms,
        },
    );
    let plan = rectify(&s);
    assert_eq!(plan.stop.len(), 1);
    assert!(plan.start.is_empty(), "{plan:?}");
    assert_eq!(plan.blocked[0].missing, 1);
    assert_eq!(plan.wake_ms, Some(s.now_ms + 10_000));
    apply(&mut s, &plan);
    s.now_ms += 10_000;
    assert_eq!(rectify(&s).start.len(), 1);
}

#[test]
fn kept_records_never_exceed_the_count_however_many_jobs_exit() {
    for restart in [Restart::Always, Restart::OnFailure, Restart::Never] {
        let mut s = running_under(restart, 3);
        for round in 0..200 {
            // Every running job exits, failing or not by turns.
            let running: Vec<String> = s
                .jobs
                .iter()
                .filter(|j| j.state == JobState::Running)
                .map(|j| j.id.clone())
                .collect();
            for (n, id) in running.iter().enumerate() {
                exits(&mut s, id, ((round + n) % 2) as i32);
            }
            let plan = rectify(&s);
            apply(&mut s, &plan);
            assert!(s.jobs.len() <= 3, "{restart}: {} records", s.jobs.len());
        }
        let finished = s.jobs.iter().filter(|j| j.exited()).count();
        match restart {
            // Replaced each time: only the running jobs are left.
            Restart::Always => assert_eq!(finished, 0),
            // Each job ends once it exits 0 (or at once under never).
            Restart::OnFailure | Restart::Never => assert_eq!(finished, 3),
        }
    }
}

#[test]
fn a_finished_job_stays_on_a_draining_host_and_the_drain_still_ends() {
    let mut s = three_hosts();
    s.formations = vec![Formation {
        restart: Restart::OnFailure,
        ..web(2)
    }];
    s.jobs = vec![
        job("done", "web", "a", JobState::Exited { code: 0 }, 1),
        job("busy", "web", "a", JobState::Running, 2),
    ];
    s.hosts[0].draining = true;
    // The running job moves away (a replacement first, then the stop), the
    // finished one is neither re-run elsewhere nor removed, and the jobs doing
    // their part never drop below the count.
    for _ in 0..4 {
        let plan = rectify(&s);
        assert!(plan.stop.iter().all(|st| st.job != "done"), "{plan:?}");
        apply(&mut s, &plan);
        assert!(s.jobs.iter().filter(|j| j.settled()).count() >= 2);
    }
    let on_a: Vec<&str> = s
        .jobs
        .iter()
        .filter(|j| j.host == "a")
        .map(|j| j.id.as_str())
        .collect();
    assert_eq!(on_a, ["done"]);
    assert_eq!(s.jobs.len(), 2);
    assert_eq!(rectify(&s), Plan::default());
}

#[test]
fn a_finished_job_holds_no_resources() {
    // One host with room for one job: the finished job leaves room for a job of
    // another formation.
    let mut s = running_under(Restart::Never, 1);
    s.hosts = vec![host(&s.jobs[0].host.clone(), 100)];
    let id = s.jobs[0].id.clone();
    exits(&mut s, &id, 0);
    s.formations.push(Formation {
        key: key("worker"),
        ..web(1)
    });
    let plan = rectify(&s);
    assert_eq!(plan.start.len(), 1, "{plan:?}");
    assert_eq!(plan.start[0].formation, key("worker"));
}
