//! The scheduler's HTTP API (described in `openapi.json`; every instance serves it; formations and drains go to
//! etcd, so a follower's answer is as good as the leader's): `GET /health`,
//! `GET /formations` (wanted, running, blocked and why), `PUT|DELETE
//! /formations/{app}/{type}`, `GET /jobs`, `GET /hosts`, `PUT|DELETE
//! /hosts/{id}/drain`. The cluster's API token, as the agents want it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use discovery::formations::FormationRecord;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Service;

type Resp = Response<Full<Bytes>>;

/// Every route served, as (method, OpenAPI path): `openapi.json` lists the same.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/formations"),
    ("PUT", "/formations/{app}/{type}"),
    ("DELETE", "/formations/{app}/{type}"),
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/hosts"),
    ("PUT", "/hosts/{id}/drain"),
    ("DELETE", "/hosts/{id}/drain"),
];

fn reply(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Resp {
    reply(status, &json!({ "error": msg.to_string() }))
}

/// `PUT /formations/{app}/{type}`: the formation but its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FormationBody {
    image: String,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    services: Vec<Value>,
    #[serde(default)]
    memory: Option<u64>,
    #[serde(default)]
    cpus: Option<f64>,
    count: u32,
    #[serde(default)]
    omni: bool,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    release: Option<String>,
    /// `always` (the default), `on-failure` or `never`.
    #[serde(default)]
    restart: discovery::formations::Restart,
}

/// Tries a write up to three times: with an etcd member down, the client's request may
/// land on the dead member's endpoint once before it is taken out of rotation.
async fn retry<T, F: std::future::Future<Output = Result<T, discovery::DiscoveryError>>>(
    mut f: impl FnMut() -> F,
) -> Result<T, discovery::DiscoveryError> {
    let mut last = None;
    for _ in 0..3 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e @ discovery::DiscoveryError::InvalidName { .. }) => return Err(e),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(last.unwrap_or(discovery::DiscoveryError::Config(
        "no attempt was made".into(),
    )))
}

/// A client must finish its TLS handshake within this.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve(
    svc: Arc<Service>,
    listener: tokio::net::TcpListener,
    token: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let token = Arc::new(token);
    loop {
        let (s, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (svc, token, tls) = (svc.clone(), token.clone(), tls.clone());
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |req| {
                let (svc, token) = (svc.clone(), token.clone());
                async move { Ok::<_, Infallible>(route(&svc, &token, req).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(s)).await;
                    if let Ok(Ok(s)) = handshake {
                        let _ = http.serve_connection(TokioIo::new(s), handler).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(s), handler).await;
                }
            }
        });
    }
}

async fn route(svc: &Service, token: &str, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().trim_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').collect();
    let method = req.method().clone();
    if segs == ["health"] {
        return reply(
            StatusCode::OK,
            &json!({ "ok": true, "leader": svc.is_leader() }),
        );
    }
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given != Some(token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "give the cluster's API token: Authorization: Bearer TOKEN",
        );
    }
    let snap = svc.snapshot();
    match (segs.as_slice(), method) {
        (["formations"], Method::GET) => {
            let list: Vec<Value> = snap
                .formations
                .iter()
                .map(|f| {
                    let of_it = |j: &&crate::JobView| {
                        j.app == f.app && j.process_type == f.process_type
                    };
                    // Finished jobs a formation keeps (its restart policy does not
                    // replace them) are counted apart: they run no more.
                    let finished = snap
                        .jobs
                        .iter()
                        .filter(of_it)
                        .filter(|j| j.state == "exited")
                        .count();
                    let running = snap.jobs.iter().filter(of_it).count() - finished;
                    let blocked = snap
                        .plan
                        .blocked
                        .iter()
                        .find(|b| b.formation.app == f.app && b.formation.process_type == f.process_type);
                    json!({
                        "formation": f,
                        "running": running,
                        "finished": finished,
                        "blocked": blocked.map(|b| json!({"missing": b.missing, "reason": b.reason})),
                    })
                })
                .collect();
            reply(StatusCode::OK, &Value::Array(list))
        }
        (["formations", app, ty], Method::PUT) => {
            let bytes = match Limited::new(req.into_body(), 1 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
            };
            let b: FormationBody = match serde_json::from_slice(&bytes) {
                Ok(b) => b,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("the formation is not valid: {e}"),
                    );
                }
            };
            let f = FormationRecord {
                app: app.to_string(),
                process_type: ty.to_string(),
                image: b.image,
                cmd: b.cmd,
                env: b.env,
                services: b.services,
                memory: b.memory,
                cpus: b.cpus,
                count: b.count,
                omni: b.omni,
                tags: b.tags,
                network: b.network,
                release: b.release,
                restart: b.restart,
            };
            match retry(|| discovery::formations::put(&svc.etcd, &f)).await {
                Ok(()) => {
                    svc.poke();
                    reply(StatusCode::OK, &json!(f))
                }
                Err(e @ discovery::DiscoveryError::InvalidName { .. }) => {
                    error(StatusCode::BAD_REQUEST, e)
                }
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
            }
        }
        (["formations", app, ty], Method::DELETE) => {
            match discovery::formations::delete(&svc.etcd, app, ty).await {
                Ok(true) => {
                    svc.poke();
                    reply(StatusCode::OK, &json!({ "deleted": format!("{app}/{ty}") }))
                }
                Ok(false) => error(StatusCode::NOT_FOUND, format!("no formation {app}/{ty}")),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
            }
        }
        (["jobs"], Method::GET) => reply(StatusCode::OK, &json!(snap.jobs)),
        (["jobs"], Method::POST) => {
            let bytes = match Limited::new(req.into_body(), 1 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
            };
            let body: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("not JSON: {e}")),
            };
            match svc.run_ephemeral(&body).await {
                Ok(v) => reply(StatusCode::CREATED, &v),
                Err((status, msg)) => error(status, msg),
            }
        }
        (["hosts"], Method::GET) => reply(StatusCode::OK, &json!(snap.hosts)),
        (["hosts", id, "drain"], m @ (Method::PUT | Method::DELETE)) => {
            let live = match discovery::hosts::list(&svc.etcd).await {
                Ok(hosts) => hosts.iter().any(|h| h.id == *id),
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
            };
            if !live && m == Method::PUT {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no live host {id} (flynn-host cluster hosts lists them)"),
                );
            }
            let until_restart = match until_restart(req.uri().query()) {
                Ok(u) => u,
                Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
            };
            let done = if m == Method::PUT && until_restart {
                // `false`: an operator's drain is in place, and stays.
                retry(|| discovery::formations::drain_until_restart(&svc.etcd, id))
                    .await
                    .map(drop)
            } else {
                retry(|| discovery::formations::set_drain(&svc.etcd, id, m == Method::PUT)).await
            };
            match done {
                Ok(()) => {
                    svc.poke();
                    reply(
                        StatusCode::OK,
                        &json!({ "host": id, "draining": m == Method::PUT }),
                    )
                }
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
            }
        }
        (_, m) => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {m} /{path}"),
        ),
    }
}

/// The drain's one query parameter: `until_restart=true` (the host's own drain
/// before a power-off, ended when its agent starts again).
fn until_restart(query: Option<&str>) -> Result<bool, String> {
    let mut on = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("until_restart", "true")) => on = true,
            Some(("until_restart", "false")) => on = false,
            Some(("until_restart", v)) => {
                return Err(format!("until_restart is true or false, not {v:?}"));
            }
            _ => {
                return Err(format!(
                    "unknown query parameter {pair:?}: a drain takes only until_restart=true|false"
                ));
            }
        }
    }
    Ok(on)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_drains_query_is_until_restart_or_nothing() {
        use super::until_restart;
        assert_eq!(until_restart(None), Ok(false));
        assert_eq!(until_restart(Some("")), Ok(false));
        assert_eq!(until_restart(Some("until_restart=true")), Ok(true));
        assert_eq!(until_restart(Some("until_restart=false")), Ok(false));
        assert!(until_restart(Some("until_restart=yes")).is_err());
        assert!(until_restart(Some("force=1")).is_err());
    }

    #[test]
    fn the_openapi_document_lists_the_routes_served() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../openapi.json")).unwrap_or_default();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
            for m in ops.as_object().into_iter().flatten().map(|(m, _)| m) {
                documented.push((m.to_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = super::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn the_openapi_document_gives_the_restart_policies_accepted() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../openapi.json")).unwrap_or_default();
        let schemas = &doc["components"]["schemas"];
        for schema in ["FormationBody", "Formation"] {
            let names: Vec<&str> = schemas[schema]["properties"]["restart"]["enum"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            assert_eq!(
                names,
                discovery::formations::Restart::NAMES,
                "{schema}.restart"
            );
        }
        // Every documented property of a body is one the route takes, the restart
        // policy with each documented value; without it, `always`.
        let body = |restart: Option<&str>| {
            let mut b = serde_json::json!({"image": "busybox", "count": 1});
            if let Some(r) = restart {
                b["restart"] = r.into();
            }
            serde_json::from_value::<super::FormationBody>(b)
        };
        for name in discovery::formations::Restart::NAMES {
            assert_eq!(body(Some(name)).unwrap().restart.as_str(), name);
        }
        assert!(body(None).unwrap().restart.is_always());
        let err = body(Some("sometimes")).unwrap_err().to_string();
        assert!(err.contains("unknown variant"), "{err}");
        let documented: Vec<&String> = schemas["FormationBody"]["properties"]
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .collect();
        assert!(documented.iter().any(|k| *k == "restart"), "{documented:?}");
    }
}
