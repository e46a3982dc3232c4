//! Serving HTTP/1.1 and h2c on a bound listener, with connection-level
//! limits and a graceful drain.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{body::Body, response::Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer;

/// Time a client has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive pings on otherwise idle connections.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

pub use crate::catalogue::ClientAddr;

/// Binds `addr`, naming the listener in the error.
pub async fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { name, addr, source })
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the {name} listener (port {port}): {source}; free the port or choose another with listeners.{name}", port = addr.port())]
pub struct BindError {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// What an HTTP/2 stream's response may hold in the connection's send
/// buffer while the client has not taken it (hyper's default).
pub const H2_SEND_BUFFER: usize = 400 * 1024;

/// Accepts connections until `stop` is cancelled, then lets in-flight
/// requests finish for at most `grace`. Returns whether every connection
/// finished within the grace period.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    stop: CancellationToken,
    grace: Duration,
) -> bool
where
    S: tower::Service<http::Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    serve_with(listener, service, stop, grace, H2_SEND_BUFFER).await
}

/// `serve`, with `h2_send_buffer` bytes of send buffer per HTTP/2 stream:
/// smaller for many long-lived streams (xDS), whose responses then wait in
/// their own queues, shared, rather than copied into each buffer.
pub async fn serve_with<S>(
    listener: TcpListener,
    service: S,
    stop: CancellationToken,
    grace: Duration,
    h2_send_buffer: usize,
) -> bool
where
    S: tower::Service<http::Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .max_send_buf_size(h2_send_buffer)
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let hyper_service = TowerToHyperService::new(
            tower::util::MapRequestLayer::new(move |r: http::Request<Incoming>| {
                let mut r = r.map(Body::new);
                r.extensions_mut().insert(ClientAddr(peer));
                r
            })
            .layer(service),
        );
        let conn = builder
            .serve_connection(TokioIo::new(stream), hyper_service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_ok()
}
