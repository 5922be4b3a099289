//! `GET /events`: job and image events as server-sent events.

use std::time::Duration;

use bytes::Bytes;
use hyper::Response;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, ApiState, Body, streaming};

/// A comment line this often keeps proxies and idle timeouts from closing the stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub fn events(state: &ApiState) -> Result<Response<Body>, ApiError> {
    let mut rx = state.events.subscribe();
    let drained = state.drained();
    let (tx, response) = streaming("text/event-stream");
    tokio::spawn(async move {
        tokio::pin!(drained);
        // Tells the client the subscription is live: events after this line are seen.
        if tx
            .send(Bytes::from_static(b": subscribed\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let frame = tokio::select! {
                event = rx.recv() => match event {
                    Ok(event) => match serde_json::to_string(&event) {
                        Ok(data) => format!("event: {}\ndata: {data}\n\n", event.kind),
                        Err(_) => continue,
                    },
                    Err(RecvError::Lagged(n)) => format!(": {n} events dropped (client too slow)\n\n"),
                    Err(RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(KEEPALIVE) => ": keepalive\n\n".to_string(),
                _ = tx.closed() => return,
                // Handing over to a new daemon: the client reconnects to it.
                _ = &mut drained => {
                    tx.abort().await;
                    return;
                }
            };
            if tx.send(Bytes::from(frame)).await.is_err() {
                return;
            }
        }
    });
    Ok(response)
}
