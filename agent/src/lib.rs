//! `flynn-host`: the Flynn host agent. One binary is the daemon (HTTP API, job
//! supervisor), the CLI that talks to it, and the per-container shim.
//!
//! The agent composes the other crates: `image` gives a job its root
//! filesystem, `runtime` runs it. It is the only crate that knows about both;
//! they know nothing of each other or of HTTP.

pub mod api;
pub mod cli;
pub use flynn_client as client;
pub mod daemon;
pub mod failpoint;
#[cfg(test)]
mod fuzz;
pub mod grid;
pub mod host;
pub mod jobs;
pub mod model;
pub mod preflight;
pub use flynn_random as random;
