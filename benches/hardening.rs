//! Issue 13's figures: what the hardening cost. Not a test: it prints a
//! Markdown report for BENCHMARKS.md.
//!
//!     BENCH_BASELINE_BIN=/path/to/flotilla-before cargo bench --bench hardening
//!
//! `BENCH_BASELINE_BIN` is a `flotilla` binary built (release) from the
//! commit before the hardening (b62d037^): the refresh rotation in one
//! conditional write, the listener limits and the JSON error layer all came
//! after it. Three nodes run side by side on loopback:
//!
//! - `before`: the baseline binary;
//! - `after`: this build's binary, default limits;
//! - `after, limits at max`: this build's binary with every public listener
//!   limit at the largest value the config accepts, so that the difference
//!   to `after` is what the configured values themselves cost;
//! - `after, a second node`: the same as `after`, a control: how much two
//!   identical nodes differ in this run.
//!
//! Each round measures, node by node (the order reversed every round):
//! login latency (median of 10, argon2id), refresh latency (median of a
//! chain of 50 rotations) and echo GET throughput over HTTP (64 clients,
//! `BENCH_SECONDS`). Medians over `BENCH_ROUNDS` rounds, and per-round
//! ratios to `before`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

#[path = "common/mod.rs"]
mod common;
use common::{BenchNode, CLIENTS, PASSWORD, client, load, machine};

/// Every public listener limit at the top of its accepted range.
const LIMITS_AT_MAX: &str = "limits: {listeners: {public: {max_connections: 1000000, max_streams_per_connection: 100000, max_header_bytes: 1048576, max_headers: 1000, max_uri_bytes: 1048576}}}\n";

/// A node of the comparison, by name.
struct Named {
    name: &'static str,
    node: BenchNode,
}

fn start(name: &'static str, binary: &Path, extra: &str) -> Named {
    Named {
        name,
        node: BenchNode::start(binary, extra),
    }
}

/// Logs in from `from`: each round from its own loopback address, so that
/// the login rate limit (20 a minute per address) never answers 429.
async fn login(public: SocketAddr, from: std::net::IpAddr) -> serde_json::Value {
    let r = reqwest::Client::builder()
        .local_address(from)
        .build()
        .unwrap()
        .post(format!("http://{public}/api/accounts/login"))
        .json(&serde_json::json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "login failed: {}", r.status());
    r.json().await.unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One round's figures for one node.
struct Round {
    login_ms: f64,
    refresh_ms: f64,
    echo_per_s: f64,
}

async fn measure(node: &Named, duration: Duration, round: usize) -> Round {
    let from = std::net::IpAddr::from([127, 0, 1, 10 + round as u8]);
    let public = node.node.public;
    let mut logins = Vec::new();
    let mut refresh_token = String::new();
    for _ in 0..10 {
        let started = Instant::now();
        let body = login(public, from).await;
        logins.push(started.elapsed().as_secs_f64() * 1e3);
        refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
    }
    let http = client();
    let mut refreshes = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let r = http
            .post(format!("http://{public}/api/accounts/refresh"))
            .json(&serde_json::json!({ "refresh_token": refresh_token }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "refresh failed: {}", r.status());
        let body: serde_json::Value = r.json().await.unwrap();
        refreshes.push(started.elapsed().as_secs_f64() * 1e3);
        refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
    }
    let http = client();
    let echo = load(CLIENTS, duration, move |_, _| {
        let http = http.clone();
        async move {
            http.get(format!("http://{public}/api/echo?message=hi"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    assert_eq!(echo.errors, 0, "{}: echo errors", node.name);
    Round {
        login_ms: median(logins),
        refresh_ms: median(refreshes),
        echo_per_s: echo.rate(),
    }
}

fn main() {
    let baseline = PathBuf::from(std::env::var("BENCH_BASELINE_BIN").expect(
        "set BENCH_BASELINE_BIN to a flotilla binary built (release) from the commit before the hardening, b62d037^",
    ));
    let env_or = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let seconds = env_or("BENCH_SECONDS", 5);
    let rounds = env_or("BENCH_ROUNDS", 4) as usize;
    let current = PathBuf::from(env!("CARGO_BIN_EXE_flotilla"));
    let nodes = [
        start("before", &baseline, ""),
        start("after", &current, ""),
        start(
            "after, limits at max",
            &current,
            &std::env::var("BENCH_LIMITS").unwrap_or_else(|_| LIMITS_AT_MAX.to_owned()),
        ),
        start("after, a second node", &current, ""),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("Machine: {}", machine());
    println!(
        "{rounds} rounds; echo: {CLIENTS} clients for {seconds} s, HTTP/1.1 keep-alive, loopback.\n"
    );
    // figures[node][round]
    let mut figures: Vec<Vec<Round>> = nodes.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let r = rt.block_on(measure(&nodes[i], Duration::from_secs(seconds), round));
            println!(
                "round {} {:<22} login {:>6.1} ms  refresh {:>5.2} ms  echo {:>7.0}/s",
                round + 1,
                nodes[i].name,
                r.login_ms,
                r.refresh_ms,
                r.echo_per_s
            );
            figures[i].push(r);
        }
    }
    let names: Vec<&str> = nodes.iter().map(|n| n.name).collect();
    println!("\n| figure | {} |", names.join(" | "));
    println!("|---|{}", "---:|".repeat(nodes.len()));
    type Pick = fn(&Round) -> f64;
    let rows: [(&str, Pick); 3] = [
        ("login, median ms", |r| r.login_ms),
        ("refresh, median ms", |r| r.refresh_ms),
        ("echo GET via HTTP, ops/s", |r| r.echo_per_s),
    ];
    for (name, pick) in rows {
        let medians: Vec<String> = figures
            .iter()
            .map(|rounds| format!("{:.2}", median(rounds.iter().map(pick).collect())))
            .collect();
        println!("| {name} | {} |", medians.join(" | "));
    }
    println!("\nRatios to `before`, median (per round):\n");
    for (name, pick) in rows {
        for (i, node) in nodes.iter().enumerate().skip(1) {
            let ratios: Vec<f64> = (0..rounds)
                .map(|r| pick(&figures[i][r]) / pick(&figures[0][r]))
                .collect();
            let each: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
            println!(
                "- {name}, {}: {:.2} ({})",
                node.name,
                median(ratios.clone()),
                each.join(", ")
            );
        }
    }
}
