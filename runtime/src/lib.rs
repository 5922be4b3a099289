//! Containers on youki's libcontainer: the OCI spec with Docker's defaults, the
//! per-container shim that creates, supervises and deletes a container, its json-file
//! logs and its exit status.
//!
//! This crate owns everything between "here is a mounted rootfs and a command" and "the
//! container ran, here is its output and how it ended". It must not parse image manifests
//! or configs (the agent hands it plain values), set up networks beyond joining a given
//! namespace, or fork inside the daemon: libcontainer's create forks and changes the
//! working directory process-wide, so it only ever runs in a single-threaded shim.
//!
//! # Design
//!
//! **Shim.** Each container has its own shim: the agent's binary run as
//! `flynn-host shim <JOB_DIR>` ([`shim::main`]). The shim detaches (setsid + fork, so the
//! daemon's child exits at once), takes `shim.lock`, builds the spec, creates the
//! container, and reports on stdout one JSON line, `{"created":{"pid":N,...}}` or
//! `{"error":"..."}`. It then waits for `start` on stdin (EOF instead: it deletes the
//! container and exits), starts the container, reports `{"started":{"pid":N}}` and points
//! stdin/stdout at /dev/null (stderr is `shim.log` from the start). If init exits within
//! 20 ms the shim finishes right there; otherwise it re-executes itself into a lean
//! monitor (descriptors and job dir handed over in an environment variable; init stays
//! its child). The monitor is one `poll(2)` loop over a SIGCHLD signalfd, the container's
//! stdout/stderr pipes and the control socket. When init exits it drains the pipes, reads
//! the cgroup's OOM-kill counter, writes `exit.json` (fsynced), removes the control
//! socket, answers the waiters, and only then deletes the container (cgroups, state dir)
//! and exits. The agent can die and restart at any time after the handshake: it
//! reconnects with [`shim::ShimClient`].
//!
//! **Exit first, delete after.** A waiter hears of the exit as soon as it is durable; the
//! delete follows. The agent tells that the shim is completely done with
//! [`shim::wait_shim_gone`] (blocking): the shim holds a POSIX record lock on `shim.lock`
//! for its whole life, which no child inherits and which the kernel drops when the shim
//! process ends. [`shim::cleanup`] is safe to run concurrently with a shim's own delete
//! (both hold an `flock` on the container's state dir while deleting), and cheap when the
//! shim has already deleted everything (a stat and one mount table read).
//!
//! **Seccomp** ([`seccomp`]). libcontainer would compile the profile with libseccomp in
//! every container's init (15-20 ms for Docker's profile). The shim compiles it once per
//! host into a BPF program cached as `<state_root>/seccomp/<sha256>.bpf` (temp + rename;
//! a file failing its length, magic or hash check is rebuilt, never loaded), hands
//! libcontainer the spec *without* `linux.seccomp` (`bundle/config.json`), and installs
//! the program itself through a libcontainer executor, in init right before `execve`
//! (no_new_privileges set, capabilities dropped). The job dir's `config.json` keeps the
//! whole spec: it is what the container runs with, and what `runc` would run.
//!
//! **Control protocol** (`shim.sock`, one JSON line per request and per reply, one request
//! per connection): `{"op":"signal","signal":15}` → `{"ok":true}`; `{"op":"wait"}` →
//! `{"exit":{...}}` once exited; `{"op":"state"}` → `{"pid":N,"status":"running"}`
//! (`"stopped"` for a request served as init exits; a signal then gets an error); anything
//! else → `{"error":"..."}`.
//!
//! **Files** of a job directory (created by the agent):
//!
//! | file                 | written by | content                                        |
//! |----------------------|------------|------------------------------------------------|
//! | `shim.json`          | agent      | [`shim::ShimConfig`]                           |
//! | `config.json`        | shim       | the complete OCI spec, seccomp profile included|
//! | `bundle/config.json` | shim       | libcontainer's bundle: the spec minus seccomp  |
//! | `shim.pid`           | shim       | the detached shim's pid                        |
//! | `shim.lock`          | shim       | locked (`F_SETLK`) while the shim lives        |
//! | `shim.sock`          | shim       | control socket, removed once the exit is known |
//! | `shim.log`           | shim       | the shim's own diagnostics                     |
//! | `exit.json`          | shim       | [`ExitStatus`], atomically, once init exited   |
//! | `log.json`           | shim       | container output ([`logs`]), at `log_path`     |
//!
//! libcontainer keeps its own state in `<state_root>/<id>/`, the compiled seccomp filters
//! are in `<state_root>/seccomp/`; cgroups are `/flynn/<id>` in every hierarchy (cgroup v1
//! on hybrid hosts, v2 on unified ones).

pub mod cgroup;
pub mod config;
pub mod container;
pub mod exit;
pub mod host;
pub mod logs;
pub mod loopback;
pub mod rootfs;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod teardown;
pub mod user;

pub use config::{ContainerConfig, ExecConfig, NetworkMode, Resources};
pub use container::RuntimeError;
pub use exit::ExitStatus;
pub use spec::{SpecError, build_spec};
