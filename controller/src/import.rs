//! `POST /apps/{app}/import`: an image archive (`docker save`, or an OCI archive)
//! put into the image store of every live host (their `POST /images/import`, with
//! the cluster's token), so a release can name it with no registry: `flynn import`
//! sends the archive here, then adds the release. The answer names the image as
//! the archive does; the release pins it to the digest the hosts now hold.
//!
//! The archive is never held here: each chunk of the upload is passed on to every
//! host's import as it arrives (a bounded channel per host), so the controller
//! holds a few chunks per host whatever the archive's size, and the upload goes
//! at the pace of the slowest host. A host whose import fails midway is dropped
//! from the fan-out; the others carry on. Hosts that join the cluster later do not
//! get the archive (nothing keeps it): import it again, or let the release's jobs
//! land where it is (see ARCHITECTURE.md, controller).

use bytes::Bytes;
use discovery::Etcd;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::Error;

/// The largest archive passed on (the hosts' stores take it to disk; this bounds
/// what one request can make every host write).
pub(crate) const MAX_ARCHIVE: u64 = 2 << 30;

/// Chunks in flight per host: with hyper's chunks of up to a few hundred KiB, a
/// few MiB per host at most.
const CHUNKS_PER_HOST: usize = 8;

#[derive(Deserialize)]
struct Imported {
    loaded: Vec<String>,
}

type Chunk = Result<Bytes, std::io::Error>;

pub(crate) async fn import(
    etcd: &Etcd,
    token: &str,
    req: Request<Incoming>,
) -> Result<Value, Error> {
    let mut body = req.into_body();
    // Nothing is sent to a host before the upload shows it has an archive.
    let first = loop {
        match next_chunk(&mut body).await? {
            Some(chunk) if chunk.is_empty() => continue,
            Some(chunk) => break chunk,
            None => {
                return Err(Error::BadRequest(
                    "the body is the archive: `docker save NAME:TAG` (or an OCI archive)".into(),
                ));
            }
        }
    };
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
    let mut senders = Vec::new();
    for (id, api) in hosts {
        let (tx, rx) = mpsc::channel::<Chunk>(CHUNKS_PER_HOST);
        senders.push(tx);
        let token = token.to_string();
        asks.spawn(async move {
            let result = async {
                let client = flynn_client::Client::from_options(Some(&api), Some(&token))?;
                let stream = ReceiverStream::new(rx).map(|chunk| chunk.map(Frame::data));
                let resp = client
                    .request(
                        Method::POST,
                        "/images/import",
                        Some("application/x-tar"),
                        BodyExt::boxed(StreamBody::new(stream)),
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
    let fanned = fan_out(first, &mut body, &mut senders).await;
    // The hosts' bodies end here: each import finishes (or, after an upload
    // error, fails on the error the last chunk carries).
    drop(senders);
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
    fanned?;
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

/// The upload's next data chunk; `None` at its end.
async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>, Error> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(Error::BadRequest(format!("reading the archive: {e}"))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
                // Trailers carry nothing of the archive.
            }
        }
    }
}

/// Passes every chunk of the upload (`first`, then the rest of `body`) to every
/// host still taking it. On an upload that breaks or grows past
/// [`MAX_ARCHIVE`], the hosts get an error as their last chunk, so none imports
/// a truncated archive, and the upload's error is returned.
async fn fan_out(
    first: Bytes,
    body: &mut Incoming,
    senders: &mut Vec<mpsc::Sender<Chunk>>,
) -> Result<(), Error> {
    let mut total = 0u64;
    let mut next = Some(first);
    loop {
        let chunk = match next.take() {
            Some(chunk) => chunk,
            None => match next_chunk(body).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(()),
                Err(e) => return Err(abort(senders, e).await),
            },
        };
        total += chunk.len() as u64;
        if total > MAX_ARCHIVE {
            let e = Error::BadRequest(format!(
                "the archive is larger than {} GiB",
                MAX_ARCHIVE >> 30
            ));
            return Err(abort(senders, e).await);
        }
        // The chunk is shared (Bytes is reference-counted), not copied per host.
        let mut live = Vec::with_capacity(senders.len());
        for tx in senders.drain(..) {
            // A closed channel is a host whose import ended early (it failed, and
            // says why in its answer): it is left out of the rest.
            if tx.send(Ok(chunk.clone())).await.is_ok() {
                live.push(tx);
            }
        }
        *senders = live;
        if senders.is_empty() {
            // Every host gave up: their answers say why.
            return Ok(());
        }
        if body.is_end_stream() {
            return Ok(());
        }
    }
}

async fn abort(senders: &mut Vec<mpsc::Sender<Chunk>>, e: Error) -> Error {
    for tx in senders.drain(..) {
        let _ = tx
            .send(Err(std::io::Error::other(
                "the upload of the archive broke off",
            )))
            .await;
    }
    e
}
