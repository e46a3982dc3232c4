//! The systemd units of examples/systemd/: they pass `systemd-analyze
//! verify` and score "OK" in `systemd-analyze security`, their example
//! configs check in the environment the units give, and the binary speaks
//! the notification protocol `Type=notify` relies on, to a socket standing
//! in for systemd's (CI's machine has no systemd as PID 1 to start a unit
//! for real).

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::support::{BINARY, Node, NodeConfig, checkout, free_port, http, run_cli};

/// `systemd-analyze`, which CI's test tools install with Debian's systemd.
fn analyze() -> Command {
    let found = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "systemd-analyze is not installed: run scripts/install-test-tools (scripts/test does)"
    );
    Command::new("systemd-analyze")
}

/// The unit `name` of examples/systemd/, as `as_name` in `dir`, running the
/// binary the tests built instead of /usr/local/bin/flotilla (verify wants
/// an executable there).
fn unit(dir: &Path, name: &str, as_name: &str) -> PathBuf {
    let text = std::fs::read_to_string(checkout().join("examples/systemd").join(name)).unwrap();
    assert!(
        text.contains("ExecStart=/usr/local/bin/flotilla serve"),
        "{name}"
    );
    let binary = std::fs::canonicalize(BINARY).unwrap();
    let path = dir.join(as_name);
    std::fs::write(
        &path,
        text.replace("/usr/local/bin/flotilla", binary.to_str().unwrap()),
    )
    .unwrap();
    path
}

#[test]
fn the_units_verify_and_are_hardened() {
    let dir = tempfile::tempdir().unwrap();
    for (name, as_name) in [
        ("flotilla.service", "flotilla.service"),
        ("flotilla@.service", "flotilla@node1.service"),
    ] {
        let path = unit(dir.path(), name, as_name);
        let out = analyze().arg("verify").arg(&path).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {said}");
        assert!(!said.contains(as_name), "{name} has warnings: {said}");
        let out = analyze()
            .args(["security", "--offline=true"])
            .arg(&path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let level: f64 = report
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{name}: no exposure level in:\n{report}"));
        // systemd calls up to 2.0 "OK"; a unit with no hardening scores
        // 9.6 "UNSAFE".
        assert!(level <= 2.0, "{name}: exposure {level}:\n{report}");
        for line in [
            "Type=notify",
            "WatchdogSec=",
            "StateDirectory=",
            "TimeoutStopSec=",
        ] {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(line), "{name}: {line}");
        }
    }
}

#[test]
fn the_example_configs_check_in_the_units_environment() {
    let env = tempfile::tempdir().unwrap();
    for secret in ["auth-secret", "cluster-secret"] {
        std::fs::write(
            env.path().join(secret),
            "a-secret-of-forty-characters-at-least-0123456789",
        )
        .unwrap();
    }
    // The member's topology, with the addresses its config gives it.
    let topology = std::fs::read_to_string(checkout().join("config/ha/topology.yaml"))
        .unwrap()
        .replace("127.0.0.1:7071", "10.0.0.1:7070")
        .replace("127.0.0.1:8181", "10.0.0.1:8080");
    std::fs::write(env.path().join("topology.yaml"), topology).unwrap();
    for config in ["flotilla.yaml", "node1.yaml"] {
        let out = Command::new(BINARY)
            .args(["check-config", "--config"])
            .arg(checkout().join("examples/systemd").join(config))
            .env("STATE_DIRECTORY", env.path().join("state"))
            .env("CREDENTIALS_DIRECTORY", env.path())
            .env("CONFIGURATION_DIRECTORY", env.path())
            .output()
            .unwrap();
        let plan = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(plan.contains("<- ${STATE_DIRECTORY}"), "{config}: {plan}");
    }
    // Without the unit's environment the config says what is missing.
    let (code, _, err) = run_cli(
        Path::new(BINARY),
        &[
            "check-config",
            "--config",
            checkout()
                .join("examples/systemd/flotilla.yaml")
                .to_str()
                .unwrap(),
        ],
    );
    assert_eq!(code, 64);
    assert!(err.contains("STATE_DIRECTORY"), "{err}");
}

/// The node says READY=1 only once /readyz answers 200, pings the watchdog
/// at half of WATCHDOG_USEC, and says STOPPING=1 at SIGTERM, on the socket
/// NOTIFY_SOCKET names.
#[tokio::test]
async fn the_node_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let public = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = Node::write_config(dir.path(), public, admin, &NodeConfig::default());
    let mut node = Node::prepared(dir, config, public, admin);
    node.launcher = vec![
        "env".into(),
        format!("NOTIFY_SOCKET={}", socket_path.display()),
        "WATCHDOG_USEC=200000".into(),
    ];
    node.spawn_only(&[]);
    let readyz = node.admin_url("/readyz");
    let receive = move |systemd: UnixDatagram| {
        tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 512];
            let n = systemd.recv(&mut buf).expect("a notification within 30 s");
            (systemd, String::from_utf8_lossy(&buf[..n]).to_string())
        })
    };
    let (systemd, first) = receive(systemd).await.unwrap();
    assert_eq!(first, "READY=1\nSTATUS=serving");
    // Ready means what /readyz means.
    assert_eq!(http().get(&readyz).send().await.unwrap().status(), 200);
    let (systemd, ping) = receive(systemd).await.unwrap();
    assert_eq!(ping, "WATCHDOG=1");
    node.signal("TERM");
    let mut systemd = systemd;
    let mut said = Vec::new();
    for _ in 0..50 {
        let (back, message) = receive(systemd).await.unwrap();
        systemd = back;
        said.push(message.clone());
        if message.starts_with("STOPPING=1") {
            break;
        }
    }
    assert_eq!(
        said.last().map(String::as_str),
        Some("STOPPING=1\nSTATUS=draining in-flight requests after SIGTERM"),
        "{said:?}"
    );
    assert!(node.exited(Duration::from_secs(15)).await.success());
}
