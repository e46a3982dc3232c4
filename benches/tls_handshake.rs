//! What a new connection to a member's peer listener costs with mutual TLS,
//! with session resumption (rustls's default, which flotilla keeps) and
//! without (every connection a full handshake with both certificates).
//!
//!     cargo bench --bench tls_handshake
//!     BENCH_ROUNDS=5 BENCH_CONNECTIONS=300 cargo bench --bench tls_handshake
//!
//! A real member (the release binary, a one-member group on loopback);
//! the client is a tool holding a member's certificate from the same CA,
//! dialing as the members' own connector does: TCP, then the handshake
//! (timed), then the start of HTTP/2 (not timed).
//! Each round measures both ways, alternating which goes first; each
//! connection is opened, handshaken and closed in turn.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use flotilla::tls::peer::{PeerTls, PeerTlsSettings};
use rustls::client::Resumption;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/mod.rs"]
mod common;
use common::{cpu_time, free_addr, machine, ready};

const SECRET: &str = "bench-cluster-secret-4d3c2b1a0f9e8d7c6b5a";

/// Opens `n` connections in turn to `peer` with `config`: each one's
/// handshake time, and how many were resumed.
async fn connect(
    peer: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    n: usize,
) -> (Vec<Duration>, usize) {
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut times = Vec::with_capacity(n);
    let mut resumed = 0;
    for _ in 0..n {
        let started = Instant::now();
        let tcp = tokio::net::TcpStream::connect(peer).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = connector
            .connect(
                rustls_pki_types::ServerName::try_from("flotilla").unwrap(),
                tcp,
            )
            .await
            .expect("the member takes a member's certificate");
        times.push(started.elapsed());
        if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            resumed += 1;
        }
        // Start HTTP/2 as the members' clients do and read the server's
        // first frame: TLS 1.3 session tickets come after the handshake,
        // and are taken only by a client that reads on.
        let mut tls = tls;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let mut first = [0u8; 9];
        tls.read_exact(&mut first).await.unwrap();
        drop(tls);
    }
    times.sort_unstable();
    (times, resumed)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e6
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let n: usize = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let binary = env!("CARGO_BIN_EXE_flotilla");
    let dir = tempfile::tempdir().unwrap();
    let (public, admin, peer) = (free_addr(), free_addr(), free_addr());
    let topology = dir.path().join("topology.yaml");
    std::fs::write(
        &topology,
        format!("members:\n  - {{id: 1, node: m-1, peer: '{peer}', public: '{public}'}}\n"),
    )
    .unwrap();
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "node: {{id: m-1}}\nservices: [all]\nlisteners: {{public: '{public}', admin: '{admin}', peer: '{peer}', xds: '{}'}}\ndata_dir: '{}'\nlog: {{level: warn}}\nauth: {{secret: 'bench-secret-5c1e9a7f3b2d8e6a4c0f'}}\ncluster: {{topology: '{}', secret: '{SECRET}', bootstrap: true}}\n",
            free_addr(),
            dir.path().join("data").display(),
            topology.display(),
        ),
    )
    .unwrap();
    let mut member = Command::new(binary)
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("node.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(admin) {
        assert!(Instant::now() < deadline, "the member is not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let tls = PeerTls::of_member(&PeerTlsSettings::default(), SECRET, "bench-tool").unwrap();
    let resuming = tls.client_config();
    let mut full = (*resuming).clone();
    full.resumption = Resumption::disabled();
    let full = Arc::new(full);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("Machine: {}", machine());
    println!(
        "{rounds} rounds of {n} connections each way, one at a time, to a member's peer listener on loopback.\n"
    );
    // (p50 µs, p99 µs, member CPU µs per connection, resumed) per round.
    let mut figures: [Vec<(f64, f64, f64, usize)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in 0..2 {
            let which = (round + k) % 2;
            let config = if which == 0 {
                resuming.clone()
            } else {
                full.clone()
            };
            let before = cpu_time(&[member.id()]);
            let (times, resumed) = rt.block_on(connect(peer, config, n));
            let cpu = (cpu_time(&[member.id()]) - before).as_secs_f64() * 1e6 / n as f64;
            figures[which].push((pct(&times, 0.5), pct(&times, 0.99), cpu, resumed));
        }
    }
    println!(
        "| handshakes | connect + handshake p50 µs | p99 µs | member's CPU µs/connection | resumed |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for (which, name) in ["with resumption", "full (resumption off)"]
        .into_iter()
        .enumerate()
    {
        let mut rows = figures[which].clone();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (p50, p99, cpu, resumed) = rows[rows.len() / 2];
        medians.push((p50, cpu));
        println!("| {name} | {p50:.0} | {p99:.0} | {cpu:.0} | {resumed} of {n} |");
    }
    println!(
        "\nRatio (resumed / full): p50 {:.2}, member's CPU {:.2}",
        medians[0].0 / medians[1].0,
        medians[0].1 / medians[1].1
    );
    let _ = member.kill();
    let _ = member.wait();
}
