//! The ADS gRPC service: one task per stream runs the SotW protocol
//! (`sotw::Stream`) over the shared snapshot. A stream owns its state and
//! its bounded output queue, so a slow client delays only itself; nothing is
//! locked while sending, and the state is dropped when the stream ends.

use std::{pin::Pin, sync::Arc, time::Duration};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
};
use futures_util::Stream as FuturesStream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::{Snapshot, resources, sotw};
use crate::{registry::Registry, routing::RoutingTable};

/// How often the registry is compared with the last snapshot. Changes in
/// between are coalesced into one new snapshot.
const REBUILD_EVERY: Duration = Duration::from_millis(50);
/// Responses queued for one stream before its task waits for the client.
const STREAM_QUEUE: usize = 16;

type ResponseStream<T> = Pin<Box<dyn FuturesStream<Item = Result<T, Status>> + Send>>;

pub struct Ads {
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

/// Keeps the snapshot in step with the registry until `stop`; returns the
/// receiver the ADS service serves from.
pub fn snapshots(
    table: Arc<RoutingTable>,
    registry: Registry,
    ingress: Option<std::net::SocketAddr>,
    stop: tokio_util::sync::CancellationToken,
) -> watch::Receiver<Arc<Snapshot>> {
    let mut services = resources::services(&table, &registry);
    let (tx, rx) = watch::channel(Arc::new(Snapshot::build(&services, ingress)));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REBUILD_EVERY) => {}
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
    ) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(Ads { snapshots })
    }
}

async fn run_stream(
    mut incoming: Streaming<DiscoveryRequest>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut stream = sotw::Stream::default();
    snapshots.mark_unchanged();
    loop {
        let responses = tokio::select! {
            msg = incoming.message() => match msg {
                Ok(Some(request)) => {
                    tracing::debug!(
                        type_url = %request.type_url,
                        names = ?request.resource_names,
                        version = %request.version_info,
                        nonce = %request.response_nonce,
                        nack = request.error_detail.is_some(),
                        "ads request"
                    );
                    let snap = snapshots.borrow().clone();
                    stream.on_request(request, &snap)
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
            tracing::debug!(
                type_url = %r.type_url,
                version = %r.version_info,
                nonce = %r.nonce,
                resources = r.resources.len(),
                "ads response"
            );
            if out.send(Ok(r)).await.is_err() {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(run_stream(request.into_inner(), self.snapshots.clone(), tx));
        let responses =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        Ok(Response::new(Box::pin(responses)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "incremental (delta) xDS is not served yet: use the state-of-the-world ADS stream",
        ))
    }
}
