//! A raw ADS client (the one envoy-types generates) for the xDS server of
//! a real node.

use std::time::Duration;

use envoy_types::pb::envoy::{
    config::{core::v3::Node as XdsNode, endpoint::v3::ClusterLoadAssignment},
    service::discovery::v3::{
        DiscoveryRequest, DiscoveryResponse,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
};
use prost::Message;

use super::wait_until;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

pub fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        node: Some(XdsNode {
            id: "test-envoy".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Ads {
    pub async fn connect(addr: std::net::SocketAddr) -> Ads {
        let mut client = wait_until(
            "the xds listener accepts connections",
            Duration::from_secs(5),
            || AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")),
        )
        .await;
        let (tx, requests) = mpsc::channel(16);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        Ads { tx, rx }
    }

    pub async fn send(&self, r: DiscoveryRequest) {
        self.tx.send(r).await.unwrap();
    }

    pub async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5 s")
            .unwrap()
            .expect("the stream stays open")
    }

    /// The next message or the status the stream ended with.
    pub async fn message(&mut self) -> Result<Option<DiscoveryResponse>, tonic::Status> {
        self.rx.message().await
    }

    /// Nothing arrives within `wait`.
    pub async fn quiet(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.rx.message()).await.is_err()
    }
}

pub fn decode<T: Message + Default>(r: &DiscoveryResponse) -> Vec<T> {
    r.resources
        .iter()
        .map(|a| T::decode(a.value.as_slice()).unwrap())
        .collect()
}

/// Reads EDS responses for `echo` until one has `n` endpoints, within
/// `within`; returns when it came.
pub async fn wait_for_endpoints(ads: &mut Ads, n: usize, within: Duration) -> std::time::Instant {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let r = tokio::time::timeout(left, ads.rx.message())
            .await
            .unwrap_or_else(|_| panic!("echo did not get {n} endpoints within {within:?}"))
            .unwrap()
            .expect("the stream stays open");
        if r.type_url == EDS {
            let cla = decode::<ClusterLoadAssignment>(&r);
            ads.send(request(EDS, &["echo"], &r.version_info, &r.nonce))
                .await;
            if cla[0].endpoints[0].lb_endpoints.len() == n {
                return std::time::Instant::now();
            }
        }
    }
}
