//! The idle cost of a cluster (issue 18): the CPU each node uses while
//! nothing happens, for clusters of 3, 9 and 30 nodes on loopback (three
//! `db` members, the rest store clients running echo), so that what each
//! store client adds on the leader shows, and how fast the Raft log grows
//! (the registry's heartbeats: each member writes its own record and
//! renews those of the store clients in session with it once a second).
//!
//!     cargo bench --bench idle
//!     BENCH_NODES=3,9,30 BENCH_SECONDS=20 BENCH_ROUNDS=3 cargo bench --bench idle
//!     BENCH_BASELINE=/path/to/an/older/flotilla cargo bench --bench idle
//!
//! Each round starts each size in turn (the order alternates over the
//! rounds; with a baseline binary, each size runs on both, the order of
//! the two alternating too), lets it settle for 5 s, then reads every
//! process's CPU time from /proc over `BENCH_SECONDS`; the table gives the
//! medians of the rounds, in percent of one core.

use std::time::Duration;

#[path = "common/mod.rs"]
mod common;
use common::{BenchCluster, cpu_time, machine};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One size's figures in one round: the leader's, each other member's and
/// each store client's CPU, in percent of a core (members and clients:
/// the mean per node).
struct Idle {
    leader: f64,
    member: f64,
    client: f64,
    /// Raft log entries a second.
    entries: f64,
}

/// The leader's last log index, from its `/status`.
fn last_log_index(rt: &tokio::runtime::Runtime, cluster: &BenchCluster, leader: usize) -> u64 {
    let admin = cluster.nodes[leader].2;
    rt.block_on(async {
        let status: serde_json::Value = common::client()
            .get(format!("http://{admin}/status"))
            .send()
            .await
            .expect("the leader answers /status")
            .json()
            .await
            .expect("/status is JSON");
        status["cluster"]["last_log_index"]
            .as_u64()
            .expect("a member's status has its last log index")
    })
}

fn measure(binary: &str, rt: &tokio::runtime::Runtime, nodes: usize, seconds: u64) -> Idle {
    let layout: Vec<(String, String, bool)> = (0..nodes)
        .map(|i| {
            if i < 3 {
                (format!("db-{}", i + 1), "db".to_owned(), true)
            } else {
                (format!("echo-{}", i - 2), "echo".to_owned(), false)
            }
        })
        .collect();
    let cluster = BenchCluster::start(binary, &layout, "");
    std::thread::sleep(Duration::from_secs(5));
    let leader = rt.block_on(cluster.leader(3));
    let pids: Vec<u32> = cluster.children.iter().map(|c| c.id()).collect();
    let before: Vec<Duration> = pids.iter().map(|p| cpu_time(&[*p])).collect();
    let index_before = last_log_index(rt, &cluster, leader);
    std::thread::sleep(Duration::from_secs(seconds));
    let entries = (last_log_index(rt, &cluster, leader) - index_before) as f64 / seconds as f64;
    let used: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| (cpu_time(&[*p]) - *b).as_secs_f64() / seconds as f64 * 100.0)
        .collect();
    let mean = |v: Vec<f64>| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    Idle {
        leader: used[leader],
        member: mean((0..3).filter(|i| *i != leader).map(|i| used[i]).collect()),
        client: mean(used[3..].to_vec()),
        entries,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let binary = env!("CARGO_BIN_EXE_flotilla");
    let seconds: u64 = env_or("BENCH_SECONDS", 20);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let sizes: Vec<usize> = std::env::var("BENCH_NODES")
        .unwrap_or_else(|_| "3,9,30".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n >= 3)
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("machine: {}", machine());
    println!(
        "idle clusters: 3 db members, the rest store clients running echo; CPU over {seconds} s after 5 s of settling, {rounds} rounds, medians, % of one core\n"
    );
    let mut binaries = vec![("this build", binary.to_owned())];
    if let Ok(base) = std::env::var("BENCH_BASELINE") {
        binaries.push(("baseline", base));
    }
    // seen[binary][size]: one figure per round.
    let mut seen: Vec<Vec<Vec<Idle>>> = binaries
        .iter()
        .map(|_| sizes.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let mut which: Vec<usize> = (0..binaries.len()).collect();
            if (round + i) % 2 == 1 {
                which.reverse();
            }
            for b in which {
                seen[b][i].push(measure(&binaries[b].1, &rt, sizes[i], seconds));
            }
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    println!(
        "| binary | nodes | leader | each other member | each store client | Raft entries/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let mut increments = Vec::new();
    for ((name, _), by_size) in binaries.iter().zip(&seen) {
        let mut leaders = Vec::new();
        for (size, runs) in sizes.iter().zip(by_size) {
            let leader = median(runs.iter().map(|r| r.leader).collect());
            leaders.push((*size, leader));
            let client = if *size > 3 {
                format!("{:.2} %", median(runs.iter().map(|r| r.client).collect()))
            } else {
                "-".into()
            };
            println!(
                "| {name} | {size} | {leader:.2} % | {:.2} % | {client} | {:.1} |",
                median(runs.iter().map(|r| r.member).collect()),
                median(runs.iter().map(|r| r.entries).collect()),
            );
        }
        if let (Some(first), Some(last)) = (leaders.first(), leaders.last())
            && last.0 > first.0
        {
            increments.push(format!(
                "{name}: {:.3} % of a core ({} → {} nodes)",
                (last.1 - first.1) / (last.0 - first.0) as f64,
                first.0,
                last.0
            ));
        }
    }
    if !increments.is_empty() {
        println!(
            "\nthe leader's CPU per node added: {}",
            increments.join("; ")
        );
    }
}
