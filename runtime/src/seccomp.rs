//! Seccomp profiles compiled to BPF once per host and installed by the shim itself.
//!
//! libcontainer compiles the spec's `linux.seccomp` with libseccomp inside every
//! container's init process: for Docker's profile (three architectures, ~350 syscalls)
//! that is 15-20 ms per container, every time the same program. Here the profile is
//! compiled once, exported with `seccomp_export_bpf` and cached under a name derived from
//! everything that determines the program ([`Filter::prepare`]); the shim hands
//! libcontainer the spec *without* `linux.seccomp` and installs the cached program in the
//! init process right before the workload's `execve`, through the executor in
//! [`crate::container`] ([`Filter::install`], one `seccomp(2)` call).
//!
//! The translation follows the OCI runtime spec, including `SCMP_CMP_MASKED_EQ`, which
//! compares `(arg & value) == valueTwo` (libcontainer 0.7 passes the two the other way
//! round; it no longer sees our profiles). Like libcontainer and runc: rules whose action
//! is the default action are dropped, syscall names libseccomp does not know are skipped,
//! and conditions on the same argument become separate rules (any of them allows). Unlike
//! them, the program is a binary tree (libseccomp's optimization level 2): the same
//! decisions, cheaper to load and to run.
//!
//! **Cache files** (`<dir>/<key>.bpf`): the program (`struct sock_filter` records, 8 bytes
//! each, native byte order, as libseccomp exports them), then an 8-byte magic and the
//! SHA-256 of the program. The key is the SHA-256 of a format version, the libseccomp
//! version, the architecture and the profile's JSON. Files are written to a unique temp
//! name and renamed into place, so concurrent shims never see half a file; they are not
//! fsynced: a file damaged by a crash (or anything else) fails the length, magic or hash
//! check and is compiled and written again, never loaded. The checks catch damage, not
//! tampering: the directory is as trusted as the rest of the state root (root only).

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    ScmpVersion,
};
use nix::errno::Errno;
use nix::sys::memfd::{MemFdCreateFlag, memfd_create};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};
use sha2::{Digest, Sha256};

/// Bump whenever the translation below changes what a profile compiles to: old cache
/// files then simply stop being found.
const FORMAT: &str = "flynn-seccomp-bpf/2";
const MAGIC: &[u8; 8] = b"FLYNBPF1";
const TRAILER: usize = MAGIC.len() + 32;
const INSN: usize = 8;
/// The kernel refuses longer filters (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "the seccomp profile uses {0}, which flynn-runtime cannot install; \
         remove it from the profile"
    )]
    Unsupported(String),
    #[error("libseccomp could not {what}: {source}")]
    Libseccomp {
        what: String,
        source: libseccomp::error::SeccompError,
    },
    #[error("cannot export the compiled seccomp filter: {0}")]
    Export(std::io::Error),
    #[error(
        "the seccomp profile compiles to {0} BPF instructions, over the kernel's limit of \
         {MAX_INSNS}: allow fewer syscalls or fewer architectures"
    )]
    TooLong(usize),
    #[error("libseccomp produced a malformed filter ({0} bytes)")]
    Malformed(usize),
    #[error("cannot install the seccomp filter: {0}")]
    Install(Errno),
}

fn scmp(what: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let what = what.into();
    move |source| SeccompError::Libseccomp { what, source }
}

/// Where a prepared filter came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A valid cache file.
    Cache,
    /// No cache file: compiled (and cached, if the directory is writable).
    Compiled,
    /// A cache file that failed its checks: compiled again and replaced.
    Rebuilt,
}

/// A compiled seccomp program, ready to install.
#[derive(Clone)]
pub struct Filter {
    program: Arc<[libc::sock_filter]>,
    /// `SECCOMP_FILTER_FLAG_*` from the profile's `flags`.
    flags: libc::c_ulong,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("flags", &self.flags)
            .finish()
    }
}

impl Filter {
    /// The filter for `profile`, from `cache_dir` when a valid cache file is there, else
    /// compiled and written there. Failing to write the cache is not an error (the
    /// compiled program is used anyway), failing to compile is.
    pub fn prepare(
        cache_dir: &Path,
        profile: &LinuxSeccomp,
    ) -> Result<(Filter, Source), SeccompError> {
        let flags = load_flags(profile)?;
        let path = cache_path(cache_dir, profile)?;
        let mut source = Source::Compiled;
        match std::fs::read(&path) {
            Ok(data) => match parse_cache(&data) {
                Some(program) => return Ok((Filter { program, flags }, Source::Cache)),
                None => {
                    tracing::warn!(
                        ?path,
                        len = data.len(),
                        "corrupt seccomp cache file; rebuilding"
                    );
                    source = Source::Rebuilt;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(?path, error = %e, "cannot read the seccomp cache; compiling"),
        }
        let bpf = compile(profile)?;
        let program = parse_program(&bpf).ok_or(SeccompError::Malformed(bpf.len()))?;
        if program.len() > MAX_INSNS {
            return Err(SeccompError::TooLong(program.len()));
        }
        if let Err(e) = write_cache(&path, &bpf) {
            tracing::warn!(?path, error = %e, "cannot write the seccomp cache");
        }
        Ok((Filter { program, flags }, source))
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Installs the filter on the calling thread (`seccomp(SECCOMP_SET_MODE_FILTER)`).
    /// Needs no_new_privileges or CAP_SYS_ADMIN. Irreversible: meant for a container's
    /// init process right before it executes the workload. Allocates nothing.
    pub fn install(&self) -> Result<(), SeccompError> {
        let len = u16::try_from(self.program.len())
            .map_err(|_| SeccompError::TooLong(self.program.len()))?;
        let prog = libc::sock_fprog {
            len,
            // The kernel only reads the program.
            filter: self.program.as_ptr().cast_mut(),
        };
        // By hand: the program is compiled here (nothing in the lockfile loads a
        // ready BPF program; libseccomp compiles its own), and nix has no seccomp(2).
        // SAFETY: `prog` points at `len` valid sock_filter records that stay alive (and
        // unmodified) for the duration of the call; the kernel copies and verifies them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        Errno::result(rc).map(drop).map_err(SeccompError::Install)
    }
}

/// The cache file for `profile` in `cache_dir`.
pub fn cache_path(cache_dir: &Path, profile: &LinuxSeccomp) -> Result<PathBuf, SeccompError> {
    Ok(cache_dir.join(format!("{}.bpf", cache_key(profile)?)))
}

/// Hex SHA-256 of everything that determines the compiled program.
pub fn cache_key(profile: &LinuxSeccomp) -> Result<String, SeccompError> {
    let json = serde_json::to_vec(profile)
        .map_err(|e| SeccompError::Unsupported(format!("an unencodable profile ({e})")))?;
    let version = ScmpVersion::current().map_err(scmp("report its version"))?;
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(format!("\0{}.{}.{}\0", version.major, version.minor, version.micro).as_bytes());
    h.update(std::env::consts::ARCH.as_bytes());
    h.update(b"\0");
    h.update(&json);
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The program of a cache file, if the file passes every check.
fn parse_cache(data: &[u8]) -> Option<Arc<[libc::sock_filter]>> {
    let body_len = data.len().checked_sub(TRAILER)?;
    let (body, trailer) = data.split_at(body_len);
    let (magic, digest) = trailer.split_at(MAGIC.len());
    if magic != MAGIC || Sha256::digest(body).as_slice() != digest {
        return None;
    }
    let program = parse_program(body)?;
    (program.len() <= MAX_INSNS).then_some(program)
}

/// `struct sock_filter` records from their native-endian bytes: {u16 code, u8 jt, u8 jf,
/// u32 k}. Rejects an empty program and a length that is not a whole number of records.
fn parse_program(bytes: &[u8]) -> Option<Arc<[libc::sock_filter]>> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(INSN) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(INSN)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

/// Visible only: a lost or torn cache entry is detected (magic and digest) and compiled
/// again. Shims write the same entry at once: each has its own temp file.
fn write_cache(path: &Path, bpf: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut data = Vec::with_capacity(bpf.len() + TRAILER);
    data.extend_from_slice(bpf);
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&Sha256::digest(bpf));
    flynn_fsutil::write_atomic(path, &data, flynn_fsutil::Durability::Visible)
}

/// The `seccomp(2)` flags a profile asks for. Refuses what only makes sense with a
/// user-space listener (notify), which the shim does not provide.
fn load_flags(profile: &LinuxSeccomp) -> Result<libc::c_ulong, SeccompError> {
    if profile.listener_path().is_some() {
        return Err(SeccompError::Unsupported("a listenerPath".into()));
    }
    let mut flags = 0;
    for flag in profile.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::Unsupported(
                    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV".into(),
                ));
            }
        };
    }
    Ok(flags)
}

/// Compiles `profile` with libseccomp and returns the exported BPF program.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<u8>, SeccompError> {
    load_flags(profile)?;
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(scmp("create a filter"))?;
    // A binary tree over syscall numbers instead of a linear list: the same decisions,
    // but the kernel prepares it (its per-syscall action cache evaluates the filter for
    // every syscall number of every architecture) in about 0.5 ms instead of 1.5 ms at
    // each container start, and filtered syscalls take fewer steps. libseccomp < 2.5
    // lacks the attribute: the linear filter is just as correct.
    if let Err(e) = ctx.set_ctl_optimize(2) {
        tracing::debug!(error = %e, "libseccomp cannot build a binary tree; linear filter");
    }
    for &arch in profile.architectures().iter().flatten() {
        ctx.add_arch(arch_of(arch))
            .map_err(scmp(format!("add architecture {arch:?}")))?;
    }
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            // libseccomp refuses rules that change nothing.
            continue;
        }
        let args = rule.args().as_deref().unwrap_or(&[]);
        let conditions: Vec<ScmpArgCompare> = args.iter().map(condition).collect();
        let mut seen = HashSet::new();
        let separate = !args.iter().all(|a| seen.insert(a.index()));
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                // Unknown to this libseccomp: nothing to allow or deny.
                tracing::debug!(name, "unknown syscall in the seccomp profile; skipped");
                continue;
            };
            let what = || format!("add a rule for {name}");
            if conditions.is_empty() {
                ctx.add_rule(act, syscall).map_err(scmp(what()))?;
            } else if separate {
                for c in &conditions {
                    ctx.add_rule_conditional(act, syscall, std::slice::from_ref(c))
                        .map_err(scmp(what()))?;
                }
            } else {
                ctx.add_rule_conditional(act, syscall, &conditions)
                    .map_err(scmp(what()))?;
            }
        }
    }
    export(&ctx)
}

/// libseccomp 2.5 can only export to a descriptor: an anonymous memory file.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, SeccompError> {
    let fd = memfd_create(c"flynn-seccomp", MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|e| SeccompError::Export(e.into()))?;
    ctx.export_bpf(&fd).map_err(scmp("export the filter"))?;
    let mut file = File::from(fd);
    let mut bpf = Vec::new();
    file.rewind()
        .and_then(|_| file.read_to_end(&mut bpf))
        .map_err(SeccompError::Export)?;
    Ok(bpf)
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, SeccompError> {
    // OCI: errnoRet defaults to EPERM.
    let errno = errno.map_or(libc::EPERM, |e| e as i32);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(errno)
                .map_err(|_| SeccompError::Unsupported(format!("SCMP_ACT_TRACE({errno})")))?,
        ),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Unsupported("SCMP_ACT_NOTIFY".into()));
        }
    })
}

/// One argument condition, with the OCI meaning of each operator. For MASKED_EQ the spec
/// says `(arg & value) == valueTwo`: `value` is libseccomp's mask, `valueTwo` its datum.
fn condition(arg: &LinuxSeccompArg) -> ScmpArgCompare {
    let index = arg.index() as u32;
    let value = arg.value();
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return ScmpArgCompare::new(
                index,
                ScmpCompareOp::MaskedEqual(value),
                arg.value_two().unwrap_or(0),
            );
        }
    };
    ScmpArgCompare::new(index, op, value)
}

fn arch_of(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::caps::DEFAULT_CAPABILITIES;
    use crate::spec::seccomp::default_profile;
    use std::os::unix::fs::MetadataExt;

    fn profile() -> LinuxSeccomp {
        default_profile(DEFAULT_CAPABILITIES).unwrap()
    }

    #[test]
    fn cache_is_reused_and_a_corrupt_one_is_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("seccomp");
        let p = profile();
        let (first, source) = Filter::prepare(&dir, &p).unwrap();
        assert_eq!(source, Source::Compiled);
        assert!(first.len() > 100 && first.len() <= MAX_INSNS, "{first:?}");
        let path = cache_path(&dir, &p).unwrap();
        let good = std::fs::read(&path).unwrap();
        assert_eq!(good.len(), first.len() * INSN + TRAILER);
        let inode = std::fs::metadata(&path).unwrap().ino();

        let (second, source) = Filter::prepare(&dir, &p).unwrap();
        assert_eq!(source, Source::Cache);
        assert_eq!(second.len(), first.len());
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode, "rewritten");
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

        let body = good.len() - TRAILER;
        let mut flipped = good.clone();
        flipped[body / 2] ^= 0x10;
        let mut bad_magic = good.clone();
        bad_magic[body] ^= 1;
        for (what, data) in [
            ("empty", vec![]),
            ("trailer only", good[body..].to_vec()),
            ("not whole records", good[3..].to_vec()),
            ("a record short", good[INSN..].to_vec()),
            ("a flipped bit", flipped),
            ("bad magic", bad_magic),
            ("garbage", vec![0x42; 4096]),
        ] {
            std::fs::write(&path, &data).unwrap();
            let (filter, source) = Filter::prepare(&dir, &p).unwrap();
            assert_eq!(source, Source::Rebuilt, "{what}");
            assert_eq!(filter.len(), first.len(), "{what}");
            assert_eq!(std::fs::read(&path).unwrap(), good, "{what}");
        }
    }

    #[test]
    fn the_key_covers_the_profile() {
        let p = profile();
        let mut other = p.clone();
        other.set_default_errno_ret(Some(libc::ENOSYS as u32));
        assert_eq!(cache_key(&p).unwrap(), cache_key(&p.clone()).unwrap());
        assert_ne!(cache_key(&p).unwrap(), cache_key(&other).unwrap());
        assert_eq!(cache_key(&p).unwrap().len(), 64);
    }

    #[test]
    fn an_unwritable_cache_still_gives_a_filter() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let (filter, source) = Filter::prepare(&file.join("seccomp"), &profile()).unwrap();
        assert_eq!(source, Source::Compiled);
        assert!(!filter.is_empty());
    }

    #[test]
    fn notify_is_refused() {
        let mut p = profile();
        let mut rule = oci_spec::runtime::LinuxSyscall::default();
        rule.set_names(vec!["mkdir".into()]);
        rule.set_action(LinuxSeccompAction::ScmpActNotify);
        let mut rules = p.syscalls().clone().unwrap_or_default();
        rules.push(rule);
        p.set_syscalls(Some(rules));
        assert!(matches!(compile(&p), Err(SeccompError::Unsupported(_))));
    }

    /// Runs `check` in a forked child under the default profile; returns its exit code.
    fn in_filtered_child(check: fn() -> i32) -> i32 {
        let tmp = tempfile::tempdir().unwrap();
        let (filter, _) = Filter::prepare(tmp.path(), &profile()).unwrap();
        // SAFETY: the child only makes raw syscalls and exits with _exit: it neither
        // allocates nor takes locks another thread of the test harness might hold.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: plain prctl; NNP is what lets an unprivileged filter load.
                let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = if nnp != 0 {
                    100
                } else if filter.install().is_err() {
                    101
                } else {
                    check()
                };
                // SAFETY: ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            -1 => panic!("fork failed"),
            pid => {
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status), "child died: {status:#x}");
                libc::WEXITSTATUS(status)
            }
        }
    }

    fn errno() -> i32 {
        Errno::last_raw()
    }

    #[test]
    fn the_installed_filter_follows_the_oci_meaning() {
        let code = in_filtered_child(|| {
            // SAFETY: raw syscalls with integer arguments only; the clone without
            // CLONE_VM makes a copy-on-write child that exits at once.
            unsafe {
                // A plain fork passes the MASKED_EQ rule...
                let child =
                    libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0);
                if child == 0 {
                    libc::_exit(0);
                }
                if child < 0 {
                    return 1;
                }
                libc::waitpid(child as i32, std::ptr::null_mut(), 0);
                // ...a clone asking for a namespace does not.
                let flags = (libc::CLONE_NEWNS | libc::SIGCHLD) as libc::c_ulong;
                let child = libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0);
                if child == 0 {
                    libc::_exit(0);
                }
                if child >= 0 || errno() != libc::EPERM {
                    return 2;
                }
                if libc::unshare(libc::CLONE_NEWUSER) == 0 || errno() != libc::EPERM {
                    return 3;
                }
                // clone3 hides its flags: ENOSYS sends libc back to clone.
                if libc::syscall(libc::SYS_clone3, 0, 0) >= 0 || errno() != libc::ENOSYS {
                    return 4;
                }
                if libc::personality(0x0008) < 0 {
                    return 5;
                }
                if libc::personality(0x0040000) >= 0 || errno() != libc::EPERM {
                    return 6;
                }
                if libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) >= 0 || errno() != libc::EPERM
                {
                    return 7;
                }
                if libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) < 0 {
                    return 8;
                }
                if libc::syscall(libc::SYS_reboot, 0, 0, 0, 0) >= 0 || errno() != libc::EPERM {
                    return 9;
                }
            }
            0
        });
        assert_eq!(code, 0, "check {code} failed");
    }
}
