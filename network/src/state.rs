//! What must survive a restart: the subnet, every endpoint (its address above all) and
//! where the allocator stopped. One JSON file, `ipam.json`, replaced atomically.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Endpoint;
use crate::config::Ipv4Net;

pub(crate) const STATE_FILE: &str = "ipam.json";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub(crate) struct State {
    pub version: u32,
    /// The subnet the addresses below come from (None: never written).
    pub subnet: Option<Ipv4Net>,
    /// The last address handed out. Allocation continues after it and wraps around, so a
    /// released address is reused as late as possible: conntrack entries and neighbours'
    /// caches that still name it have time to expire.
    pub last: Option<Ipv4Addr>,
    /// Every endpoint by job id, including one whose attach is under way: its address is
    /// taken from the moment it is written here.
    pub endpoints: BTreeMap<String, Endpoint>,
}

impl State {
    /// The next free address of `subnet`, recorded as `last`; `None` when all are taken.
    pub fn allocate(&mut self, subnet: Ipv4Net) -> Option<Ipv4Addr> {
        let range = subnet.job_range();
        let (lo, hi) = (*range.start(), *range.end());
        if lo > hi {
            return None;
        }
        let used: HashSet<Ipv4Addr> = self.endpoints.values().map(|e| e.ip).collect();
        let start = match self.last.map(u32::from) {
            Some(l) if (lo..hi).contains(&l) => l + 1,
            _ => lo,
        };
        let size = hi - lo + 1;
        for i in 0..size {
            let n = lo + (start - lo + i) % size;
            let ip = Ipv4Addr::from(n);
            if !used.contains(&ip) {
                self.last = Some(ip);
                return Some(ip);
            }
        }
        None
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = self.clone();
        s.version = VERSION;
        // Serializing plain data to a Vec cannot fail.
        serde_json::to_vec_pretty(&s).unwrap_or_default()
    }
}

/// Reads the state file; a missing file is an empty state.
pub(crate) fn load(path: &Path) -> Result<State, String> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(e.to_string()),
    };
    let state: State = serde_json::from_slice(&data).map_err(|e| e.to_string())?;
    if state.version > VERSION {
        return Err(format!(
            "version {} is newer than this agent understands ({VERSION})",
            state.version
        ));
    }
    Ok(state)
}

/// Replaces `path` with `data` ([`Durability::Ordered`]: temp file, fdatasync, rename).
/// A crash of the process leaves the old file or the new one; so does a crash of the
/// machine, since the data is on disk before the rename can be.
///
/// The directory is not fsynced, so after a power loss the rename itself may be lost
/// and the previous file come back. That is safe here: namespaces, veths and containers
/// do not survive the machine either, so every endpoint the lost write knew of is gone
/// too (the agent passes no live jobs after a reboot). Skipping it saves a disk flush on
/// every attach.
///
/// [`Durability::Ordered`]: flynn_fsutil::Durability::Ordered
pub(crate) fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    flynn_fsutil::write_atomic(path, data, flynn_fsutil::Durability::Ordered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Endpoint;
    use std::path::PathBuf;

    fn ep(ip: Ipv4Addr) -> Endpoint {
        Endpoint {
            netns: PathBuf::from("/x"),
            ip,
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            mac: String::new(),
            host_veth: String::new(),
            bridge: String::new(),
            mtu: 1500,
            ports: vec![],
        }
    }

    #[test]
    fn allocates_round_robin_and_exhausts() {
        let net: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        let mut s = State::default();
        let mut got = vec![];
        while let Some(ip) = s.allocate(net) {
            s.endpoints.insert(ip.to_string(), ep(ip));
            got.push(ip.octets()[3]);
        }
        // .0 network, .1 gateway, .7 broadcast
        assert_eq!(got, vec![2, 3, 4, 5, 6]);
        // Free .3: it is the only one, so it comes back even though it is "behind".
        s.endpoints.remove("10.0.0.3");
        assert_eq!(s.allocate(net), Some(Ipv4Addr::new(10, 0, 0, 3)));
        s.endpoints
            .insert("b".into(), ep(Ipv4Addr::new(10, 0, 0, 3)));
        // Free .2 and .5; next after .3 is .5 (not .2).
        s.endpoints.remove("10.0.0.2");
        s.endpoints.remove("10.0.0.5");
        assert_eq!(s.allocate(net), Some(Ipv4Addr::new(10, 0, 0, 5)));
    }

    #[test]
    fn last_outside_subnet_starts_over() {
        let net: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let mut s = State {
            last: Some(Ipv4Addr::new(192, 0, 2, 9)),
            ..State::default()
        };
        assert_eq!(s.allocate(net), Some(Ipv4Addr::new(10, 0, 0, 2)));
        s.last = Some(Ipv4Addr::new(10, 0, 0, 254));
        assert_eq!(s.allocate(net), Some(Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn write_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert!(load(&path).unwrap().endpoints.is_empty());
        let mut s = State::default();
        s.endpoints
            .insert("a".into(), ep(Ipv4Addr::new(10, 0, 0, 2)));
        write(&path, &s.to_bytes()).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.endpoints.len(), 1);
        assert_eq!(back.version, VERSION);
        fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).is_err());
    }
}
