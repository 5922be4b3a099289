//! Containers on youki's libcontainer: the OCI spec with Docker's defaults, the
//! per-container shim that creates, supervises and deletes a container, the per-exec shim
//! that runs a process inside a running container, their json-file logs, stdin and
//! terminals, and exit statuses.
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
//! 20 ms the shim finishes right there; otherwise it re-executes into its monitor
//! (descriptors and directory handed over in `FLYNN_SHIM_MONITOR`; init stays its child).
//! The monitor is one `poll(2)` loop over a SIGCHLD signalfd, the container's output
//! (pipes or terminal), its stdin and the control socket. When init exits it drains the
//! output, reads the cgroup's OOM-kill counter, writes `exit.json` (fsynced), removes the
//! control socket, answers the waiters, and only then deletes the container (cgroups,
//! state dir; [`teardown`]) and exits. The agent can die and restart at any time after
//! the handshake: it reconnects with [`shim::ShimClient`].
//!
//! **Spares.** `flynn-host shim --spare` is the same shim started before its job
//! ([`shim::Spares`]): it detaches and then reads one line on stdin, the job directory,
//! and goes on as above (EOF instead: it exits). It runs `SCHED_IDLE` until then.
//!
//! **The monitor binary.** The monitor re-executes into `flynn-shim-monitor` (this crate's
//! `src/bin/flynn-shim-monitor.rs`, [`shim::monitor_main`]) when that file is beside the
//! running binary, else into the running binary itself. The monitor's code reaches
//! neither libcontainer, libseccomp nor tokio, so the linker leaves them out of that
//! binary: it maps ~1 MB of code instead of the agent's ~13 MB, and no relocated
//! `.data.rel.ro` of libcontainer. Once its loop starts, the monitor also drops from its
//! resident set the unmodified pages of its read-only file mappings that start-up touched
//! (`MADV_DONTNEED`; they refault from the page cache if ever used again): ~0.7 MB RSS
//! while its container sleeps, ~1.2 MB when it logs and serves requests, ~170 kB of it
//! private. The handoff has a version; a monitor binary that reads
//! another version (installed beside an upgraded agent) executes the creating shim's own
//! binary instead, through a descriptor of it handed over in `FLYNN_SHIM_EXE_FD`.
//!
//! **Exec shims.** `flynn-host shim <EXEC_DIR>` (a directory holding `exec.json`, written
//! by [`shim::spawn_exec`]) runs a process in the job's running container with
//! libcontainer's tenant builder: it writes the process as an OCI process
//! (`process.json`: the container's own process, so capabilities, no_new_privileges,
//! rlimits and oom_score_adj are the container's, with the exec's args, env added
//! Docker-style, cwd, user resolved in the rootfs, terminal; [`spec::exec_process`]),
//! joins init's namespaces and cgroups, and installs the container's cached seccomp
//! filter through the same executor (the bundle spec has none, so libcontainer would
//! start the process unfiltered). It reports `{"started":{"pid":N}}` or `{"error":...}`
//! (no start phase), then monitors the process like a container's init, minus the OOM
//! counter and the delete. The process is in the container's PID namespace: when init
//! dies the kernel kills it, and its shim records that (signal 9). Execs of one container
//! are serialized around libcontainer's part (an `flock` on `<job_dir>/exec`) so that the
//! `tenant-*.sock` files libcontainer leaves in the container's state dir can be removed.
//!
//! **Terminals and stdin.** With `tty`, libcontainer's init (or exec'd process) opens a
//! pty inside the container, makes it its controlling terminal and stdin/stdout/stderr,
//! and sends the master over `tty.sock` (the console socket) to the shim, which reads
//! output from it (logged as stdout, as Docker does) and writes input to it. With
//! `stdin` and no terminal, stdin is a pipe whose write end the shim holds; without
//! `stdin` it is /dev/null (a terminal is the process's stdin either way, but only a
//! `stdin` process accepts input). Input is buffered (64 KiB) in the monitor's loop;
//! while the buffer is full the client is not read: backpressure, not memory.
//!
//! **Logs** are written per read: complete lines as entries, the rest of a read at once
//! as its own entry (a prompt shows before its answer), at most 16 KiB per entry; only an
//! incomplete UTF-8 character is carried to the next read ([`logs`]).
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
//! the program itself through a libcontainer executor, in init (and in exec'd processes)
//! right before `execve` (no_new_privileges set, capabilities dropped). The job dir's
//! `config.json` keeps the whole spec: it is what the container runs with, and what
//! `runc` would run.
//!
//! **Control protocol** (`shim.sock` of a job or exec dir, one JSON line per request and
//! per reply, one request per connection):
//!
//! - `{"op":"signal","signal":15}` → `{"ok":true}` (an error once the process exited);
//! - `{"op":"wait"}` → `{"exit":{...}}` once exited;
//! - `{"op":"state"}` → `{"pid":N,"status":"running"}` (`"stopped"` for a request served
//!   as the process exits);
//! - `{"op":"stdin"}` → `{"ok":true}`, after which the rest of the connection is raw input
//!   for the process; the client half-closing or leaving closes a stdin pipe (EOF for the
//!   program, for good: a later `stdin` gets an error), a terminal stays open. Errors:
//!   `{"error":"stdin is already attached"}` (one client at a time),
//!   `{"error":"the job was started without stdin"}` (`"the exec ..."` for an exec);
//! - `{"op":"resize","rows":R,"cols":C}` → TIOCSWINSZ on the terminal (the kernel sends
//!   SIGWINCH to its foreground group) → `{"ok":true}`; an error without a terminal;
//! - anything else → `{"error":"..."}`.
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
//! | `tty.sock`           | shim       | console socket (tty only), removed at start    |
//! | `shim.log`           | shim       | the shim's own diagnostics                     |
//! | `exit.json`          | shim       | [`ExitStatus`], atomically, once init exited   |
//! | `log.json`           | shim       | container output ([`logs`]), at `log_path`     |
//! | `exec/<exec_id>/`    | agent      | one directory per exec, see below              |
//!
//! An exec directory, `<job_dir>/exec/<exec_id>/` ([`shim::exec_dir`]; the id is 12
//! lowercase hex characters, which keeps its socket paths short), holds `exec.json`
//! (agent: [`shim::ExecShimConfig`], which also reads as an [`ExecConfig`]),
//! `process.json` (shim: the OCI process it runs), and `shim.pid`, `shim.lock`,
//! `shim.sock`, `tty.sock`, `shim.log`, `exit.json` and `log.json` as above. A failed
//! [`shim::spawn_exec`] removes its directory.
//!
//! libcontainer keeps its own state in `<state_root>/<id>/`, the compiled seccomp filters
//! are in `<state_root>/seccomp/`; cgroups are `/flynn/<id>` in every hierarchy (cgroup v1
//! on hybrid hosts, v2 on unified ones).

pub mod cgroup;
pub mod config;
pub mod container;
pub mod exit;
pub mod host;
pub mod idmap;
pub mod join;
pub mod logs;
pub mod loopback;
mod rawfork;
pub mod rootfs;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod teardown;
pub mod user;

pub use config::{
    BindMount, ContainerConfig, ExecConfig, IdRange, NetworkMode, Resources, SeccompMode, Security,
};
pub use container::RuntimeError;
pub use exit::ExitStatus;
pub use spec::{SpecError, build_spec};
