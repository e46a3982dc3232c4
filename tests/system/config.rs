//! Bad configs fail with exit 64 before any port is bound.

use std::net::TcpListener;

use crate::support::{BINARY, Node, NodeConfig, free_addr, run_cli};
use std::path::Path;

/// Writes `body` (with listeners on ports the test itself holds) and runs
/// `serve` on it. Because the ports are taken, a binary that bound anything
/// before validating would fail with a bind error (exit 1), not 64.
fn serve_with(body: &str) -> (i32, String, tempfile::TempDir) {
    let public = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = body
        .replace("PUBLIC", &public.local_addr().unwrap().to_string())
        .replace("ADMIN", &admin.local_addr().unwrap().to_string())
        .replace("DATA", &dir.path().join("data").display().to_string());
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, text).unwrap();
    let (code, _out, err) = run_cli(
        Path::new(BINARY),
        &["serve", "--config", path.to_str().unwrap()],
    );
    assert!(
        !dir.path().join("data").exists(),
        "the data directory was created for a refused config"
    );
    (code, err, dir)
}

const HEAD: &str =
    "node: {id: n1}\nlisteners: {public: 'PUBLIC', admin: 'ADMIN'}\ndata_dir: 'DATA'\n";

#[test]
fn selection_missing_empty_or_unknown_exits_64_listing_valid_names() {
    for selection in ["", "services: []\n", "services: [kv, frobnicator]\n"] {
        let (code, err, _d) = serve_with(&format!("{HEAD}{selection}"));
        assert_eq!(code, 64, "{selection:?}: {err}");
        assert!(err.contains("services:"), "{err}");
        assert!(
            err.contains("valid names: all, accounts, echo, kv, db, xds"),
            "{err}"
        );
        if selection.contains("frobnicator") {
            assert!(err.contains("unknown service `frobnicator`"), "{err}");
        }
    }
}

#[test]
fn every_invalid_field_is_named() {
    let cases = [
        (
            "node: {id: n1}\nservices: [all]\nlisteners: {public: 'PUBLIC', admin: 'ADMIN'}\ndata_dir: 'DATA'\nbogus: 1\n",
            "unknown field `bogus`",
        ),
        (
            "node: {id: n1}\nservices: [all]\nlisteners: {public: 'not-an-address', admin: 'ADMIN'}\ndata_dir: 'DATA'\n",
            "listeners.public",
        ),
        (
            "node: {id: n1}\nservices: [all]\nlisteners: {public: '127.0.0.1:70000', admin: 'ADMIN'}\ndata_dir: 'DATA'\n",
            "port 70000 is out of range",
        ),
        (
            "node: {id: n1}\nservices: [all]\nlisteners: {public: 'PUBLIC', admin: 'ADMIN'}\ndata_dir: '/proc/version/data'\n",
            "data_dir",
        ),
        (
            "node: {id: n1}\nservices: [all]\nlisteners: {public: 'PUBLIC', admin: 'ADMIN'}\ndata_dir: 'DATA'\nlimits: {request_timeout_ms: 0}\n",
            "limits.request_timeout_ms",
        ),
        (
            "services: [all]\nlisteners: {public: 'PUBLIC', admin: 'ADMIN'}\ndata_dir: 'DATA'\n",
            "node.id",
        ),
        (
            "node: {id: n1}\nservices: all\nlisteners: {public: 'PUBLIC', admin: 'ADMIN'}\ndata_dir: 'DATA'\n",
            "services",
        ),
    ];
    for (body, expected) in cases {
        let (code, err, _d) = serve_with(body);
        assert_eq!(code, 64, "{expected}: {err}");
        assert!(err.contains(expected), "expected `{expected}` in: {err}");
    }
}

#[test]
fn auth_mistakes_exit_64_and_nothing_is_made_up() {
    let base = "node: {id: n1}\nservices: [all]\nlisteners: {public: 'PUBLIC', admin: 'ADMIN'}\ndata_dir: 'DATA'\n";
    for (auth, expected) in [
        ("", "auth: missing"),
        ("auth: {}\n", "auth.secret: missing"),
        ("auth: {secret: 'too-short'}\n", "auth.secret: is too short"),
        (
            "auth: {secret: 'system-test-secret-7d2f9a4c1e8b6035', access_token_ttl_seconds: 0}\n",
            "auth.access_token_ttl_seconds",
        ),
    ] {
        let (code, err, _d) = serve_with(&format!("{base}{auth}"));
        assert_eq!(code, 64, "{auth}: {err}");
        assert!(err.contains(expected), "expected `{expected}` in: {err}");
    }
}

#[test]
fn a_missing_config_file_exits_64() {
    let (code, _, err) = run_cli(
        Path::new(BINARY),
        &["serve", "--config", "/nonexistent/flotilla.yaml"],
    );
    assert_eq!(code, 64);
    assert!(err.contains("cannot read the file"), "{err}");
}

#[test]
fn a_port_in_use_is_a_startup_error_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = Node::write_config(
        dir.path(),
        format!("127.0.0.1:{port}").parse().unwrap(),
        free_addr(),
        &NodeConfig::default(),
    );
    let (code, _, err) = run_cli(
        Path::new(BINARY),
        &["serve", "--config", path.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("port {port}")), "{err}");
    assert!(err.contains("listeners.public"), "{err}");
}

#[test]
fn check_config_prints_the_plan_and_starts_nothing() {
    let (code, out, err) = run_cli(
        Path::new(BINARY),
        &["check-config", "--config", "config/single.yaml"],
    );
    assert_eq!(code, 0, "{err}");
    for expected in [
        "node: single-1",
        "services (selected as [all])",
        "  - echo:",
        "  - kv:",
        "public: 127.0.0.1:8080",
        "admin: 127.0.0.1:8081",
        "data/single/flotilla.db",
        "/api/kv/keys/{*key}",
        "/flotilla.kv.v1.Kv/CompareAndSet",
        "public routes (no credentials needed):\n  POST /api/accounts/signup\n  POST /api/accounts/login\n",
        "  GET /api/echo\n  POST /api/echo\n  POST /flotilla.echo.v1.Echo/Echo\n",
        "auth: sign-up off, access tokens 900 s",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    let (code, _, err) = run_cli(
        Path::new(BINARY),
        &["check-config", "--config", "/nonexistent.yaml"],
    );
    assert_eq!(code, 64, "{err}");
}

#[test]
fn a_bad_command_line_exits_64() {
    let (code, _, err) = run_cli(Path::new(BINARY), &["serve"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--config"), "{err}");
}
