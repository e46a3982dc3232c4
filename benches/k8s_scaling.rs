//! k3d-mode scaling (issue 16), played from the rendered manifests as the
//! system tests play them (`tests/system/support/pods.rs`: every pod a
//! process in a network namespace of its own, a real Envoy on the
//! ConfigMap's bootstrap, readiness from the pod's probe, SIGTERM as the
//! kubelet sends it).
//!
//! Three db members, one accounts and one kv pod, two echo pods and the
//! front Envoy run throughout; four callers send `GET /api/echo` through
//! Envoy back to back. Then, ROUNDS times, one echo pod is added and
//! removed again:
//! - ready → first request: from the moment the pod's readiness probe
//!   passes to the first answer through Envoy from that pod;
//! - SIGTERM → last request: from the signal to the last answer from that
//!   pod (it deregisters at once, then keeps listening for its drain);
//! - last request → exit: what was left of its drain when it stopped.
//!
//! Every failed request is counted. Both deployments are measured in one
//! run: the base (front Envoy only) and the sidecar overlay (each echo pod
//! behind its own Envoy sidecar).
//!
//! Run: `scripts/bench-k8s` (as root; installs the test tools).

#[path = "common/mod.rs"]
mod common;
#[allow(dead_code)] // the bench drives part of the system tests' harness
#[path = "../tests/system/support/pods.rs"]
mod pods;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use pods::Play;

/// The binary `pods` runs in every flotilla pod.
const BINARY: &str = env!("CARGO_BIN_EXE_flotilla");

/// Where `pods` finds Envoy.
mod envoy {
    pub fn envoy_binary() -> std::path::PathBuf {
        let path = std::env::var_os("FLOTILLA_ENVOY")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy")
            });
        assert!(
            path.exists(),
            "Envoy is not installed at {}: run scripts/install-test-tools",
            path.display()
        );
        path
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

const ROUNDS: usize = 20;

/// One answer through Envoy: when, and which pod.
type Answers = Arc<Mutex<Vec<(Instant, String)>>>;

struct Figures {
    to_first: Vec<Duration>,
    to_last: Vec<Duration>,
    drain_left: Vec<Duration>,
    requests: usize,
    failed: Vec<String>,
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e3)
}

async fn scenario(dir: &str, rounds: usize) -> Figures {
    let mut play = Play::of(dir);
    play.start_db_members().await;
    for (workload, name) in [
        ("accounts", "accounts-a-0"),
        ("kv", "kv-a-0"),
        ("echo", "echo-a-0"),
        ("echo", "echo-a-1"),
    ] {
        play.start(workload, name);
    }
    for name in play.pods.keys().cloned().collect::<Vec<_>>() {
        play.wait_ready(&name, Duration::from_secs(60)).await;
    }
    let envoy_ip = play.start("envoy", "envoy-a-0").ip;
    play.wait_ready("envoy-a-0", Duration::from_secs(60)).await;
    let url = format!("http://{envoy_ip}:10000/api/echo");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http()
        .get(&url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "no echo through Envoy in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let answers: Answers = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (answers, failed, stop, url) =
            (answers.clone(), failed.clone(), stop.clone(), url.clone());
        callers.push(tokio::spawn(async move {
            let http = http();
            while !stop.is_cancelled() {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        let node = body["node"].as_str().unwrap_or("?").to_owned();
                        answers.lock().unwrap().push((Instant::now(), node));
                    }
                    Ok(r) => failed.lock().unwrap().push(r.status().to_string()),
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    let first_from = |pod: &str| {
        answers
            .lock()
            .unwrap()
            .iter()
            .find(|(_, n)| n == pod)
            .map(|(at, _)| *at)
    };
    let last_from = |pod: &str| {
        answers
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, n)| n == pod)
            .map(|(at, _)| *at)
    };
    let (mut to_first, mut to_last, mut drain_left) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let pod = format!("echo-b-{round}");
        play.start("echo", &pod);
        let ready = play.wait_ready(&pod, Duration::from_secs(60)).await;
        let deadline = ready + Duration::from_secs(10);
        let first = loop {
            if let Some(first) = first_from(&pod) {
                break first;
            }
            assert!(Instant::now() < deadline, "{pod} got nothing in 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        to_first.push(first.saturating_duration_since(ready));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let signalled = Instant::now();
        let exited = play.terminate_all(std::slice::from_ref(&pod)).await[&pod];
        // Anything still in flight has arrived by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let last = last_from(&pod).expect("it answered");
        assert!(last < exited, "{pod} answered after it exited");
        to_last.push(last.saturating_duration_since(signalled));
        drain_left.push(exited.saturating_duration_since(last));
    }
    stop.cancel();
    for c in callers {
        c.await.unwrap();
    }
    let requests = answers.lock().unwrap().len();
    let failed = failed.lock().unwrap().clone();
    Figures {
        to_first,
        to_last,
        drain_left,
        requests,
        failed,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    println!("machine: {}", common::machine());
    println!("{rounds} scale-ups and scale-downs of echo under load through the front Envoy\n");
    println!(
        "| deployment | ready → first request p50 / p99 / max ms | SIGTERM → last request p50 / p99 ms | last request → exit p50 ms | requests | failed |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, dir) in [
        ("base (front Envoy)", "manifests"),
        ("sidecars overlay", "manifests/overlays/sidecars"),
    ] {
        let f = scenario(dir, rounds).await;
        println!(
            "| {name} | {} / {} / {} | {} / {} | {} | {} | {} |",
            ms(pct(&f.to_first, 0.5)),
            ms(pct(&f.to_first, 0.99)),
            ms(pct(&f.to_first, 1.0)),
            ms(pct(&f.to_last, 0.5)),
            ms(pct(&f.to_last, 0.99)),
            ms(pct(&f.drain_left, 0.5)),
            f.requests,
            f.failed.len()
        );
        if !f.failed.is_empty() {
            eprintln!(
                "{name}: failed requests: {:?}",
                &f.failed[..f.failed.len().min(5)]
            );
        }
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    println!("\n(reproduce: {}/scripts/bench-k8s)", repo.display());
}
