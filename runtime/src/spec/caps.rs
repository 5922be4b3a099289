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
