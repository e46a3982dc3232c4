//! Scaled-mode benchmark (issue 6): the same request mix through (a) Envoy
//! with the config `gen-envoy --mode scaled` writes, (b) the built-in
//! ingress forwarding, (c) straight to the hosting node, side by side in
//! one run, against one 9-node cluster on loopback.
//!
//!     scripts/bench-scaled                   # installs Envoy if needed
//!     BENCH_SECONDS=10 scripts/bench-scaled
//!     BENCH_TLS=compare BENCH_ROUNDS=5 scripts/bench-scaled
//!
//! The cluster has TLS between nodes (no `cluster.tls` in its configs), so
//! forwarding goes over TLS, and Envoy reaches the nodes over TLS
//! (`gen-envoy --upstream-tls`). `BENCH_TLS=compare` runs two clusters side
//! by side instead, one of them with `cluster.tls: off` and a plaintext
//! Envoy, and compares paths (a) and (b) of the two, alternating which
//! goes first over the rounds.
//!
//! The mix, in turn per client: echo over HTTP (POST /api/echo), echo over
//! gRPC, a kv read (GET, authenticated) and a kv write (PUT,
//! authenticated, durable on a quorum of the db members). For (b) the
//! requests go to the two accounts nodes, which run neither echo nor kv,
//! so every one is forwarded; for (c) echo goes to the echo nodes and kv to
//! the kv nodes. Everything (nine nodes, Envoy, the load) shares the
//! machine's cores.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use flotilla::proto::echo::{EchoRequest, echo_client::EchoClient};

#[path = "common/mod.rs"]
mod common;
use common::{BenchCluster, Figures, client, create_admin, free_addr, load, login, machine};

const CLIENTS: usize = 32;

#[path = "../tests/common/scaled_layout.rs"]
mod scaled_layout;
use scaled_layout::LAYOUT;

/// The scaled layout as a bench cluster.
fn start_cluster(binary: &str, tls: bool) -> BenchCluster {
    let layout: Vec<(String, String, bool)> = LAYOUT
        .iter()
        .map(|(n, s, db)| (n.to_string(), s.to_string(), *db))
        .collect();
    BenchCluster::start(binary, &layout, if tls { "" } else { ", tls: off" })
}

struct Envoy(Child);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn envoy_binary() -> PathBuf {
    std::env::var_os("FLOTILLA_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy"))
}

/// Where each kind of request goes, for one client.
#[derive(Clone, Copy)]
struct Targets {
    echo: SocketAddr,
    kv: SocketAddr,
}

async fn mix(
    targets: Arc<Vec<Targets>>,
    channels: Arc<Vec<(tonic::transport::Channel, tonic::transport::Channel)>>,
    http: reqwest::Client,
    token: Arc<str>,
    seconds: u64,
) -> Figures {
    load(CLIENTS, Duration::from_secs(seconds), move |c, i| {
        let t = targets[c % targets.len()];
        let echo_channel = channels[c % channels.len()].0.clone();
        let http = http.clone();
        let token = token.clone();
        async move {
            match i % 4 {
                0 => http
                    .post(format!("http://{}/api/echo", t.echo))
                    .json(&serde_json::json!({"message": "bench"}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                1 => EchoClient::new(echo_channel)
                    .echo(EchoRequest {
                        message: "bench".into(),
                    })
                    .await
                    .is_ok(),
                2 => http
                    .get(format!("http://{}/api/kv/keys/read-{}", t.kv, c % 8))
                    .bearer_auth(&*token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                _ => http
                    .put(format!("http://{}/api/kv/keys/w-{c}-{i}", t.kv))
                    .bearer_auth(&*token)
                    .json(&serde_json::json!({"value": "0123456789abcdef"}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
            }
        }
    })
    .await
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}

/// One cluster with its Envoy in front, the admin logged in and the keys
/// the reads read written.
struct Setup {
    cluster: BenchCluster,
    _envoy: Envoy,
    /// Envoy's ingress listener.
    listen: SocketAddr,
    token: Arc<str>,
}

impl Setup {
    /// With `tls`, TLS between nodes (the default) and Envoy reaching the
    /// nodes over TLS (`gen-envoy --upstream-tls`, with the certificate
    /// `flotilla ca issue --envoy` writes); otherwise both plaintext.
    fn start(binary: &str, rt: &tokio::runtime::Runtime, tls: bool) -> Setup {
        let envoy = envoy_binary();
        assert!(
            envoy.exists(),
            "Envoy is not at {}: run scripts/install-test-tools",
            envoy.display()
        );
        let cluster = start_cluster(binary, tls);
        create_admin(binary, &cluster.db1_config);
        let (listen, admin) = (free_addr(), free_addr());
        let mut generate = Command::new(binary);
        generate
            .args(["gen-envoy", "--mode", "scaled", "--topology"])
            .arg(&cluster.topology)
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ]);
        if tls {
            let dir = cluster.dir.path().join("envoy-tls");
            let issued = Command::new(binary)
                .args(["ca", "issue", "--envoy", "bench", "--config"])
                .arg(&cluster.db1_config)
                .arg("--out")
                .arg(&dir)
                .output()
                .unwrap();
            assert!(issued.status.success(), "ca issue failed");
            generate.arg("--upstream-tls").arg(&dir);
        }
        let generated = generate.output().unwrap();
        assert!(generated.status.success(), "gen-envoy failed");
        let envoy_config = cluster.dir.path().join("envoy.yaml");
        std::fs::write(&envoy_config, &generated.stdout).unwrap();
        let envoy_log = std::fs::File::create(cluster.dir.path().join("envoy.log")).unwrap();
        let envoy = Envoy(
            Command::new(&envoy)
                .args([
                    "-c",
                    envoy_config.to_str().unwrap(),
                    "--disable-hot-restart",
                ])
                .args(["-l", "warning"])
                .stdout(Stdio::null())
                .stderr(envoy_log)
                .spawn()
                .unwrap(),
        );
        let token: Arc<str> = rt.block_on(async {
            let token: Arc<str> = Arc::from(login(cluster.public("accounts-1")).await);
            let http = client();
            for k in 0..8 {
                let r = http
                    .put(format!(
                        "http://{}/api/kv/keys/read-{k}",
                        cluster.public("kv-1")
                    ))
                    .bearer_auth(&*token)
                    .json(&serde_json::json!({"value": "0123456789abcdef"}))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
            }
            // Envoy routes once its health checks pass.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ok = http
                    .get(format!("http://{listen}/api/kv/keys/read-0"))
                    .bearer_auth(&*token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "Envoy never routed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            token
        });
        Setup {
            cluster,
            _envoy: envoy,
            listen,
            token,
        }
    }

    /// The targets of each path: (a) Envoy, (b) the two accounts nodes,
    /// which forward everything, (c) the hosting nodes.
    fn paths(&self) -> [(&'static str, Vec<Targets>); 3] {
        let cluster = &self.cluster;
        [
            (
                "(a) Envoy, gen-envoy --mode scaled",
                vec![Targets {
                    echo: self.listen,
                    kv: self.listen,
                }],
            ),
            (
                "(b) built-in ingress forwarding",
                ["accounts-1", "accounts-2"]
                    .iter()
                    .map(|n| Targets {
                        echo: cluster.public(n),
                        kv: cluster.public(n),
                    })
                    .collect(),
            ),
            (
                "(c) straight to the hosting node",
                [("echo-1", "kv-1"), ("echo-2", "kv-2")]
                    .iter()
                    .map(|(e, k)| Targets {
                        echo: cluster.public(e),
                        kv: cluster.public(k),
                    })
                    .collect(),
            ),
        ]
    }

    /// The mix through `targets` for `seconds`.
    async fn run(&self, targets: Vec<Targets>, seconds: u64) -> Figures {
        let mut channels = Vec::new();
        for t in &targets {
            channels.push((channel(t.echo).await, channel(t.kv).await));
        }
        mix(
            Arc::new(targets),
            Arc::new(channels),
            client(),
            self.token.clone(),
            seconds,
        )
        .await
    }
}

/// One path's figures in one round: requests/s, p50 and p99 in ms, errors.
type Round = (f64, f64, f64, usize);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let binary = env!("CARGO_BIN_EXE_flotilla");
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var("BENCH_TLS").is_ok_and(|v| v == "compare") {
        let rounds: usize = std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        compare_tls(binary, &rt, seconds, rounds);
        return;
    }
    let setup = Setup::start(binary, &rt, true);
    println!("machine: {}", machine());
    println!(
        "{CLIENTS} clients, {seconds} s per path; mix: echo HTTP, echo gRPC, kv read, kv write (in turn); TLS between nodes and from Envoy to the nodes\n"
    );
    println!("| path | requests/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|");
    let mut rates = Vec::new();
    for (name, targets) in setup.paths() {
        let figures = rt.block_on(setup.run(targets, seconds));
        println!("{}", figures.row(name));
        rates.push((figures.rate(), figures.pct(0.99)));
    }
    println!(
        "\nbuilt-in / Envoy: throughput {:.2}x, p99 {:.2}x (lower is better)",
        rates[1].0 / rates[0].0,
        rates[1].1.as_secs_f64() / rates[0].1.as_secs_f64()
    );
}

/// Two clusters side by side, one with TLS between nodes (and Envoy to the
/// nodes over TLS), one with `tls: off`: Envoy's path and the forwarding
/// path of each, `rounds` rounds alternating which cluster goes first.
fn compare_tls(binary: &str, rt: &tokio::runtime::Runtime, seconds: u64, rounds: usize) {
    let setups = [
        ("TLS", Setup::start(binary, rt, true)),
        ("tls: off", Setup::start(binary, rt, false)),
    ];
    println!("machine: {}", machine());
    println!(
        "{CLIENTS} clients, {seconds} s per path and cluster, {rounds} rounds alternating which cluster goes first; mix: echo HTTP, echo gRPC, kv read, kv write (in turn)\n"
    );
    // [cluster][path]: each round's figures.
    let mut seen: Vec<Vec<Vec<Round>>> = vec![vec![Vec::new(); 2]; 2];
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for c in order {
            let setup = &setups[c].1;
            for (p, (_, targets)) in setup.paths().into_iter().take(2).enumerate() {
                let f = rt.block_on(setup.run(targets, seconds));
                seen[c][p].push((
                    f.rate(),
                    f.pct(0.50).as_secs_f64() * 1e3,
                    f.pct(0.99).as_secs_f64() * 1e3,
                    f.errors,
                ));
            }
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    println!("| cluster | path | requests/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---:|---:|---:|---:|");
    let paths = setups[0].1.paths();
    for (p, (path, _)) in paths.iter().take(2).enumerate() {
        for (c, (cluster, _)) in setups.iter().enumerate() {
            let runs = &seen[c][p];
            println!(
                "| {cluster} | {path} | {:.0} | {:.2} | {:.2} | {} |",
                median(runs.iter().map(|r| r.0).collect()),
                median(runs.iter().map(|r| r.1).collect()),
                median(runs.iter().map(|r| r.2).collect()),
                runs.iter().map(|r| r.3).sum::<usize>(),
            );
        }
    }
    println!();
    for (p, (path, _)) in paths.iter().take(2).enumerate() {
        let ratios: Vec<f64> = seen[0][p]
            .iter()
            .zip(&seen[1][p])
            .map(|(t, o)| t.0 / o.0)
            .collect();
        let p99: Vec<f64> = seen[0][p]
            .iter()
            .zip(&seen[1][p])
            .map(|(t, o)| t.2 / o.2)
            .collect();
        println!(
            "{path}: TLS / off throughput {:.2} (medians), round by round {:?}; p99 round by round {:?}",
            median(seen[0][p].iter().map(|r| r.0).collect())
                / median(seen[1][p].iter().map(|r| r.0).collect()),
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>(),
            p99.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>(),
        );
    }
}
