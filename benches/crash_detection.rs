//! How soon a node that crashes or hangs leaves the endpoints its xDS
//! clients hold (issue 18): a real Envoy and a proxyless grpcio client,
//! both on ADS from the same member, against a scaled cluster on loopback
//! (three `db` members, the first serving xDS, the others running echo;
//! three store clients running echo).
//!
//! For each trial a victim is hit and the clock runs until both clients
//! have ACKed endpoints of `echo` without it, as the xDS server's CSDS
//! shows (polled every 2 ms); then it is brought back and both clients
//! hold it again before the next trial. The victims, `BENCH_TRIALS` times
//! each (10 by default), in turn:
//! - a store client (echo-3) killed with SIGKILL, then started again;
//! - the same store client paused with SIGSTOP, then resumed (SIGCONT);
//! - a member that does not lead (the second or third, which run echo too)
//!   killed with SIGKILL, then started again: only the leader's Raft calls
//!   reach it, so only the leader notices.
//!
//! Run: `scripts/bench-xds` runs it, or `cargo bench --bench
//! crash_detection` (Envoy and grpcio from scripts/install-test-tools).

#[path = "common/mod.rs"]
mod common;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{BenchCluster, free_addr, machine};
use envoy_types::pb::envoy::{
    config::{
        core::v3::{address, socket_address},
        endpoint::v3::{ClusterLoadAssignment, lb_endpoint},
    },
    service::status::v3::{
        ClientStatusRequest,
        client_status_discovery_service_client::ClientStatusDiscoveryServiceClient,
    },
};
use prost::Message;

const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// The clients' node ids.
const ENVOY: &str = "bench-envoy";
const GRPC: &str = "bench-grpc";

fn tool(relative: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-test-tools",
        path.display()
    );
    path
}

/// The ports of `echo`'s endpoints each client has ACKed, by node id.
async fn acked(xds: SocketAddr) -> Vec<(String, BTreeSet<u16>)> {
    let Ok(mut csds) = ClientStatusDiscoveryServiceClient::connect(format!("http://{xds}")).await
    else {
        return Vec::new();
    };
    let Ok(status) = csds
        .fetch_client_status(ClientStatusRequest::default())
        .await
    else {
        return Vec::new();
    };
    status
        .into_inner()
        .config
        .into_iter()
        .filter_map(|client| {
            let id = client.node?.id;
            let echo = client
                .generic_xds_configs
                .iter()
                .find(|g| g.type_url == EDS && g.name == "echo")?;
            let cla = ClusterLoadAssignment::decode(&echo.xds_config.as_ref()?.value[..]).ok()?;
            let ports = cla
                .endpoints
                .iter()
                .flat_map(|l| &l.lb_endpoints)
                .filter_map(|e| match e.host_identifier.as_ref()? {
                    lb_endpoint::HostIdentifier::Endpoint(e) => {
                        match e.address.as_ref()?.address.as_ref()? {
                            address::Address::SocketAddress(s) => {
                                match s.port_specifier.as_ref()? {
                                    socket_address::PortSpecifier::PortValue(p) => {
                                        u16::try_from(*p).ok()
                                    }
                                    _ => None,
                                }
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                })
                .collect();
            Some((id, ports))
        })
        .collect()
}

/// Waits until both clients hold `port` among echo's endpoints (`held`) or
/// both do not; returns when each got there, from `from`.
async fn until_both(
    xds: SocketAddr,
    port: u16,
    held: bool,
    from: Instant,
    within: Duration,
) -> [Duration; 2] {
    let mut when: [Option<Duration>; 2] = [None, None];
    while when.iter().any(Option::is_none) {
        assert!(
            from.elapsed() < within,
            "the clients did not {} port {port} within {within:?}: {:?}",
            if held { "get" } else { "drop" },
            acked(xds).await
        );
        for (id, ports) in acked(xds).await {
            let slot = match id.as_str() {
                ENVOY => 0,
                GRPC => 1,
                _ => continue,
            };
            if when[slot].is_none() && ports.contains(&port) == held {
                when[slot] = Some(from.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    when.map(|w| w.unwrap())
}

fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} failed");
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    let binary = env!("CARGO_BIN_EXE_flotilla");
    let trials: usize = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!("Machine: {}", machine());
    let (xds, ingress) = (free_addr(), free_addr());
    let layout: Vec<(String, String, bool)> = [
        ("db-1", "db, xds", true),
        ("db-2", "db, echo", true),
        ("db-3", "db, echo", true),
        ("echo-1", "echo", false),
        ("echo-2", "echo", false),
        ("echo-3", "echo", false),
    ]
    .into_iter()
    .map(|(n, s, db)| (n.to_owned(), s.to_owned(), db))
    .collect();
    let mut cluster = BenchCluster::start_with(binary, &layout, "", &|name| {
        if name == "db-1" {
            (
                format!(", xds: '{xds}'"),
                format!("xds: {{ingress_listener: '{ingress}'}}"),
            )
        } else {
            Default::default()
        }
    });
    let dir = cluster.dir.path().to_owned();
    let envoy_config = dir.join("envoy.yaml");
    std::fs::write(
        &envoy_config,
        flotilla::xds::bootstrap::ads_bootstrap(ENVOY, free_addr(), xds, false),
    )
    .unwrap();
    let mut envoy = Command::new(tool(".venv/bin/envoy"))
        .args(["-c", envoy_config.to_str().unwrap()])
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Envoy starts");
    let grpc_bootstrap = dir.join("grpc-bootstrap.json");
    std::fs::write(
        &grpc_bootstrap,
        serde_json::json!({
            "xds_servers": [{
                "server_uri": xds.to_string(),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": GRPC, "locality": {}},
        })
        .to_string(),
    )
    .unwrap();
    let mut grpc = Command::new(tool(".venv/grpc/bin/python"))
        .arg(tool("manifests/base/client/echo_client.py"))
        .args(["3600", "0.05"])
        .env("GRPC_XDS_BOOTSTRAP", &grpc_bootstrap)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the grpcio client starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let index = |name: &str| {
        cluster
            .nodes
            .iter()
            .position(|(n, _, _)| n == name)
            .unwrap()
    };
    let echo_3 = index("echo-3");
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.1.port()).collect();
    let port = |i: usize| ports[i];
    // Every echo node in both clients' endpoints.
    for i in [1, 2, index("echo-1"), index("echo-2"), echo_3] {
        rt.block_on(until_both(
            xds,
            port(i),
            true,
            Instant::now(),
            Duration::from_secs(60),
        ));
    }
    let mut killed: [Vec<Duration>; 2] = Default::default();
    let mut paused: [Vec<Duration>; 2] = Default::default();
    for _ in 0..trials {
        let hit = Instant::now();
        signal(&cluster.children[echo_3], "KILL");
        let _ = cluster.children[echo_3].wait();
        let gone = rt.block_on(until_both(
            xds,
            port(echo_3),
            false,
            hit,
            Duration::from_secs(10),
        ));
        for (v, d) in killed.iter_mut().zip(gone) {
            v.push(d);
        }
        cluster.restart(binary, echo_3);
        rt.block_on(until_both(
            xds,
            port(echo_3),
            true,
            Instant::now(),
            Duration::from_secs(30),
        ));

        let hit = Instant::now();
        signal(&cluster.children[echo_3], "STOP");
        let gone = rt.block_on(until_both(
            xds,
            port(echo_3),
            false,
            hit,
            Duration::from_secs(10),
        ));
        for (v, d) in paused.iter_mut().zip(gone) {
            v.push(d);
        }
        signal(&cluster.children[echo_3], "CONT");
        rt.block_on(until_both(
            xds,
            port(echo_3),
            true,
            Instant::now(),
            Duration::from_secs(30),
        ));
    }
    let mut members: [Vec<Duration>; 2] = Default::default();
    for _ in 0..trials {
        let victim = rt.block_on(not_leading(&cluster));
        let hit = Instant::now();
        signal(&cluster.children[victim], "KILL");
        let _ = cluster.children[victim].wait();
        let gone = rt.block_on(until_both(
            xds,
            port(victim),
            false,
            hit,
            Duration::from_secs(10),
        ));
        for (v, d) in members.iter_mut().zip(gone) {
            v.push(d);
        }
        cluster.restart(binary, victim);
        rt.block_on(until_both(
            xds,
            port(victim),
            true,
            Instant::now(),
            Duration::from_secs(30),
        ));
    }
    // BENCH_LOGS=DIR keeps the nodes' logs (with BENCH_LOG_LEVEL=info,
    // each mark and its cause).
    if let Some(keep) = std::env::var_os("BENCH_LOGS") {
        std::fs::create_dir_all(&keep).unwrap();
        for (name, _, _) in &cluster.nodes {
            let log = format!("{name}.log");
            let _ = std::fs::copy(dir.join(&log), PathBuf::from(&keep).join(&log));
        }
    }
    let _ = grpc.kill();
    let _ = grpc.wait();
    let _ = envoy.kill();
    let _ = envoy.wait();
    println!("\n| victim | client | trials | p50 ms | p99 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for (victim, figures) in [
        ("store client, SIGKILL", &mut killed),
        ("store client, SIGSTOP", &mut paused),
        ("member (not leading), SIGKILL", &mut members),
    ] {
        for (client, v) in ["Envoy", "grpcio"].iter().zip(figures.iter_mut()) {
            v.sort_unstable();
            println!(
                "| {victim} | {client} | {} | {:.0} | {:.0} | {:.0} |",
                v.len(),
                pct(v, 0.5),
                pct(v, 0.99),
                v[v.len() - 1].as_secs_f64() * 1e3
            );
        }
    }
}

/// The second or third member, whichever does not lead (the first serves
/// the clients' xDS).
async fn not_leading(cluster: &BenchCluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no member leads");
        for i in 0..3 {
            let admin = cluster.nodes[i].2;
            let status: Option<serde_json::Value> = async {
                common::client()
                    .get(format!("http://{admin}/status"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()
            }
            .await;
            if status.is_some_and(|s| s["cluster"]["role"] == "Leader") {
                return if i == 1 { 2 } else { 1 };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
