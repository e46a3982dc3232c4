//! The manifests of `manifests/`, rendered by kustomize and played on this
//! machine as a kubelet would run them, without a Kubernetes cluster:
//!
//! - every pod is a process of its own (the real flotilla binary, the real
//!   Envoy, the real grpcio client) in a network namespace of its own, with
//!   its own IP on one private subnet (`10.214.<net>.0/24`, a bridge inside
//!   a namespace of its own, so nothing crosses this machine's firewall);
//! - with the env its pod spec gives (the downward API's `metadata.name`
//!   and `status.podIP` included), its args, and its volumes bind-mounted
//!   where the spec mounts them: the rendered ConfigMaps, the Secret's
//!   items (made by `scripts/k8s-secrets`), an emptyDir, or the pod's own
//!   volume claim, kept across restarts;
//! - cluster DNS is a hosts file mounted over `/etc/hosts` in every pod: a
//!   StatefulSet pod's stable name, and the `flotilla-xds` Service, point at
//!   the pods' current IPs, rewritten when a pod comes back elsewhere;
//! - readiness is the pod's own readiness probe; a stop is SIGTERM, then
//!   SIGKILL after `terminationGracePeriodSeconds`, as the kubelet does.
//!
//! It needs root (`ip netns`, mount namespaces), as CI has; the mount points
//! the pods use (`/etc/flotilla`, `/etc/envoy`, `/etc/echo-client`,
//! `/var/lib/flotilla`) are left as empty directories on this machine.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::BINARY;

pub const NAMESPACE: &str = "flotilla";

/// The checkout the tests run in.
pub fn checkout() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(path: &str) -> PathBuf {
    let tool = checkout().join(path);
    assert!(
        tool.exists(),
        "{} is not installed: run scripts/install-test-tools (scripts/test does)",
        tool.display()
    );
    tool
}

/// `kubectl` with kustomize, from the test tools.
pub fn kubectl() -> PathBuf {
    tool(".venv/k8s/bin/kubectl")
}

/// Python with grpcio, from the test tools.
pub fn grpc_python() -> PathBuf {
    tool(".venv/grpc/bin/python")
}

/// Python with openapi-spec-validator, jsonschema and PyYAML, from the
/// test tools.
pub fn openapi_python() -> PathBuf {
    tool(".venv/openapi/bin/python")
}

/// `openapi-spec-validator`, from the test tools.
pub fn openapi_validator() -> PathBuf {
    tool(".venv/openapi/bin/openapi-spec-validator")
}

/// `kubernetes-validate`, from the test tools.
pub fn kubernetes_validate() -> PathBuf {
    tool(".venv/k8s/bin/kubernetes-validate")
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}\nthe manifests' play needs root (network and mount namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The objects `kubectl kustomize` renders from `dir` (relative to the
/// repository), as YAML text and as values.
pub struct Rendered {
    pub yaml: String,
    pub objects: Vec<Value>,
}

impl Rendered {
    pub fn of(dir: &str) -> Rendered {
        let out = Command::new(kubectl())
            .args(["kustomize", checkout().join(dir).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize {dir} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let yaml = String::from_utf8(out.stdout).unwrap();
        let objects = serde_yaml_ng::Deserializer::from_str(&yaml)
            .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
            .collect();
        Rendered { yaml, objects }
    }

    pub fn object(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
    }

    /// The workloads (Deployments and StatefulSets).
    pub fn workloads(&self) -> impl Iterator<Item = &Value> {
        self.objects
            .iter()
            .filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet")
    }

    /// A ConfigMap by the name the manifests give it (kustomize appends a
    /// hash of its content).
    fn config_map(&self, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ConfigMap {name} in the rendered manifests"))
    }
}

/// A running pod.
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    ns: String,
    /// Its main container (the first), and that container's log.
    child: Child,
    pub log: PathBuf,
    /// Its native sidecars (init containers with `restartPolicy: Always`):
    /// started before the main container, stopped after it.
    sidecars: Vec<Container>,
}

/// A sidecar container's process.
struct Container {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Pod {
    /// Kills every process of the pod and removes its network.
    fn kill_all(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for c in &mut self.sidecars {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .status();
    }
}

/// The manifests played on this machine.
pub struct Play {
    pub rendered: Rendered,
    net: u8,
    next_ip: u8,
    pub dir: tempfile::TempDir,
    hosts: PathBuf,
    secrets: PathBuf,
    pub pods: BTreeMap<String, Pod>,
    dns: BTreeMap<String, Ipv4Addr>,
    /// The Service flotilla-xds's endpoint (a db pod).
    xds_pod: String,
}

impl Play {
    /// A gRPC channel to the xDS listener at `addr` (a db pod's
    /// `IP:18000`), over the mutual TLS it requires, with the Envoys'
    /// certificate from the Secret's values.
    pub async fn xds_channel(&self, addr: &str) -> tonic::transport::Channel {
        use flotilla::tls::{credentials::Material, identity::Identity, peer};
        let read = |key: &str| std::fs::read_to_string(self.secrets.join(key)).unwrap();
        let tls = peer::PeerTls::client(
            peer::DEFAULT_DOMAIN,
            Identity::envoy("envoy").unwrap(),
            Material {
                chain_pem: read("envoy.crt"),
                key_pem: read("envoy.key"),
                roots_pem: read("ca.crt"),
            },
        )
        .unwrap();
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector(peer::connector(move || tls.client_config(), None))
            .await
            .unwrap()
    }

    /// Renders `manifests/`, makes the Secret's values and the network.
    pub fn new() -> Play {
        Play::of("manifests")
    }

    /// `new`, for the kustomization in `dir` (an overlay).
    pub fn of(dir: &str) -> Play {
        let rendered = Rendered::of(dir);
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let out = Command::new(checkout().join("scripts/k8s-secrets"))
            .arg(&secrets)
            .env("FLOTILLA_BIN", BINARY)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/k8s-secrets failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The switch's namespace name is the lock on the network number.
        let mut net = (std::process::id() % 200) as u8;
        let mut tries = 0;
        while !Command::new("ip")
            .args(["netns", "add", &format!("k8s{net}sw")])
            .status()
            .is_ok_and(|s| s.success())
        {
            tries += 1;
            assert!(
                tries < 200,
                "no free network number (ip netns add fails: root?)"
            );
            net = (net + 1) % 200;
        }
        let sw = format!("k8s{net}sw");
        let exec_sw = |args: &[&str]| {
            let mut all = vec!["netns", "exec", sw.as_str(), "ip"];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        exec_sw(&["link", "add", "br0", "type", "bridge"]);
        exec_sw(&["link", "set", "br0", "up"]);
        // This process (the test's clients) on the subnet too, at .254.
        let (host, inside) = (format!("k8s{net}h"), format!("k8s{net}hs"));
        run(
            "ip",
            &[
                "link", "add", &host, "type", "veth", "peer", "name", &inside,
            ],
        );
        run("ip", &["link", "set", &inside, "netns", &sw]);
        exec_sw(&["link", "set", &inside, "master", "br0"]);
        exec_sw(&["link", "set", &inside, "up"]);
        run(
            "ip",
            &["addr", "add", &format!("10.214.{net}.254/24"), "dev", &host],
        );
        run("ip", &["link", "set", &host, "up"]);
        let hosts = dir.path().join("hosts");
        let play = Play {
            rendered,
            net,
            next_ip: 1,
            hosts,
            secrets,
            pods: BTreeMap::new(),
            dns: BTreeMap::new(),
            xds_pod: String::new(),
            dir,
        };
        play.write_hosts();
        play
    }

    fn write_hosts(&self) {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (name, ip) in &self.dns {
            text.push_str(&format!("{ip} {name}\n"));
        }
        if let Some(ip) = self.dns.get(&format!(
            "{}.flotilla-db.{NAMESPACE}.svc.cluster.local",
            self.xds_pod
        )) {
            text.push_str(&format!(
                "{ip} flotilla-xds.{NAMESPACE}.svc.cluster.local flotilla-xds\n"
            ));
        }
        // In place: the pods have this very file mounted.
        std::fs::write(&self.hosts, text).unwrap();
    }

    /// The flotilla-xds Service's endpoint is now db pod `pod`.
    pub fn route_xds_to(&mut self, pod: &str) {
        self.xds_pod = pod.to_owned();
        self.write_hosts();
    }

    fn workload(&self, workload: &str) -> Value {
        self.rendered
            .workloads()
            .find(|w| w["metadata"]["name"] == workload)
            .unwrap_or_else(|| panic!("no workload {workload}"))
            .clone()
    }

    /// Starts pod `name` of `workload` (a Deployment or StatefulSet) on a
    /// new IP: its namespace, link, volumes and processes. Its native
    /// sidecars start first, each waited for until its startup probe
    /// passes, as the kubelet does before it starts the main container.
    pub fn start(&mut self, workload: &str, name: &str) -> &Pod {
        let spec = self.workload(workload);
        let (ip, ns) = self.pod_network(&spec, name);
        let pod_spec = &spec["spec"]["template"]["spec"];
        let mut sidecars = Vec::new();
        for c in pod_spec["initContainers"].as_array().into_iter().flatten() {
            if c["restartPolicy"] != "Always" {
                // A run-to-completion init container (the echo client's pip
                // install) is what the test tools' venvs already hold.
                continue;
            }
            let (child, log) = self.spawn(&spec, c, name, ip, &ns, |a| a);
            let mut sidecar = Container {
                name: c["name"].as_str().unwrap().to_owned(),
                child,
                log,
            };
            wait_started(&mut sidecar, c, ip);
            sidecars.push(sidecar);
        }
        let (child, log) = self.spawn(&spec, &pod_spec["containers"][0], name, ip, &ns, |a| a);
        self.pods.insert(
            name.to_owned(),
            Pod {
                name: name.to_owned(),
                ip,
                ns,
                child,
                log,
                sidecars,
            },
        );
        &self.pods[name]
    }

    /// The StatefulSet's three db members, started in reverse order (the
    /// bootstrap must not depend on it) and waited for; flotilla-xds then
    /// points at flotilla-db-0.
    pub async fn start_db_members(&mut self) {
        self.route_xds_to("flotilla-db-0");
        for i in (0..3).rev() {
            self.start("flotilla-db", &format!("flotilla-db-{i}"));
        }
        for i in 0..3 {
            self.wait_ready(&format!("flotilla-db-{i}"), Duration::from_secs(90))
                .await;
        }
        self.route_xds_to("flotilla-db-0");
    }

    /// Only the main container of pod `name`, its args rewritten by `args`
    /// (`check-config` in the pod's sandbox).
    pub fn start_with(
        &mut self,
        workload: &str,
        name: &str,
        args: impl Fn(Vec<String>) -> Vec<String>,
    ) -> &Pod {
        let spec = self.workload(workload);
        let (ip, ns) = self.pod_network(&spec, name);
        let main = spec["spec"]["template"]["spec"]["containers"][0].clone();
        let (child, log) = self.spawn(&spec, &main, name, ip, &ns, args);
        self.pods.insert(
            name.to_owned(),
            Pod {
                name: name.to_owned(),
                ip,
                ns,
                child,
                log,
                sidecars: Vec::new(),
            },
        );
        &self.pods[name]
    }

    /// A pod's network namespace on the bridge, and its DNS name if a
    /// StatefulSet's.
    fn pod_network(&mut self, spec: &Value, name: &str) -> (Ipv4Addr, String) {
        let ip = Ipv4Addr::new(10, 214, self.net, self.next_ip);
        self.next_ip += 1;
        let ns = format!("k8s{}p{}", self.net, ip.octets()[3]);
        run("ip", &["netns", "add", &ns]);
        let (outside, inside) = (
            format!("k8s{}v{}", self.net, ip.octets()[3]),
            format!("k8s{}e{}", self.net, ip.octets()[3]),
        );
        run(
            "ip",
            &[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ],
        );
        let sw = format!("k8s{}sw", self.net);
        run("ip", &["link", "set", &outside, "netns", &sw]);
        run(
            "ip",
            &[
                "netns", "exec", &sw, "ip", "link", "set", &outside, "master", "br0",
            ],
        );
        run(
            "ip",
            &["netns", "exec", &sw, "ip", "link", "set", &outside, "up"],
        );
        run("ip", &["link", "set", &inside, "netns", &ns]);
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", &format!("{ip}/24"), "dev", &inside],
            vec!["link", "set", &inside, "up"],
        ] {
            let mut all = vec!["netns", "exec", ns.as_str(), "ip"];
            all.extend(args.iter().map(|s| &**s));
            run("ip", &all);
        }
        if spec["kind"] == "StatefulSet" {
            let service = spec["spec"]["serviceName"].as_str().unwrap();
            self.dns.insert(
                format!("{name}.{service}.{NAMESPACE}.svc.cluster.local"),
                ip,
            );
            self.write_hosts();
        }
        (ip, ns)
    }

    /// One container of pod `name`, as a process in the pod's namespace.
    /// Its log is `<pod dir>/<container>.<ip's last octet>.log`.
    fn spawn(
        &self,
        spec: &Value,
        container: &Value,
        name: &str,
        ip: Ipv4Addr,
        ns: &str,
        args: impl Fn(Vec<String>) -> Vec<String>,
    ) -> (Child, PathBuf) {
        let pod_spec = &spec["spec"]["template"]["spec"];
        let pod_dir = self.dir.path().join("pods").join(name);
        let mut mounts: Vec<(PathBuf, String)> = Vec::new();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume_name = m["name"].as_str().unwrap();
            let volume = pod_spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == volume_name);
            let source = match volume {
                Some(v) if v.get("configMap").is_some() => {
                    let dir = pod_dir.join("volumes").join(volume_name);
                    let data = &self
                        .rendered
                        .config_map(v["configMap"]["name"].as_str().unwrap())["data"];
                    std::fs::create_dir_all(&dir).unwrap();
                    for (key, path) in items(v["configMap"]["items"].as_array(), data) {
                        std::fs::write(dir.join(path), data[&key].as_str().unwrap()).unwrap();
                    }
                    dir
                }
                Some(v) if v.get("secret").is_some() => {
                    let dir = pod_dir.join("volumes").join(volume_name);
                    std::fs::create_dir_all(&dir).unwrap();
                    for item in v["secret"]["items"].as_array().unwrap() {
                        let key = item["key"].as_str().unwrap();
                        std::fs::copy(
                            self.secrets.join(key),
                            dir.join(item["path"].as_str().unwrap()),
                        )
                        .unwrap_or_else(|e| panic!("secret key {key}: {e}"));
                    }
                    dir
                }
                Some(v) if v.get("emptyDir").is_some() => {
                    let dir = pod_dir.join("volumes").join(volume_name);
                    let _ = std::fs::remove_dir_all(&dir);
                    std::fs::create_dir_all(&dir).unwrap();
                    dir
                }
                // A volume claim: the pod's own, kept when it comes back.
                None => {
                    let dir = self
                        .dir
                        .path()
                        .join("claims")
                        .join(format!("{volume_name}-{name}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    dir
                }
                Some(v) => panic!("volume kind of {v} is not played"),
            };
            mounts.push((source, m["mountPath"].as_str().unwrap().to_owned()));
        }

        let mut env: Vec<(String, String)> = Vec::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let value = match (
                &e["value"],
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Value::String(v), _) => v.clone(),
                (_, Some("metadata.name")) => name.to_owned(),
                (_, Some("status.podIP")) => ip.to_string(),
                (_, Some(label)) if label.starts_with("metadata.labels['") => {
                    let key = &label["metadata.labels['".len()..label.len() - 2];
                    spec["spec"]["template"]["metadata"]["labels"][key]
                        .as_str()
                        .unwrap_or_else(|| panic!("env {e}: no label {key}"))
                        .to_owned()
                }
                other => panic!("env {e} is not played: {other:?}"),
            };
            env.push((e["name"].as_str().unwrap().to_owned(), value));
        }
        let expand = |arg: &str| {
            env.iter()
                .fold(arg.to_owned(), |a, (k, v)| a.replace(&format!("$({k})"), v))
        };
        let image = container["image"].as_str().unwrap();
        let mut command: Vec<String> = if image.starts_with("flotilla") {
            vec![BINARY.to_owned()]
        } else if image.starts_with("envoyproxy/envoy") {
            // The image runs Envoy as its entrypoint, one per container;
            // here beside other Envoys, on the pod's one core.
            vec![
                super::envoy::envoy_binary().display().to_string(),
                "--disable-hot-restart".into(),
                "--concurrency".into(),
                "1".into(),
            ]
        } else if image.starts_with("python") {
            let cmd = container["command"].as_array().unwrap();
            assert_eq!(cmd[0], "python");
            let mut c = vec![grpc_python().display().to_string()];
            c.extend(cmd[1..].iter().map(|a| expand(a.as_str().unwrap())));
            c
        } else {
            panic!("image {image} is not played")
        };
        command.extend(args(
            container["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| expand(a.as_str().unwrap()))
                .collect(),
        ));

        // The program is opened before the volumes are mounted, and the
        // volumes over a directory that holds other sources (an emptyDir on
        // /tmp, where this checkout may be) are mounted last, so that no
        // mount hides what the pod runs or another mount's source.
        let program = PathBuf::from(&command[0]);
        let sources: Vec<PathBuf> = mounts.iter().map(|(s, _)| s.clone()).collect();
        mounts.sort_by_key(|(_, target)| {
            program.starts_with(target) || sources.iter().any(|s| s.starts_with(target))
        });
        let hidden = mounts.iter().any(|(_, t)| program.starts_with(t));
        // A program a mount would hide runs from the descriptor opened
        // before (a venv's Python must keep its path, and is never hidden).
        let mut script = String::from(if hidden {
            "set -e\nexec 3<\"$1\"\nshift\n"
        } else {
            "set -e\n"
        });
        script.push_str(&format!(
            "mount --bind {} /etc/hosts\n",
            self.hosts.display()
        ));
        for (source, target) in &mounts {
            script.push_str(&format!(
                "mkdir -p {target} && mount --bind {} {target}\n",
                source.display()
            ));
        }
        script.push_str(if hidden {
            "exec /proc/self/fd/3 \"$@\"\n"
        } else {
            "exec \"$@\"\n"
        });
        std::fs::create_dir_all(&pod_dir).unwrap();
        let log = pod_dir.join(format!(
            "{}.{}.log",
            container["name"].as_str().unwrap(),
            ip.octets()[3]
        ));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &script, "sh"])
            .args(&command)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        (child, log)
    }

    /// Runs `command` in pod `name`'s network (as `kubectl exec` would, in
    /// a container that has it), its output to `log`.
    pub fn exec(&self, name: &str, command: &[String], log: &std::path::Path) -> Child {
        let out = std::fs::File::create(log).unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.pods[name].ns])
            .args(command)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap()
    }

    /// GET `path` from the admin interface of pod `name`'s Envoy (the front
    /// Envoy's, or a service pod's sidecar's), on the pod's loopback,
    /// 127.0.0.1:9901.
    pub fn envoy_admin(&self, name: &str, path: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.pods[name].ns, "curl", "-sf"])
            .arg(format!("http://127.0.0.1:9901{path}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}'s Envoy admin {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The kubelet's readiness probes of `pod`'s containers (the main one
    /// and its sidecars): all pass now?
    pub async fn ready(&self, name: &str) -> bool {
        let pod = &self.pods[name];
        let workload = self
            .rendered
            .workloads()
            .find(|w| name.starts_with(w["metadata"]["name"].as_str().unwrap()))
            .unwrap();
        let spec = &workload["spec"]["template"]["spec"];
        let sidecars = spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["restartPolicy"] == "Always");
        for container in std::iter::once(&spec["containers"][0]).chain(sidecars) {
            let probe = &container["readinessProbe"];
            if !probe.is_object() {
                continue;
            }
            if let Some(get) = probe.get("httpGet") {
                let url = format!(
                    "http://{}:{}{}",
                    pod.ip,
                    port(container, &get["port"]),
                    get["path"].as_str().unwrap()
                );
                if !matches!(
                    super::http().get(url).timeout(Duration::from_millis(500)).send().await,
                    Ok(r) if r.status().is_success()
                ) {
                    return false;
                }
            } else {
                let port = port(container, &probe["tcpSocket"]["port"]);
                if !tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect((pod.ip, port)),
                )
                .await
                .is_ok_and(|c| c.is_ok())
                {
                    return false;
                }
            }
        }
        true
    }

    /// Waits until `name` is ready (probed every 20 ms); when it became so.
    pub async fn wait_ready(&mut self, name: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if self.ready(name).await {
                return Instant::now();
            }
            if let Some(status) = self.pods.get_mut(name).unwrap().child.try_wait().unwrap() {
                panic!(
                    "pod {name} exited ({status}) before it was ready:\n{}",
                    self.log_of(name)
                );
            }
            assert!(
                Instant::now() < deadline,
                "pod {name} not ready within {within:?}:\n{}",
                self.log_of(name)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_of(&self, name: &str) -> String {
        let log = std::fs::read_to_string(&self.pods[name].log).unwrap_or_default();
        log.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// What the kubelet does to pods being removed: SIGTERM to each, then
    /// SIGKILL after the grace period. When each process exited.
    pub async fn terminate_all(&mut self, names: &[String]) -> BTreeMap<String, Instant> {
        let grace = names
            .iter()
            .filter_map(|name| {
                self.rendered
                    .workloads()
                    .find(|w| name.starts_with(w["metadata"]["name"].as_str().unwrap()))
                    .and_then(|w| {
                        w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64()
                    })
            })
            .max()
            .unwrap_or(30);
        let mut going: Vec<Pod> = names.iter().map(|n| self.pods.remove(n).unwrap()).collect();
        for pod in &going {
            run("kill", &["-TERM", &pod.child.id().to_string()]);
        }
        let deadline = Instant::now() + Duration::from_secs(grace);
        // When each main container exited; the pod is gone once its
        // sidecars, signalled then, have exited too.
        let mut exited = BTreeMap::new();
        let mut gone = 0;
        while gone < going.len() {
            gone = 0;
            for pod in &mut going {
                if !exited.contains_key(&pod.name) && pod.child.try_wait().unwrap().is_some() {
                    exited.insert(pod.name.clone(), Instant::now());
                    for c in &pod.sidecars {
                        run("kill", &["-TERM", &c.child.id().to_string()]);
                    }
                }
                if exited.contains_key(&pod.name)
                    && pod
                        .sidecars
                        .iter_mut()
                        .all(|c| c.child.try_wait().unwrap().is_some())
                {
                    gone += 1;
                }
            }
            if Instant::now() >= deadline {
                for pod in going {
                    pod.kill_all();
                }
                panic!(
                    "pods did not stop within their grace period of {grace} s: {exited:?} of {names:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for pod in going {
            pod.kill_all();
        }
        exited
    }

    /// Waits for `name`'s process to exit by itself; its status and log.
    pub async fn exited(
        &mut self,
        name: &str,
        within: Duration,
    ) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.pods.get_mut(name).unwrap().child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.pods[name].log).unwrap_or_default();
                self.pods.remove(name).unwrap().kill_all();
                return (status, log);
            }
            assert!(
                Instant::now() < deadline,
                "pod {name} still runs after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A pod lost at once (its node died): SIGKILL.
    pub fn kill(&mut self, name: &str) {
        self.pods.remove(name).unwrap().kill_all();
    }
}

/// The container port a probe names (by number or by name).
fn port(container: &Value, p: &Value) -> u16 {
    match p {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(named) => container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == *named)
            .map(|c| c["containerPort"].as_u64().unwrap() as u16)
            .unwrap_or_else(|| panic!("no port {named} in {container}")),
        other => panic!("probe port {other}"),
    }
}

/// Waits for a sidecar's startup probe (a TCP connect) to pass, within
/// its `failureThreshold` × `periodSeconds`, probing every 20 ms.
fn wait_started(sidecar: &mut Container, spec: &Value, ip: Ipv4Addr) {
    let probe = &spec["startupProbe"];
    let port = port(spec, &probe["tcpSocket"]["port"]);
    let within = Duration::from_secs(
        probe["failureThreshold"].as_u64().unwrap_or(3)
            * probe["periodSeconds"].as_u64().unwrap_or(10),
    );
    let deadline = Instant::now() + within;
    let addr = std::net::SocketAddr::from((ip, port));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        let log = || std::fs::read_to_string(&sidecar.log).unwrap_or_default();
        if let Some(status) = sidecar.child.try_wait().unwrap() {
            panic!(
                "sidecar {} exited ({status}) before it started:\n{}",
                sidecar.name,
                log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "sidecar {} did not listen on {addr} within {within:?}:\n{}",
            sidecar.name,
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The (key, path) pairs a ConfigMap volume mounts: its items, or every key.
fn items(listed: Option<&Vec<Value>>, data: &Value) -> Vec<(String, String)> {
    match listed {
        Some(items) => items
            .iter()
            .map(|i| {
                (
                    i["key"].as_str().unwrap().to_owned(),
                    i["path"].as_str().unwrap().to_owned(),
                )
            })
            .collect(),
        None => data
            .as_object()
            .unwrap()
            .keys()
            .map(|k| (k.clone(), k.clone()))
            .collect(),
    }
}

impl Drop for Play {
    fn drop(&mut self) {
        for (_, pod) in std::mem::take(&mut self.pods) {
            pod.kill_all();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &format!("k8s{}sw", self.net)])
            .status();
    }
}
