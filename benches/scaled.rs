//! Scaled-mode benchmark (issue 6): the same request mix through (a) Envoy
//! with the config `gen-envoy --mode scaled` writes, (b) the built-in
//! ingress forwarding, (c) straight to the hosting node, side by side in
//! one run, against one 9-node cluster on loopback.
//!
//!     scripts/bench-scaled                   # installs Envoy if needed
//!     BENCH_SECONDS=10 scripts/bench-scaled
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
use common::{Figures, client, create_admin, free_addr, load, login, machine, ready};

const CLIENTS: usize = 32;

#[path = "../tests/common/scaled_layout.rs"]
mod scaled_layout;
use scaled_layout::LAYOUT;

struct Cluster {
    children: Vec<Child>,
    public: Vec<(&'static str, SocketAddr)>,
    topology: PathBuf,
    db1_config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(binary: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let topology = dir.path().join("topology.yaml");
        let mut members = String::from("members:\n");
        let mut nodes = String::from("nodes:\n");
        let mut addrs = Vec::new();
        for (i, (name, services, db)) in LAYOUT.iter().enumerate() {
            let (public, admin, peer) = (free_addr(), free_addr(), free_addr());
            addrs.push((public, admin, peer));
            if *db {
                members.push_str(&format!("  - {{id: {}, node: {name}, peer: '{peer}', public: '{public}', services: [{services}]}}\n", i + 1));
            } else {
                nodes.push_str(&format!(
                    "  - {{node: {name}, public: '{public}', services: [{services}]}}\n"
                ));
            }
        }
        std::fs::write(&topology, members + &nodes).unwrap();
        let mut configs = Vec::new();
        for (i, (name, services, db)) in LAYOUT.iter().enumerate() {
            let (public, admin, peer) = addrs[i];
            let (peer, cluster) = if *db {
                (
                    format!(", peer: '{peer}'"),
                    "secret: 'bench-cluster-secret-9e8d7c6b5a4f3e2d1c0b', bootstrap: true"
                        .to_owned(),
                )
            } else {
                let key = Command::new(binary)
                    .args(["cluster", "client-key", "--config"])
                    .arg(&configs[0])
                    .args(["--node", name])
                    .output()
                    .unwrap();
                assert!(key.status.success(), "client-key for {name}");
                let key = String::from_utf8(key.stdout).unwrap();
                (String::new(), format!("client_key: '{}'", key.trim()))
            };
            let path = dir.path().join(format!("{name}.yaml"));
            std::fs::write(
                &path,
                format!(
                    "node: {{id: {name}}}\nservices: [{services}]\nlisteners: {{public: '{public}', admin: '{admin}'{peer}}}\ndata_dir: '{}'\nlog: {{level: warn}}\nauth: {{secret: 'bench-secret-5c1e9a7f3b2d8e6a4c0f'}}\ncluster: {{topology: '{}', {cluster}}}\n",
                    dir.path().join(name).display(),
                    topology.display(),
                ),
            )
            .unwrap();
            configs.push(path);
        }
        let mut children = Vec::new();
        for (i, (name, _, _)) in LAYOUT.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
            children.push(
                Command::new(binary)
                    .args(["serve", "--config", configs[i].to_str().unwrap()])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            );
        }
        for (i, (name, _, _)) in LAYOUT.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !ready(addrs[i].1) {
                assert!(Instant::now() < deadline, "{name} not ready");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Cluster {
            children,
            public: LAYOUT
                .iter()
                .zip(&addrs)
                .map(|((name, _, _), a)| (*name, a.0))
                .collect(),
            topology,
            db1_config: configs[0].clone(),
            _dir: dir,
        }
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.public.iter().find(|(n, _)| *n == name).unwrap().1
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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

fn main() {
    let binary = env!("CARGO_BIN_EXE_flotilla");
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let envoy = envoy_binary();
    assert!(
        envoy.exists(),
        "Envoy is not at {}: run scripts/install-test-tools",
        envoy.display()
    );
    let cluster = Cluster::start(binary);
    create_admin(binary, &cluster.db1_config);

    let (listen, admin) = (free_addr(), free_addr());
    let generated = Command::new(binary)
        .args(["gen-envoy", "--mode", "scaled", "--topology"])
        .arg(&cluster.topology)
        .args([
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .output()
        .unwrap();
    assert!(generated.status.success(), "gen-envoy failed");
    let envoy_config = cluster._dir.path().join("envoy.yaml");
    std::fs::write(&envoy_config, &generated.stdout).unwrap();
    let envoy_log = std::fs::File::create(cluster._dir.path().join("envoy.log")).unwrap();
    let _envoy = Envoy(
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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let token: Arc<str> = Arc::from(login(cluster.addr("accounts-1")).await);
        let http = client();
        for k in 0..8 {
            let r = http
                .put(format!(
                    "http://{}/api/kv/keys/read-{k}",
                    cluster.addr("kv-1")
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

        let via_envoy = vec![Targets {
            echo: listen,
            kv: listen,
        }];
        let via_forwarding: Vec<Targets> = ["accounts-1", "accounts-2"]
            .iter()
            .map(|n| Targets {
                echo: cluster.addr(n),
                kv: cluster.addr(n),
            })
            .collect();
        let direct: Vec<Targets> = [("echo-1", "kv-1"), ("echo-2", "kv-2")]
            .iter()
            .map(|(e, k)| Targets {
                echo: cluster.addr(e),
                kv: cluster.addr(k),
            })
            .collect();
        println!("machine: {}", machine());
        println!(
            "{CLIENTS} clients, {seconds} s per path; mix: echo HTTP, echo gRPC, kv read, kv write (in turn)\n"
        );
        println!("| path | requests/s | p50 ms | p99 ms | errors |");
        println!("|---|---:|---:|---:|---:|");
        let mut rates = Vec::new();
        for (name, targets) in [
            ("(a) Envoy, gen-envoy --mode scaled", via_envoy),
            ("(b) built-in ingress forwarding", via_forwarding),
            ("(c) straight to the hosting node", direct),
        ] {
            let mut channels = Vec::new();
            for t in &targets {
                channels.push((channel(t.echo).await, channel(t.kv).await));
            }
            let figures = mix(
                Arc::new(targets),
                Arc::new(channels),
                http.clone(),
                token.clone(),
                seconds,
            )
            .await;
            println!("{}", figures.row(name));
            rates.push((figures.rate(), figures.pct(0.99)));
        }
        println!(
            "\nbuilt-in / Envoy: throughput {:.2}x, p99 {:.2}x (lower is better)",
            rates[1].0 / rates[0].0,
            rates[1].1.as_secs_f64() / rates[0].1.as_secs_f64()
        );
    });
}
