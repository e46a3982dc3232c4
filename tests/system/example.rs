//! The example in examples/greeter.rs: a user's own service, added with one
//! registration line, gets routing, a namespace and readiness for free.

use serde_json::Value;

use crate::support::{Node, NodeConfig, example_binary, http, run_cli};

#[tokio::test]
async fn a_service_added_by_a_user_is_routed_and_namespaced() {
    let binary = example_binary("greeter");
    let node = Node::start_binary(
        &binary,
        NodeConfig {
            services: "[greeter, kv]".into(),
            ..Default::default()
        },
    );
    for expected in [1, 2] {
        let r: Value = http()
            .post(node.url("/api/greeter/hello/ada"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["greeting"], "hello, ada");
        assert_eq!(r["times_greeted"], expected);
    }
    // Its attempt to read kv's table is refused by the store.
    let r = http()
        .get(node.url("/api/greeter/peek-at-kv"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("kv__items"),
        "{body}"
    );
    // And it is in the plan.
    let (code, out, _) = run_cli(
        &binary,
        &[
            "check-config",
            "--config",
            node.config_path.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("POST   /api/greeter/hello/{name}"), "{out}");
    assert!(out.contains("valid") || out.contains("greeter:"), "{out}");
}

/// The committed config the README starts the example with is valid for
/// the example's binary, and runs what a login needs beside the greeter.
#[test]
fn the_committed_greeter_config_is_valid_and_runs_accounts() {
    let binary = example_binary("greeter");
    let (code, out, err) = run_cli(
        &binary,
        &["check-config", "--config", "config/greeter.yaml"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    for expected in [
        "POST   /api/greeter/hello/{name}",
        "POST   /api/accounts/login",
    ] {
        assert!(out.contains(expected), "{expected} in:\n{out}");
    }
}
