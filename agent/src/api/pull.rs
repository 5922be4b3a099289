//! `POST /images/pull`: pulls from a registry, streaming progress as NDJSON (one
//! `PullEvent` a line). Bad requests (reference, platform) are answered 400 before the
//! stream starts; once it has started, a failure is its last line, `{"status":"error"}`.
//!
//! The pull runs in a task of its own: a client that goes away does not cancel it (a
//! concurrent pull of the same image may be waiting on its blobs), it finishes and the
//! image is in the store for the next request.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::{ApiError, ApiState, Body, StreamTx, read_json, streaming};
use crate::model::{PullEvent, PullRequest};

pub async fn pull(
    state: &Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let request: PullRequest = read_json(req).await?;
    let reference = request
        .reference
        .parse::<image::Reference>()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let platform = request
        .platform
        .as_deref()
        .map(str::parse::<image::pull::Platform>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let pull_request = image::PullRequest {
        reference,
        platform,
        credentials: request.auth,
    };
    let (tx, response) = streaming("application/x-ndjson");
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel::<PullEvent>();
    let progress: image::pull::Progress = Arc::new(move |event| {
        let _ = events.send(event);
    });
    let puller = state.puller.clone();
    let task = tokio::spawn(async move { puller.pull(&pull_request, progress).await });
    let state = state.clone();
    tokio::spawn(async move {
        let drained = state.drained();
        tokio::pin!(drained);
        let mut client = Some(tx);
        // Ends when the pull is over (it holds the sending side until then).
        loop {
            tokio::select! {
                event = received.recv() => match event {
                    Some(event) => {
                        if let Some(tx) = &client
                            && send(tx, &event).await.is_err()
                        {
                            client = None;
                        }
                    }
                    None => break,
                },
                _ = &mut drained, if client.is_some() => {
                    if let Some(tx) = client.take() {
                        tx.abort().await;
                    }
                }
            }
        }
        let outcome = match task.await {
            Ok(Ok(pulled)) => {
                state.jobs.emit_image("pull", &pulled.image.id);
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "pull failed");
                if super::images::caused_by_no_space(&e) {
                    Some(format!("{e}; {}", super::images::NO_SPACE_HINT))
                } else {
                    Some(e.to_string())
                }
            }
            Err(e) => Some(format!("the pull task failed: {e}")),
        };
        if let (Some(error), Some(tx)) = (outcome, &client) {
            let _ = send(tx, &PullEvent::Error { error }).await;
        }
    });
    Ok(response)
}

async fn send(tx: &StreamTx, event: &PullEvent) -> Result<(), ()> {
    let mut line = serde_json::to_vec(event).map_err(|_| ())?;
    line.push(b'\n');
    tx.send(Bytes::from(line)).await
}
