use std::path::PathBuf;

/// Why a TLS operation failed; each message names what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what} is not a valid PEM certificate or key: {detail}")]
    BadPem { what: String, detail: String },
    #[error(
        "invalid TLS pin {0:?}: a pin is the base64 SHA-256 of the CA certificate (44 characters); `flynn-host tls pin` on a host prints it"
    )]
    BadPin(String),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("the CA file {} holds no certificate", .0.display())]
    NoCaCert(PathBuf),
    #[error(
        "invalid certificate lifetime {0:?} in FLYNN_TLS_CERT_LIFETIME: give whole seconds, at least 3"
    )]
    BadLifetime(String),
}
