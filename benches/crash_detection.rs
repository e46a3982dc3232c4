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
    // Every echo node in both clients' endpoints.
    for i in [1, 2, index("echo-1"), index("echo-2"), echo_3] {
        rt.block_on(until_both(
            xds,
            cluster.nodes[i].1.port(),
            true,
            Instant::now(),
            Duration::from_secs(60),
        ));
    }
    let mut killed: [Vec<Duration>; 2] = Default::default();
    let mut paused: [Vec<Duration>; 2] = Default::default();
    let mut members: [Vec<Duration>; 2] = Default::default();
    let record = |figures: &mut [Vec<Duration>; 2], gone: [Duration; 2]| {
        for (v, d) in figures.iter_mut().zip(gone) {
            v.push(d);
        }
    };
    for _ in 0..trials {
        record(
            &mut killed,
            trial(&rt, &mut cluster, binary, xds, echo_3, Hit::Kill),
        );
        record(
            &mut paused,
            trial(&rt, &mut cluster, binary, xds, echo_3, Hit::Pause),
        );
    }
    for _ in 0..trials {
        // The second or third member, whichever does not lead (the first
        // serves the clients' xDS).
        let victim = if rt.block_on(cluster.leader(3)) == 1 {
            2
        } else {
            1
        };
        record(
            &mut members,
            trial(&rt, &mut cluster, binary, xds, victim, Hit::Kill),
        );
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

/// What a trial does to its victim.
#[derive(Clone, Copy)]
enum Hit {
    /// SIGKILL, then started again.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
}

/// Hits `victim`, returns when each client (Envoy, grpcio) had dropped it
/// from echo's endpoints, and brings it back until both hold it again.
fn trial(
    rt: &tokio::runtime::Runtime,
    cluster: &mut BenchCluster,
    binary: &str,
    xds: SocketAddr,
    victim: usize,
    hit: Hit,
) -> [Duration; 2] {
    let port = cluster.nodes[victim].1.port();
    let at = Instant::now();
    match hit {
        Hit::Kill => {
            signal(&cluster.children[victim], "KILL");
            let _ = cluster.children[victim].wait();
        }
        Hit::Pause => signal(&cluster.children[victim], "STOP"),
    }
    let gone = rt.block_on(until_both(xds, port, false, at, Duration::from_secs(10)));
    match hit {
        Hit::Kill => cluster.restart(binary, victim),
        Hit::Pause => signal(&cluster.children[victim], "CONT"),
    }
    rt.block_on(until_both(
        xds,
        port,
        true,
        Instant::now(),
        Duration::from_secs(30),
    ));
    gone
}
