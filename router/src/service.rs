//! `flynn-host router`: the router as a process (an omni job of the platform, on the
//! host network).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::{Router, RouterError};

#[derive(clap::Args, Debug, Clone)]
pub struct RouterArgs {
    /// Where HTTP is served.
    #[arg(long, default_value = "0.0.0.0:80")]
    pub http: SocketAddr,
    /// Where HTTPS is served ("off": not at all).
    #[arg(long, default_value = "0.0.0.0:443")]
    pub https: String,
    /// The cluster's certificate chain (PEM), served to names without a route
    /// certificate.
    #[arg(long, env = "FLYNN_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The cluster certificate's key (PEM).
    #[arg(long, env = "FLYNN_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The cluster's certificate chain as PEM text rather than a file (what the
    /// bootstrap gives the router formation: a job's environment is what the
    /// scheduler carries to every host).
    #[arg(
        long,
        env = "FLYNN_ROUTER_TLS_CERT",
        hide_env_values = true,
        conflicts_with = "tls_cert"
    )]
    pub tls_cert_pem: Option<String>,
    /// Its key as PEM text.
    #[arg(
        long,
        env = "FLYNN_ROUTER_TLS_KEY",
        hide_env_values = true,
        conflicts_with = "tls_key"
    )]
    pub tls_key_pem: Option<String>,
    /// The address TCP routes listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub tcp_bind: IpAddr,
    /// etcd endpoints (http://HOST:PORT, comma-separated).
    #[arg(long, env = "FLYNN_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Worker threads serving HTTP, each with its own listener, connections and
    /// backend pools, as nginx's workers [default: one per CPU].
    #[arg(long)]
    pub threads: Option<usize>,
    /// The cluster's sticky-session key: 64 hex digits, the same on every router
    /// [default: a random key of this process: cookies work with this router only].
    #[arg(long, env = "FLYNN_ROUTER_KEY", hide_env_values = true)]
    pub sticky_key: Option<String>,
    /// The host's agent, which re-issues the default certificate from the
    /// cluster's CA two thirds into its life (`renew.rs`); without it (or the
    /// token) the certificate is not renewed.
    #[arg(long, env = "FLYNN_HOST")]
    pub agent: Option<String>,
    /// The agent's token.
    #[arg(long, env = "FLYNN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Router(#[from] RouterError),
    #[error("the sticky-session key must be 64 hex digits (32 bytes)")]
    KeyFormat,
    #[error("--https {0:?}: give ADDRESS:PORT or off")]
    HttpsAddr(String),
    #[error(
        "give both the certificate and its key (--tls-cert and --tls-key, or FLYNN_ROUTER_TLS_CERT and FLYNN_ROUTER_TLS_KEY), or neither"
    )]
    HalfPair,
    #[error("reading {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster certificate: {0}")]
    Cert(#[from] crate::tls::TlsError),
    #[error("the agent that renews the certificate (--agent, FLYNN_HOST): {0}")]
    Agent(String),
}

fn parse_key(hex: &str) -> Result<Vec<u8>, ServiceError> {
    if hex.len() != 64 {
        return Err(ServiceError::KeyFormat);
    }
    (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| ServiceError::KeyFormat))
        .collect()
}

/// Serves until the process is stopped; etcd that is away is waited for (the router
/// serves with what it has meanwhile: nothing at first, its last state later).
pub async fn run(args: RouterArgs) -> Result<(), ServiceError> {
    let key = match &args.sticky_key {
        Some(k) => parse_key(k)?,
        None => {
            tracing::warn!("no --sticky-key: sticky cookies will only work with this router");
            (0..32).map(|_| fastrand::u8(..)).collect()
        }
    };
    let https: Option<SocketAddr> = match args.https.as_str() {
        "off" => None,
        a => Some(
            a.parse()
                .map_err(|_| ServiceError::HttpsAddr(a.to_string()))?,
        ),
    };
    let router = Router::new(&key, args.tcp_bind)?;
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).map_err(|source| ServiceError::Read {
            path: p.clone(),
            source,
        })
    };
    let cert = match (&args.tls_cert, &args.tls_cert_pem) {
        (Some(path), _) => Some(read(path)?),
        (None, Some(pem)) => Some(pem.clone().into_bytes()),
        (None, None) => None,
    };
    let key = match (&args.tls_key, &args.tls_key_pem) {
        (Some(path), _) => Some(read(path)?),
        (None, Some(pem)) => Some(pem.clone().into_bytes()),
        (None, None) => None,
    };
    match (cert, key) {
        (Some(c), Some(k)) => {
            router
                .certs
                .set_default(Some(crate::tls::load_pair(&c, &k)?));
            if let (Some(agent), Some(token)) = (&args.agent, &args.token) {
                let client = std::sync::Arc::new(
                    flynn_client::Client::from_options(Some(agent), Some(token))
                        .map_err(|e| ServiceError::Agent(format!("{e:#}")))?,
                );
                // Renewed through the host's agent, from the cluster's CA: the
                // host certificate the agent rotates names the host, not the
                // domain, and the CA's key is no job's to hold.
                let certs = router.certs.clone();
                tokio::spawn(async move {
                    flynn_tls::renew_through(
                        "the routers' default certificate",
                        String::from_utf8_lossy(&c).into_owned(),
                        String::from_utf8_lossy(&k).into_owned(),
                        move |names, life| {
                            let client = client.clone();
                            async move { client.issue_certificate(&names, life, "flynn router").await }
                        },
                        move |chain, key| {
                            let pair = crate::tls::load_pair(chain.as_bytes(), key.as_bytes())
                                .map_err(|e| e.to_string())?;
                            certs.set_default(Some(pair));
                            Ok(())
                        },
                    )
                    .await
                });
            }
        }
        (None, None) => {}
        _ => return Err(ServiceError::HalfPair),
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    // Worker 0 is this runtime's; the others are threads with a runtime each. A
    // connection is served start to end on one thread: no hand-offs between threads
    // per request, which cost the multi-threaded runtime a sixth of its throughput.
    crate::backends::set_worker(0);
    let listener = Router::bind_shared(args.http)?;
    for n in 1..threads {
        let (router, addr) = (router.clone(), args.http);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| RouterError::Listen { addr, source })?;
        // The listener registers with the worker's runtime (entered, not blocked on:
        // this function runs inside the main runtime).
        let (l, tls_l) = {
            let _in = rt.enter();
            (
                Router::bind_shared(addr)?,
                https.map(Router::bind_shared).transpose()?,
            )
        };
        std::thread::Builder::new()
            .name(format!("router-{n}"))
            .spawn(move || {
                crate::backends::set_worker(n);
                rt.block_on(async move {
                    if let Some(t) = tls_l {
                        tokio::spawn(router.clone().serve_https(t));
                    }
                    router.serve_http(l).await
                });
            })
            .map_err(|source| RouterError::Listen { addr, source })?;
    }
    tracing::info!(http = %args.http, threads, "router serving");
    let serving = tokio::spawn(router.clone().serve_http(listener));
    let serving_tls = match https {
        Some(a) => Some(tokio::spawn(
            router.clone().serve_https(Router::bind_shared(a)?),
        )),
        None => None,
    };
    let etcd = loop {
        match discovery::Etcd::connect(&args.etcd, Duration::from_secs(3)).await {
            Ok(e) if e.ping().await.is_ok() => break e,
            Ok(_) => tracing::warn!("etcd does not answer yet"),
            Err(e) => tracing::warn!(error = %e, "connecting to etcd"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tracing::info!(etcd = %etcd.endpoints(), "following routes and services");
    router.follow(etcd).await;
    serving.abort();
    if let Some(t) = serving_tls {
        t.abort();
    }
    Ok(())
}
