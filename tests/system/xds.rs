//! The xDS server of a real node, driven by the raw ADS client that
//! envoy-types generates.

use std::time::Duration;

use envoy_types::pb::{
    envoy::{
        admin::v3::ClientResourceStatus,
        config::{
            cluster::v3::Cluster, core::v3::Node as XdsNode, endpoint::v3::ClusterLoadAssignment,
            listener::v3::Listener,
        },
        service::{
            discovery::v3::{
                DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
                aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
            },
            status::v3::{
                ClientStatusRequest,
                client_status_discovery_service_client::ClientStatusDiscoveryServiceClient,
            },
        },
    },
    google::rpc::Status,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{Node, NodeConfig, free_port};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub(crate) const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

pub(crate) fn request(
    type_url: &str,
    names: &[&str],
    version: &str,
    nonce: &str,
) -> DiscoveryRequest {
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

pub(crate) struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Ads {
    pub(crate) async fn connect(addr: std::net::SocketAddr) -> Ads {
        let mut client = None;
        for _ in 0..100 {
            if let Ok(c) = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await
            {
                client = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut client = client.expect("the xds listener accepts connections");
        let (tx, requests) = mpsc::channel(16);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        Ads { tx, rx }
    }

    pub(crate) async fn send(&self, r: DiscoveryRequest) {
        self.tx.send(r).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5 s")
            .unwrap()
            .expect("the stream stays open")
    }

    /// Nothing arrives within `wait`.
    async fn quiet(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.rx.message()).await.is_err()
    }
}

fn decode<T: Message + Default>(r: &DiscoveryResponse) -> Vec<T> {
    r.resources
        .iter()
        .map(|a| T::decode(a.value.as_slice()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_node_serves_its_services_over_ads_by_the_rules() {
    let xds: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut node = Node::start(NodeConfig {
        xds: Some(xds),
        ..Default::default()
    });
    node.wait_ready();
    let mut ads = Ads::connect(xds).await;

    // Wildcard CDS: one cluster per service of the routing table.
    ads.send(request(CDS, &[], "", "")).await;
    let cds = ads.next().await;
    let mut clusters: Vec<String> = decode::<Cluster>(&cds)
        .into_iter()
        .map(|c| c.name)
        .collect();
    clusters.sort();
    assert_eq!(clusters, ["accounts", "echo", "kv"]);
    // An ACK is not answered.
    ads.send(request(CDS, &[], &cds.version_info, &cds.nonce))
        .await;
    assert!(
        ads.quiet(Duration::from_millis(300)).await,
        "an ACK was answered"
    );

    // Named EDS: the node's public address, healthy.
    ads.send(request(EDS, &["echo"], "", "")).await;
    let eds = ads.next().await;
    let cla = decode::<ClusterLoadAssignment>(&eds);
    assert_eq!(cla.len(), 1);
    let text = format!("{:?}", cla[0]);
    assert!(text.contains(&node.public.port().to_string()), "{text}");

    // A NACK is recorded and not answered with the same content.
    ads.send(DiscoveryRequest {
        error_detail: Some(Status {
            code: 3,
            message: "refused for the test".into(),
            ..Default::default()
        }),
        ..request(EDS, &["echo"], "", &eds.nonce)
    })
    .await;
    assert!(
        ads.quiet(Duration::from_millis(300)).await,
        "resent after a NACK"
    );
    // ... and shown: in /status on the admin listener and over CSDS.
    let status = node.status().await.unwrap();
    assert_eq!(status["xds"]["nacks_total"], 1, "{status}");
    let client = &status["xds"]["clients"][0];
    assert_eq!(client["node_id"], "test-envoy", "{status}");
    let eds_state = client["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type_url"] == EDS)
        .unwrap();
    assert_eq!(eds_state["nack_error"], "refused for the test", "{status}");
    let csds = ClientStatusDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .unwrap()
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let config = &csds.config[0];
    assert_eq!(config.node.as_ref().unwrap().id, "test-envoy");
    let eds_config = config
        .generic_xds_configs
        .iter()
        .find(|c| c.type_url == EDS)
        .unwrap();
    assert_eq!(
        eds_config.client_status,
        ClientResourceStatus::Nacked as i32
    );
    let cds_config = config
        .generic_xds_configs
        .iter()
        .find(|c| c.type_url == CDS)
        .unwrap();
    assert_eq!(cds_config.client_status, ClientResourceStatus::Acked as i32);
    assert_eq!(cds_config.version_info, cds.version_info);

    // Proxyless gRPC: the API listener named after the service.
    ads.send(request(LDS, &["echo"], "", "")).await;
    let lds = ads.next().await;
    let listeners = decode::<Listener>(&lds);
    assert_eq!(listeners.len(), 1);
    assert!(listeners[0].api_listener.is_some());

    // Delta (incremental) on the same server: the clusters with their
    // versions; the ACK is not answered.
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .unwrap();
    let (tx, requests) = mpsc::channel(4);
    let mut delta = client
        .delta_aggregated_resources(ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    tx.send(DeltaDiscoveryRequest {
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), delta.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut names: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["accounts", "echo", "kv"]);
    assert!(r.resources.iter().all(|x| !x.version.is_empty()));
    tx.send(DeltaDiscoveryRequest {
        type_url: CDS.into(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), delta.message())
            .await
            .is_err(),
        "a delta ACK was answered"
    );
}

/// Python grpcio, installed by scripts/install-test-tools; missing fails.
fn grpc_python() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/grpc/bin/python");
    assert!(
        path.exists(),
        "Python grpcio is not installed at {}: run scripts/install-test-tools (scripts/test does)",
        path.display()
    );
    path
}

#[tokio::test]
async fn a_proxyless_grpc_client_is_balanced_across_the_nodes() {
    let cluster = crate::ha::TestCluster::start("");
    // Every member knows every member's services before the client starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut ads = Ads::connect(cluster.xds[0]).await;
    loop {
        ads.send(request(EDS, &["echo"], "", "")).await;
        let eds = ads.next().await;
        let cla = decode::<ClusterLoadAssignment>(&eds);
        if cla
            .first()
            .is_some_and(|c| c.endpoints[0].lb_endpoints.len() == 3)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "echo never had 3 endpoints: {cla:?}"
        );
        ads = Ads::connect(cluster.xds[0]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap.json");
    std::fs::write(
        &bootstrap,
        serde_json::json!({
            "xds_servers": [{
                "server_uri": cluster.xds[0].to_string(),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": "proxyless-test", "locality": {}},
        })
        .to_string(),
    )
    .unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/system/proxyless_echo.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(grpc_python())
            .arg(script)
            .arg("30")
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the proxyless client finishes within 60 s")
    .unwrap();
    assert!(
        out.status.success(),
        "proxyless client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: std::collections::BTreeMap<String, u64> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replies.values().sum::<u64>(), 30);
    assert_eq!(
        replies.keys().cloned().collect::<Vec<_>>(),
        ["ha-1", "ha-2", "ha-3"],
        "not balanced across the nodes: {replies:?}"
    );
}

/// Reads EDS responses for `echo` until one has `n` endpoints, within
/// `within`; returns when it came.
pub(crate) async fn wait_for_endpoints(
    ads: &mut Ads,
    n: usize,
    within: Duration,
) -> std::time::Instant {
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

#[tokio::test]
async fn registry_changes_reach_ads_clients_and_a_stopping_node_leaves_before_it_stops_listening() {
    let mut cluster = crate::ha::TestCluster::start("");
    let mut ads = Ads::connect(cluster.xds[0]).await;
    ads.send(request(EDS, &["echo"], "", "")).await;
    wait_for_endpoints(&mut ads, 3, Duration::from_secs(20)).await;

    // A graceful stop: the node leaves the endpoints while it still
    // accepts connections, then exits.
    let leaving = cluster.nodes[2].public;
    cluster.nodes[2].signal("TERM");
    wait_for_endpoints(&mut ads, 2, Duration::from_secs(5)).await;
    assert!(
        tokio::net::TcpStream::connect(leaving).await.is_ok(),
        "the node stopped listening before it left the endpoints"
    );
    let status = cluster.nodes[2].wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));

    // It comes back: it joins the endpoints again.
    cluster.nodes[2].spawn_only(&[]);
    cluster.nodes[2].wait_ready();
    wait_for_endpoints(&mut ads, 3, Duration::from_secs(10)).await;

    // kill -9: no deregistration; the record expires within the TTL.
    cluster.nodes[1].kill9();
    let killed = std::time::Instant::now();
    let gone = wait_for_endpoints(&mut ads, 2, Duration::from_secs(10)).await;
    assert!(
        gone - killed <= flotilla::mesh::registry::TTL + Duration::from_secs(2),
        "the dead node left the endpoints after {:?}",
        gone - killed
    );
}
