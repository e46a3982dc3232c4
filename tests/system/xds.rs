//! The xDS server of a real node, driven by the raw ADS client that
//! envoy-types generates.

use std::time::Duration;

use envoy_types::pb::{
    envoy::{
        admin::v3::ClientResourceStatus,
        config::{
            cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        },
        service::{
            discovery::v3::{
                DeltaDiscoveryRequest, DiscoveryRequest,
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

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{
    Ads, CDS, EDS, LDS, Node, NodeConfig, TestCluster, decode, free_port, request,
    wait_for_endpoints,
};

/// A ready single node serving xDS, and its xDS address.
fn node_serving_xds() -> (Node, std::net::SocketAddr) {
    let xds: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut node = Node::start(NodeConfig {
        xds: Some(xds),
        ..Default::default()
    });
    node.wait_ready();
    (node, xds)
}

#[tokio::test]
async fn a_node_serves_its_services_over_ads_by_the_rules() {
    let (node, xds) = node_serving_xds();
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
        node: request(CDS, &[], "", "").node,
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

/// A delta stream of a hand-written client: requests in, responses out.
struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse>,
}

impl Delta {
    async fn connect(xds: std::net::SocketAddr) -> Delta {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
            .await
            .unwrap();
        let (tx, requests) = mpsc::channel(4);
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        Delta { tx, rx }
    }

    async fn send(&self, type_url: &str, subscribe: &[&str], unsubscribe: &[&str], nonce: &str) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: type_url.into(),
                node: request(type_url, &[], "", "").node,
                resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
                resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
                response_nonce: nonce.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn next(
        &mut self,
    ) -> envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a delta response within 5 s")
            .unwrap()
            .expect("the stream stays open")
    }

    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(300), self.rx.message())
            .await
            .is_err()
    }
}

fn delta_names(
    r: &envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
) -> Vec<String> {
    let mut names: Vec<String> = r.resources.iter().map(|x| x.name.clone()).collect();
    names.sort();
    names
}

/// The exchanges an outside probe found answered against the xDS spec,
/// each on both variants where it applies (docs/xds-protocol.md, rules 11,
/// 17, 18, 19 and 20).
#[tokio::test]
async fn the_rules_a_probe_found_broken_hold_on_both_variants() {
    let (_node, xds) = node_serving_xds();

    // SotW: [echo, kv], then [echo], then [echo, kv] again: kv is resent.
    let mut ads = Ads::connect(xds).await;
    ads.send(request(EDS, &["echo", "kv"], "", "")).await;
    let both = ads.next().await;
    assert_eq!(decode::<ClusterLoadAssignment>(&both).len(), 2);
    ads.send(request(EDS, &["echo"], &both.version_info, &both.nonce))
        .await;
    assert!(ads.quiet(Duration::from_millis(300)).await);
    ads.send(request(
        EDS,
        &["echo", "kv"],
        &both.version_info,
        &both.nonce,
    ))
    .await;
    let again = ads.next().await;
    let names: Vec<String> = decode::<ClusterLoadAssignment>(&again)
        .into_iter()
        .map(|c| c.cluster_name)
        .collect();
    assert_eq!(names, ["kv"], "a re-requested name was not resent");
    ads.send(request(
        EDS,
        &["echo", "kv"],
        &again.version_info,
        &again.nonce,
    ))
    .await;
    ads.send(request(CDS, &[], "", "")).await;
    let cds = ads.next().await;
    ads.send(request(CDS, &[], &cds.version_info, &cds.nonce))
        .await;

    // Delta: a resubscribe is answered; a name that does not exist is said
    // removed; under the wildcard an explicit subscribe is answered and the
    // unsubscribe after it removes nothing.
    let mut delta = Delta::connect(xds).await;
    delta.send(EDS, &["echo"], &[], "").await;
    let r = delta.next().await;
    assert_eq!(delta_names(&r), ["echo"]);
    delta.send(EDS, &[], &[], &r.nonce).await;
    assert!(delta.quiet().await, "a delta ACK was answered");
    delta.send(EDS, &["echo"], &[], "").await;
    let r = delta.next().await;
    assert_eq!(delta_names(&r), ["echo"], "a resubscribe got nothing");
    delta.send(EDS, &[], &[], &r.nonce).await;
    delta.send(EDS, &["nope"], &[], "").await;
    let r = delta.next().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["nope"]);
    delta.send(EDS, &[], &[], &r.nonce).await;
    delta.send(CDS, &[], &[], "").await;
    let r = delta.next().await;
    assert_eq!(delta_names(&r), ["accounts", "echo", "kv"]);
    delta.send(CDS, &[], &[], &r.nonce).await;
    assert!(delta.quiet().await);
    delta.send(CDS, &["kv"], &[], "").await;
    let r = delta.next().await;
    assert_eq!(
        delta_names(&r),
        ["kv"],
        "a covered name subscribed to got nothing"
    );
    delta.send(CDS, &[], &[], &r.nonce).await;
    delta.send(CDS, &[], &["kv"], "").await;
    assert!(
        delta.quiet().await,
        "a covered name's unsubscribe was answered"
    );

    // CSDS: per resource, and by node matcher.
    let mut csds = ClientStatusDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .unwrap();
    let matcher = |exact: &str| {
        use envoy_types::pb::envoy::r#type::matcher::v3::{
            NodeMatcher, StringMatcher, string_matcher::MatchPattern,
        };
        ClientStatusRequest {
            node_matchers: vec![NodeMatcher {
                node_id: Some(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(exact.into())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    };
    let all = csds
        .fetch_client_status(matcher("test-envoy"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.config.len(), 2, "both streams are test-envoy's");
    let sotw = all
        .config
        .iter()
        .find(|c| {
            c.generic_xds_configs
                .iter()
                .any(|g| g.type_url == EDS && g.name == "kv")
        })
        .expect("the SotW stream lists its ACKed endpoints by name");
    let kv = sotw
        .generic_xds_configs
        .iter()
        .find(|g| g.type_url == EDS && g.name == "kv")
        .unwrap();
    assert_eq!(kv.client_status, ClientResourceStatus::Acked as i32);
    let config = kv.xds_config.as_ref().expect("the resource itself");
    assert_eq!(config.type_url, EDS);
    let none = csds
        .fetch_client_status(matcher("nobody"))
        .await
        .unwrap()
        .into_inner();
    assert!(none.config.is_empty(), "{none:?}");
    let metadata = ClientStatusRequest {
        node_matchers: vec![envoy_types::pb::envoy::r#type::matcher::v3::NodeMatcher {
            node_metadatas: vec![Default::default()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let refused = csds.fetch_client_status(metadata).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // A first request without a node: refused, on both variants.
    let mut nameless = Ads::connect(xds).await;
    nameless
        .send(DiscoveryRequest {
            node: None,
            ..request(CDS, &[], "", "")
        })
        .await;
    let e = tokio::time::timeout(Duration::from_secs(5), nameless.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("node"), "{e}");
    let mut nameless = Delta::connect(xds).await;
    nameless
        .tx
        .send(DeltaDiscoveryRequest {
            type_url: CDS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), nameless.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    // A request over the size limit: RESOURCE_EXHAUSTED.
    let mut big = Ads::connect(xds).await;
    let name = "n".repeat(1024);
    let names: Vec<&str> = std::iter::repeat_n(name.as_str(), 5 * 1024).collect();
    big.send(request(EDS, &names, "", "")).await;
    let e = tokio::time::timeout(Duration::from_secs(5), big.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
}

#[tokio::test]
async fn a_proxyless_grpc_client_is_balanced_across_the_nodes() {
    let cluster = TestCluster::start("");
    // Every member knows every member's services before the client starts.
    let mut ads = Ads::connect(cluster.xds[0]).await;
    ads.send(request(EDS, &["echo"], "", "")).await;
    wait_for_endpoints(&mut ads, 3, Duration::from_secs(20)).await;
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
    let replies = crate::support::proxyless_echo(&bootstrap, 30).await;
    assert_eq!(
        replies.keys().cloned().collect::<Vec<_>>(),
        ["ha-1", "ha-2", "ha-3"],
        "not balanced across the nodes: {replies:?}"
    );
}

#[tokio::test]
async fn registry_changes_reach_ads_clients_and_a_stopping_node_leaves_before_it_stops_listening() {
    let mut cluster = TestCluster::start("");
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
