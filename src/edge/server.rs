//! Serving HTTP/1.1 and h2c on a bound listener (or both over TLS, with
//! ALPN), with connection-level limits and a graceful drain.
//!
//! Every listener has its own [`ListenerLimits`] (`limits.listeners` in the
//! config): connections at once, HTTP/2 streams per connection, and the
//! size of a request's head. A head over its limits is answered here,
//! before any routing, as JSON (or a gRPC status for a gRPC request): 431
//! for too many or too large headers, 414 for a too long URI. Heads far
//! over the limit (twice it) are refused by the HTTP parser itself, with an
//! empty 431 for HTTP/1.1.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{body::Body, response::Response};
use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::catalogue::api_error::{ApiError, error_response, is_grpc};
pub use crate::tls::{PeerCertificate, TlsSource};

/// Time a client has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive pings on otherwise idle connections.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// The peer listener's: a store client's registry stream is its session
/// with a member (`cluster::sessions`), so a client that stops answering
/// (a paused process, a machine gone) must end it within about twice this.
const PEER_KEEPALIVE: Duration = Duration::from_millis(500);
/// At most one "connection limit reached" line per listener this often.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

pub use crate::catalogue::ClientAddr;

/// What one listener takes before it refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections open at once; further clients wait in the kernel's
    /// accept queue until one closes.
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: usize,
    /// A request's header names and values together.
    pub max_header_bytes: usize,
    /// A request's header count.
    pub max_headers: usize,
    /// A request's URI (path and query).
    pub max_uri_bytes: usize,
}

impl ListenerLimits {
    /// Clients and Envoy.
    pub const PUBLIC: ListenerLimits = ListenerLimits {
        max_connections: 10_000,
        max_streams_per_connection: 256,
        max_header_bytes: 32 * 1024,
        max_headers: 100,
        max_uri_bytes: 8 * 1024,
    };
    /// Operators, probes and scrapers.
    pub const ADMIN: ListenerLimits = ListenerLimits {
        max_connections: 256,
        max_streams_per_connection: 32,
        max_header_bytes: 16 * 1024,
        max_headers: 64,
        max_uri_bytes: 4 * 1024,
    };
    /// The other nodes: few connections, each multiplexing every write,
    /// read and Raft call between two nodes.
    pub const PEER: ListenerLimits = ListenerLimits {
        max_connections: 1024,
        max_streams_per_connection: 4096,
        max_header_bytes: 16 * 1024,
        max_headers: 64,
        max_uri_bytes: 1024,
    };
    /// Envoys and proxyless clients: one long-lived ADS stream each.
    pub const XDS: ListenerLimits = ListenerLimits {
        max_connections: 20_000,
        max_streams_per_connection: 128,
        max_header_bytes: 16 * 1024,
        max_headers: 64,
        max_uri_bytes: 1024,
    };

    /// The refusal of a request whose head is over these limits, if it is.
    fn refuse<B>(&self, req: &http::Request<B>) -> Option<Response> {
        let uri = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        let error = if uri > self.max_uri_bytes {
            ApiError::new(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!(
                    "the request URI is {uri} bytes, over the limit of {}",
                    self.max_uri_bytes
                ),
            )
        } else if req.headers().len() > self.max_headers {
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!(
                    "the request has {} headers, over the limit of {}",
                    req.headers().len(),
                    self.max_headers
                ),
            )
        } else {
            let bytes: usize = req
                .headers()
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum();
            if bytes <= self.max_header_bytes {
                return None;
            }
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!(
                    "the request's headers are {bytes} bytes, over the limit of {}",
                    self.max_header_bytes
                ),
            )
        };
        Some(error_response(error, is_grpc(req)))
    }
}

/// How a listener serves: its name (for logs), limits and drain time.
#[derive(Clone)]
pub struct ServeOptions {
    pub name: &'static str,
    pub limits: ListenerLimits,
    /// How long in-flight requests may finish once `stop` is cancelled.
    pub grace: Duration,
    /// Bytes of send buffer per HTTP/2 stream: smaller for many long-lived
    /// streams (xDS), whose responses then wait in their own queues,
    /// shared, rather than copied into each buffer.
    pub h2_send_buffer: usize,
    /// TLS: every connection's handshake first, with the configuration
    /// this gives at that moment for the name the client asks for
    /// (certificates change while a listener serves).
    pub tls: Option<TlsSource>,
    /// With `tls`: plaintext too, told apart by the first byte (a TLS
    /// handshake starts with 0x16, which no HTTP request does), so that one
    /// port serves clients of both.
    pub plaintext_too: bool,
    /// HTTP/2 pings after this long without a frame from the client, and
    /// the connection closed if one is not answered within as long.
    pub h2_keep_alive: Duration,
}

impl ServeOptions {
    pub fn new(name: &'static str, limits: ListenerLimits, grace: Duration) -> ServeOptions {
        ServeOptions {
            name,
            limits,
            grace,
            h2_send_buffer: H2_SEND_BUFFER,
            tls: None,
            plaintext_too: false,
            h2_keep_alive: H2_KEEPALIVE,
        }
    }

    /// The peer listener's, with the cluster's TLS (`tls`).
    pub fn peer(limits: ListenerLimits, grace: Duration, tls: Option<TlsSource>) -> ServeOptions {
        ServeOptions {
            tls,
            h2_keep_alive: PEER_KEEPALIVE,
            ..ServeOptions::new("peer", limits, grace)
        }
    }
}

/// At most one line per listener this often about refused handshakes.
const HANDSHAKE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A connection's service: every request gets the client's address (and
/// certificate), and one over the listener's limits is answered here.
fn per_request<S>(
    service: S,
    limits: ListenerLimits,
    peer: SocketAddr,
    certificate: Option<PeerCertificate>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone
where
    S: tower::Service<http::Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    TowerToHyperService::new(tower::service_fn(move |r: http::Request<Incoming>| {
        let mut r = r.map(Body::new);
        r.extensions_mut().insert(ClientAddr(peer));
        if let Some(certificate) = &certificate {
            r.extensions_mut().insert(certificate.clone());
        }
        let service = service.clone();
        async move {
            match limits.refuse(&r) {
                Some(refusal) => Ok::<_, Infallible>(refusal),
                None => service.oneshot(r).await,
            }
        }
    }))
}

/// A connection past its first bytes: plaintext, or TLS after the
/// handshake.
enum Accepted {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Reads a connection's first bytes: plaintext if allowed and it does not
/// start a TLS handshake; otherwise the handshake, with the configuration
/// `tls` gives for the name in the client's hello.
async fn accept(
    stream: tokio::net::TcpStream,
    tls: &TlsSource,
    plaintext_too: bool,
) -> Result<Accepted, String> {
    if plaintext_too {
        let mut first = [0u8; 1];
        let n = stream.peek(&mut first).await.map_err(|e| e.to_string())?;
        if n == 0 || first[0] != TLS_HANDSHAKE {
            return Ok(Accepted::Plain(stream));
        }
    }
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
        .await
        .map_err(|e| format!("not a TLS client hello: {e}"))?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    let config = tls(sni.as_deref()).ok_or_else(|| {
        format!(
            "no certificate to serve for {}: this listener has none yet",
            sni.as_deref().unwrap_or("a client that names no server")
        )
    })?;
    let stream = start.into_stream(config).await.map_err(|e| e.to_string())?;
    Ok(Accepted::Tls(Box::new(stream)))
}

/// Accepts connections until `stop` is cancelled, then lets in-flight
/// requests finish for at most `options.grace`. Returns whether every
/// connection finished within the grace period.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    stop: CancellationToken,
    options: ServeOptions,
) -> bool
where
    S: tower::Service<http::Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let limits = options.limits;
    let mut builder = Builder::new(TokioExecutor::new());
    // The parser's own bounds are twice the limits, so that a head over a
    // limit reaches `ListenerLimits::refuse` and gets a JSON answer.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size((2 * (limits.max_header_bytes + limits.max_uri_bytes)).max(8192))
        .max_headers(2 * limits.max_headers);
    builder
        .http2()
        .max_send_buf_size(options.h2_send_buffer)
        .max_concurrent_streams(
            u32::try_from(limits.max_streams_per_connection).unwrap_or(u32::MAX),
        )
        .max_header_list_size(
            u32::try_from(2 * (limits.max_header_bytes + limits.max_uri_bytes)).unwrap_or(u32::MAX),
        )
        .timer(TokioTimer::new())
        .keep_alive_interval(options.h2_keep_alive)
        .keep_alive_timeout(options.h2_keep_alive);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_full_log: Option<Instant> = None;
    let refused = Arc::new(crate::telemetry::Throttle::new(HANDSHAKE_LOG_EVERY));
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if last_full_log.is_none_or(|t| t.elapsed() >= LIMIT_LOG_EVERY) {
                    last_full_log = Some(Instant::now());
                    tracing::warn!(
                        listener = options.name,
                        max_connections = limits.max_connections,
                        "the listener is at its connection limit: new connections wait until one closes \
                         (raise limits.listeners.{}.max_connections if this is expected load)",
                        options.name
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep options.
                    tracing::warn!(listener = options.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let ended = |result: Result<(), Box<dyn std::error::Error + Send + Sync>>| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        };
        match &options.tls {
            None => {
                let conn = builder
                    .serve_connection(
                        TokioIo::new(stream),
                        per_request(service, limits, peer, None),
                    )
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _slot = slot;
                    ended(conn.await);
                });
            }
            Some(tls) => {
                // The handshake in the connection's own task: a slow client
                // holds its slot, never the accept loop.
                let (builder, watcher, tls, name, refused, plaintext_too, stop) = (
                    builder.clone(),
                    graceful.watcher(),
                    tls.clone(),
                    options.name,
                    refused.clone(),
                    options.plaintext_too,
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let _slot = slot;
                    // A stop closes a connection that has not got this far:
                    // it has sent no request to drain (clients open
                    // connections they use only later), and its watcher
                    // would hold the drain for up to the handshake timeout.
                    let accepted = tokio::select! {
                        accepted = tokio::time::timeout(
                            HANDSHAKE_TIMEOUT,
                            accept(stream, &tls, plaintext_too),
                        ) => accepted,
                        () = stop.cancelled() => {
                            tracing::debug!(listener = name, %peer, "stopping: closed a connection that had sent no request yet");
                            return;
                        }
                    };
                    match accepted {
                        Ok(Ok(Accepted::Plain(stream))) => {
                            let conn = builder
                                .serve_connection(
                                    TokioIo::new(stream),
                                    per_request(service, limits, peer, None),
                                )
                                .into_owned();
                            ended(watcher.watch(conn).await);
                        }
                        Ok(Ok(Accepted::Tls(tls))) => {
                            let certificate = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| PeerCertificate::new(c.clone().into_owned()));
                            let conn = builder
                                .serve_connection(
                                    TokioIo::new(*tls),
                                    per_request(service, limits, peer, certificate),
                                )
                                .into_owned();
                            ended(watcher.watch(conn).await);
                        }
                        Ok(Err(e)) => {
                            if refused.ready() {
                                tracing::warn!(listener = name, %peer, error = %e, "refused a connection at the TLS handshake (one line per 10 s at most)");
                            } else {
                                tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                            }
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, %peer, "closed a connection that sent neither a request nor a TLS hello in time");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_ok()
}
