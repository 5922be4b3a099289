//! What can go wrong talking to etcd or reading what is stored there.

/// Every error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("etcd: {what}: {source}")]
    Etcd {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("the value of etcd key {key} is not valid: {reason}")]
    Decode { key: String, reason: String },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("lease {0:x} is gone (expired or revoked)")]
    LeaseLost(i64),
    #[error("no free /{len} subnet is left in the cluster network {network}")]
    SubnetsExhausted { network: String, len: u8 },
    #[error("invalid overlay configuration: {0}")]
    Config(String),
    #[error("etcd's TLS: reading {path}: {source}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "etcd at {0} is HTTPS: a client certificate of the cluster's CA is needed (the agent gives the platform's host-network jobs one in the directory ${1}; elsewhere set {1} to a directory holding ca.pem, cert.pem and key.pem)"
    )]
    NoTls(String, &'static str),
    #[error("gave up claiming a subnet after {0} attempts (other hosts kept taking them)")]
    Contention(u32),
}

impl DiscoveryError {
    pub(crate) fn etcd(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> Self {
        let what = what.into();
        move |source| DiscoveryError::Etcd { what, source }
    }
}
