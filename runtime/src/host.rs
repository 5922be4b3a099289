//! Adapting a spec to what this host and this process can actually enforce, the way
//! Docker skips (with a warning) what the kernel does not support.

use nix::sys::resource::{Resource, getrlimit};
use oci_spec::runtime::{PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Spec};

use crate::cgroup;

/// CAP_SYS_RESOURCE: needed to raise a hard rlimit above the caller's own.
const CAP_SYS_RESOURCE: u32 = 24;

pub fn adapt_spec(spec: &mut Spec) {
    if !cgroup::swap_limit_supported() {
        drop_swap_limit(spec);
    }
    if !has_capability(CAP_SYS_RESOURCE) {
        clamp_nofile(spec);
    }
}

fn drop_swap_limit(spec: &mut Spec) {
    let memory = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.resources_mut().as_mut())
        .and_then(|r| r.memory_mut().as_mut());
    if let Some(memory) = memory
        && memory.swap().is_some()
    {
        tracing::warn!("swap accounting is off on this host: the memory limit will not cover swap");
        memory.set_swap(None);
    }
}

/// Without CAP_SYS_RESOURCE (e.g. a shim running inside a restricted sandbox) the init
/// process cannot get a higher hard NOFILE limit than ours: asking would fail the create.
fn clamp_nofile(spec: &mut Spec) {
    let Ok((_, our_hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let Some(process) = spec.process_mut().as_mut() else {
        return;
    };
    let Some(rlimits) = process.rlimits().clone() else {
        return;
    };
    let rlimits: Vec<PosixRlimit> = rlimits
        .into_iter()
        .map(|r| {
            if r.typ() != PosixRlimitType::RlimitNofile || r.hard() <= our_hard {
                return r;
            }
            tracing::warn!(
                wanted = r.hard(),
                got = our_hard,
                "no CAP_SYS_RESOURCE: lowering the container's hard NOFILE limit"
            );
            PosixRlimitBuilder::default()
                .typ(r.typ())
                .hard(our_hard)
                .soft(r.soft().min(our_hard))
                .build()
                .unwrap_or(r)
        })
        .collect();
    process.set_rlimits(Some(rlimits));
}

/// Whether the calling process has `cap` in its effective set.
fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|mask| mask & (1 << cap) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root: the full suite (scripts/test.sh) runs it"]
    fn reads_own_capabilities() {
        // This crate's tests run as root; CAP_CHOWN (0) is in any root's effective set.
        assert!(has_capability(0));
    }
}
