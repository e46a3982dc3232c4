//! Group commit of the store alone: 64 tasks upsert distinct keys through
//! one namespace for a few seconds, every write durable (fsync) before it
//! is acknowledged. Prints writes/s and latency percentiles.
//!
//!     cargo bench -p flotilla-store --bench commit
//!     BENCH_SECONDS=10 cargo bench -p flotilla-store --bench commit

use std::time::{Duration, Instant};

use flotilla_store::{Durability, Migration, Statement, Store, StoreConfig, StoreMetrics};

const TASKS: usize = 64;

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let store = Store::open(
            &StoreConfig {
                data_dir: dir.path().to_owned(),
                readers: 4,
                durability: Durability::Full,
            },
            StoreMetrics::default(),
        )
        .unwrap();
        let kv = store.namespace("kv");
        kv.migrate(&[Migration {
            version: 1,
            name: "items",
            sql: "CREATE TABLE kv__items (owner TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (owner, key)) STRICT, WITHOUT ROWID;",
        }])
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let kv = kv.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let at = Instant::now();
                    kv.write(vec![Statement::new(
                        "INSERT INTO kv__items (owner, key, value, version) VALUES ('bench', ?1, ?2, 1)
                         ON CONFLICT (owner, key) DO UPDATE SET value = excluded.value, version = version + 1
                         RETURNING version",
                        vec![
                            format!("bench/{t}/{i}").into(),
                            "0123456789abcdef0123456789abcdef".into(),
                        ],
                    )])
                    .await
                    .unwrap();
                    latencies.push(at.elapsed());
                    i += 1;
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed();
        all.sort_unstable();
        let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
        println!(
            "| store alone, {TASKS} tasks, durable upserts | {:.0} writes/s | p50 {:.2} ms | p99 {:.2} ms |",
            all.len() as f64 / elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.99)
        );
    });
}
