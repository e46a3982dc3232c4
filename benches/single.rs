//! Single-node benchmarks (issue 2). Not a test: it measures and prints a
//! Markdown report for BENCHMARKS.md.
//!
//!     cargo bench --bench single                 # 5 s per load scenario
//!     BENCH_SECONDS=10 cargo bench --bench single
//!
//! Scenarios:
//! 1. kv writes through the public HTTP API of the real binary, 64
//!    concurrent clients, each write acknowledged only after it is durable.
//! 2. the same writes straight into the store (no HTTP), to show what the
//!    ingress and HTTP cost.
//! 3. echo through the ingress vs. the same echo handler served without the
//!    ingress layer, both in this process on the same server code, so the
//!    only difference is the ingress (routing table, limits, metrics).
//! 4. start-up: exec to `/readyz` 200, and idle RSS.
//! 5. auth: echo behind a token vs. the public echo through the same
//!    ingress; token verification cost (signature check, and the cached
//!    path taken by a token seen before); login latency (argon2id).
//!
//! Every request goes to 127.0.0.1.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use flotilla::{
    auth::{Auth, AuthSettings, accounts, password::HashParams, tokens},
    catalogue::{Catalogue, Registered, ServiceContext},
    edge::ingress::{self, Ingress, IngressSettings},
    edge::server,
    mesh::registry::{NodeRecord, Registry},
    services::echo::Echo,
    telemetry::metrics::Metrics,
};
use flotilla_store::{Durability, Statement, Store, StoreConfig};
use tokio_util::sync::CancellationToken;

#[path = "common/mod.rs"]
mod common;
use common::{CLIENTS, PASSWORD, client, create_admin, free_addr, load, login, machine, ready};

const SECRET: &str = "bench-secret-5c1e9a7f3b2d8e6a4c0f";

fn auth_settings() -> AuthSettings {
    AuthSettings {
        secret: SECRET.into(),
        access_token_ttl: Duration::from_secs(900),
        refresh_token_ttl: Duration::from_secs(3600),
        key_rotation: None,
        signup: false,
        password_hash: HashParams::default(),
    }
}

fn write_config(dir: &Path, public: SocketAddr, admin: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("bench.yaml");
    std::fs::write(
        &path,
        format!(
            "node: {{id: bench-1}}\nservices: [all]\nlisteners: {{public: '{public}', admin: '{admin}', xds: '{}'}}\ndata_dir: '{}'\nlog: {{level: warn}}\nauth: {{secret: '{SECRET}'}}\n",
            free_addr(),
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// exec → /readyz 200, polled every millisecond with a plain TCP request.
fn startup(binary: &str, runs: usize) -> (Vec<Duration>, Vec<u64>) {
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let (public, admin) = (free_addr(), free_addr());
        let config = write_config(dir.path(), public, admin);
        let started = Instant::now();
        let mut child = Command::new(binary)
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = started + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "node not ready within 10 s");
            if ready(admin) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(500));
        rss.push(rss_kib(child.id()));
        let _ = child.kill();
        let _ = child.wait();
    }
    times.sort_unstable();
    rss.sort_unstable();
    (times, rss)
}

/// Commits and mean writes per commit, from the node's own metrics.
async fn group_commit(admin: SocketAddr) -> String {
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let commits = value("flotilla_store_batch_size_count");
    let writes = value("flotilla_store_batch_size_sum");
    format!(
        "{commits:.0} fsync'ed commits for {writes:.0} writes ({:.1} writes per commit)",
        writes / commits.max(1.0)
    )
}

async fn serve_in_process<S>(service: S) -> (SocketAddr, CancellationToken)
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = server::bind("public", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server::serve(
        listener,
        service,
        stop.clone(),
        server::ServeOptions::new(
            "public",
            server::ListenerLimits::PUBLIC,
            Duration::from_secs(1),
        ),
    ));
    (addr, stop)
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(seconds);
    let binary = env!("CARGO_BIN_EXE_flotilla");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    println!("Machine: {}", machine());
    println!(
        "Each load scenario: {CLIENTS} concurrent clients for {seconds} s, HTTP/1.1 keep-alive, loopback.\n"
    );
    println!("| scenario | ops/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|");

    // 1. kv writes through the real binary.
    let dir = tempfile::tempdir().unwrap();
    let (public, admin) = (free_addr(), free_addr());
    let config = write_config(dir.path(), public, admin);
    let mut node = Command::new(binary)
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready(admin) {
        assert!(Instant::now() < deadline, "bench node not ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    create_admin(binary, &config);
    let (token, logins) = rt.block_on(async {
        let mut times = Vec::new();
        let mut token = String::new();
        for _ in 0..10 {
            let started = Instant::now();
            token = login(public).await;
            times.push(started.elapsed());
        }
        times.sort_unstable();
        (token, times)
    });
    let bearer = format!("Bearer {token}");
    let http = client();
    let kv_http = rt.block_on(load(CLIENTS, duration, move |c, i| {
        let http = http.clone();
        let bearer = bearer.clone();
        async move {
            http.put(format!("http://{public}/api/kv/keys/bench/{c}/{i}"))
                .header("authorization", bearer)
                .header("content-type", "application/json")
                .body(r#"{"value":"0123456789abcdef0123456789abcdef"}"#)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    }));
    println!("{}", kv_http.row("kv PUT via HTTP (real binary, durable)"));
    let commits = rt.block_on(group_commit(admin));
    let http = client();
    let echo_binary = rt.block_on(load(CLIENTS, duration, move |_, _| {
        let http = http.clone();
        async move {
            http.get(format!("http://{public}/api/echo?message=hi"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    }));
    println!("{}", echo_binary.row("echo GET via HTTP (real binary)"));
    let loaded_rss = rss_kib(node.id());
    let _ = node.kill();
    let _ = node.wait();

    // 2. The store alone.
    let store_dir = tempfile::tempdir().unwrap();
    let store_figures = rt.block_on(async {
        let store = Store::open(
            &StoreConfig {
                data_dir: store_dir.path().to_owned(),
                readers: 4,
                durability: Durability::Full,
            },
            Metrics::new().store,
        )
        .unwrap();
        let kv = store.namespace("kv");
        kv.migrate(flotilla::services::kv::Kv.migrations())
            .await
            .unwrap();
        load(CLIENTS, duration, move |c, i| {
            let kv = kv.clone();
            async move {
                kv.write(vec![Statement::new(
                    "INSERT INTO kv__items (owner, key, value, version) VALUES ('bench', ?1, ?2, 1)
                     ON CONFLICT (owner, key) DO UPDATE SET value = excluded.value, version = version + 1
                     RETURNING version",
                    vec![
                        format!("bench/{c}/{i}").into(),
                        "0123456789abcdef0123456789abcdef".into(),
                    ],
                )])
                .await
                .is_ok()
            }
        })
        .await
    });
    println!(
        "{}",
        store_figures.row("kv upsert, store alone (no HTTP, durable)")
    );

    // 3. echo with and without the ingress layer, same process, same server;
    // 5. and the same echo behind a token.
    let inproc = rt.block_on(async {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &StoreConfig {
                data_dir: store_dir.path().to_owned(),
                readers: 2,
                durability: Durability::Full,
            },
            Metrics::new().store,
        )
        .unwrap();
        let auth = Auth::open(&store, auth_settings()).await.unwrap();
        let hash = auth.hasher.hash(PASSWORD);
        let user = accounts::create_user(
            &auth.accounts,
            "bench",
            &hash,
            &["user"],
            flotilla::auth::now(),
        )
        .await
        .unwrap()
        .unwrap();
        let (token, _) = auth.issue_access_token(&user).unwrap();
        let ctx = ServiceContext::ungranted(Arc::from("bench-1"), store.namespace("echo"));
        let catalogue = Catalogue::builtin();
        let catalogue = catalogue.check().unwrap();
        let table = catalogue.table().clone();
        let routers = HashMap::from([(
            "echo",
            ingress::compose("echo", Echo.start_handlers(ctx.clone()).unwrap()),
        )]);
        let registry = Registry::single(NodeRecord {
            id: "bench-1".into(),
            public: "127.0.0.1:1".parse().unwrap(),
            services: vec!["echo".into()],
            healthy: true,
        });
        let ingress = Ingress::new(
            table,
            auth.clone(),
            registry,
            Arc::new(flotilla::edge::admin::Readiness::new(&[])),
            routers,
            Metrics::new().http,
            IngressSettings {
                max_request_body_bytes: 1 << 20,
                request_timeout: Duration::from_secs(10),
                forward_tls: std::sync::Arc::new(|| None),
            },
        )
        .unwrap();
        let bare = axum::Router::new().nest("/api/echo", Echo.start_handlers(ctx).unwrap().http);
        let (ingress_addr, stop_a) = serve_in_process(ingress).await;
        let (bare_addr, stop_b) = serve_in_process(bare).await;
        let run = |url: String, authorization: Option<String>| {
            let http = client();
            load(CLIENTS, duration, move |_, _| {
                let mut req = http.get(&url);
                if let Some(a) = &authorization {
                    req = req.header("authorization", a);
                }
                async move { req.send().await.is_ok_and(|r| r.status().is_success()) }
            })
        };
        let public_echo = run(format!("http://{ingress_addr}/api/echo?message=hi"), None).await;
        let bare_echo = run(format!("http://{bare_addr}/api/echo?message=hi"), None).await;
        let private_echo = run(
            format!("http://{ingress_addr}/api/echo/private?message=hi"),
            Some(format!("Bearer {token}")),
        )
        .await;
        stop_a.cancel();
        stop_b.cancel();

        // Token verification: the signature check, and the path of a token
        // seen before (cache hit + account state).
        let ring = auth.ring();
        let now = flotilla::auth::now();
        let n = 2000;
        let started = Instant::now();
        for _ in 0..n {
            tokens::verify(&ring, &token, now).unwrap();
        }
        let verify = started.elapsed() / n;
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let n = 100_000;
        let started = Instant::now();
        for _ in 0..n {
            auth.authenticate(&headers).await.unwrap();
        }
        let cached = started.elapsed() / n;
        let mut argon = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            auth.hasher.verify(PASSWORD, &hash);
            argon.push(started.elapsed());
        }
        argon.sort_unstable();
        (
            public_echo,
            bare_echo,
            private_echo,
            verify,
            cached,
            argon[argon.len() / 2],
        )
    });
    let (with_ingress, without_ingress, private_echo, verify, cached, argon) = inproc;
    println!(
        "{}",
        with_ingress.row("echo GET through the ingress (in-process)")
    );
    println!(
        "{}",
        without_ingress.row("echo GET, same handler without the ingress (in-process)")
    );
    println!(
        "{}",
        private_echo.row("echo GET behind a bearer token, through the ingress (in-process)")
    );

    println!();
    println!("| auth measure | value |");
    println!("|---|---:|");
    println!(
        "| token signature check (EdDSA verify + claims), per token | {:.1} µs |",
        verify.as_secs_f64() * 1e6
    );
    println!(
        "| authenticate a token seen before (cache hit + account state), per request | {:.2} µs |",
        cached.as_secs_f64() * 1e6
    );
    println!(
        "| argon2id verify (m=19456 KiB, t=2, p=1), median of 10 | {:.1} ms |",
        argon.as_secs_f64() * 1e3
    );
    println!(
        "| login over HTTP (real binary), median / worst of 10 | {:.1} ms / {:.1} ms |",
        logins[logins.len() / 2].as_secs_f64() * 1e3,
        logins[logins.len() - 1].as_secs_f64() * 1e3
    );

    // 4. Start-up.
    let (times, rss) = startup(binary, 10);
    println!();
    println!("| measure | median | worst of 10 |");
    println!("|---|---:|---:|");
    println!(
        "| exec → /readyz 200 (fresh data dir, 2 migrations) | {:.1} ms | {:.1} ms |",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "| idle RSS 0.5 s after ready | {:.1} MiB | {:.1} MiB |",
        rss[rss.len() / 2] as f64 / 1024.0,
        rss[rss.len() - 1] as f64 / 1024.0
    );
    println!(
        "| RSS after the load scenarios | {:.1} MiB | |",
        loaded_rss as f64 / 1024.0
    );
    println!();
    println!("Group commit during the HTTP kv run: {commits}.");
    println!(
        "Ratio: authenticated echo / public echo through the ingress = {:.2}",
        private_echo.rate() / with_ingress.rate()
    );
    println!(
        "Ratios: HTTP kv writes / store alone = {:.2}; echo through ingress / without = {:.2}",
        kv_http.rate() / store_figures.rate(),
        with_ingress.rate() / without_ingress.rate()
    );
}
