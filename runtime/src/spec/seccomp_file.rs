//! Seccomp profiles in Docker's JSON format (`--security-opt seccomp=FILE`), rendered
//! to the OCI form for one container.
//!
//! Docker's format is the OCI one plus conditions: a rule may apply only when the
//! container holds some capabilities (`includes.caps`, all of them) or none of others
//! (`excludes.caps`), on some architectures (`includes.arches`, Go's names: `amd64`,
//! `arm64`), or from some kernel version on (`includes.minKernel`); `archMap` lists an
//! architecture with its sub-architectures. Rendering keeps the rules that apply and
//! drops the conditions, as Docker does before it hands the profile to runc.

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSyscall,
};
use serde::Deserialize;

/// Why a profile could not be used; the message names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "the seccomp profile is not a Docker seccomp profile: {0} (expected JSON with \
         \"defaultAction\" and \"syscalls\": [{{\"names\": [...], \"action\": \"SCMP_ACT_...\"}}])"
    )]
    Json(#[from] serde_json::Error),
    #[error("the seccomp profile's syscalls[{0}] names no syscall: give \"names\": [...]")]
    NoNames(usize),
    #[error(
        "the seccomp profile's syscalls[{index}] has a bad minKernel {value:?}: give e.g. \"5.8\""
    )]
    MinKernel { index: usize, value: String },
    #[error("the seccomp profile could not be assembled: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<LinuxSeccompFilterFlag>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    /// Docker's older single-name form.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// This machine's architecture as Docker's profiles name it (Go's GOARCH).
fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// "5.8" or "5.8.0-rc1" as (5, 8).
fn kernel_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

fn running_kernel() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    kernel_version(release.trim())
}

fn has_cap(caps: &[Capability], name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse::<Capability>().is_ok_and(|c| caps.contains(&c))
}

/// Renders `json` (a profile in Docker's format) for a container whose bounding set is
/// `caps`.
pub fn render(json: &str, caps: &[Capability]) -> Result<LinuxSeccomp, ProfileError> {
    let profile: Profile = serde_json::from_str(json)?;
    let arch = native_arch();
    let kernel = running_kernel();
    let mut syscalls = Vec::new();
    for (index, rule) in profile.syscalls.into_iter().enumerate() {
        let mut names = rule.names;
        names.extend(rule.name);
        if names.is_empty() {
            return Err(ProfileError::NoNames(index));
        }
        let inc = &rule.includes;
        let exc = &rule.excludes;
        if !inc.caps.iter().all(|c| has_cap(caps, c)) {
            continue;
        }
        if exc.caps.iter().any(|c| has_cap(caps, c)) {
            continue;
        }
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == arch) {
            continue;
        }
        if exc.arches.iter().any(|a| a == arch) {
            continue;
        }
        if let Some(min) = &inc.min_kernel {
            let want = kernel_version(min).ok_or_else(|| ProfileError::MinKernel {
                index,
                value: min.clone(),
            })?;
            if kernel.is_some_and(|k| k < want) {
                continue;
            }
        }
        let mut s = LinuxSyscall::default();
        s.set_names(names);
        s.set_action(rule.action);
        s.set_errno_ret(rule.errno_ret);
        s.set_args((!rule.args.is_empty()).then_some(rule.args));
        syscalls.push(s);
    }
    let mut arches = profile.architectures;
    for m in profile.arch_map {
        arches.push(m.architecture);
        arches.extend(m.sub_architectures);
    }
    let mut out = LinuxSeccomp::default();
    out.set_default_action(profile.default_action);
    out.set_default_errno_ret(profile.default_errno_ret);
    out.set_architectures((!arches.is_empty()).then_some(arches));
    out.set_flags((!profile.flags.is_empty()).then_some(profile.flags));
    out.set_syscalls(Some(syscalls));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"name": "reboot", "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_BOOT"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["SYS_PTRACE"]}},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "includes": {"arches": ["s390x"]}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}], "comment": "linux32"}
        ]
    }"#;

    #[test]
    fn renders_docker_conditions() {
        let p = render(PROFILE, &[Capability::Chown]).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86][..])
        );
        let names: Vec<&str> = p
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names().iter().map(String::as_str))
            .collect();
        // reboot needs SYS_BOOT (absent), ptrace is denied only without SYS_PTRACE,
        // chmod only on s390x.
        assert_eq!(names, ["mkdir", "mkdirat", "ptrace", "personality"]);
        let with = render(PROFILE, &[Capability::SysBoot, Capability::SysPtrace]).unwrap();
        let names: Vec<&str> = with
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names().iter().map(String::as_str))
            .collect();
        assert_eq!(names, ["mkdir", "mkdirat", "reboot", "personality"]);
        // It compiles.
        crate::seccomp::compile(&p).unwrap();
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let err = render("{", &[]).unwrap_err().to_string();
        assert!(err.contains("not a Docker seccomp profile"), "{err}");
        let err = render(r#"{"defaultAction": "SCMP_ACT_NOPE"}"#, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SCMP_ACT_NOPE"), "{err}");
        let err = render(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}"#,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("syscalls[0] names no syscall"), "{err}");
        assert_eq!(kernel_version("5.8"), Some((5, 8)));
        assert_eq!(kernel_version("6.1.0-rc1"), Some((6, 1)));
        assert_eq!(kernel_version("x"), None);
    }
}
