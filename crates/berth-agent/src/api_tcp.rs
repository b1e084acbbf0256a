//! The API over TCP. Whoever holds its token controls the server, so the listener gives
//! nothing away before a request is authenticated: connections are capped (more are closed at
//! once), a TLS handshake and every request head must arrive within a deadline (a silent or
//! trickling client is cut), and over TLS (the only way it listens beyond loopback) the token,
//! secret values and identity keys never cross the network in clear.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Connections open at once, authenticated or not.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// Connections one client address may hold, so one client cannot take every slot.
pub(crate) const MAX_PER_CLIENT: usize = 8;
/// The TLS handshake, and each request head, must arrive within this.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` (over TLS with `tls`) until `stop` resolves; requests in
/// progress then finish (streams of long operations are the operations' own tasks, which
/// go on regardless).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_client: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
        Arc::default();
    let connections = tokio_util::task::TaskTracker::new();
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::warn!(%client, limit = MAX_CONNECTIONS, "too many API connections; closing a new one");
            continue;
        };
        let Some(client_slot) = ClientSlot::take(&per_client, client.ip()) else {
            tracing::warn!(%client, limit = MAX_PER_CLIENT, "too many API connections from one address; closing a new one");
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _client_slot = client_slot;
            let stop_requested = async move {
                let _ = stopping.wait_for(|s| *s).await.map(|_| ());
            };
            let result = match tls {
                None => serve_connection(stream, service, stop_requested).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, service, stop_requested).await,
                        Ok(Err(error)) => {
                            tracing::debug!(%client, %error, "API TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%client, "API TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%client, %error, "API connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    connections.close();
    connections.wait().await;
}

async fn serve_connection<I>(
    io: I,
    service: TowerToHyperService<Router>,
    stop_requested: impl Future<Output = ()>,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper starts this timer as soon as it waits for a head, the first one included.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(true);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = stop_requested => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// One of a client address's API connections, given back when dropped.
struct ClientSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl ClientSlot {
    fn take(
        counts: &Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
    ) -> Option<ClientSlot> {
        let mut held = counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(ip).or_insert(0);
        if *count >= MAX_PER_CLIENT {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: Arc::clone(counts),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}
