//! The real binary as a process on loopback ports, and its command line.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use super::{SECRET, http, wait_until_blocking};

pub const BINARY: &str = env!("CARGO_BIN_EXE_flotilla");

/// A port that is free now, below the kernel's ephemeral range (32768 and
/// up), so that no outgoing connection can take it before the node under
/// test binds it. Each test process (nextest runs one per test) takes its
/// ports from its own block of 100, chosen by its pid, so that tests running
/// at the same time do not pick the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let block = 20_000 + (std::process::id() % 120) as u16 * 100;
    for _ in 0..100 {
        let port = block + NEXT.fetch_add(1, Ordering::Relaxed) % 100;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{block}..{}", block + 100)
}

/// A free address on 127.0.0.1 (see `free_port`).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The example binary built from `examples/<name>.rs` next to the main one.
pub fn example_binary(name: &str) -> PathBuf {
    let main = Path::new(BINARY);
    let path = main.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} was not built: run the tests with cargo, which builds examples",
        path.display()
    );
    path
}

pub struct NodeConfig {
    pub services: String,
    pub extra: String,
    pub node_id: String,
    /// The `auth:` map, in flow style.
    pub auth: String,
    /// Serve xDS on this address.
    pub xds: Option<SocketAddr>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            services: "[all]".into(),
            extra: String::new(),
            node_id: "test-node".into(),
            auth: format!("{{secret: '{SECRET}'}}"),
            xds: None,
        }
    }
}

/// A running `flotilla serve`, killed when dropped.
pub struct Node {
    pub child: Option<Child>,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub binary: PathBuf,
    /// What runs the binary, if anything (`ip netns exec <ns>`).
    pub launcher: Vec<String>,
}

impl Node {
    pub fn write_config(
        dir: &Path,
        public: SocketAddr,
        admin: SocketAddr,
        cfg: &NodeConfig,
    ) -> PathBuf {
        let text = format!(
            "node: {{id: {}}}\nservices: {}\nlisteners: {{public: '{public}', admin: '{admin}'{}}}\ndata_dir: '{}'\nauth: {}\n{}",
            cfg.node_id,
            cfg.services,
            // A node that runs the xds role gets its own port for it.
            cfg.xds
                .or_else(|| {
                    (cfg.services.contains("all") || cfg.services.contains("xds"))
                        .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())))
                })
                .map(|a| format!(", xds: '{a}'"))
                .unwrap_or_default(),
            dir.join("data").display(),
            cfg.auth,
            cfg.extra
        );
        let path = dir.join("node.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn start(cfg: NodeConfig) -> Node {
        Node::start_binary(Path::new(BINARY), cfg)
    }

    pub fn start_binary(binary: &Path, cfg: NodeConfig) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_path = Node::write_config(dir.path(), public, admin, &cfg);
        let mut node = Node {
            child: None,
            public,
            admin,
            dir,
            config_path,
            binary: binary.to_owned(),
            launcher: Vec::new(),
        };
        node.spawn(&[]);
        node
    }

    /// A node on a config the caller wrote, not started yet.
    pub fn prepared(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        public: SocketAddr,
        admin: SocketAddr,
    ) -> Node {
        Node {
            child: None,
            public,
            admin,
            dir,
            config_path,
            binary: PathBuf::from(BINARY),
            launcher: Vec::new(),
        }
    }

    /// Starts the process (again) on the same config and data, and waits
    /// until it is ready.
    pub fn spawn(&mut self, extra_args: &[&str]) {
        self.spawn_only(extra_args);
        self.wait_ready();
    }

    /// Starts the process without waiting for it to be ready (a cluster
    /// member is ready only once a quorum is up).
    pub fn spawn_only(&mut self, extra_args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = match self.launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .args(extra_args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until the admin listener's `/readyz` says 200; a node that
    /// exits meanwhile fails the test with its log.
    pub fn wait_ready(&mut self) {
        let url = format!("http://{}/readyz", self.admin);
        let log = self.log_path();
        let child = self.child.as_mut().expect("running");
        wait_until_blocking("the node is ready", Duration::from_secs(20), || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "node exited during start-up with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            match blocking_get(&url) {
                Ok(resp) if resp.starts_with("HTTP/1.1 200") => Ok(()),
                Ok(resp) => Err(resp),
                Err(e) => Err(e.to_string()),
            }
        });
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The admin listener's `/status`, if the node answers.
    pub async fn status(&self) -> Option<serde_json::Value> {
        let r = http().get(self.admin_url("/status")).send().await.ok()?;
        r.json().await.ok()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        // On a timeout, `Drop` shows the log's last lines.
        let child = self.child.as_mut().expect("running");
        let status = wait_until_blocking("the node exits", within, || {
            child.try_wait().unwrap().ok_or("still running")
        });
        self.child = None;
        status
    }

    /// [`Node::wait_exit`] for async code: the runtime goes on meanwhile,
    /// so that clients in other tasks keep sending and receiving.
    pub async fn exited(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = super::wait::wait_until("the node exits", within, || {
            std::future::ready(child.try_wait().unwrap().ok_or("still running"))
        })
        .await;
        self.child = None;
        status
    }

    pub fn kill9(&mut self) {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(10));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failing test shows what the node said last, and keeps its whole
        // log in FLOTILLA_TEST_LOGS (a directory), if that is set.
        if std::thread::panicking() {
            if let Ok(dir) = std::env::var("FLOTILLA_TEST_LOGS") {
                let _ = std::fs::copy(
                    self.log_path(),
                    format!("{dir}/{}-{}.log", self.admin.ip(), self.admin.port()),
                );
            }
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.log_path().display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A minimal HTTP/1.1 GET without a client library, for polling readiness
/// from synchronous code.
pub fn blocking_get(url: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s =
        std::net::TcpStream::connect_timeout(&host.parse().unwrap(), Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Runs the binary with `args` to completion (bounded) and returns its
/// exit code, stdout and stderr.
pub fn run_cli(binary: &Path, args: &[&str]) -> (i32, String, String) {
    run_cli_with_input(binary, args, "")
}

pub fn run_cli_with_input(binary: &Path, args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    wait_until_blocking(
        &format!("{args:?} finishes"),
        Duration::from_secs(20),
        || child.try_wait().unwrap().ok_or("still running"),
    );
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
