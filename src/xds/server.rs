//! The ADS gRPC service: one task per stream runs the SotW protocol
//! (`sotw::Stream`) over the shared snapshot. A stream owns its state and
//! its bounded output queue, so a slow client delays only itself; nothing is
//! locked while sending, and the state is dropped when the stream ends.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::StreamBody;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::{Outgoing, Snapshot, clients, delta, resources, sotw, view};
use crate::{catalogue::routing::RoutingTable, mesh::registry::Registry};

/// Responses queued for one stream before its task waits for the client.
const STREAM_QUEUE: usize = 16;
/// The HTTP/2 send buffer of one ADS stream (hyper's default is 400 KiB):
/// enough for a few 16 KiB pieces in flight; the rest of a large response
/// waits in the stream's queue as shared resources. It bounds what a slow
/// client can pin; in the scale benchmark it changed little on its own
/// (1,116 to 1,098 MiB for 5,000 streams, BENCHMARKS.md).
pub const SEND_BUFFER: usize = 64 * 1024;

/// The ADS gRPC service (both variants), mounted by `catalogue::grpc_router`.
#[derive(Clone)]
pub struct Ads {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    clients: clients::Clients,
}

/// Keeps the snapshot in step with the registry until `stop`: rebuilt as
/// soon as the registry's copy changes (changes that come while one
/// rebuild runs are taken together by the next); returns the receiver the
/// ADS service serves from.
pub fn snapshots(
    table: Arc<RoutingTable>,
    registry: Registry,
    ingress: Option<std::net::SocketAddr>,
    stop: tokio_util::sync::CancellationToken,
) -> watch::Receiver<Arc<Snapshot>> {
    let mut changes = registry.subscribe();
    let mut services = resources::services(&table, &registry);
    let (tx, rx) = watch::channel(Arc::new(Snapshot::build(&services, ingress)));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            let now = resources::services(&table, &registry);
            if now != services {
                services = now;
                let snapshot = Arc::new(Snapshot::build(&services, ingress));
                tracing::debug!(services = services.len(), "xds snapshot rebuilt");
                tx.send_replace(snapshot);
            }
        }
    });
    rx
}

impl Ads {
    pub fn service(snapshots: watch::Receiver<Arc<Snapshot>>, clients: clients::Clients) -> Ads {
        Ads { snapshots, clients }
    }
}

impl tonic::server::NamedService for Ads {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl tower::Service<http::Request<axum::body::Body>> for Ads {
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let compressed = req
            .headers()
            .get("grpc-encoding")
            .is_some_and(|e| e != "identity");
        let response = if compressed {
            Status::unimplemented("compressed ADS requests are not supported: send identity")
                .into_http()
        } else {
            match req.uri().path().rsplit('/').next() {
                Some("StreamAggregatedResources") => {
                    serve_stream::<sotw::Stream>(req.into_body(), self)
                }
                Some("DeltaAggregatedResources") => {
                    serve_stream::<delta::Stream>(req.into_body(), self)
                }
                _ => {
                    Status::unimplemented(format!("no ADS method {}", req.uri().path())).into_http()
                }
            }
        };
        std::future::ready(Ok(response))
    }
}

/// One ADS protocol variant, as the stream task drives it.
trait Protocol: Default + Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: super::Wire + Send + 'static;
    const VARIANT: &'static str;
    fn node(&self) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    fn request_node(r: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    fn status(&self) -> Vec<sotw::TypeStatus>;
    fn on_request(&mut self, r: Self::Request, snap: &Snapshot) -> Vec<Outgoing<Self::Response>>;
    fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<Outgoing<Self::Response>>;
    /// Type, nonce and whether it is a NACK, for the debug log.
    fn describe(r: &Self::Request) -> (&str, &str, bool);
    fn describe_response(r: &Outgoing<Self::Response>) -> (&str, &str, usize);
}

impl Protocol for sotw::Stream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const VARIANT: &'static str = "sotw";
    fn node(&self) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        sotw::Stream::node(self)
    }
    fn request_node(
        r: &DiscoveryRequest,
    ) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        r.node.as_ref()
    }
    fn status(&self) -> Vec<sotw::TypeStatus> {
        sotw::Stream::status(self)
    }
    fn on_request(
        &mut self,
        r: DiscoveryRequest,
        snap: &Snapshot,
    ) -> Vec<Outgoing<DiscoveryResponse>> {
        self.on_request_outgoing(r, snap)
    }
    fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<Outgoing<DiscoveryResponse>> {
        self.on_snapshot_outgoing(snap)
    }
    fn describe(r: &DiscoveryRequest) -> (&str, &str, bool) {
        (&r.type_url, &r.response_nonce, r.error_detail.is_some())
    }
    fn describe_response(r: &Outgoing<DiscoveryResponse>) -> (&str, &str, usize) {
        (&r.message.type_url, &r.message.nonce, r.resources.len())
    }
}

impl Protocol for delta::Stream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const VARIANT: &'static str = "delta";
    fn node(&self) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        delta::Stream::node(self)
    }
    fn request_node(
        r: &DeltaDiscoveryRequest,
    ) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        r.node.as_ref()
    }
    fn status(&self) -> Vec<sotw::TypeStatus> {
        delta::Stream::status(self)
    }
    fn on_request(
        &mut self,
        r: DeltaDiscoveryRequest,
        snap: &Snapshot,
    ) -> Vec<Outgoing<DeltaDiscoveryResponse>> {
        self.on_request_outgoing(r, snap)
    }
    fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<Outgoing<DeltaDiscoveryResponse>> {
        self.on_snapshot_outgoing(snap)
    }
    fn describe(r: &DeltaDiscoveryRequest) -> (&str, &str, bool) {
        (&r.type_url, &r.response_nonce, r.error_detail.is_some())
    }
    fn describe_response(r: &Outgoing<DeltaDiscoveryResponse>) -> (&str, &str, usize) {
        (
            &r.message.type_url,
            &r.message.nonce,
            r.resources.len() + r.message.removed_resources.len(),
        )
    }
}

async fn run_stream<P: Protocol>(
    mut incoming: Streaming<P::Request>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    client: clients::Entry,
    out: mpsc::Sender<Result<Outgoing<P::Response>, Status>>,
) where
    P::Request: prost::Message + Default,
{
    let mut stream = P::default();
    // What the stream serves: the shared snapshot, or its client's view of
    // it, decided by the node of the first request that names one.
    let mut view: Option<view::View> = None;
    snapshots.mark_unchanged();
    loop {
        let responses = tokio::select! {
            msg = incoming.message() => match msg {
                Ok(Some(request)) => {
                    let (type_url, nonce, nack) = P::describe(&request);
                    tracing::debug!(%type_url, %nonce, nack, "ads request");
                    if view.is_none() && P::request_node(&request).is_none() {
                        // Every real client names itself first; a nameless
                        // one could not be told apart in CSDS or /status.
                        let e = "the first request of an ADS stream must carry `node` (its id and metadata): every Envoy and gRPC xDS client sends it";
                        tracing::warn!(error = e, "ads stream refused");
                        let _ = out.send(Err(Status::invalid_argument(e))).await;
                        return;
                    }
                    if view.is_none() && let Some(node) = P::request_node(&request) {
                        match view::View::of_node(node) {
                            Ok(v) => {
                                if let Some(s) = v.sidecar() {
                                    tracing::info!(pod = %s.pod, inbound = %s.inbound, "an Envoy sidecar connected");
                                }
                                if let Some(tls) = v.upstream_tls() {
                                    tracing::info!(node = %node.id, dir = %tls.dir.display(), "an Envoy that reaches the nodes over TLS connected");
                                }
                                view = Some(v);
                            }
                            Err(e) => {
                                tracing::warn!(node = %node.id, error = %e, "ads stream refused");
                                let _ = out.send(Err(Status::invalid_argument(e))).await;
                                return;
                            }
                        }
                    }
                    let shared = snapshots.borrow().clone();
                    let snap = view.get_or_insert_default().of(&shared);
                    let responses = stream.on_request(request, &snap);
                    client.update(stream.node(), stream.status());
                    responses
                }
                Ok(None) => return,
                Err(status) => {
                    // A request that cannot be read (over the size limit,
                    // undecodable): the stream ends with its status; one
                    // over the size limit with gRPC's code for it.
                    let status = if status.code() == tonic::Code::OutOfRange {
                        Status::resource_exhausted(format!(
                            "an ADS request is limited to {MAX_REQUEST} bytes: {}",
                            status.message()
                        ))
                    } else {
                        status
                    };
                    tracing::debug!(%status, "ads stream ended");
                    let _ = out.send(Err(status)).await;
                    return;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                let shared = snapshots.borrow_and_update().clone();
                let snap = view.get_or_insert_default().of(&shared);
                stream.on_snapshot(&snap)
            }
        };
        for r in responses {
            let (type_url, nonce, resources) = P::describe_response(&r);
            tracing::debug!(%type_url, %nonce, resources, "ads response");
            if out.send(Ok(r)).await.is_err() {
                return;
            }
        }
    }
}

/// The most bytes of small pieces copied into one body frame: each frame
/// becomes at least one HTTP/2 DATA frame, handled on both sides (a first
/// sync sends hundreds of resources of a few hundred bytes to each stream;
/// copying them together took the 5,000-stream first sync from 8.6 s to
/// 5.4 s, BENCHMARKS.md).
const FRAME_BYTES: usize = 16 * 1024;

/// The next body frame from `pending`: its first piece as it is if that is
/// large, or the pieces that fit in `FRAME_BYTES` copied into one. Made
/// when the body is polled, so a stream holds at most one such copy.
fn coalesce(pending: &mut VecDeque<Bytes>) -> Option<Bytes> {
    let first = pending.pop_front()?;
    if first.len() >= FRAME_BYTES / 2
        || pending
            .front()
            .is_none_or(|next| first.len() + next.len() > FRAME_BYTES)
    {
        return Some(first);
    }
    let mut frame = bytes::BytesMut::with_capacity(FRAME_BYTES);
    frame.extend_from_slice(&first);
    while let Some(next) = pending.front()
        && frame.len() + next.len() <= FRAME_BYTES
    {
        frame.extend_from_slice(next);
        pending.pop_front();
    }
    Some(frame.freeze())
}

/// The largest ADS request accepted (gRPC's usual default).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// Runs `P` on a new stream. Requests are decoded by tonic; responses are
/// written as gRPC frames of the resources' shared encodings (see
/// `Outgoing::frames`), so a stream holds no encode buffer of its own
/// (tonic's grows to the largest response and stays: 158 MB for 1,000
/// streams in a heaptrack profile of the scale benchmark, BENCHMARKS.md).
fn serve_stream<P: Protocol>(
    body: axum::body::Body,
    ads: &Ads,
) -> http::Response<axum::body::Body> {
    let decoder = tonic_prost::ProstCodec::<P::Response, P::Request>::raw_decoder(
        tonic::codec::BufferSettings::default(),
    );
    let incoming = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST));
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let client = ads.clients.connect(P::VARIANT);
    tokio::spawn(run_stream::<P>(incoming, ads.snapshots.clone(), client, tx));
    let frames = futures_util::stream::unfold(
        (rx, VecDeque::<Bytes>::new(), false),
        |(mut rx, mut pending, ended)| async move {
            loop {
                if let Some(piece) = coalesce(&mut pending) {
                    return Some((Ok(Frame::data(piece)), (rx, pending, ended)));
                }
                if ended {
                    return None;
                }
                let end = match rx.recv().await {
                    Some(Ok(response)) => match response.frames() {
                        Ok(frames) => {
                            pending.extend(frames);
                            continue;
                        }
                        Err(status) => status,
                    },
                    Some(Err(status)) => status,
                    None => Status::ok(""),
                };
                // Trailers: the status, as tonic would write it.
                let mut trailers = end.into_http::<()>().into_parts().0.headers;
                trailers.remove(http::header::CONTENT_TYPE);
                return Some((
                    Ok::<_, Infallible>(Frame::trailers(trailers)),
                    (rx, pending, true),
                ));
            }
        },
    );
    let mut response = http::Response::new(axum::body::Body::new(StreamBody::new(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_pieces_go_in_frames_of_at_most_16_kib_in_order_and_large_ones_alone() {
        use super::{FRAME_BYTES, coalesce};
        let piece = |n: usize, b: u8| bytes::Bytes::from(vec![b; n]);
        let mut pending: std::collections::VecDeque<bytes::Bytes> = [
            piece(5, 0),
            piece(6000, 1),
            piece(6000, 2),
            piece(6000, 3),
            piece(20_000, 4),
            piece(100, 5),
        ]
        .into();
        let all: Vec<u8> = pending.iter().flat_map(|p| p.to_vec()).collect();
        let mut frames = Vec::new();
        while let Some(f) = coalesce(&mut pending) {
            frames.push(f);
        }
        let lens: Vec<usize> = frames.iter().map(|f| f.len()).collect();
        assert_eq!(lens, [12_005, 6000, 20_000, 100]);
        assert!(lens.iter().all(|l| *l <= FRAME_BYTES || *l == 20_000));
        assert_eq!(frames.concat(), all);
    }
}
