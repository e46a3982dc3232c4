//! xDS scale (issue 5): N simulated ADS clients, each subscribed to every
//! type (clusters and listeners by wildcard, the 100 assignments and the
//! ingress routes by name), over 100 services × 100 endpoints. Reports the
//! memory per stream and the time for one endpoint change to be ACKed by
//! all N.
//!
//! The server is flotilla's ADS service (`xds::server::Ads` behind the
//! node's HTTP/2 server) on a loopback port, in this process; the clients
//! are 100 streams per HTTP/2 connection, in a child process (this program
//! again, in client mode), so that the memory measured is the server's: the
//! growth of this process's RSS once every stream has ACKed its first full
//! state. The clients are the envoy-types generated ADS client; each ACKs
//! every response (the node on its first requests only, as Envoy does). A
//! stream counts as synced once it holds every type whole (the endpoint
//! assignments come in pieces: all 100 of them) and has ACKed the last
//! piece; until 2026-12-01 it counted at the first response of each type,
//! which stopped the clock before most endpoint pieces had arrived. They
//! share the machine's two cores with the server, so the table gives
//! each side's CPU time during the first sync. The change is pushed as a
//! new snapshot (what the node does when its registry changes); each
//! client reports when it ACKed it.
//!
//! Run: `cargo bench --bench xds` (BENCH_STREAMS=5000 by default).

#[path = "common/mod.rs"]
mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use flotilla::xds::{
    CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot,
    clients::Clients,
    resources::{EndpointView, INGRESS_ROUTES, ServiceView},
    server::Ads,
    version,
};
use tokio::sync::{mpsc, watch};

const SERVICES: usize = 100;
const ENDPOINTS: usize = 100;
const STREAMS_PER_CONNECTION: usize = 100;

fn services(changed_port: u16) -> Vec<ServiceView> {
    (0..SERVICES)
        .map(|s| ServiceView {
            name: format!("svc{s:03}"),
            grpc_services: vec![format!("bench.svc{s:03}.v1.Svc")],
            idempotent_grpc_methods: vec![format!("/bench.svc{s:03}.v1.Svc/Get")],
            endpoints: (0..ENDPOINTS)
                .map(|e| EndpointView {
                    node: format!("node{e:03}"),
                    addr: format!(
                        "127.{}.{}.{}:{}",
                        s + 1,
                        e / 250,
                        e % 250 + 1,
                        if s == 50 && e == 0 {
                            changed_port
                        } else {
                            8080
                        }
                    )
                    .parse()
                    .unwrap(),
                    healthy: true,
                })
                .collect(),
        })
        .collect()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What the clients of the child process share.
struct Shared {
    synced: AtomicUsize,
    /// Stdout: one line per event (`synced` once, `acked <version>`).
    out: Mutex<std::io::Stdout>,
}

impl Shared {
    fn say(&self, line: &str) {
        use std::io::Write;
        let mut out = self.out.lock().unwrap();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn request(type_url: &str, names: &[String], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.to_vec(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: "bench-client".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One simulated client: subscribes to everything, ACKs every response.
async fn client(channel: tonic::transport::Channel, shared: Arc<Shared>) {
    let (tx, rx) = mpsc::channel(8);
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let responses = ads
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    follow(tx, responses, shared).await;
}

/// Subscribes to every type on `tx` and ACKs each of `responses`.
async fn follow(
    tx: mpsc::Sender<DiscoveryRequest>,
    mut responses: tonic::Streaming<DiscoveryResponse>,
    shared: Arc<Shared>,
) {
    let endpoints: Vec<String> = (0..SERVICES).map(|s| format!("svc{s:03}")).collect();
    let routes = vec![INGRESS_ROUTES.to_string()];
    let names = |t: &str| -> Vec<String> {
        match t {
            ENDPOINT => endpoints.clone(),
            ROUTE => routes.clone(),
            _ => Vec::new(),
        }
    };
    for t in [CLUSTER, LISTENER, ENDPOINT, ROUTE] {
        tx.send(request(t, &names(t), "", "")).await.unwrap();
    }
    // Per type: the resources received so far, and how many make it whole
    // (endpoints and routes come in pieces; each piece is a response of its
    // own, ACKed on its own).
    let mut received: std::collections::BTreeMap<String, usize> = Default::default();
    let whole = |t: &str| match t {
        ENDPOINT => SERVICES,
        _ => 1,
    };
    let mut synced = false;
    while let Ok(Some(r)) = responses.message().await {
        let (type_url, version, nonce) = (&r.type_url, &r.version_info, &r.nonce);
        let mut ack = request(type_url, &names(type_url), version, nonce);
        // Like Envoy, the node goes with the first request only.
        ack.node = None;
        tx.send(ack).await.unwrap();
        *received.entry(type_url.to_owned()).or_default() += r.resources.len();
        // Synced once every type is whole here and its last piece ACKed.
        if !synced
            && [CLUSTER, LISTENER, ENDPOINT, ROUTE]
                .iter()
                .all(|t| received.get(*t).is_some_and(|n| *n >= whole(t)))
        {
            synced = true;
            if shared.synced.fetch_add(1, Ordering::Relaxed) + 1 == shared_total() {
                shared.say("synced");
            }
        }
        if type_url == ENDPOINT && synced {
            shared.say(&format!("acked {version}"));
        }
    }
}

/// How many streams the client process opens.
fn shared_total() -> usize {
    std::env::var("BENCH_STREAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000)
}

/// Client mode: opens the streams against `addr` and reports on stdout.
async fn clients(addr: String, streams: usize) {
    let shared = Arc::new(Shared {
        synced: AtomicUsize::new(0),
        out: Mutex::new(std::io::stdout()),
    });
    let mut tasks = Vec::new();
    for c in 0..streams.div_ceil(STREAMS_PER_CONNECTION) {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let n = STREAMS_PER_CONNECTION.min(streams - c * STREAMS_PER_CONNECTION);
        for _ in 0..n {
            tasks.push(tokio::spawn(client(channel.clone(), shared.clone())));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn main() {
    let streams = shared_total();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(addr) = std::env::var("BENCH_XDS_SERVER") {
        rt.block_on(clients(addr, streams));
        return;
    }
    println!("Machine: {}", common::machine());
    println!(
        "{streams} ADS streams ({STREAMS_PER_CONNECTION} per connection), {SERVICES} services × {ENDPOINTS} endpoints\n"
    );
    rt.block_on(async move {
        let ingress = Some("127.0.0.1:10000".parse().unwrap());
        let first = Arc::new(Snapshot::build(&services(8080), ingress));
        let (snapshots, rx) = watch::channel(first);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(flotilla::edge::server::serve(
            listener,
            flotilla::catalogue::grpc_router(Ads::service(rx, Clients::default())),
            stop.clone(),
            flotilla::edge::server::ServeOptions {
                h2_send_buffer: flotilla::xds::server::SEND_BUFFER,
                ..flotilla::edge::server::ServeOptions::new(
                    "xds",
                    flotilla::edge::server::ListenerLimits::XDS,
                    Duration::from_secs(1),
                )
            },
        ));
        let rss0 = rss_kib();
        let server_cpu0 = common::cpu_time(&[std::process::id()]);
        let started = Instant::now();
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .env("BENCH_XDS_SERVER", addr.to_string())
            .env("BENCH_STREAMS", streams.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the client process starts");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stdout.take().unwrap(),
        ));
        let wait = Duration::from_secs(600);
        loop {
            let line = tokio::time::timeout(wait, lines.next_line())
                .await
                .expect("the clients sync within 600 s")
                .unwrap()
                .expect("the client process keeps running");
            if line == "synced" {
                break;
            }
        }
        let synced_in = started.elapsed();
        let server_cpu = common::cpu_time(&[std::process::id()]) - server_cpu0;
        let client_cpu = child.id().map_or(Duration::ZERO, |pid| common::cpu_time(&[pid]));
        // Let the first pushes' buffers go before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss1 = rss_kib();

        let second = Snapshot::build(&services(9090), ingress);
        let target = version(second.of(ENDPOINT).unwrap().values());
        let t0 = Instant::now();
        snapshots.send_replace(Arc::new(second));
        let mut acked = Vec::with_capacity(streams);
        while acked.len() < streams {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("the change is ACKed by all within 60 s")
                .unwrap()
                .expect("the client process keeps running");
            if line == format!("acked {target}") {
                acked.push(t0.elapsed());
            }
        }
        let rss2 = rss_kib();
        acked.sort_unstable();
        let pct = |p: f64| acked[((acked.len() as f64 * p) as usize).min(acked.len() - 1)];
        println!(
            "| streams | server RSS before | with streams | per stream | after the change | first sync of all | its CPU: server | clients | change ACKed: p50 | p99 | all |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {streams} | {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.1} MiB | {:.1} s | {:.1} s | {:.1} s | {:.0} ms | {:.0} ms | {:.0} ms |",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            (rss1.saturating_sub(rss0)) as f64 / streams as f64,
            rss2 as f64 / 1024.0,
            synced_in.as_secs_f64(),
            server_cpu.as_secs_f64(),
            client_cpu.as_secs_f64(),
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            acked[acked.len() - 1].as_secs_f64() * 1e3,
        );
        stop.cancel();
        let _ = child.kill().await;
    });
}
