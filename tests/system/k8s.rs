//! The Kubernetes manifests (`manifests/`), without a Kubernetes cluster:
//! rendered by kustomize, validated against Kubernetes' schema, and played
//! on this machine from what they render (see `support::pods`).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::pods::{Play, Rendered, kubernetes_validate};

/// Every container of every workload.
fn containers(r: &Rendered) -> Vec<(String, Value)> {
    r.workloads()
        .flat_map(|w| {
            let name = w["metadata"]["name"].as_str().unwrap().to_owned();
            let spec = &w["spec"]["template"]["spec"];
            spec["containers"]
                .as_array()
                .unwrap()
                .iter()
                .chain(spec["initContainers"].as_array().into_iter().flatten())
                .map(move |c| (name.clone(), c.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The kustomization in `dir`, rendered and validated strictly against
/// Kubernetes' schema.
fn rendered_and_valid(dir: &str) -> Rendered {
    let r = Rendered::of(dir);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rendered.yaml");
    std::fs::write(&file, &r.yaml).unwrap();
    let out = std::process::Command::new(kubernetes_validate())
        .args(["--strict", "--quiet", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate --strict refused {dir} rendered:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

/// The sidecar overlay: every service pod has an Envoy native sidecar on
/// gen-envoy's sidecar bootstrap, and its flotilla listens on loopback.
#[test]
fn the_sidecar_overlay_renders_validates_and_puts_envoy_beside_each_service() {
    let r = rendered_and_valid(SIDECARS);
    for service in ["accounts", "kv", "echo"] {
        let spec = &r.object("Deployment", service)["spec"]["template"]["spec"];
        let sidecar = &spec["initContainers"][0];
        assert_eq!(sidecar["restartPolicy"], "Always", "{service}");
        assert!(
            sidecar["image"]
                .as_str()
                .unwrap()
                .starts_with("envoyproxy/envoy:"),
            "{service}"
        );
        assert!(sidecar["startupProbe"].is_object(), "{service}");
        assert!(
            !spec["containers"][0]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["containerPort"] == 8080),
            "{service}: the pod's port 8080 is the sidecar's"
        );
    }
    let config = r
        .objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("flotilla-config-")
        })
        .unwrap();
    for service in ["accounts", "kv", "echo"] {
        let text = config["data"][format!("{service}.yaml")].as_str().unwrap();
        assert!(text.contains("public: \"127.0.0.1:8090\""), "{text}");
    }
    // The front Envoy is the base's but for its bootstrap: it reaches the
    // pods through their sidecars, which take plaintext, so its clusters
    // are not TLS (no upstream TLS metadata for the xDS server).
    let base = Rendered::of("manifests");
    let without_bootstrap = |r: &Rendered| {
        let mut spec = r.object("Deployment", "envoy")["spec"].clone();
        for volume in spec["template"]["spec"]["volumes"].as_array_mut().unwrap() {
            if volume["name"] == "bootstrap" {
                volume["configMap"]["name"] = Value::Null;
            }
        }
        spec
    };
    assert_eq!(without_bootstrap(&r), without_bootstrap(&base));
    let bootstrap = |r: &Rendered| {
        r.objects
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .starts_with("flotilla-envoy-")
                    && !o["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .starts_with("flotilla-envoy-sidecar")
            })
            .unwrap()["data"]["envoy.yaml"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(bootstrap(&base).contains("flotilla.upstream_tls_dir"));
    assert!(!bootstrap(&r).contains("flotilla.upstream_tls_dir"));
}

const SIDECARS: &str = "manifests/overlays/sidecars";

#[test]
fn the_manifests_render_validate_strictly_and_keep_to_the_rules() {
    let r = rendered_and_valid("manifests");

    for o in &r.objects {
        let kind = o["kind"].as_str().unwrap();
        if kind != "Namespace" {
            assert_eq!(
                o["metadata"]["namespace"], "flotilla",
                "{kind} outside the namespace"
            );
        }
        assert_ne!(
            kind, "Secret",
            "no Secret is committed: scripts/k8s-secrets makes it"
        );
    }
    let db = r.object("StatefulSet", "flotilla-db");
    assert_eq!(db["spec"]["replicas"], 3);
    assert_eq!(db["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(db["spec"]["serviceName"], "flotilla-db");
    assert!(db["spec"]["volumeClaimTemplates"][0]["spec"]["resources"].is_object());
    assert_eq!(
        r.object("Service", "flotilla-db")["spec"]["clusterIP"],
        "None"
    );
    assert_eq!(
        r.object("PodDisruptionBudget", "flotilla-db")["spec"]["maxUnavailable"],
        1
    );
    assert_eq!(
        r.object("Service", "flotilla-xds")["spec"]["ports"][0]["port"],
        18000
    );
    assert_eq!(
        r.object("Service", "flotilla-envoy")["spec"]["type"],
        "LoadBalancer"
    );
    for service in ["accounts", "kv", "echo", "envoy", "echo-client"] {
        r.object("Deployment", service);
    }

    let pod_security = |w: &Value| w["spec"]["template"]["spec"]["securityContext"].clone();
    for w in r.workloads() {
        let name = &w["metadata"]["name"];
        let sc = pod_security(w);
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        let flotilla = w["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .starts_with("flotilla");
        assert!(
            !flotilla
                || w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                    .as_u64()
                    .is_some_and(|g| g >= 15),
            "{name}: the grace period covers deregistration, the drain and requests in flight"
        );
    }
    for (workload, c) in containers(&r) {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{workload}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{workload}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{workload}"
        );
        assert!(c["resources"]["requests"].is_object(), "{workload}");
        assert!(c["resources"]["limits"].is_object(), "{workload}");
        if c["image"].as_str().unwrap().starts_with("flotilla") {
            assert_eq!(
                c["readinessProbe"]["httpGet"]["path"], "/readyz",
                "{workload}"
            );
            assert_eq!(
                c["livenessProbe"]["httpGet"]["path"], "/healthz",
                "{workload}"
            );
            assert!(c["startupProbe"].is_object(), "{workload}");
        }
    }
    // The front Envoy's bootstrap is what gen-envoy writes (CI checks it
    // byte for byte with scripts/gen-envoy-examples --check).
    let envoy = r
        .objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("flotilla-envoy-")
        })
        .unwrap();
    assert!(
        envoy["data"]["envoy.yaml"]
            .as_str()
            .unwrap()
            .contains("flotilla-xds.flotilla.svc.cluster.local")
    );
}

/// Every flotilla pod's config passes `flotilla check-config` in the pod's
/// sandbox: its env (POD_NAME, POD_IP), its ConfigMap, its Secret items.
#[tokio::test]
async fn every_pods_config_passes_check_config_with_the_pods_environment() {
    check_configs("manifests").await;
}

/// The same with the sidecar overlay's configs (flotilla on loopback,
/// advertising the sidecar's inbound listener).
#[tokio::test]
async fn every_pods_config_passes_check_config_with_sidecars_too() {
    check_configs(SIDECARS).await;
}

async fn check_configs(dir: &str) {
    let mut play = Play::of(dir);
    let workloads: Vec<String> = play
        .rendered
        .workloads()
        .filter(|w| {
            w["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .starts_with("flotilla")
        })
        .map(|w| w["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(workloads.len(), 4, "{workloads:?}");
    for workload in workloads {
        let pod = format!("{workload}-0");
        let ip = play
            .start_with(&workload, &pod, |args| {
                assert_eq!(args[0], "serve");
                std::iter::once("check-config".to_owned())
                    .chain(args[1..].iter().cloned())
                    .collect()
            })
            .ip;
        let (status, log) = play.exited(&pod, Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "check-config of {workload} failed:\n{log}"
        );
        assert!(log.contains(&format!("node.id: {pod}")), "{log}");
        assert!(
            log.contains(&format!("others reach it at {ip}:8080")),
            "{log}"
        );
    }
}

/// What one request through Envoy saw.
struct Seen {
    at: Instant,
    node: Option<String>,
}

/// The whole deployment played from the manifests: three db members
/// started in reverse order, the services joining with their tokens, a
/// real Envoy on the ConfigMap's bootstrap fed over ADS, and the proxyless
/// client; then echo scales 2 → 5 → 1 under steady load, and a db member
/// is lost and comes back on its volume under a new IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_played_scale_echo_with_zero_failed_requests() {
    let mut play = Play::new();
    play.start_db_members().await;
    let mut echo_pods = Vec::new();
    for (workload, replicas) in [("accounts", 1), ("kv", 1), ("echo", 2)] {
        for i in 0..replicas {
            let name = format!("{workload}-5d8f-{i}");
            play.start(workload, &name);
            if workload == "echo" {
                echo_pods.push(name);
            }
        }
    }
    for name in play.pods.keys().cloned().collect::<Vec<_>>() {
        play.wait_ready(&name, Duration::from_secs(60)).await;
    }
    let envoy_ip = play.start("envoy", "envoy-7c9d-0").ip;
    play.wait_ready("envoy-7c9d-0", Duration::from_secs(60))
        .await;
    let url = format!("http://{envoy_ip}:10000/api/echo");
    crate::support::wait_until("echo through Envoy", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            let r = crate::support::http()
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(r.status().to_string())
            }
        }
    })
    .await;
    play.start("echo-client", "echo-client-6b7f-0");

    // Steady load through Envoy: four callers, each call recorded.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (seen, failures, stop, url) =
            (seen.clone(), failures.clone(), stop.clone(), url.clone());
        callers.push(tokio::spawn(async move {
            let http = crate::support::http();
            while !stop.is_cancelled() {
                match http.get(&url).timeout(Duration::from_secs(10)).send().await {
                    Ok(r) if r.status().is_success() => {
                        let body: Value = r.json().await.unwrap_or_default();
                        let at = Instant::now();
                        seen.lock().unwrap().push(Seen {
                            at,
                            node: body["node"].as_str().map(str::to_owned),
                        });
                    }
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        failures.lock().unwrap().push(format!("{status}: {body}"));
                    }
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Scale up 2 → 5.
    let mut ready_at: BTreeMap<String, Instant> = BTreeMap::new();
    for i in 2..5 {
        let name = format!("echo-5d8f-{i}");
        play.start("echo", &name);
        echo_pods.push(name);
    }
    for name in &echo_pods[2..] {
        let at = play.wait_ready(name, Duration::from_secs(60)).await;
        ready_at.insert(name.clone(), at);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Scale down 5 → 1: the kubelet terminates four pods at once.
    let exited_at = play.terminate_all(&echo_pods[..4]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A db member lost with its node, back on its volume under a new IP.
    play.kill("flotilla-db-2");
    tokio::time::sleep(Duration::from_secs(1)).await;
    play.start("flotilla-db", "flotilla-db-2");
    play.wait_ready("flotilla-db-2", Duration::from_secs(60))
        .await;
    let db2 = play.pods["flotilla-db-2"].ip;
    crate::support::wait_until(
        "flotilla-db-2 follows the leader again",
        Duration::from_secs(30),
        || async move {
            let s: Value = crate::support::http()
                .get(format!("http://{db2}:8081/status"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let leader = &s["cluster"]["leader"];
            if leader.is_u64() {
                Ok(())
            } else {
                Err(format!("no leader yet: {s}"))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    for c in callers {
        c.await.unwrap();
    }

    let client_log = std::fs::read_to_string(&play.pods["echo-client-6b7f-0"].log).unwrap();
    play.kill("echo-client-6b7f-0");
    // The front Envoy reached the pods over TLS (its bootstrap's node
    // metadata asks the xDS server for it).
    let handshakes = play.envoy_admin("envoy-7c9d-0", "/stats?filter=^cluster.echo.ssl.handshake$");
    let handshakes: u64 = handshakes
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        handshakes >= 2,
        "the front Envoy made {handshakes} TLS handshakes to echo's pods"
    );

    let failures = failures.lock().unwrap();
    let seen = seen.lock().unwrap();
    // Each pod's first and last answer through Envoy, and how many.
    let mut answers: BTreeMap<&str, (Instant, Instant, usize)> = BTreeMap::new();
    for s in seen.iter() {
        let a = answers
            .entry(s.node.as_deref().unwrap_or("?"))
            .or_insert((s.at, s.at, 0));
        *a = (a.0.min(s.at), a.1.max(s.at), a.2 + 1);
    }
    eprintln!(
        "requests through Envoy by pod: {:?}; failed: {}",
        answers.iter().map(|(n, a)| (n, a.2)).collect::<Vec<_>>(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests through Envoy failed during the scaling: {:?}",
        failures.len(),
        failures.len() + seen.len(),
        &failures[..failures.len().min(5)]
    );
    for (name, ready) in &ready_at {
        let (first, _, _) = answers
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} never answered through Envoy"));
        let after = first.saturating_duration_since(*ready);
        eprintln!("{name}: first answer {after:?} after it was ready");
        assert!(
            after < Duration::from_secs(1),
            "{name} answered through Envoy {after:?} after it was ready"
        );
    }
    for (name, exited) in &exited_at {
        let last = answers.get(name.as_str()).map(|a| a.1);
        eprintln!(
            "{name}: last answer {:?} before it exited",
            last.map(|l| exited.saturating_duration_since(l))
        );
        assert!(
            last.is_none_or(|l| l < *exited),
            "a request reached {name} after it exited"
        );
    }
    // The proxyless client followed the same scaling, without a failure.
    let lines: Vec<Value> = client_log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v.get("nodes").is_some())
        .collect();
    let answered: std::collections::BTreeSet<String> = lines
        .iter()
        .flat_map(|l| l["nodes"].as_object().unwrap().keys().cloned())
        .collect();
    for name in &echo_pods {
        assert!(
            answered.contains(name),
            "the proxyless client never reached {name}: {answered:?}\n{client_log}"
        );
    }
    assert_eq!(
        lines.last().map(|l| l["failed"].clone()),
        Some(Value::from(0)),
        "{client_log}"
    );
}

/// The sidecar overlay played: every service pod runs its Envoy sidecar
/// beside flotilla (on loopback). A client in the kv pod calls echo through
/// its sidecar's outbound listener while echo scales 2 → 5 → 1: no call
/// fails, every echo pod's inbound sidecar carries calls, and the xDS
/// server shows each sidecar with its pod in /status and CSDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sidecars_a_kv_pod_calls_echo_sidecar_to_sidecar_while_echo_scales() {
    use envoy_types::pb::envoy::service::status::v3::{
        ClientStatusRequest,
        client_status_discovery_service_client::ClientStatusDiscoveryServiceClient,
    };

    let mut play = Play::of(SIDECARS);
    play.start_db_members().await;
    let mut echo_pods: Vec<String> = (0..2).map(|i| format!("echo-5d8f-{i}")).collect();
    let kv = "kv-4b2c-0".to_owned();
    for (workload, name) in [("accounts", "accounts-7d1e-0"), ("kv", kv.as_str())]
        .into_iter()
        .chain(echo_pods.iter().map(|n| ("echo", n.as_str())))
    {
        play.start(workload, name);
    }
    for name in play.pods.keys().cloned().collect::<Vec<_>>() {
        play.wait_ready(&name, Duration::from_secs(60)).await;
    }

    // The client in the kv pod, through its sidecar's outbound listener.
    let client_log = play.dir.path().join("kv-client.log");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests/base/client/echo_client.py");
    let mut client = play.exec(
        &kv,
        &[
            crate::support::pods::grpc_python().display().to_string(),
            script.display().to_string(),
            "--target".into(),
            "127.0.0.1:15001".into(),
            "inf".into(),
            "0.01".into(),
        ],
        &client_log,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Scale up 2 → 5.
    for i in 2..5 {
        let name = format!("echo-5d8f-{i}");
        play.start("echo", &name);
        echo_pods.push(name);
    }
    for name in &echo_pods[2..] {
        play.wait_ready(name, Duration::from_secs(60)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The xDS server knows every sidecar by its pod: /status and CSDS.
    let db0 = play.pods["flotilla-db-0"].ip;
    let status: Value = crate::support::http()
        .get(format!("http://{db0}:8081/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown: std::collections::BTreeMap<String, Value> = status["xds"]["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["sidecar"].is_object())
        .map(|c| {
            (
                c["node_id"].as_str().unwrap().to_owned(),
                c["sidecar"].clone(),
            )
        })
        .collect();
    let service_pods: Vec<String> = play
        .pods
        .keys()
        .filter(|p| !p.starts_with("flotilla-db"))
        .cloned()
        .collect();
    assert_eq!(
        shown.keys().cloned().collect::<Vec<_>>(),
        service_pods,
        "{status}"
    );
    for (pod, sidecar) in &shown {
        assert_eq!(sidecar["pod"], pod.as_str());
        assert_eq!(
            sidecar["inbound"],
            format!("{}:8080", play.pods[pod].ip),
            "{sidecar}"
        );
    }
    let csds =
        ClientStatusDiscoveryServiceClient::new(play.xds_channel(&format!("{db0}:18000")).await)
            .fetch_client_status(ClientStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
    let mut in_csds: Vec<(String, String)> = csds
        .config
        .iter()
        .filter_map(|c| c.node.as_ref())
        .filter_map(|n| {
            let m = &n.metadata.as_ref()?.fields;
            let text = |k: &str| match m.get(k)?.kind.as_ref()? {
                envoy_types::pb::google::protobuf::value::Kind::StringValue(s) => Some(s.clone()),
                _ => None,
            };
            (text("flotilla.role")? == "sidecar")
                .then(|| (n.id.clone(), text("flotilla.pod_ip")))?
                .into()
        })
        .map(|(id, ip): (String, Option<String>)| (id, ip.unwrap_or_default()))
        .collect();
    in_csds.sort();
    let expected: Vec<(String, String)> = service_pods
        .iter()
        .map(|p| (p.clone(), play.pods[p].ip.to_string()))
        .collect();
    assert_eq!(in_csds, expected);

    // Every echo pod's inbound sidecar carried calls (its flotilla listens
    // on loopback only: nothing else reaches it).
    for name in &echo_pods {
        let stats = play.envoy_admin(name, "/stats?filter=^http.inbound.downstream_rq_total$");
        let count: u64 = stats
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}'s sidecar stats: {stats}"));
        eprintln!("{name}: {count} requests through its inbound sidecar");
        assert!(count > 0, "{name}'s inbound sidecar carried nothing");
    }

    // Scale down 5 → 1.
    play.terminate_all(&echo_pods[..4]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outbound = play.envoy_admin(&kv, "/stats?filter=^http.outbound.downstream_rq_total$");
    let _ = client.kill();
    let _ = client.wait();

    let log = std::fs::read_to_string(&client_log).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let errors: Vec<&Value> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    let answered: BTreeMap<String, u64> = lines
        .iter()
        .filter_map(|l| l["nodes"].as_object())
        .flatten()
        .fold(BTreeMap::new(), |mut m, (node, n)| {
            *m.entry(node.clone()).or_default() += n.as_u64().unwrap();
            m
        });
    eprintln!(
        "calls from {kv} through its sidecar, by echo pod: {answered:?}; failed: {}; kv sidecar: {}",
        errors.len(),
        outbound.trim()
    );
    assert!(
        errors.is_empty(),
        "calls failed through the sidecars:\n{log}"
    );
    assert_eq!(
        lines.last().map(|l| l["failed"].clone()),
        Some(Value::from(0)),
        "{log}"
    );
    for name in &echo_pods {
        assert!(
            answered.contains_key(name),
            "{name} never answered the kv pod's calls: {answered:?}"
        );
    }
}
