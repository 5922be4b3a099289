//! TCP routes: a listener per routed port, each connection spliced to a backend
//! chosen like an HTTP request's (two choices on connections in flight; another
//! backend when one refuses the connection).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::backends::{Backends, choose};

const MAX_TRIES: usize = 3;

/// The listeners of the TCP routes, kept in step with the route table.
#[derive(Default)]
pub struct TcpRoutes {
    listening: HashMap<u16, (String, JoinHandle<()>)>,
}

impl TcpRoutes {
    /// Opens listeners for new ports, closes those whose route is gone (connections
    /// already spliced keep going).
    pub fn sync(
        &mut self,
        wanted: &HashMap<u16, String>,
        backends: &Arc<Backends>,
        bind: std::net::IpAddr,
    ) {
        self.listening.retain(|port, (service, task)| {
            let keep = wanted.get(port) == Some(service);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, service) in wanted {
            if self.listening.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::new(bind, *port);
            let listener = match std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std)
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(%addr, %service, error = %e, "cannot listen for a TCP route");
                    continue;
                }
            };
            tracing::info!(%addr, %service, "TCP route");
            let (service2, backends) = (service.clone(), backends.clone());
            let task = tokio::spawn(async move { serve(listener, service2, backends).await });
            self.listening.insert(*port, (service.clone(), task));
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.listening.keys().copied().collect()
    }
}

async fn serve(listener: TcpListener, service: String, backends: Arc<Backends>) {
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a TCP route's connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (service, backends) = (service.clone(), backends.clone());
        tokio::spawn(async move { splice(client, &service, &backends).await });
    }
}

async fn splice(mut client: TcpStream, service: &str, backends: &Backends) {
    let list = backends.get(service);
    let mut tried = Vec::new();
    while tried.len() < MAX_TRIES {
        let Some(backend) = choose(&list, &tried) else {
            break;
        };
        let _guard = backend.begin();
        match TcpStream::connect(backend.addr).await {
            Ok(mut upstream) => {
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            Err(e) => {
                tracing::debug!(backend = %backend.addr, error = %e, "TCP route: connect failed");
                tried.push(backend.addr);
            }
        }
    }
    tracing::debug!(%service, "TCP route: no backend accepted the connection");
}
