//! The job routes of an app's one-off job, relayed to the agent of the host it runs
//! on: `/apps/{app}/hosts/{host}/jobs/{id}[/...]` → that agent's `/jobs/{id}[/...]`
//! with the cluster's token, bodies streamed both ways and an upgrade (attach)
//! spliced into a raw byte stream. So `flynn run` needs the controller key only,
//! never the cluster's token, and reaches only jobs of the app it names, and of
//! their routes only those `routes::ROUTES` relays (what a `run` follows a job
//! with: inspect, start, attach, resize, logs, wait, kill, remove) with their own
//! query parameters: the cluster's token is never lent for anything else.

use bytes::Bytes;
use discovery::Etcd;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::api::{Error, Resp};

/// Where a relayed request goes.
pub(crate) struct Relay<'a> {
    pub app: &'a str,
    pub host: &'a str,
    pub job: &'a str,
    /// The agent's path and query (`/jobs/{id}/...?...`), from the route table.
    pub path: String,
}

pub(crate) async fn job_route(
    etcd: &Etcd,
    token: &str,
    mut req: Request<Incoming>,
    to: Relay<'_>,
) -> Result<Resp, Error> {
    let Relay {
        app,
        host,
        job: id,
        path,
    } = to;
    discovery::schema::check_id("job id", id)?;
    let api = discovery::hosts::list(etcd)
        .await?
        .into_iter()
        .find(|h| h.id == host)
        .and_then(|h| h.api)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no live host {host} (the job's host left the cluster?)"
            ))
        })?;
    let agent = flynn_client::Client::from_options(Some(&api), Some(token))
        .map_err(|e| Error::Unavailable(format!("host {host}: {e:#}")))?;
    // Only the app's own jobs are reachable through its path.
    let job: Value = agent
        .call(Method::GET, &format!("/jobs/{id}"), None::<&()>)
        .await
        .map_err(|e| Error::NotFound(format!("job {id} on host {host}: {e:#}")))?;
    if job["config"]["labels"]["flynn.app"] != app {
        return Err(Error::NotFound(format!("app {app} has no job {id}")));
    }
    let mut out = Request::builder().method(req.method().clone()).uri(&path);
    for h in [CONTENT_TYPE, CONNECTION, UPGRADE] {
        if let Some(v) = req.headers().get(&h) {
            out = out.header(h, v.clone());
        }
    }
    let upgrade = req.headers().contains_key(UPGRADE);
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let body: flynn_client::RequestBody = if upgrade {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed()
    } else {
        req.into_body().map_err(std::io::Error::other).boxed()
    };
    let out = out
        .body(body)
        .map_err(|e| Error::BadRequest(format!("relaying the request: {e}")))?;
    // Through the client: HTTPS verified against the cluster's CA (FLYNN_TLS_PIN
    // or FLYNN_TLS_CA), with the cluster's token.
    let mut resp = agent
        .forward(out)
        .await
        .map_err(|e| Error::Unavailable(format!("host {host}: {e:#}")))?;
    if let Some(client_side) = client_side
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let agent_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(a), Ok(b)) = tokio::join!(client_side, agent_side) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
            }
        });
    }
    Ok(resp.map(|b| b.boxed()))
}
