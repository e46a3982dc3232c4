//! TLS on the public listener (`tls.public`), checked from the outside with
//! an operator's CA and certificates made by openssl:
//! - a single node: curl over HTTP/1.1 and HTTP/2, the certificate chosen
//!   by SNI (a wildcard included), gRPC over TLS from grpcio, plaintext
//!   refused, a renewed certificate served without a restart, a broken
//!   file keeping the one served, and files that do not load refused
//!   before anything is bound;
//! - a scaled cluster whose public listeners speak TLS only: the operator's
//!   certificate to clients (curl, HTTP/1.1 and HTTP/2; grpcio), the node's
//!   cluster certificate to whoever names the trust domain, requests
//!   forwarded between nodes over TLS, and a real Envoy reaching the nodes
//!   over TLS (`gen-envoy --upstream-tls`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::support::{BINARY, Node, NodeConfig, run_cli, wait_until_blocking};

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (scripts/install-test-tools installs it): {e}"))
}

fn openssl(args: &[&str]) {
    let out = run("openssl", args);
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An operator's CA, and certificates it signs.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let pki = Pki {
            dir: dir.to_owned(),
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&pki.ca_key()),
            "-out",
            s(&pki.ca()),
            "-subj",
            "/CN=operator root",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        pki
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// A certificate for `names` (DNS), written to `<file>.crt` and
    /// `<file>.key` by renaming over them (as an operator's renewal does).
    fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (crt, key, csr) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
            self.dir.join(format!("{file}.csr")),
        );
        let (new_crt, new_key) = (
            self.dir.join(format!("{file}.crt.new")),
            self.dir.join(format!("{file}.key.new")),
        );
        let san = names
            .iter()
            .map(|n| format!("DNS:{n}"))
            .collect::<Vec<_>>()
            .join(",");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&new_key),
            "-out",
            s(&csr),
            "-subj",
            &format!("/CN={}", names[0]),
            "-addext",
            &format!("subjectAltName={san}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&self.ca()),
            "-CAkey",
            s(&self.ca_key()),
            "-CAcreateserial",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
            "-out",
            s(&new_crt),
        ]);
        std::fs::rename(&new_key, &key).unwrap();
        std::fs::rename(&new_crt, &crt).unwrap();
        (crt, key)
    }
}

/// `curl` to `https://<name>:<port><path>` on 127.0.0.1: the exit code,
/// the body and the HTTP version.
fn curl(pki: &Pki, name: &str, port: u16, http: &str) -> (i32, String) {
    curl_trusting(&pki.ca(), name, port, http)
}

/// curl's exit code and what it said, for `/api/echo` at `name` (resolved
/// to loopback) trusting only the CA in `ca`.
fn curl_trusting(ca: &Path, name: &str, port: u16, http: &str) -> (i32, String) {
    let out = run(
        "curl",
        &[
            "-sS",
            http,
            "--cacert",
            s(ca),
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            "-w",
            "\n%{http_version}",
            &format!("https://{name}:{port}/api/echo"),
        ],
    );
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `calls` echo calls from grpcio over TLS to the public listener on
/// `port`, checking the chain against `ca` and the name `name`: how many
/// each node answered.
fn grpc_echo_over_tls(ca: &Path, name: &str, port: u16, calls: u32) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/base/client/echo_client.py");
    let out = run(
        s(&crate::support::pods::grpc_python()),
        &[
            s(&script),
            "--target",
            &format!("127.0.0.1:{port}"),
            "--tls-ca",
            s(ca),
            "--tls-name",
            name,
            "--calls",
            &calls.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The serial of the certificate served for `name`.
fn served_serial(port: u16, name: &str) -> String {
    let out = Command::new("sh")
        .args([
            "-c",
            &format!(
                "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -serial"
            ),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn tls_extra(certs: &[(PathBuf, PathBuf)]) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(c, k)| {
            format!(
                "{{cert_file: '{}', key_file: '{}'}}",
                c.display(),
                k.display()
            )
        })
        .collect();
    format!("tls: {{public: {{certificates: [{}]}}}}\n", list.join(", "))
}

#[test]
fn the_public_listener_serves_tls_by_sni_over_http1_http2_and_grpc_and_reloads_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["b.test", "*.b.test"]);
    let mut node = Node::start(NodeConfig {
        extra: tls_extra(&[a.clone(), b.clone()]),
        ..Default::default()
    });
    node.wait_ready();
    let port = node.public.port();

    for (http, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, out) = curl(&pki, "a.test", port, http);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("\"node\":\"test-node\""), "{out}");
        assert!(out.trim_end().ends_with(version), "{http}: {out}");
    }
    // SNI: each name gets its own certificate (curl checks the name).
    let (code, out) = curl(&pki, "api.b.test", port, "--http2");
    assert_eq!(code, 0, "the wildcard certificate for api.b.test: {out}");
    // A name no certificate carries gets the first, which curl refuses.
    let (code, out) = curl(&pki, "c.test", port, "--http2");
    assert_eq!(code, 60, "{out}");
    // Plaintext is not spoken there.
    let out = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/api/echo"),
        ],
    );
    assert!(
        !out.status.success(),
        "plaintext answered over the TLS port"
    );

    // gRPC over TLS (h2 by ALPN), grpcio checking the chain and the name.
    assert_eq!(
        grpc_echo_over_tls(&pki.ca(), "a.test", port, 3),
        serde_json::json!({"test-node": 3})
    );

    // Renewal: new files, the same listener serves them.
    let before = served_serial(port, "a.test");
    assert!(before.starts_with("serial="), "{before}");
    pki.issue("a", &["a.test"]);
    wait_until_blocking(
        "the renewed certificate is served",
        Duration::from_secs(15),
        || {
            let now = served_serial(port, "a.test");
            if now != before && now.starts_with("serial=") {
                Ok(())
            } else {
                Err(now)
            }
        },
    );
    let renewed = served_serial(port, "a.test");
    assert_eq!(curl(&pki, "a.test", port, "--http2").0, 0);

    // A broken file: the renewed certificate stays, and the log says why.
    std::fs::write(&a.0, "not a certificate").unwrap();
    wait_until_blocking(
        "the broken file is reported",
        Duration::from_secs(15),
        || {
            if node.log().contains("do not load") {
                Ok(())
            } else {
                Err("no warning yet".to_owned())
            }
        },
    );
    assert_eq!(served_serial(port, "a.test"), renewed);
    assert_eq!(curl(&pki, "a.test", port, "--http1.1").0, 0);
}

#[test]
fn certificate_files_that_do_not_load_are_refused_before_anything_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (crt, _) = pki.issue("a", &["a.test"]);
    let (_, other_key) = pki.issue("b", &["b.test"]);
    for (certs, expected) in [
        (vec![(crt.clone(), other_key.clone())], "do not go together"),
        (
            vec![(crt.clone(), dir.path().join("missing.key"))],
            "cannot read",
        ),
        (
            vec![(pki.ca_key(), other_key.clone())],
            "holds no certificate",
        ),
    ] {
        let config = dir.path().join("node.yaml");
        std::fs::write(
            &config,
            format!(
                "node: {{id: n1}}\nservices: [echo]\ndata_dir: '{}'\nauth: {{secret: '{}'}}\n{}",
                dir.path().join("data").display(),
                crate::support::SECRET,
                tls_extra(&certs)
            ),
        )
        .unwrap();
        let (code, _, err) = run_cli(BINARY.as_ref(), &["check-config", "--config", s(&config)]);
        assert_eq!(code, 64, "{err}");
        assert!(err.contains("tls.public.certificates"), "{err}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

#[tokio::test]
async fn a_cluster_with_tls_only_public_listeners_forwards_between_nodes_and_takes_envoy_over_tls()
{
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let api = pki.issue("api", &["api.test"]);
    let cluster = crate::support::ScaledCluster::start_custom("", &tls_extra(&[api]));
    cluster.wait_registered().await;

    // Envoy's certificate and the cluster's CA, from a member's config.
    let envoy_tls = dir.path().join("envoy-tls");
    let (code, _, err) = run_cli(
        BINARY.as_ref(),
        &[
            "ca",
            "issue",
            "--config",
            s(&cluster.nodes["db-1"].config_path),
            "--envoy",
            "front",
            "--out",
            s(&envoy_tls),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let cluster_ca = envoy_tls.join("ca.crt");

    // kv-1 runs no echo: it forwards to an echo node, whose public listener
    // takes TLS only, so the hop is TLS. Clients get the operator's
    // certificate; a client naming the trust domain gets kv-1's own, from
    // the cluster's CA.
    let kv = cluster.nodes["kv-1"].public.port();
    for (ca, name) in [
        (pki.ca(), "api.test"),
        (cluster_ca.clone(), "flotilla.local"),
    ] {
        for http in ["--http1.1", "--http2"] {
            let (code, out) = curl_trusting(&ca, name, kv, http);
            assert_eq!(code, 0, "{name} {http}: {out}");
            assert!(out.contains("\"node\":\"echo-"), "{name} {http}: {out}");
        }
    }
    // gRPC over TLS too, forwarded the same way: grpcio checking the
    // operator's chain and name.
    let answered = grpc_echo_over_tls(&pki.ca(), "api.test", kv, 4);
    let calls: u64 = answered
        .as_object()
        .unwrap()
        .iter()
        .map(|(node, n)| {
            assert!(node.starts_with("echo-"), "answered by {node}");
            n.as_u64().unwrap()
        })
        .sum();
    assert_eq!(calls, 4, "{answered}");
    // The cluster's certificate is not the operator's, nor the other way.
    assert_ne!(
        curl_trusting(&pki.ca(), "flotilla.local", kv, "--http2").0,
        0
    );
    assert_ne!(curl_trusting(&cluster_ca, "api.test", kv, "--http2").0, 0);
    // Plaintext is refused.
    assert!(
        crate::support::http()
            .get(cluster.nodes["kv-1"].url("/api/echo"))
            .send()
            .await
            .is_err(),
        "a TLS-only public listener answered plaintext"
    );

    // A real Envoy in front, its clusters over TLS with the certificate
    // `ca issue` wrote: the nodes take nothing else.
    let (listen, admin) = (crate::support::free_addr(), crate::support::free_addr());
    let yaml = crate::support::generate(&[
        "--mode",
        "scaled",
        "--topology",
        s(&cluster.topology),
        "--upstream-tls",
        s(&envoy_tls),
        "--listen",
        &listen.to_string(),
        "--admin",
        &admin.to_string(),
    ]);
    crate::support::validate(&yaml);
    let envoy = crate::support::Envoy::start_bootstrap(&yaml, admin);
    crate::support::wait_routed(&format!("http://{listen}/api/echo?message=hi")).await;
    let answered: serde_json::Value = crate::support::http()
        .get(format!("http://{listen}/api/kv/keys/none"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answered["error"], "unauthenticated", "{answered}");
    for service in ["echo", "kv"] {
        let handshakes = envoy
            .stat(&format!("cluster.{service}.ssl.handshake"))
            .await
            .unwrap_or(0);
        assert!(
            handshakes >= 1,
            "Envoy made no TLS handshake to {service}'s nodes"
        );
    }
    drop(envoy);

    // Without TLS between nodes, TLS-only public listeners could not reach
    // each other: the config is refused.
    let text = std::fs::read_to_string(&cluster.nodes["db-1"].config_path).unwrap();
    let off = dir.path().join("off.yaml");
    std::fs::write(
        &off,
        text.replace("bootstrap: true}", "bootstrap: true, tls: off}"),
    )
    .unwrap();
    let (code, _, err) = run_cli(BINARY.as_ref(), &["check-config", "--config", s(&off)]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("tls.public") && err.contains("cluster.tls off"),
        "{err}"
    );
}
