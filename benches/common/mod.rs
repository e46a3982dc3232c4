//! Shared by the benchmark programs: a closed-loop load generator with
//! latency percentiles, and small helpers.

#![allow(dead_code)] // each bench uses the part it needs

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

pub const CLIENTS: usize = 64;

pub struct Figures {
    pub ops: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    pub errors: usize,
}

impl Figures {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    pub fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
    pub fn row(&self, name: &str) -> String {
        format!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} |",
            self.rate(),
            self.pct(0.50).as_secs_f64() * 1e3,
            self.pct(0.99).as_secs_f64() * 1e3,
            self.errors
        )
    }
}

/// Runs `op(client, i)` from `clients` concurrent tasks for `duration`.
pub async fn load<F, Fut>(clients: usize, duration: Duration, op: F) -> Figures
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if op(c, i).await {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Figures {
        ops: latencies.len(),
        elapsed,
        latencies,
        errors,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn ready(admin: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(admin) else {
        return false;
    };
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/1.1 200"
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem} RAM, Linux {}", kernel.trim())
}

/// CPU time (user + system) the processes `pids` have used so far, from
/// `/proc/<pid>/stat`, all threads included.
pub fn cpu_time(pids: &[u32]) -> Duration {
    static TICKS_PER_SECOND: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let hz = *TICKS_PER_SECOND.get_or_init(|| {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf CLK_TCK");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("CLK_TCK is a number")
    });
    let ticks: u64 = pids
        .iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
            // Fields after the command name, which is in parentheses and
            // may contain spaces; utime and stime are fields 14 and 15.
            let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
            let fields: Vec<&str> = rest.split(' ').collect();
            fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
        })
        .sum();
    Duration::from_millis(ticks * 1000 / hz)
}

/// The admin password the benchmarks create.
pub const PASSWORD: &str = "bench-admin-password";

/// Creates the admin with `flotilla accounts create-admin` on `config`.
pub fn create_admin(binary: &str, config: &std::path::Path) {
    use std::io::Write;
    let mut create = std::process::Command::new(binary)
        .args([
            "accounts",
            "create-admin",
            "--config",
            config.to_str().unwrap(),
            "--username",
            "admin",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    writeln!(create.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(create.wait().unwrap().success(), "create-admin failed");
}

/// Logs the admin in at `public`; returns the access token.
pub async fn login(public: SocketAddr) -> String {
    let r: serde_json::Value = client()
        .post(format!("http://{public}/api/accounts/login"))
        .json(&serde_json::json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["access_token"].as_str().unwrap().to_owned()
}

/// The auth secret of the benchmark nodes.
const BENCH_SECRET: &str = "bench-secret-5c1e9a7f3b2d8e6a4c0f";

/// A single-mode `flotilla serve` of `binary` on loopback, every service,
/// with the admin created; `extra` is appended to its config (top-level
/// YAML lines). Killed when dropped.
pub struct BenchNode {
    pub child: std::process::Child,
    pub public: SocketAddr,
    _dir: tempfile::TempDir,
}

impl BenchNode {
    pub fn start(binary: &std::path::Path, extra: &str) -> BenchNode {
        let dir = tempfile::tempdir().unwrap();
        let (public, admin) = (free_addr(), free_addr());
        let config = dir.path().join("bench.yaml");
        std::fs::write(
            &config,
            format!(
                "node: {{id: bench-1}}\nservices: [all]\nlisteners: {{public: '{public}', admin: '{admin}', xds: '{}'}}\ndata_dir: '{}'\nlog: {{level: error}}\nauth: {{secret: '{BENCH_SECRET}'}}\n{extra}\n",
                free_addr(),
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(binary)
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready(admin) {
            assert!(Instant::now() < deadline, "bench node not ready");
            std::thread::sleep(Duration::from_millis(5));
        }
        create_admin(binary.to_str().unwrap(), &config);
        BenchNode {
            child,
            public,
            _dir: dir,
        }
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster of `flotilla serve` processes on loopback, laid out as
/// `(name, services, db member)`: the members first in the topology,
/// each store client with its key from `cluster client-key`. Killed when
/// dropped.
pub struct BenchCluster {
    pub children: Vec<std::process::Child>,
    /// Each node's name, public and admin address.
    pub nodes: Vec<(String, SocketAddr, SocketAddr)>,
    pub topology: std::path::PathBuf,
    pub db1_config: std::path::PathBuf,
    /// Each node's config, in layout order.
    pub configs: Vec<std::path::PathBuf>,
    pub dir: tempfile::TempDir,
}

/// The cluster secret of the benchmark clusters.
const BENCH_CLUSTER_SECRET: &str = "bench-cluster-secret-9e8d7c6b5a4f3e2d1c0b";

impl BenchCluster {
    /// Starts `layout` and waits until every node is ready; `cluster_extra`
    /// goes into every node's `cluster:` section (e.g. `, tls: off`).
    pub fn start(
        binary: &str,
        layout: &[(String, String, bool)],
        cluster_extra: &str,
    ) -> BenchCluster {
        BenchCluster::start_with(binary, layout, cluster_extra, &|_| Default::default())
    }

    /// [`BenchCluster::start`], with what `node_extra` gives for each node
    /// by name: more listeners (`, xds: '…'`) and top-level YAML lines.
    pub fn start_with(
        binary: &str,
        layout: &[(String, String, bool)],
        cluster_extra: &str,
        node_extra: &dyn Fn(&str) -> (String, String),
    ) -> BenchCluster {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let topology = dir.path().join("topology.yaml");
        let mut members = String::from("members:\n");
        let mut others = String::from("nodes:\n");
        // Every port held until all are chosen, so that no two nodes get
        // the same one (a released port may be handed out again).
        let held: Vec<std::net::TcpListener> = (0..layout.len() * 3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<SocketAddr> = held.iter().map(|l| l.local_addr().unwrap()).collect();
        drop(held);
        let mut addrs = Vec::new();
        for (i, (name, services, db)) in layout.iter().enumerate() {
            let (public, admin, peer) = (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
            addrs.push((public, admin, peer));
            if *db {
                members.push_str(&format!("  - {{id: {}, node: {name}, peer: '{peer}', public: '{public}', services: [{services}]}}\n", i + 1));
            } else {
                others.push_str(&format!(
                    "  - {{node: {name}, public: '{public}', services: [{services}]}}\n"
                ));
            }
        }
        if others == "nodes:\n" {
            others.clear();
        }
        std::fs::write(&topology, members + &others).unwrap();
        let mut configs: Vec<std::path::PathBuf> = Vec::new();
        for (i, (name, services, db)) in layout.iter().enumerate() {
            let (public, admin, peer) = addrs[i];
            let (peer, cluster) = if *db {
                (
                    format!(", peer: '{peer}'"),
                    format!("secret: '{BENCH_CLUSTER_SECRET}', bootstrap: true"),
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
            let (listeners, top) = node_extra(name);
            // BENCH_LOG_LEVEL, to see what the nodes did (their logs are
            // in the cluster's directory).
            let log = std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
            std::fs::write(
                &path,
                format!(
                    "node: {{id: {name}}}\nservices: [{services}]\nlisteners: {{public: '{public}', admin: '{admin}'{peer}{listeners}}}\ndata_dir: '{}'\nlog: {{level: '{log}'}}\nauth: {{secret: '{BENCH_SECRET}'}}\ncluster: {{topology: '{}', {cluster}{cluster_extra}}}\n{top}\n",
                    dir.path().join(name).display(),
                    topology.display(),
                ),
            )
            .unwrap();
            configs.push(path);
        }
        let children = layout
            .iter()
            .enumerate()
            .map(|(i, (name, _, _))| {
                spawn(binary, &configs[i], &dir.path().join(format!("{name}.log")))
            })
            .collect();
        for (i, (name, _, _)) in layout.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !ready(addrs[i].1) {
                assert!(Instant::now() < deadline, "{name} not ready");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        BenchCluster {
            children,
            nodes: layout
                .iter()
                .zip(&addrs)
                .map(|((name, _, _), a)| (name.clone(), a.0, a.1))
                .collect(),
            topology,
            db1_config: configs[0].clone(),
            configs,
            dir,
        }
    }

    /// Starts node `i` again (after it was killed), without waiting.
    pub fn restart(&mut self, binary: &str, i: usize) {
        let log = self.dir.path().join(format!("{}.log", self.nodes[i].0));
        self.children[i] = spawn(binary, &self.configs[i], &log);
    }

    /// The index of the member that leads, as the members' `/status`
    /// says (the members come first in the layout), waiting up to 30 s.
    pub async fn leader(&self, members: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, (_, _, admin)) in self.nodes.iter().enumerate().take(members) {
                let status: Option<serde_json::Value> = async {
                    client()
                        .get(format!("http://{admin}/status"))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()
                }
                .await;
                if status.is_some_and(|s| s["cluster"]["role"] == "Leader") {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no member leads");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn public(&self, name: &str) -> SocketAddr {
        self.nodes.iter().find(|(n, _, _)| n == name).unwrap().1
    }
}

/// `flotilla serve` of `binary` on `config`, its log appended to `log`.
fn spawn(binary: &str, config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    std::process::Command::new(binary)
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
