//! Where a job goes: free resources and job counts per host, kept up to date as a
//! plan is made, and a heap per formation so a placement costs O(log hosts).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::{FormationKey, Host, Job, JobState, Resources, holds, tags_match};

/// A host's rank for a formation: fewest of the formation, then fewest jobs, then
/// the lowest id (hosts are indexed in id order).
type Rank = Reverse<(u32, u32, usize)>;

pub struct Placer<'a> {
    hosts: Vec<&'a Host>,
    index: HashMap<&'a str, usize>,
    free: Vec<Resources>,
    /// Jobs counting toward their formation, per host.
    total: Vec<u32>,
    counts: HashMap<FormationKey, HashMap<usize, u32>>,
    /// The candidates of the formation being placed.
    heap: Option<(FormationKey, BinaryHeap<Rank>)>,
}

impl<'a> Placer<'a> {
    pub fn new(hosts: &'a [Host], jobs: &[Job]) -> Placer<'a> {
        let mut sorted: Vec<&Host> = hosts.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let index: HashMap<&str, usize> = sorted
            .iter()
            .enumerate()
            .map(|(i, h)| (h.id.as_str(), i))
            .collect();
        let mut free: Vec<Resources> = sorted.iter().map(|h| h.capacity).collect();
        let mut total = vec![0u32; sorted.len()];
        let mut counts: HashMap<FormationKey, HashMap<usize, u32>> = HashMap::new();
        for j in jobs {
            let Some(&i) = index.get(j.host.as_str()) else {
                continue;
            };
            // A finished job holds no resources, and spreading counts the jobs
            // that run.
            if matches!(j.state, JobState::Exited { .. }) {
                continue;
            }
            free[i] = free[i].minus(&j.resources);
            if j.state != JobState::Stopping {
                total[i] += 1;
                *counts
                    .entry(j.formation.clone())
                    .or_default()
                    .entry(i)
                    .or_default() += 1;
            }
        }
        Placer {
            hosts: sorted,
            index,
            free,
            total,
            counts,
            heap: None,
        }
    }

    fn count(&self, key: &FormationKey, i: usize) -> u32 {
        self.counts
            .get(key)
            .and_then(|c| c.get(&i))
            .copied()
            .unwrap_or(0)
    }

    fn take(&mut self, i: usize, key: &FormationKey, res: &Resources) {
        self.free[i] = self.free[i].minus(res);
        self.total[i] += 1;
        *self
            .counts
            .entry(key.clone())
            .or_default()
            .entry(i)
            .or_default() += 1;
    }

    /// A job that is being stopped: its host has room and one job fewer.
    pub fn release(&mut self, job: &Job) {
        let Some(&i) = self.index.get(job.host.as_str()) else {
            return;
        };
        // Never counted (see `new`): removing its record frees nothing.
        if matches!(job.state, JobState::Exited { .. }) {
            return;
        }
        self.free[i].memory_mb += job.resources.memory_mb;
        self.free[i].cpu_milli += job.resources.cpu_milli;
        self.total[i] = self.total[i].saturating_sub(1);
        if let Some(c) = self
            .counts
            .get_mut(&job.formation)
            .and_then(|c| c.get_mut(&i))
        {
            *c = c.saturating_sub(1);
        }
        // A host a heap dropped may fit again.
        self.heap = None;
    }

    /// Places one job of `key` on the best host; the reason when none fits.
    pub fn place(
        &mut self,
        key: &FormationKey,
        tags: &BTreeMap<String, String>,
        image: Option<&str>,
        res: &Resources,
    ) -> Result<String, String> {
        if self.heap.as_ref().is_none_or(|(k, _)| k != key) {
            let heap: BinaryHeap<Rank> = (0..self.hosts.len())
                .filter(|&i| {
                    !self.hosts[i].draining
                        && tags_match(tags, self.hosts[i])
                        && holds(image, self.hosts[i])
                })
                .map(|i| Reverse((self.count(key, i), self.total[i], i)))
                .collect();
            self.heap = Some((key.clone(), heap));
        }
        loop {
            let popped = self.heap.as_mut().and_then(|(_, h)| h.pop());
            let Some(Reverse((c, t, i))) = popped else {
                return Err(self.why_not(tags, image, res));
            };
            let (now_c, now_t) = (self.count(key, i), self.total[i]);
            if (c, t) != (now_c, now_t) {
                // Stale: another formation placed there since.
                self.push(Reverse((now_c, now_t, i)));
                continue;
            }
            if !res.fits_in(&self.free[i]) {
                continue;
            }
            self.take(i, key, res);
            self.push(Reverse((now_c + 1, now_t + 1, i)));
            return Ok(self.hosts[i].id.clone());
        }
    }

    /// Places one job of `key` ranking hosts first by `first` (a rollout's jobs of
    /// the new release per host, so they spread as a fresh formation would), then as
    /// [`Placer::place`] does. O(hosts): rollouts are rare.
    pub fn place_spread_by(
        &mut self,
        key: &FormationKey,
        tags: &BTreeMap<String, String>,
        image: Option<&str>,
        res: &Resources,
        first: &HashMap<String, u32>,
    ) -> Result<String, String> {
        let best = (0..self.hosts.len())
            .filter(|&i| {
                !self.hosts[i].draining
                    && tags_match(tags, self.hosts[i])
                    && holds(image, self.hosts[i])
                    && res.fits_in(&self.free[i])
            })
            .min_by_key(|&i| {
                (
                    first.get(&self.hosts[i].id).copied().unwrap_or(0),
                    self.count(key, i),
                    self.total[i],
                    i,
                )
            });
        let Some(i) = best else {
            return Err(self.why_not(tags, image, res));
        };
        self.take(i, key, res);
        self.heap = None;
        Ok(self.hosts[i].id.clone())
    }

    fn push(&mut self, rank: Rank) {
        if let Some((_, h)) = self.heap.as_mut() {
            h.push(rank);
        }
    }

    /// Places one job of `key` on `host` (omni formations).
    pub fn place_on(
        &mut self,
        host: &str,
        key: &FormationKey,
        res: &Resources,
    ) -> Result<(), String> {
        let Some(&i) = self.index.get(host) else {
            return Err(format!("host {host} is not live"));
        };
        if !res.fits_in(&self.free[i]) {
            return Err(format!(
                "host {host} has {} MB and {} mCPU free, the job needs {} MB and {} mCPU",
                self.free[i].memory_mb, self.free[i].cpu_milli, res.memory_mb, res.cpu_milli
            ));
        }
        self.take(i, key, res);
        self.heap = None;
        Ok(())
    }

    /// Why no host takes a job of `res` with `tags`, in the user's words.
    fn why_not(
        &self,
        tags: &BTreeMap<String, String>,
        image: Option<&str>,
        res: &Resources,
    ) -> String {
        if self.hosts.is_empty() {
            return "no live host".into();
        }
        let matching: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| tags_match(tags, self.hosts[i]))
            .collect();
        if matching.is_empty() {
            let want: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return format!("no live host has the tags {}", want.join(","));
        }
        let open: Vec<usize> = matching
            .iter()
            .copied()
            .filter(|&i| !self.hosts[i].draining)
            .collect();
        if open.is_empty() {
            return "every matching host is draining".into();
        }
        let open: Vec<usize> = open
            .into_iter()
            .filter(|&i| holds(image, self.hosts[i]))
            .collect();
        if open.is_empty() {
            return format!(
                "no live host holds the image {} (import it on the hosts: flynn import)",
                image.unwrap_or_default()
            );
        }
        let best = open
            .iter()
            .copied()
            .max_by_key(|&i| (self.free[i].memory_mb, self.free[i].cpu_milli));
        match best {
            Some(i) => format!(
                "no host has {} MB and {} mCPU free (the most free: {} with {} MB and {} mCPU)",
                res.memory_mb,
                res.cpu_milli,
                self.hosts[i].id,
                self.free[i].memory_mb,
                self.free[i].cpu_milli
            ),
            None => "no host fits".into(),
        }
    }
}

/// Where one job (an ephemeral one) goes among `hosts` with `jobs` running.
pub fn place_one(
    hosts: &[Host],
    jobs: &[Job],
    tags: &BTreeMap<String, String>,
    res: &Resources,
) -> Result<String, String> {
    let key = FormationKey {
        app: String::new(),
        process_type: String::new(),
    };
    Placer::new(hosts, jobs).place(&key, tags, None, res)
}
