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
//! daemon's child exits at once), builds the spec, creates the container, and reports on
//! stdout one JSON line, `{"created":{"pid":N,...}}` or `{"error":"..."}`. It then waits
//! for `start` on stdin (EOF instead: it deletes the container and exits), starts the
//! container, reports `{"started":{"pid":N}}`, points stdin/stdout at /dev/null (stderr
//! is `shim.log` from the start) and re-executes itself into a lean monitor (descriptors
//! and job dir handed over in an environment variable; init stays its child). The monitor is one `poll(2)` loop over a SIGCHLD
//! signalfd, the container's stdout/stderr pipes and the control socket. When init exits
//! it drains the pipes, reads the cgroup's OOM-kill counter, writes `exit.json`, deletes
//! the container, answers waiters, and exits. The agent can die and restart at any time
//! after the handshake: it reconnects with [`shim::ShimClient`].
//!
//! **Control protocol** (`shim.sock`, one JSON line per request and per reply, one request
//! per connection): `{"op":"signal","signal":15}` → `{"ok":true}`; `{"op":"wait"}` →
//! `{"exit":{...}}` once exited; `{"op":"state"}` → `{"pid":N,"status":"running"}`;
//! anything else → `{"error":"..."}`.
//!
//! **Files** of a job directory (created by the agent; also the libcontainer bundle):
//!
//! | file          | written by | content                                              |
//! |---------------|------------|------------------------------------------------------|
//! | `shim.json`   | agent      | [`shim::ShimConfig`]                                 |
//! | `config.json` | shim       | the OCI spec                                         |
//! | `shim.pid`    | shim       | the detached shim's pid                              |
//! | `shim.sock`   | shim       | control socket, removed when the shim exits          |
//! | `shim.log`    | shim       | the shim's own diagnostics                           |
//! | `exit.json`   | shim       | [`ExitStatus`], atomically, once the container exited|
//! | `log.json`    | shim       | container output ([`logs`]), wherever `log_path` says|
//!
//! libcontainer keeps its own state in `<state_root>/<id>/`; cgroups are `/flynn/<id>`
//! in every hierarchy (cgroup v1 on hybrid hosts, v2 on unified ones).

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
pub mod user;

pub use config::{ContainerConfig, NetworkMode, Resources};
pub use container::RuntimeError;
pub use exit::ExitStatus;
pub use spec::{SpecError, build_spec};
