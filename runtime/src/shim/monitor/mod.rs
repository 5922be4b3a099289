//! The shim's long phase: supervise a started process (a container's init, or a process
//! exec'd into a container) until it exits.
//!
//! One thread, one `poll(2)`, no timers: the wake-ups are SIGCHLD (through a signalfd),
//! output on the process's pipes or terminal, room in its stdin, and control connections.
//! When the process has exited the shim drains its output, (for a container) reads the
//! OOM counter, writes `exit.json`, removes the control socket, answers the waiters, and
//! only then (for a container) deletes the container and exits: waiters learn the exit as
//! early as it is recorded. `shim.lock`, held until the process ends, tells when the
//! delete is over too ([`super::wait_shim_gone`]).
//!
//! This module must not reach libcontainer (nor tokio): it is all the lean monitor
//! binary (`flynn-shim-monitor`) runs, and the linker keeps only what it reaches.
//!
//! `handoff` carries the supervised process across the exec into the monitor,
//! `event_loop` is the monitor's poll loop and the end of its life, `control` serves
//! the control socket's clients.

mod control;
mod event_loop;
mod handoff;

pub use handoff::{Handoff, Kind, hand_over, main_after_exec};

const READ_CHUNK: usize = 64 * 1024;
