//! Forwarding by the built-in ingress: a request for a service this node
//! does not run goes to a healthy node that runs it, so every node serves
//! the whole routing table and no proxy is needed.
//!
//! - The target is the healthy instance (in the registry) with the fewest
//!   requests this node has in flight to it; ties rotate.
//! - One HTTP/2 connection per target carries HTTP and gRPC alike: h2c,
//!   or in a cluster with TLS between nodes h2 over TLS, the target's
//!   certificate checked against the cluster's CA (`over_tls`).
//! - Retries, on another node each time, within one deadline, as
//!   `protocol::RetryPolicy` says (the policy the Envoy routes are made
//!   from): any request no handler saw; an idempotent one also after a
//!   failure or an answer saying the node could not serve it. When no node
//!   is left, the last answer is passed on as it is.
//! - Hop-by-hop headers are dropped both ways, `X-Forwarded-For` gets the
//!   client's address, and `x-flotilla-forwarded-by` names this node: a
//!   request carrying it is never forwarded again. The client's address
//!   also goes signed (`FORWARDED_CLIENT`), for the receiving node's
//!   per-address limits.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{
    catalogue::api_error::ApiError,
    mesh::registry::Registry,
    protocol::{RetryPolicy, RouteKind},
    telemetry::metrics::{HttpMetrics, Label},
    tls::NodeTls,
};

pub use crate::protocol::{FORWARDED_BY, FORWARDED_CLIENT, UNPROCESSED};

/// Headers that belong to one connection, not to the request (RFC 9110
/// 7.6.1). `te: trailers` is kept: gRPC needs it.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
    "upgrade",
    "trailer",
];

/// What went wrong when forwarding, for the caller's error shape.
#[derive(Debug)]
pub enum Refused {
    /// The request was forwarded here already.
    Loop { from: String },
    /// No healthy node runs the service.
    NoInstance,
    /// The body is over the limit.
    TooLarge(usize),
    /// The body could not be read from the client.
    Body(String),
    /// Every attempt failed; the last failure.
    Upstream { node: String, error: String },
    /// The target did not answer in time.
    Timeout { node: String },
}

impl Refused {
    /// Whether nothing of the request reached a handler anywhere.
    pub fn unprocessed(&self) -> bool {
        matches!(self, Refused::Loop { .. } | Refused::NoInstance)
    }

    pub fn into_api_error(self, service: &str, local: &str) -> ApiError {
        match self {
            Refused::Loop { from } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                format!(
                    "node `{from}` forwarded this request for `{service}` to node `{local}`, which does not run it: a forwarded request is not forwarded again (the registry copies disagree; retry)"
                ),
            ),
            Refused::NoInstance => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                format!(
                    "service `{service}` is not running on node `{local}`, and no healthy node that runs it is known (see the registry in /status)"
                ),
            ),
            Refused::TooLarge(limit) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is larger than the limit of {limit} bytes"),
            ),
            Refused::Body(e) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("cannot read the request body: {e}"),
            ),
            Refused::Upstream { node, error } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("forwarding to node `{node}` for `{service}` failed: {error}"),
            ),
            Refused::Timeout { node } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("node `{node}` did not answer for `{service}` in time"),
            ),
        }
    }
}

/// The forwarding half of the ingress. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    /// Over TLS, while this node has TLS between nodes (`over_tls`).
    tls: Option<(NodeTls, Client<tls::Connect, Full<Bytes>>)>,
    registry: Registry,
    /// Requests in flight from here, per target node.
    in_flight: Arc<Mutex<HashMap<String, Arc<AtomicUsize>>>>,
    rotation: Arc<AtomicUsize>,
    timeout: Duration,
    /// Signs `FORWARDED_CLIENT`.
    key: ClientKey,
    /// Counts the forwarded requests answered, by transport.
    metrics: HttpMetrics,
}

/// The key of `FORWARDED_CLIENT` MACs, derived from `auth.secret` (the
/// same on every node of a cluster).
#[derive(Clone)]
pub struct ClientKey(Arc<[u8]>);

impl ClientKey {
    pub fn derive(auth_secret: &str) -> ClientKey {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(auth_secret.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(b"flotilla/v1/forwarded client");
        ClientKey(Arc::from(&mac.finalize().into_bytes()[..]))
    }

    fn mac(&self, ip: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(ip.as_bytes());
        mac
    }

    /// `FORWARDED_CLIENT`'s value for `ip`.
    pub(crate) fn sign(&self, ip: IpAddr) -> String {
        let ip = ip.to_string();
        let tag: String = self
            .mac(&ip)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{ip};{tag}")
    }

    /// The address in a `FORWARDED_CLIENT` value, if its MAC checks.
    pub fn verify(&self, value: &str) -> Option<IpAddr> {
        let (ip, tag) = value.split_once(';')?;
        let tag: Vec<u8> = (0..tag.len())
            .step_by(2)
            .map(|i| {
                tag.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<_>>()?;
        self.mac(ip).verify_slice(&tag).ok()?;
        ip.parse().ok()
    }
}

/// Counts a request in flight to a node while it lives.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

impl Forwarder {
    /// `timeout`: for each attempt (the ingress's request time limit).
    pub fn new(
        registry: Registry,
        timeout: Duration,
        key: ClientKey,
        metrics: HttpMetrics,
    ) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        Forwarder {
            client: client_builder().build(connector),
            tls: None,
            registry,
            in_flight: Arc::default(),
            rotation: Arc::default(),
            timeout,
            key,
            metrics,
        }
    }

    /// Forwards over TLS whenever this node has TLS between nodes (`tls`
    /// gives its certificate): the other nodes' public listeners serve
    /// theirs to a client that names the trust domain, and any node of the
    /// cluster is taken. Without it, plaintext.
    pub fn over_tls(mut self, tls: NodeTls) -> Forwarder {
        let client = client_builder().build(tls::Connect(tls.clone()));
        self.tls = Some((tls, client));
        self
    }

    /// The TLS client, if this node has TLS between nodes now.
    fn tls_client(&self) -> Option<&Client<tls::Connect, Full<Bytes>>> {
        self.tls
            .as_ref()
            .filter(|(node, _)| node().is_some())
            .map(|(_, client)| client)
    }

    fn counter(&self, node: &str) -> Arc<AtomicUsize> {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(node.to_owned())
            .or_default()
            .clone()
    }

    /// The healthy instance of `service` with the fewest requests in flight
    /// from here, among those not `tried`.
    fn pick(&self, service: &str, tried: &[String]) -> Option<(String, SocketAddr)> {
        let local = self.registry.local_id();
        let candidates: Vec<(String, SocketAddr)> = self
            .registry
            .instances(service)
            .into_iter()
            .filter(|i| i.healthy && i.node_id != local && !tried.contains(&i.node_id))
            .map(|i| (i.node_id, i.public))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % candidates.len();
        let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        (0..candidates.len())
            .map(|k| &candidates[(start + k) % candidates.len()])
            .min_by_key(|(node, _)| in_flight.get(node).map_or(0, |n| n.load(Ordering::Relaxed)))
            .cloned()
    }

    /// Sends `req` for `service` to another node and returns its answer.
    /// `client`: the caller's address, for `X-Forwarded-For`.
    pub async fn forward(
        &self,
        service: &str,
        req: Request<Body>,
        client: Option<SocketAddr>,
        kind: RouteKind,
        body_limit: usize,
    ) -> Result<Response<Body>, Refused> {
        if let Some(from) = req.headers().get(FORWARDED_BY) {
            return Err(Refused::Loop {
                from: from.to_str().unwrap_or("?").to_owned(),
            });
        }
        let (mut parts, body) = req.into_parts();
        // Buffered, so that it can be sent again; bounded by the limit.
        let body = match http_body_util::Limited::new(body, body_limit)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Refused::TooLarge(body_limit));
            }
            Err(e) => return Err(Refused::Body(e.to_string())),
        };
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        parts.headers.remove(FORWARDED_CLIENT);
        if let Some(ip) = client.map(|c| c.ip()) {
            if let Ok(v) = HeaderValue::from_str(&self.key.sign(ip)) {
                parts.headers.insert(FORWARDED_CLIENT, v);
            }
            let forwarded = match parts.headers.get("x-forwarded-for") {
                Some(v) => format!("{}, {ip}", v.to_str().unwrap_or_default()),
                None => ip.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&forwarded) {
                parts.headers.insert("x-forwarded-for", v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(self.registry.local_id()) {
            parts.headers.insert(FORWARDED_BY, v);
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        // One deadline for all the attempts: the ingress's time limit.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut tried: Vec<String> = Vec::new();
        let mut last = Err(Refused::NoInstance);
        for _ in 0..=RetryPolicy::RETRIES {
            let Some((node, addr)) = self.pick(service, &tried) else {
                break;
            };
            tried.push(node.clone());
            let mut attempt = Request::new(Full::new(body.clone()));
            *attempt.method_mut() = parts.method.clone();
            *attempt.headers_mut() = parts.headers.clone();
            let tls = self.tls_client();
            let scheme = if tls.is_some() { "https" } else { "http" };
            *attempt.uri_mut() = match format!("{scheme}://{addr}{path}").parse() {
                Ok(u) => u,
                Err(e) => {
                    return Err(Refused::Upstream {
                        node,
                        error: format!("bad target URI: {e}"),
                    });
                }
            };
            let counter = self.counter(&node);
            counter.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight(counter);
            let over_tls = tls.is_some();
            let sent = match tls {
                Some(tls) => tokio::time::timeout_at(deadline, tls.request(attempt)).await,
                None => tokio::time::timeout_at(deadline, self.client.request(attempt)).await,
            };
            match sent {
                Ok(Ok(response)) => {
                    self.metrics
                        .forwarded(Label::from(service.to_owned()), over_tls);
                    let status = response.status();
                    let retry = RetryPolicy::after_response(kind, status, response.headers());
                    let (mut head, incoming) = response.into_parts();
                    strip_hop_by_hop(&mut head.headers);
                    head.extensions.insert(crate::edge::json_line::Relayed);
                    // The count ends when the body has been passed on.
                    let body = Body::new(incoming.map_frame(move |f| {
                        let _counted = &guard;
                        f
                    }));
                    let response = Response::from_parts(head, body);
                    if !retry {
                        return Ok(response);
                    }
                    tracing::debug!(%node, %status, "forwarded request refused; trying another node");
                    // Passed on as it is if no other node is left to try.
                    last = Ok(response);
                }
                Ok(Err(e)) => {
                    let unsent = e.is_connect();
                    tracing::debug!(%node, error = %e, unsent, "forwarding failed");
                    let refused = Refused::Upstream {
                        node,
                        error: e.to_string(),
                    };
                    if !RetryPolicy::after_failure(kind, unsent) {
                        return Err(refused);
                    }
                    last = Err(refused);
                }
                Err(_) => return Err(Refused::Timeout { node }),
            }
        }
        last
    }
}

/// One HTTP/2 connection per target, kept alive.
fn client_builder() -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .http2_only(true)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90));
    builder
}

/// Connections to other nodes' public listeners over TLS.
mod tls {
    use std::{
        future::Future,
        io,
        pin::Pin,
        task::{Context, Poll},
        time::Duration,
    };

    use hyper_util::{
        client::legacy::connect::{Connected, Connection},
        rt::TokioIo,
    };
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    use crate::tls::{NodeTls, peer::dial};

    type Error = Box<dyn std::error::Error + Send + Sync>;

    /// Dials a node: TCP, then TLS naming the trust domain (the name the
    /// public listener serves the node's certificate for), checked against
    /// the cluster's CA with the certificate current at that moment.
    #[derive(Clone)]
    pub(super) struct Connect(pub(super) NodeTls);

    impl tower::Service<http::Uri> for Connect {
        type Response = Conn;
        type Error = Error;
        type Future = Pin<Box<dyn Future<Output = Result<Conn, Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, uri: http::Uri) -> Self::Future {
            let tls = (self.0)();
            Box::pin(async move {
                let tls = tls.ok_or("this node has no TLS between nodes any more")?;
                let (config, domain) = (tls.forward_client_config(), tls.domain().to_owned());
                let tls = dial(&uri, config, Some(&domain), Some(Duration::from_secs(1))).await?;
                Ok(Conn(TokioIo::new(tls)))
            })
        }
    }

    /// An open TLS connection to a node, for hyper's client.
    pub(super) struct Conn(TokioIo<TlsStream<TcpStream>>);

    impl Connection for Conn {
        fn connected(&self) -> Connected {
            Connected::new().negotiated_h2()
        }
    }

    impl hyper::rt::Read for Conn {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: hyper::rt::ReadBufCursor<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl hyper::rt::Write for Conn {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.0.is_write_vectored()
        }
    }
}

/// The client's address of a request another node forwarded, when its
/// `FORWARDED_CLIENT` header checks under `key`; `None` otherwise (the
/// connection's address stands).
pub fn forwarded_client(headers: &HeaderMap, key: &ClientKey) -> Option<IpAddr> {
    key.verify(headers.get(FORWARDED_CLIENT)?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_grpc_keeps_its_te() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["te", "x-kept"]);
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn the_forwarded_client_is_believed_only_with_a_valid_mac() {
        let key = ClientKey::derive("a-shared-auth-secret-0123456789abcdef");
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            FORWARDED_CLIENT,
            HeaderValue::from_str(&key.sign(ip)).unwrap(),
        );
        assert_eq!(forwarded_client(&h, &key), Some(ip));
        let other = ClientKey::derive("another-auth-secret-0123456789abcdef");
        assert_eq!(forwarded_client(&h, &other), None);
        let forged = key.sign(ip).replacen("192.0.2.7", "192.0.2.8", 1);
        h.insert(FORWARDED_CLIENT, HeaderValue::from_str(&forged).unwrap());
        assert_eq!(forwarded_client(&h, &key), None);
        h.insert(FORWARDED_CLIENT, HeaderValue::from_static("192.0.2.8;zz"));
        assert_eq!(forwarded_client(&h, &key), None);
        h.insert(FORWARDED_CLIENT, HeaderValue::from_static("192.0.2.8"));
        assert_eq!(forwarded_client(&h, &key), None);
    }
}
