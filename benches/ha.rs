//! HA benchmark (issue 4): flotilla's 3-node cluster beside a 3-node etcd
//! 3.4 cluster, both on loopback, in one run.
//!
//!     scripts/bench-ha                     # installs etcd-server if needed
//!     BENCH_SECONDS=10 scripts/bench-ha
//!     BENCH_FAILOVER=0 scripts/bench-ha    # throughput only
//!     BENCH_ROUNDS=5 scripts/bench-ha      # alternate 5 rounds, report medians
//!     BENCH_CLIENTS=64 scripts/bench-ha    # only these concurrency levels
//!     BENCH_TLS=compare scripts/bench-ha   # flotilla with mutual TLS between
//!                                          # nodes (the default) beside
//!                                          # flotilla with `tls: off`, no etcd
//!
//!     BENCH_ETCD_TIMEOUTS=flotilla scripts/bench-ha  # etcd with flotilla's
//!                                          # heartbeat and election timeout
//!
//! Same workload for both, through each system's native gRPC API with the
//! same connections: one HTTP/2 connection per member, the clients' writes
//! spread over the three (flotilla: `flotilla.kv.v1.Kv/Put`; etcd:
//! `etcdserverpb.KV/Put`, the two messages it takes declared here with
//! prost). Distinct keys, ~32-byte values, each write acknowledged only once
//! committed on a quorum (flotilla: Raft log fsynced on a majority; etcd: its
//! default, WAL fsynced on a majority), at 1, 16 and 64 concurrent clients.
//! Then failover: kill -9 of the leader → first acknowledged write through a
//! survivor, median of 10 trials (`BENCH_FAILOVER_TRIALS`) for each, the
//! trials alternating which system goes first, writes sent in attempts of
//! 100 ms (`BENCH_FAILOVER_ATTEMPT_MS`: a system that drops a write sent
//! while it has no leader answers at the attempt's end, so its figures
//! fall on that grid); with each system's default
//! timeouts, or (`BENCH_ETCD_TIMEOUTS=flotilla`) etcd given flotilla's
//! election timeout (200 ms, the lower end of flotilla's 200–400 ms) and a
//! 40 ms heartbeat (flotilla's is 50 ms; etcd wants five heartbeats per
//! election timeout), so that the mechanism is compared, not the setting.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

#[path = "common/mod.rs"]
mod common;
use common::{cpu_time, create_admin, free_addr, load, login, machine, ready};
use tonic::transport::Channel;

const VALUE: &str = "0123456789abcdef0123456789abcdef";

/// The two messages of etcd's v3 API the benchmark sends and reads
/// (`etcdserverpb.PutRequest`, `PutResponse`; fields it does not use are
/// left out, and skipped when decoding).
mod etcd_api {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {}
}

trait Cluster {
    fn name(&self) -> &'static str;
    /// How to send writes to the members (cheap to clone into clients).
    fn target(&self) -> Target;
    fn leader(&self) -> usize;
    /// The members' process ids.
    fn pids(&self) -> Vec<u32>;
    fn kill(&mut self, i: usize);
    fn restart(&mut self, i: usize);
    fn stop(&mut self);
}

struct Flotilla {
    name: &'static str,
    binary: String,
    dir: tempfile::TempDir,
    configs: Vec<PathBuf>,
    public: Vec<SocketAddr>,
    admin: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
    token: String,
}

impl Flotilla {
    /// Three members; `extra` goes into each one's `cluster:` section.
    fn start(binary: &str, name: &'static str, extra: &str) -> Flotilla {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<(SocketAddr, SocketAddr, SocketAddr)> = (0..3)
            .map(|_| (free_addr(), free_addr(), free_addr()))
            .collect();
        let topology = dir.path().join("topology.yaml");
        let mut text = String::from("members:\n");
        for (i, (public, _, peer)) in members.iter().enumerate() {
            text.push_str(&format!(
                "  - {{id: {}, node: b-{}, peer: '{peer}', public: '{public}'}}\n",
                i + 1,
                i + 1
            ));
        }
        std::fs::write(&topology, text).unwrap();
        let mut configs = Vec::new();
        for (i, (public, admin, peer)) in members.iter().enumerate() {
            let path = dir.path().join(format!("node{i}.yaml"));
            std::fs::write(
                &path,
                format!(
                    "node: {{id: b-{n}}}\nservices: [all]\nlisteners: {{public: '{public}', admin: '{admin}', peer: '{peer}', xds: '{}'}}\ndata_dir: '{}'\nlog: {{level: warn}}\nauth: {{secret: 'bench-secret-5c1e9a7f3b2d8e6a4c0f'}}\ncluster: {{topology: '{}', secret: 'bench-cluster-secret-9e8d7c6b5a4f3e2d1c0b', bootstrap: true{extra}}}\n",
                    free_addr(),
                    dir.path().join(format!("data{i}")).display(),
                    topology.display(),
                    n = i + 1
                ),
            )
            .unwrap();
            configs.push(path);
        }
        let mut c = Flotilla {
            name,
            binary: binary.to_owned(),
            dir,
            configs,
            public: members.iter().map(|m| m.0).collect(),
            admin: members.iter().map(|m| m.1).collect(),
            children: vec![None, None, None],
            token: String::new(),
        };
        for i in 0..3 {
            c.spawn(i);
        }
        for i in 0..3 {
            c.wait_ready(i);
        }
        create_admin(binary, &c.configs[0]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        c.token = rt.block_on(login(c.public[0]));
        c
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.path().join(format!("node{i}.log"))).unwrap();
        self.children[i] = Some(
            Command::new(&self.binary)
                .args(["serve", "--config", self.configs[i].to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(self.admin[i]) {
            assert!(Instant::now() < deadline, "flotilla member {i} not ready");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn blocking_json(url: &str, body: Option<&str>) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut s =
        std::net::TcpStream::connect_timeout(&host.parse().ok()?, Duration::from_millis(300))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let request = match body {
        Some(b) => format!(
            "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        ),
        None => format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    };
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let body = out.split_once("\r\n\r\n")?.1;
    // Tolerate chunked encoding by taking the JSON object.
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    serde_json::from_str(&body[start..=end]).ok()
}

impl Cluster for Flotilla {
    fn name(&self) -> &'static str {
        self.name
    }

    fn target(&self) -> Target {
        Target::Flotilla {
            public: self.public.clone(),
            bearer: format!("Bearer {}", self.token).into(),
        }
    }

    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in 0..3 {
                if self.children[i].is_some()
                    && let Some(s) =
                        blocking_json(&format!("http://{}/status", self.admin[i]), None)
                    && s["cluster"]["role"] == "Leader"
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "flotilla has no leader");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i);
    }

    fn stop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

struct Etcd {
    dir: tempfile::TempDir,
    client: Vec<SocketAddr>,
    peer: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
    /// Given flotilla's heartbeat and election timeout rather than etcd's
    /// defaults (100 ms, 1,000 ms).
    flotilla_timeouts: bool,
}

/// The lower end of flotilla's election timeout (`cluster.election_timeout_ms`
/// 200–400), and a heartbeat for etcd near flotilla's 50 ms
/// (`cluster.heartbeat_ms`): etcd wants an election timeout of at least
/// five heartbeats, so 40 ms. In ms.
const FLOTILLA_HEARTBEAT_MS: u64 = 40;
const FLOTILLA_ELECTION_MS: u64 = 200;

impl Etcd {
    fn start() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Etcd {
            dir,
            client: (0..3).map(|_| free_addr()).collect(),
            peer: (0..3).map(|_| free_addr()).collect(),
            children: vec![None, None, None],
            flotilla_timeouts: std::env::var("BENCH_ETCD_TIMEOUTS").is_ok_and(|v| v == "flotilla"),
        };
        for i in 0..3 {
            e.spawn(i, "new");
        }
        e.wait_healthy();
        e
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let cluster: Vec<String> = (0..3)
            .map(|j| format!("e{j}=http://{}", self.peer[j]))
            .collect();
        let log = std::fs::File::create(self.dir.path().join(format!("etcd{i}.log"))).unwrap();
        self.children[i] = Some(
            Command::new("etcd")
                .args([
                    "--name",
                    &format!("e{i}"),
                    "--data-dir",
                    &self.dir.path().join(format!("e{i}")).to_string_lossy(),
                    "--listen-client-urls",
                    &format!("http://{}", self.client[i]),
                    "--advertise-client-urls",
                    &format!("http://{}", self.client[i]),
                    "--listen-peer-urls",
                    &format!("http://{}", self.peer[i]),
                    "--initial-advertise-peer-urls",
                    &format!("http://{}", self.peer[i]),
                    "--initial-cluster",
                    &cluster.join(","),
                    "--initial-cluster-state",
                    state,
                    "--initial-cluster-token",
                    "bench",
                ])
                .args(if self.flotilla_timeouts {
                    vec![
                        "--heartbeat-interval".to_owned(),
                        FLOTILLA_HEARTBEAT_MS.to_string(),
                        "--election-timeout".to_owned(),
                        FLOTILLA_ELECTION_MS.to_string(),
                    ]
                } else {
                    Vec::new()
                })
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd is not installed: run scripts/install-etcd"),
        );
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = (0..3).filter(|i| self.children[*i].is_some()).all(|i| {
                blocking_json(&format!("http://{}/health", self.client[i]), None)
                    .is_some_and(|h| h["health"] == "true")
            });
            if healthy {
                return;
            }
            assert!(Instant::now() < deadline, "etcd not healthy");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Cluster for Etcd {
    fn name(&self) -> &'static str {
        if self.flotilla_timeouts {
            "etcd 3.4 (flotilla's timeouts)"
        } else {
            "etcd 3.4"
        }
    }

    fn target(&self) -> Target {
        Target::Etcd {
            client: self.client.clone(),
        }
    }

    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in 0..3 {
                if self.children[i].is_some()
                    && let Some(s) = blocking_json(
                        &format!("http://{}/v3/maintenance/status", self.client[i]),
                        Some("{}"),
                    )
                    && s["leader"].is_string()
                    && s["leader"] == s["header"]["member_id"]
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "etcd has no leader");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
        self.wait_healthy();
    }

    fn stop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

#[derive(Clone)]
enum Target {
    Flotilla {
        public: Vec<SocketAddr>,
        bearer: std::sync::Arc<str>,
    },
    Etcd {
        client: Vec<SocketAddr>,
    },
}

impl Target {
    fn members(&self) -> &[SocketAddr] {
        match self {
            Target::Flotilla { public, .. } => public,
            Target::Etcd { client } => client,
        }
    }

    /// One HTTP/2 connection per member, each call given `timeout`.
    fn channels(&self, timeout: Duration) -> Vec<Channel> {
        self.members()
            .iter()
            .map(|a| {
                tonic::transport::Endpoint::from_shared(format!("http://{a}"))
                    .unwrap()
                    .tcp_nodelay(true)
                    .timeout(timeout)
                    .connect_lazy()
            })
            .collect()
    }

    /// A write of `key` over `channel`, through the system's native gRPC
    /// API; whether it was acknowledged.
    async fn put(&self, channel: &Channel, key: String) -> bool {
        match self {
            Target::Flotilla { bearer, .. } => {
                let mut request = tonic::Request::new(flotilla::proto::kv::PutRequest {
                    key,
                    value: VALUE.into(),
                    owner: String::new(),
                });
                request.metadata_mut().insert(
                    "authorization",
                    bearer.parse().expect("a bearer token is ASCII"),
                );
                flotilla::proto::kv::kv_client::KvClient::new(channel.clone())
                    .put(request)
                    .await
                    .is_ok()
            }
            Target::Etcd { .. } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                if grpc.ready().await.is_err() {
                    return false;
                }
                let request = tonic::Request::new(etcd_api::PutRequest {
                    key: key.into_bytes(),
                    value: VALUE.as_bytes().to_vec(),
                });
                let call: Result<tonic::Response<etcd_api::PutResponse>, _> = grpc
                    .unary(
                        request,
                        http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put"),
                        tonic_prost::ProstCodec::default(),
                    )
                    .await;
                call.is_ok()
            }
        }
    }
}

fn throughput(
    rt: &tokio::runtime::Runtime,
    target: Target,
    clients: usize,
    duration: Duration,
    tag: &str,
) -> common::Figures {
    let tag = tag.to_owned();
    rt.block_on(async move {
        let channels = std::sync::Arc::new(target.channels(Duration::from_secs(10)));
        let target = std::sync::Arc::new(target);
        load(clients, duration, move |client_id, i| {
            let (target, channels) = (target.clone(), channels.clone());
            let key = format!("{tag}/{client_id}/{i}");
            async move {
                let channel = &channels[(client_id + i as usize) % channels.len()];
                target.put(channel, key).await
            }
        })
        .await
    })
}

/// kill -9 of the leader → first acknowledged write through a survivor.
fn failover(rt: &tokio::runtime::Runtime, c: &mut dyn Cluster, trial: usize) -> Duration {
    let leader = c.leader();
    let survivor = (leader + 1) % 3;
    let target = c.target();
    // Short attempts, retried: the figure is the systems' recovery, not a
    // client timeout (a write sent to the dead leader is never answered).
    let attempt = Duration::from_millis(
        std::env::var("BENCH_FAILOVER_ATTEMPT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
    );
    let channel = rt.block_on(async { target.channels(attempt)[survivor].clone() });
    c.kill(leader);
    let killed = Instant::now();
    let elapsed = rt.block_on(async {
        let mut i = 0u64;
        loop {
            if target.put(&channel, format!("failover/{trial}/{i}")).await {
                return killed.elapsed();
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "{}: no write accepted after the kill",
                c.name()
            );
            i += 1;
        }
    });
    c.restart(leader);
    elapsed
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let binary = env!("CARGO_BIN_EXE_flotilla");
    println!("Machine: {}", machine());
    println!(
        "Each throughput run: {seconds} s, distinct keys, writes spread over the 3 members, loopback.\n"
    );

    // The two systems side by side: flotilla and etcd, or flotilla with and
    // without TLS between its nodes.
    let tls = std::env::var("BENCH_TLS").is_ok_and(|v| v == "compare");
    let (mut flotilla, mut etcd): (Box<dyn Cluster>, Box<dyn Cluster>) = if tls {
        (
            Box::new(Flotilla::start(binary, "flotilla (mTLS)", "")),
            Box::new(Flotilla::start(binary, "flotilla (tls: off)", ", tls: off")),
        )
    } else {
        (
            Box::new(Flotilla::start(binary, "flotilla", "")),
            Box::new(Etcd::start()),
        )
    };
    let names = [flotilla.name(), etcd.name()];
    println!(
        "| system | clients | writes/s | p50 ms | p99 ms | errors | members' CPU µs/write | load generator's | other cluster's (idle) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    // Rounds alternate the two systems, so that a noisy stretch of the
    // shared machine does not land on one of them only; the tables show
    // the median round of each.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut at64 = Vec::new();
    let mut ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    let levels: Vec<usize> = std::env::var("BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("BENCH_CLIENTS: numbers separated by commas")
        })
        .collect();
    for clients in levels {
        // Each run with the CPU time used per write by the cluster's three
        // members, by the load generator, and by the other (idle) cluster.
        let mut runs: [Vec<(common::Figures, [f64; 3])>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let systems = [&*flotilla, &*etcd];
            for i in 0..2 {
                let tag = format!("t{clients}r{round}");
                let pids = [
                    systems[i].pids(),
                    vec![std::process::id()],
                    systems[1 - i].pids(),
                ];
                let before = pids.clone().map(|p| cpu_time(&p));
                let f = throughput(&rt, systems[i].target(), clients, duration, &tag);
                let mut cpu = [0.0; 3];
                for (k, p) in pids.iter().enumerate() {
                    cpu[k] = (cpu_time(p) - before[k]).as_secs_f64() * 1e6 / f.ops.max(1) as f64;
                }
                runs[i].push((f, cpu));
            }
            if clients == 64 {
                ratios.push(runs[0][round].0.rate() / runs[1][round].0.rate());
                cpu_ratios.push(runs[0][round].1[0] / runs[1][round].1[0]);
            }
        }
        for (i, name) in names.into_iter().enumerate() {
            runs[i].sort_by(|a, b| a.0.rate().total_cmp(&b.0.rate()));
            let (f, [members, generator, other]) = &runs[i][runs[i].len() / 2];
            println!(
                "| {name} | {clients} | {:.0} | {:.2} | {:.2} | {} | {members:.0} | {generator:.0} | {other:.0} |",
                f.rate(),
                f.pct(0.5).as_secs_f64() * 1e3,
                f.pct(0.99).as_secs_f64() * 1e3,
                f.errors
            );
            if clients == 64 {
                at64.push(f.rate());
            }
        }
    }
    if rounds > 1 {
        let list = |v: &[f64]| -> String {
            v.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "\n{} / {} at 64 clients, round by round: writes/s {}; members' CPU per write {}\n",
            names[0],
            names[1],
            list(&ratios),
            list(&cpu_ratios)
        );
    }
    println!();
    if let [a, b] = at64[..] {
        println!(
            "Ratio ({} / {}): writes/s at 64 clients {:.2}",
            names[0],
            names[1],
            a / b
        );
    }
    if tls || std::env::var("BENCH_FAILOVER").is_ok_and(|v| v == "0") {
        flotilla.stop();
        etcd.stop();
        return;
    }
    println!("| system | failover median | min | max | trials |");
    println!("|---|---:|---:|---:|---:|");
    // The trials alternate which system goes first.
    let trials: usize = std::env::var("BENCH_FAILOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut seen: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for t in 0..trials {
        let order = if t % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let c: &mut dyn Cluster = if i == 0 { &mut *flotilla } else { &mut *etcd };
            seen[i].push(failover(&rt, c, t));
        }
    }
    let mut medians = Vec::new();
    let mut every = Vec::new();
    for (c, mut times) in [&*flotilla, &*etcd].into_iter().zip(seen) {
        times.sort_unstable();
        every.push(format!(
            "{}: {}",
            c.name(),
            times
                .iter()
                .map(|t| format!("{:.0}", t.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let median = times[times.len() / 2];
        medians.push(median);
        println!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {} |",
            c.name(),
            median.as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
            times.len()
        );
    }
    println!("\nEvery trial, ms: {}", every.join("; "));
    println!();
    println!(
        "Ratio (flotilla / etcd): failover median {:.2}",
        medians[0].as_secs_f64() / medians[1].as_secs_f64()
    );
    flotilla.stop();
    etcd.stop();
}
