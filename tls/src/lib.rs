//! The cluster's TLS, as the agent and its clients use it: the cluster CA (made at
//! the first start of a host, or handed to every host by the bootstrap), host
//! certificates naming the host's addresses, the pin that identifies a CA (what
//! `flynn-host --tls-pin` and `flynn cluster add -p` take), rustls configs that
//! verify a server by CA file or by pin, and a server certificate that renews
//! itself before it expires, swapped under running listeners.
//!
//! It owns files only under the directory it is given (`<state>/tls`), and never
//! opens a socket: the agent and the client put these configs on their streams.
//!
//! **The pin** is the base64 (standard alphabet, padded) of the SHA-256 of the CA
//! certificate's DER, as Flynn's `cluster add -p PIN` was. The DER (not the SPKI)
//! is pinned so that a pin names one certificate: a CA re-issued with the same key
//! has another pin.

mod ca;
mod error;
mod first;
mod pair;
mod pin;
mod renew;
mod resolver;
mod store;
mod verify;

pub use ca::{Ca, HostCert, host_names};
pub use error::TlsError;
pub use first::{Captured, FirstContactError, capture_config, check_first_contact, proof};
pub use pair::{PairError, check_pair};
pub use pin::{Pin, pin_of_pem};
pub use renew::renew_through;
pub use resolver::HostCertResolver;
pub use store::{CERT_LIFETIME_ENV, TlsDir, cert_lifetime, parse_cert, renewal_due, spawn_renewal};
pub use verify::{Trust, client_config, server_config};

/// The name the controller's certificate carries whatever address it is reached
/// at: the routers pass port 81 through to any controller instance, so the
/// address a client dials names a router's host, not the controller's. A client
/// that dials an address (not a name) verifies this name instead, against the
/// pinned CA. It is also the controller's name in the grid's DNS.
pub const CONTROLLER_NAME: &str = "flynn-controller.discoverd";

/// Whether a connection that reached the local address `local` is served over
/// TLS: every one but those on loopback (the host's own tools), so one listener
/// on 0.0.0.0 serves both. Unknown is the safe side.
pub fn serves_tls(local: Option<std::net::IpAddr>) -> bool {
    use std::net::IpAddr;
    match local {
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => !v4.is_loopback(),
            None => !v6.is_loopback(),
        },
        Some(ip) => !ip.is_loopback(),
        None => true,
    }
}

/// The one crypto provider everything here uses: ring's. aws-lc's was the first
/// choice, but its random generator seeds itself from CPU jitter once per process
/// (`tree_jitter_initialize_once`: about 35 ms of CPU in an optimized build, before
/// the first ClientHello), which every CLI call over HTTPS paid; ring takes the
/// kernel's getrandom. The price: no post-quantum key share (the client did not
/// offer one with aws-lc either).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
