//! Namespace isolation benchmarks (issue 11). Not a test: it measures and
//! prints a Markdown report for BENCHMARKS.md. Run it through
//! `scripts/bench-isolation`, which builds the hostile example it needs.
//!
//!     BENCH_HOSTILE=target/release/examples/hostile cargo bench --bench isolation
//!     BENCH_BASELINE=/path/to/an/older/flotilla ...    # adds that binary's kv PUT
//!     BENCH_SECONDS=5 BENCH_ROUNDS=3 ...
//!     BENCH_ONLY=alone ...       # only the scenarios whose name has this
//!
//! 1. kv PUT via HTTP (64 clients, durable, authenticated) on the hostile
//!    example's binary: alone; while the intruder service runs its heaviest
//!    allowed write in a loop (a statement stopped by its step budget, which
//!    ends the transaction it shares with kv's writes), at two budgets; and
//!    while it runs its heaviest allowed read in a loop. With
//!    `BENCH_BASELINE`, the same kv PUT on that binary too. Rounds
//!    alternate the scenarios; each row is the median round.
//! 2. The check of a namespace's views and triggers: a migration that makes
//!    20 tables, 20 views and 20 triggers, and the check alone (a migration
//!    call with nothing pending), in this process on a real file.
//!
//! Every request goes to 127.0.0.1.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use flotilla_store::{Durability, Migration, Store, StoreConfig, StoreMetrics};

#[path = "common/mod.rs"]
mod common;
use common::{BenchNode, CLIENTS, Figures, client, load, login, machine};

/// What runs beside kv's writes.
#[derive(Clone, Copy)]
enum Beside {
    Nothing,
    /// The intruder's `/burn-write` in a loop, from one client.
    HeaviestWrite,
    /// The intruder's `/burn-read` in a loop, from one client.
    HeaviestRead,
}

struct Scenario {
    name: String,
    binary: PathBuf,
    limits: &'static str,
    beside: Beside,
}

/// kv PUTs from 64 clients for `duration` on a fresh node, with `beside`
/// looping meanwhile; returns the figures and how many intruder calls ran.
fn run(rt: &tokio::runtime::Runtime, s: &Scenario, duration: Duration) -> (Figures, u64) {
    let node = BenchNode::start(&s.binary, s.limits);
    let public = node.public;
    rt.block_on(async {
        let token = login(public).await;
        let bearer = format!("Bearer {token}");
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let route = match s.beside {
            Beside::Nothing => None,
            Beside::HeaviestWrite => Some("burn-write"),
            Beside::HeaviestRead => Some("burn-read"),
        };
        let intruder = route.map(|route| {
            let (stop, calls) = (stop.clone(), calls.clone());
            tokio::spawn(async move {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    let r = http
                        .post(format!("http://{public}/api/intruder/{route}"))
                        .send()
                        .await;
                    assert!(
                        r.is_ok_and(|r| r.status().is_success()),
                        "the intruder's route failed"
                    );
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        let http = client();
        let figures = load(CLIENTS, duration, move |c, i| {
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
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        if let Some(t) = intruder {
            t.await.unwrap();
        }
        (figures, calls.load(Ordering::Relaxed))
    })
}

fn median_by<T: Clone>(mut v: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v[v.len() / 2].clone()
}

#[derive(Clone)]
struct Round {
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: usize,
    calls_per_s: f64,
}

/// The migration-time check of views and triggers: a migration that makes
/// 20 tables, 20 views and 20 triggers, then the check alone.
fn audit_cost(rt: &tokio::runtime::Runtime) -> (Duration, Duration, Duration) {
    let mut sql = String::new();
    for i in 0..20 {
        sql.push_str(&format!(
            "CREATE TABLE bench__t{i} (k TEXT PRIMARY KEY, v TEXT, n INTEGER) STRICT;
             CREATE VIEW bench__v{i} AS SELECT k, v FROM bench__t{i} WHERE n > 0;
             CREATE TRIGGER bench__g{i} AFTER UPDATE OF v ON bench__t{i} BEGIN UPDATE bench__t{i} SET n = n + 1 WHERE k = NEW.k; END;"
        ));
    }
    let tables_only: String = (0..20)
        .map(|i| {
            format!("CREATE TABLE plain__t{i} (k TEXT PRIMARY KEY, v TEXT, n INTEGER) STRICT;")
        })
        .collect();
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let with_objects = [Migration {
        version: 1,
        name: "60 objects",
        sql: leak(sql),
    }];
    let plain = [Migration {
        version: 1,
        name: "20 tables",
        sql: leak(tables_only),
    }];
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &StoreConfig {
                data_dir: dir.path().to_owned(),
                readers: 2,
                durability: Durability::Full,
            },
            StoreMetrics::default(),
        )
        .unwrap();
        let timed = |ns: &'static str, m: &'static [Migration]| {
            let store = store.clone();
            async move {
                let started = Instant::now();
                store.namespace(ns).migrate(m).await.unwrap();
                started.elapsed()
            }
        };
        let with_objects: &'static [Migration] = Box::leak(Box::new(with_objects));
        let plain: &'static [Migration] = Box::leak(Box::new(plain));
        let make_objects = timed("bench", with_objects).await;
        let make_plain = timed("plain", plain).await;
        let mut checks = Vec::new();
        for _ in 0..21 {
            checks.push(timed("bench", with_objects).await);
        }
        checks.sort_unstable();
        (make_plain, make_objects, checks[checks.len() / 2])
    })
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let hostile = PathBuf::from(std::env::var("BENCH_HOSTILE").expect(
        "BENCH_HOSTILE names the hostile example's binary: run scripts/bench-isolation, which builds it",
    ));
    assert!(hostile.exists(), "{} is missing", hostile.display());
    let duration = Duration::from_secs(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut scenarios = Vec::new();
    if let Ok(baseline) = std::env::var("BENCH_BASELINE") {
        scenarios.push(Scenario {
            name: format!("kv PUT alone, baseline binary ({baseline})"),
            binary: PathBuf::from(baseline),
            limits: "",
            beside: Beside::Nothing,
        });
    }
    scenarios.extend([
        Scenario {
            name: "kv PUT alone".into(),
            binary: hostile.clone(),
            limits: "",
            beside: Beside::Nothing,
        },
        Scenario {
            name: "kv PUT beside the intruder's heaviest write, default budget (10M steps)".into(),
            binary: hostile.clone(),
            limits: "",
            beside: Beside::HeaviestWrite,
        },
        Scenario {
            name: "kv PUT beside the intruder's heaviest write, budget 50M steps".into(),
            binary: hostile.clone(),
            limits: "limits: {services: {intruder: {write_steps: 50000000}}}",
            beside: Beside::HeaviestWrite,
        },
        Scenario {
            name: "kv PUT beside the intruder's heaviest read, default budget (1000 ms)".into(),
            binary: hostile.clone(),
            limits: "",
            beside: Beside::HeaviestRead,
        },
    ]);

    if let Ok(only) = std::env::var("BENCH_ONLY") {
        scenarios.retain(|s| s.name.contains(&only));
        assert!(!scenarios.is_empty(), "no scenario's name has `{only}`");
    }

    println!("Machine: {}", machine());
    println!(
        "kv PUT: {CLIENTS} concurrent clients, {seconds} s per run, {rounds} rounds alternating the scenarios; each row is the median round (by rate; its percentiles are that round's).\n"
    );
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); scenarios.len()];
    for round in 0..rounds {
        // Alternate the order each round.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..scenarios.len()).collect()
        } else {
            (0..scenarios.len()).rev().collect()
        };
        for i in order {
            let (figures, calls) = run(&rt, &scenarios[i], duration);
            results[i].push(Round {
                rate: figures.rate(),
                p50: figures.pct(0.50).as_secs_f64() * 1e3,
                p99: figures.pct(0.99).as_secs_f64() * 1e3,
                p999: figures.pct(0.999).as_secs_f64() * 1e3,
                errors: figures.errors,
                calls_per_s: calls as f64 / figures.elapsed.as_secs_f64(),
            });
        }
    }
    println!("| scenario | kv PUT/s | p50 ms | p99 ms | p99.9 ms | errors | intruder calls/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for (s, r) in scenarios.iter().zip(results) {
        let m = median_by(r, |r| r.rate);
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.1} |",
            s.name, m.rate, m.p50, m.p99, m.p999, m.errors, m.calls_per_s
        );
        medians.push(m);
    }
    if let Some(alone) = medians
        .iter()
        .zip(&scenarios)
        .find(|(_, s)| s.name == "kv PUT alone")
        .map(|(m, _)| m.rate)
    {
        println!();
        for (m, s) in medians.iter().zip(&scenarios) {
            println!("- {}: {:.2} × the rate alone", s.name, m.rate / alone);
        }
    }

    let (plain, objects, check) = audit_cost(&rt);
    println!();
    println!("| migration | time ms |");
    println!("|---|---:|");
    println!(
        "| 20 tables (the check finds nothing to compile) | {:.2} |",
        plain.as_secs_f64() * 1e3
    );
    println!(
        "| 20 tables, 20 views, 20 triggers (each checked) | {:.2} |",
        objects.as_secs_f64() * 1e3
    );
    println!(
        "| the check alone, 40 views and triggers (median of 21 start-ups' migration calls) | {:.2} |",
        check.as_secs_f64() * 1e3
    );
}
