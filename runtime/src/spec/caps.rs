//! Docker's default capability set.

use std::collections::HashSet;

use oci_spec::runtime::{Capability, LinuxCapabilities};

/// What Docker grants a container unless told otherwise. Notably absent: SYS_ADMIN,
/// NET_ADMIN, SYS_PTRACE, SYS_MODULE, DAC_READ_SEARCH.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Bounding, effective and permitted get the set; inheritable and ambient stay empty, so
/// a non-root user ends up with no capabilities after exec (CVE-2022-24769 hardening).
pub fn capabilities(caps: &[Capability]) -> LinuxCapabilities {
    let set: HashSet<Capability> = caps.iter().copied().collect();
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(set.clone()));
    c.set_effective(Some(set.clone()));
    c.set_permitted(Some(set));
    c.set_inheritable(Some(HashSet::new()));
    c.set_ambient(Some(HashSet::new()));
    c
}

/// Every capability the spec can name, for `ALL`.
pub const ALL_CAPABILITIES: &[Capability] = &[
    Capability::AuditControl,
    Capability::AuditRead,
    Capability::AuditWrite,
    Capability::BlockSuspend,
    Capability::Bpf,
    Capability::CheckpointRestore,
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::Kill,
    Capability::Lease,
    Capability::LinuxImmutable,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Mknod,
    Capability::NetAdmin,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetRaw,
    Capability::Perfmon,
    Capability::Setgid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysChroot,
    Capability::SysModule,
    Capability::SysNice,
    Capability::SysPacct,
    Capability::SysPtrace,
    Capability::SysRawio,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Syslog,
    Capability::WakeAlarm,
];

#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "unknown capability {0:?}: give a Linux capability name such as NET_ADMIN or CAP_NET_ADMIN \
     (see capabilities(7)), or ALL"
)]
pub struct UnknownCapability(pub String);

/// One name as Docker takes it: any case, with or without `CAP_`. `None` for `ALL`.
fn parse(name: &str) -> Result<Option<Capability>, UnknownCapability> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(None);
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse::<Capability>()
        .map(Some)
        .map_err(|_| UnknownCapability(name.to_owned()))
}

/// Docker's rule: start from the default set (or every capability when `add` names
/// ALL), add the others, then remove `drop` (ALL removes all, and only what is also
/// added by name comes back, as in Docker).
pub fn effective(add: &[String], drop: &[String]) -> Result<Vec<Capability>, UnknownCapability> {
    let add: Vec<Option<Capability>> = add.iter().map(|n| parse(n)).collect::<Result<_, _>>()?;
    let drop: Vec<Option<Capability>> = drop.iter().map(|n| parse(n)).collect::<Result<_, _>>()?;
    let mut set: Vec<Capability> = if add.contains(&None) {
        ALL_CAPABILITIES.to_vec()
    } else {
        DEFAULT_CAPABILITIES.to_vec()
    };
    if drop.contains(&None) {
        set.clear();
    } else {
        set.retain(|c| !drop.contains(&Some(*c)));
    }
    for cap in add.iter().flatten() {
        let dropped_by_name = drop.contains(&Some(*cap));
        if !set.contains(cap) && !dropped_by_name {
            set.push(*cap);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn docker_rules_for_add_and_drop() {
        let set = effective(&[], &[]).unwrap();
        assert_eq!(set, DEFAULT_CAPABILITIES);
        let set = effective(&names(&["net_admin"]), &names(&["CAP_NET_RAW"])).unwrap();
        assert!(set.contains(&Capability::NetAdmin));
        assert!(!set.contains(&Capability::NetRaw));
        assert_eq!(set.len(), 14);
        let set = effective(&names(&["ALL"]), &names(&["SYS_ADMIN"])).unwrap();
        assert_eq!(set.len(), ALL_CAPABILITIES.len() - 1);
        let set = effective(&names(&["CHOWN"]), &names(&["all"])).unwrap();
        assert_eq!(set, vec![Capability::Chown]);
        assert_eq!(
            effective(&names(&["NET_FLY"]), &[]),
            Err(UnknownCapability("NET_FLY".into()))
        );
    }
}
