//! The ADS gRPC service: one task per stream runs the SotW protocol
//! (`sotw::Stream`) over the shared snapshot. A stream owns its state and
//! its bounded output queue, so a slow client delays only itself; nothing is
//! locked while sending, and the state is dropped when the stream ends.

use std::{pin::Pin, sync::Arc};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
};
use futures_util::Stream as FuturesStream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::{Outgoing, Snapshot, clients, delta, resources, sotw};
use crate::{registry::Registry, routing::RoutingTable};

/// Responses queued for one stream before its task waits for the client.
const STREAM_QUEUE: usize = 16;

type ResponseStream<T> = Pin<Box<dyn FuturesStream<Item = Result<T, Status>> + Send>>;

pub struct Ads {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    clients: clients::Clients,
}

/// Keeps the snapshot in step with the registry until `stop`: rebuilt when
/// the registry's copy changes (its refreshes, every `registry::REFRESH`,
/// coalesce the changes between them); returns the receiver the ADS
/// service serves from.
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
    pub fn service(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        clients: clients::Clients,
    ) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(Ads { snapshots, clients })
    }
}

/// One ADS protocol variant, as the stream task drives it.
trait Protocol: Default + Send + 'static {
    type Request: Send + 'static;
    type Response: super::Fill + Send + 'static;
    const VARIANT: &'static str;
    fn node(&self) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
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
    out: mpsc::Sender<Outgoing<P::Response>>,
) where
    P::Request: prost::Message + Default,
{
    let mut stream = P::default();
    snapshots.mark_unchanged();
    loop {
        let responses = tokio::select! {
            msg = incoming.message() => match msg {
                Ok(Some(request)) => {
                    let (type_url, nonce, nack) = P::describe(&request);
                    tracing::debug!(%type_url, %nonce, nack, "ads request");
                    let snap = snapshots.borrow().clone();
                    let responses = stream.on_request(request, &snap);
                    client.update(stream.node(), stream.status());
                    responses
                }
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(%status, "ads stream ended");
                    return;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                let snap = snapshots.borrow_and_update().clone();
                stream.on_snapshot(&snap)
            }
        };
        for r in responses {
            let (type_url, nonce, resources) = P::describe_response(&r);
            tracing::debug!(%type_url, %nonce, resources, "ads response");
            if out.send(r).await.is_err() {
                return;
            }
        }
    }
}

/// Runs `P` on a new stream; the responses as the gRPC response stream.
fn serve_stream<P: Protocol>(
    incoming: Streaming<P::Request>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    clients: &clients::Clients,
) -> ResponseStream<P::Response>
where
    P::Request: prost::Message + Default,
{
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let client = clients.connect(P::VARIANT);
    tokio::spawn(run_stream::<P>(incoming, snapshots, client, tx));
    // Resources are copied into a response only when it is its turn.
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|r| (Ok(r.materialize()), rx))
    }))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(serve_stream::<sotw::Stream>(
            request.into_inner(),
            self.snapshots.clone(),
            &self.clients,
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(serve_stream::<delta::Stream>(
            request.into_inner(),
            self.snapshots.clone(),
            &self.clients,
        )))
    }
}
