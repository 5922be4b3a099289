//! `POST /apps/{app}/import`: an image archive (`docker save`, or an OCI archive)
//! put into the image store of every live host (their `POST /images/import`, with
//! the cluster's token), so a release can name it with no registry: `flynn import`
//! sends the archive here, then adds the release. The answer names the image as
//! the archive does; the release pins it to the digest the hosts now hold.

use bytes::Bytes;
use discovery::Etcd;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::Error;

/// The largest archive taken (it is held in memory while the hosts take it).
pub(crate) const MAX_ARCHIVE: usize = 2 << 30;

#[derive(Deserialize)]
struct Imported {
    loaded: Vec<String>,
}

pub(crate) async fn import(
    etcd: &Etcd,
    token: &str,
    req: Request<Incoming>,
) -> Result<Value, Error> {
    let archive: Bytes = Limited::new(req.into_body(), MAX_ARCHIVE)
        .collect()
        .await
        .map_err(|e| Error::BadRequest(format!("reading the archive (at most 2 GiB): {e}")))?
        .to_bytes();
    if archive.is_empty() {
        return Err(Error::BadRequest(
            "the body is the archive: `docker save NAME:TAG` (or an OCI archive)".into(),
        ));
    }
    let hosts: Vec<(String, String)> = discovery::hosts::list(etcd)
        .await?
        .into_iter()
        .filter_map(|h| Some((h.id, h.api?)))
        .collect();
    if hosts.is_empty() {
        return Err(Error::Unavailable(
            "no live host to import the image into".into(),
        ));
    }
    let mut asks = tokio::task::JoinSet::new();
    for (id, api) in hosts {
        let (token, archive) = (token.to_string(), archive.clone());
        asks.spawn(async move {
            let result = async {
                let client = flynn_client::Client::from_options(Some(&api), Some(&token))?;
                let resp = client
                    .request(
                        Method::POST,
                        "/images/import",
                        Some("application/x-tar"),
                        flynn_client::full(archive.to_vec()),
                    )
                    .await?;
                let body = resp.into_body().collect().await?.to_bytes();
                let imported: Vec<Imported> = serde_json::from_slice(&body)?;
                anyhow::Ok(imported)
            }
            .await;
            (id, result)
        });
    }
    let (mut names, mut done, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(joined) = asks.join_next().await {
        let Ok((host, result)) = joined else { continue };
        match result {
            Ok(imported) => {
                if names.is_empty() {
                    names = imported.into_iter().flat_map(|i| i.loaded).collect();
                }
                done.push(host);
            }
            Err(e) => failed.push(format!("{host}: {e:#}")),
        }
    }
    if !failed.is_empty() {
        // The archive itself is at fault when every host refuses it the same way.
        let msg = format!("hosts refused the archive: {}", failed.join("; "));
        return Err(if done.is_empty() {
            Error::BadRequest(msg)
        } else {
            Error::Unavailable(msg)
        });
    }
    let Some(image) = names.first().cloned() else {
        return Err(Error::BadRequest(
            "the archive names no image: save it with a name (docker save NAME:TAG)".into(),
        ));
    };
    done.sort();
    Ok(json!({"image": image, "images": names, "hosts": done}))
}
