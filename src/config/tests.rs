//! The config's parsing and validation, from YAML text to a plan or to
//! the problems that name their fields.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.yaml", &Catalogue::builtin())
}

fn problems(text: &str) -> Vec<Problem> {
    parse(text).unwrap_err().problems
}

const BASE: &str = "node: {id: n1}\ndata_dir: target/test-data\nauth: {secret: 'test-secret-0123456789abcdefghijklmnop'}\n";

/// A db member and a kv store client, in a topology file.
fn with_topology() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topology.yaml");
    std::fs::write(
        &path,
        "members:\n  - {id: 1, node: db-1, peer: '127.0.0.1:7001', public: '127.0.0.1:8001', services: [db]}\nnodes:\n  - {node: kv-1, public: '127.0.0.1:8011', services: [kv]}\n",
    )
    .unwrap();
    let path = path.display().to_string();
    (dir, path)
}

fn node(id: &str, services: &str, listeners: &str, cluster: &str) -> String {
    format!(
        "node: {{id: {id}}}\nservices: {services}\nlisteners: {{{listeners}}}\ndata_dir: target/test-data\nauth: {{secret: 'test-secret-0123456789abcdefghijklmnop'}}\ncluster: {{{cluster}}}\n"
    )
}

#[test]
fn a_node_without_the_db_role_is_a_store_client_with_its_own_key() {
    let (_dir, t) = with_topology();
    let key = "k".repeat(8) + "0123456789abcdefghijklmnopqrstuvwxyz";
    let c = parse(&node(
        "kv-1",
        "[kv]",
        "public: '127.0.0.1:8011'",
        &format!("topology: '{t}', client_key: '{key}'"),
    ))
    .unwrap();
    assert!(!c.db_role);
    assert!(c.listeners.peer.is_none());
    assert!(matches!(c.cluster.unwrap().role, Role::Client { ref node, .. } if node == "kv-1"));
    let db = parse(&node(
        "db-1",
        "[db]",
        "public: '127.0.0.1:8001', peer: '127.0.0.1:7001'",
        &format!("topology: '{t}', secret: '{key}', bootstrap: true"),
    ))
    .unwrap();
    assert!(db.db_role);
    assert!(matches!(
        db.cluster.unwrap().role,
        Role::Voter { id: 1, .. }
    ));
}

#[test]
fn tls_between_nodes_is_on_unless_written_off_and_its_settings_are_checked() {
    use crate::tls::peer::{CaSource, PeerTlsMode, PeerTlsSettings};
    let (dir, t) = with_topology();
    std::fs::write(
        &t,
        "members:\n  - {id: 1, node: db-1, peer: '127.0.0.1:7001', public: '127.0.0.1:8001', services: [db, xds]}\nnodes:\n  - {node: kv-1, public: '127.0.0.1:8011', services: [kv]}\n",
    )
    .unwrap();
    let key = "0123456789abcdefghijklmnopqrstuvwxyz";
    let db = |tls: &str| {
        node(
            "db-1",
            "[db, xds]",
            "public: '127.0.0.1:8001', peer: '127.0.0.1:7001', xds: '127.0.0.1:18001'",
            &format!("topology: '{t}', secret: '{key}'{tls}"),
        )
    };
    let tls_of = |text: &str| parse(text).unwrap().cluster.unwrap().tls;
    assert_eq!(tls_of(&db("")), PeerTlsMode::On(PeerTlsSettings::default()));
    assert_eq!(tls_of(&db(", tls: off")), PeerTlsMode::Off);
    let ca = dir.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::write(ca.join(f), "").unwrap();
    }
    let on = tls_of(&db(&format!(
        ", tls: {{ca_dir: '{}', domain: example.test, certificate_lifetime_seconds: 3600}}",
        ca.display()
    )));
    assert_eq!(
        on,
        PeerTlsMode::On(PeerTlsSettings {
            ca: CaSource::Dir(ca.clone()),
            domain: "example.test".into(),
            lifetime: Duration::from_secs(3600),
            hosts: Vec::new(),
        })
    );
    // The xDS listener's TLS names its address and the names given.
    let mut with_xds = db("");
    with_xds.push_str("xds: {tls: true, tls_names: [xds.example, 10.0.0.9]}\n");
    let PeerTlsMode::On(on) = tls_of(&with_xds) else {
        panic!("TLS is on")
    };
    assert_eq!(on.hosts, ["127.0.0.1", "xds.example", "10.0.0.9"]);
    for (tls, field, why) in [
        (", tls: on", "cluster.tls", "`on` is not a setting"),
        (
            ", tls: {lifetime: 5}",
            "cluster.tls",
            "unknown key `lifetime`",
        ),
        (
            ", tls: {certificate_lifetime_seconds: 1}",
            "cluster.tls.certificate_lifetime_seconds",
            "out of range",
        ),
        (
            ", tls: {ca_dir: /nonexistent}",
            "cluster.tls.ca_dir",
            "has no ca.crt",
        ),
        (
            ", tls: {domain: 'a/b'}",
            "cluster.tls.domain",
            "not a trust domain",
        ),
    ] {
        let p = problems(&db(tls));
        assert!(
            p.iter()
                .any(|p| p.field == field && p.message.contains(why)),
            "{tls}: {p:?}"
        );
    }
    // A store client holds no CA; xds.tls is a member's, with TLS on.
    let p = problems(&node(
        "kv-1",
        "[kv]",
        "public: '127.0.0.1:8011'",
        &format!(
            "topology: '{t}', client_key: '{key}', tls: {{ca_dir: '{}'}}",
            ca.display()
        ),
    ));
    assert!(p.iter().any(|p| p.field == "cluster.tls.ca_dir"), "{p:?}");
    let mut off_with_xds = db(", tls: off");
    off_with_xds.push_str("xds: {tls: true}\n");
    let p = problems(&off_with_xds);
    assert!(
        p.iter()
            .any(|p| p.field == "xds.tls" && p.message.contains("TLS between nodes")),
        "{p:?}"
    );
}

#[test]
fn cluster_roles_are_checked_against_the_topology() {
    let (_dir, t) = with_topology();
    let key = "0123456789abcdefghijklmnopqrstuvwxyz";
    let cases = [
        (
            node(
                "kv-1",
                "[kv]",
                "public: '127.0.0.1:8011', peer: '127.0.0.1:7011'",
                &format!("topology: '{t}', client_key: '{key}'"),
            ),
            "listeners.peer",
            "does not run the db role",
        ),
        (
            node(
                "kv-1",
                "[kv]",
                "public: '127.0.0.1:8011'",
                &format!("topology: '{t}', secret: '{key}'"),
            ),
            "cluster.secret",
            "must stay on the db nodes",
        ),
        (
            node(
                "kv-1",
                "[kv]",
                "public: '127.0.0.1:8011'",
                &format!("topology: '{t}'"),
            ),
            "cluster.client_key",
            "missing",
        ),
        (
            node(
                "kv-1",
                "[echo]",
                "public: '127.0.0.1:8011'",
                &format!("topology: '{t}', client_key: '{key}'"),
            ),
            "services",
            "differ from this node's in the topology",
        ),
        (
            node(
                "kv-9",
                "[kv]",
                "public: '127.0.0.1:8011'",
                &format!("topology: '{t}', client_key: '{key}'"),
            ),
            &format!("{t}: members"),
            "is not in the topology",
        ),
        (
            node(
                "db-1",
                "[db]",
                "public: '127.0.0.1:8001', peer: '127.0.0.1:7001'",
                &format!("topology: '{t}', secret: '{key}', client_key: '{key}'"),
            ),
            "cluster.client_key",
            "is for nodes without the db role",
        ),
        (
            node(
                "kv-1",
                "[kv]",
                "public: '127.0.0.1:8099'",
                &format!("topology: '{t}', client_key: '{key}'"),
            ),
            "listeners.public",
            "but the topology gives 127.0.0.1:8011",
        ),
        (
            node(
                "kv-1",
                "[kv]",
                "public: '0.0.0.0:8011'",
                &format!("topology: '{t}', client_key: '{key}'"),
            ),
            "advertise.public",
            "missing: listeners.public binds 0.0.0.0:8011",
        ),
        (
            node(
                "db-1",
                "[db]",
                "public: '127.0.0.1:8001', peer: '0.0.0.0:7002'",
                &format!("topology: '{t}', secret: '{key}'"),
            ),
            "listeners.peer",
            "does not serve this node's peer address",
        ),
        (
            node(
                "echo-5d8f",
                "[echo, kv]",
                "public: '127.0.0.1:8099'",
                &format!(
                    "topology: '{t}', join_token: 'fjt1.echo.0123456789abcdef0123456789abcdef'"
                ),
            ),
            "services",
            "kv not named by the join token, which allows echo",
        ),
        (
            node(
                "kv-1",
                "[kv]",
                "public: '127.0.0.1:8011'",
                &format!("topology: '{t}', join_token: 'fjt1.kv.0123456789abcdef0123456789abcdef'"),
            ),
            "cluster.join_token",
            "is for nodes not in the topology",
        ),
        (
            node(
                "echo-5d8f",
                "[echo]",
                "public: '127.0.0.1:8099'",
                &format!("topology: '{t}', join_token: 'not-a-token-0123456789abcdefghijkl'"),
            ),
            "cluster.join_token",
            "is not a join token",
        ),
    ];
    for (text, field, needle) in cases {
        let p = problems(&text);
        assert!(
            p.iter()
                .any(|p| p.field == field && p.message.contains(needle)),
            "expected {field}: {needle} in {p:?}"
        );
    }
}

/// A pod's config: one file for every pod, the rest from the
/// environment; a DNS-named member binds a wildcard.
#[test]
fn a_pod_takes_its_name_and_address_from_the_environment_and_joins() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology.yaml");
    std::fs::write(
        &topology,
        "members:\n  - {id: 1, node: flotilla-db-0, peer: 'flotilla-db-0.flotilla-db:7070', services: [db, xds]}\n",
    )
    .unwrap();
    let token = crate::cluster::join_token(
        "cluster-secret-0123456789abcdefghijklmnop",
        &["echo".into()],
    );
    let env = |name: &str| match name {
        "POD_NAME" => Some("flotilla-echo-5d8f-x2x9z".to_owned()),
        "POD_IP" => Some("10.42.0.7".to_owned()),
        "JOIN_TOKEN" => Some(token.clone()),
        _ => None,
    };
    let text = format!(
        "node: {{id: '${{POD_NAME}}'}}\nservices: [echo]\nlisteners: {{public: '0.0.0.0:8080', admin: '0.0.0.0:8081'}}\nadvertise: {{public: '${{POD_IP}}:8080'}}\ndata_dir: target/test-data\nauth: {{secret: 'test-secret-0123456789abcdefghijklmnop'}}\ncluster: {{topology: '{}', join_token: '${{JOIN_TOKEN}}'}}\n",
        topology.display()
    );
    let c = Config::parse_with_env(&text, "pod.yaml", &Catalogue::builtin(), &env).unwrap();
    assert_eq!(c.node_id, "flotilla-echo-5d8f-x2x9z");
    assert_eq!(c.advertise, "10.42.0.7:8080".parse().unwrap());
    assert!(c.joined);
    assert!(
        c.substitutions
            .iter()
            .any(|s| s.field == "cluster.join_token" && s.value.is_none())
    );
    let Some(ClusterSettings {
        role: crate::cluster::Role::Client { node, key },
        ..
    }) = &c.cluster
    else {
        panic!("a joined node is a store client");
    };
    assert_eq!(
        (node.as_str(), key.as_str()),
        ("flotilla-echo-5d8f-x2x9z", token.as_str())
    );

    let member = format!(
        "node: {{id: '${{POD_NAME}}'}}\nservices: [db, xds]\nlisteners: {{public: '0.0.0.0:8080', admin: '0.0.0.0:8081', peer: '0.0.0.0:7070', xds: '0.0.0.0:18000'}}\nadvertise: {{public: '${{POD_IP}}:8080'}}\ndata_dir: target/test-data\nauth: {{secret: 'test-secret-0123456789abcdefghijklmnop'}}\ncluster: {{topology: '{}', secret: 'cluster-secret-0123456789abcdefghijklmnop'}}\n",
        topology.display()
    );
    let env = |name: &str| match name {
        "POD_NAME" => Some("flotilla-db-0".to_owned()),
        "POD_IP" => Some("10.42.0.9".to_owned()),
        _ => None,
    };
    let c = Config::parse_with_env(&member, "db.yaml", &Catalogue::builtin(), &env).unwrap();
    assert!(!c.joined && c.db_role);
    let missing =
        Config::parse_with_env(&member, "db.yaml", &Catalogue::builtin(), &|_| None).unwrap_err();
    assert!(
        missing
            .problems
            .iter()
            .any(|p| p.field == "node.id" && p.message.contains("POD_NAME is not set")),
        "{missing}"
    );
}

#[test]
fn store_budgets_default_per_service_and_are_checked() {
    let c = parse(&format!(
        "{BASE}services: [all]\nlimits: {{store: {{read_ms: 500, max_rows: 100}}, services: {{kv: {{write_steps: 20000}}}}}}\n"
    ))
    .unwrap();
    let echo = c.limits.budget("echo");
    assert_eq!((echo.read.time_ms, echo.write.rows), (500, 100));
    assert_eq!(echo.write.steps, Budget::SERVICE_DEFAULT.write.steps);
    let kv = c.limits.budget("kv");
    assert_eq!((kv.read.time_ms, kv.write.steps), (500, 20_000));
    let p = problems(&format!(
        "{BASE}services: [all]\nlimits: {{store: {{read_ms: 0}}, services: {{nope: {{}}, kv: {{max_value_bytes: 1}}}}}}\n"
    ));
    let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "limits.store.read_ms",
            "limits.services.kv.max_value_bytes",
            "limits.services.nope"
        ],
        "{p:?}"
    );
    assert!(
        p[2].message.contains("services: accounts, echo, kv"),
        "{p:?}"
    );
}

#[test]
fn all_is_an_explicit_alias() {
    let c = parse(&format!("{BASE}services: [all]")).unwrap();
    assert_eq!(c.services, Catalogue::builtin().names().collect::<Vec<_>>());
    let c = parse(&format!("{BASE}services: [kv, kv]")).unwrap();
    assert_eq!(c.services, vec!["kv"]);
}

#[test]
fn selection_is_required_and_checked() {
    for text in [
        BASE.to_owned(),
        format!("{BASE}services: []"),
        format!("{BASE}services: [kv, nope]"),
    ] {
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "services");
        assert!(
            p[0].message
                .contains("valid names: all, accounts, echo, kv, db, xds"),
            "{}",
            p[0].message
        );
    }
}

#[test]
fn every_problem_names_its_field() {
    let p = problems(
        "node: {id: Bad_Id}\nservices: [all]\ndata_dir: ''\nlisteners: {public: '127.0.0.1:99999', admin: 'localhost:1'}\nlimits: {max_request_body_bytes: 0, request_timeout_ms: 0}\nlog: {format: xml, level: 'not=a=filter'}\n",
    );
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "node.id",
            "listeners.public",
            "listeners.admin",
            "data_dir",
            "limits.max_request_body_bytes",
            "limits.request_timeout_ms",
            "log.format",
            "log.level",
            "auth",
        ]
    );
    assert!(
        p[1].message.contains("99999 is out of range"),
        "{}",
        p[1].message
    );
}

#[test]
fn unknown_keys_are_refused_with_their_place() {
    let p = problems(&format!(
        "{BASE}services: [all]\nlisteners: {{publik: '127.0.0.1:1'}}\n"
    ));
    assert!(
        p[0].message.contains("unknown field `publik`"),
        "{}",
        p[0].message
    );
    assert!(p[0].field.starts_with("line 5"), "{}", p[0].field);
}

#[test]
fn listeners_must_not_collide() {
    let p = problems(&format!(
        "{BASE}services: [all]\nlisteners: {{public: '0.0.0.0:9000', admin: '127.0.0.1:9000'}}\n"
    ));
    assert_eq!(p[0].field, "listeners.admin");
}

#[test]
fn the_xds_role_comes_with_all_or_by_name_and_owns_its_listener() {
    let all = parse(&format!("{BASE}services: [all]")).unwrap();
    assert_eq!(all.listeners.xds, Some("127.0.0.1:18000".parse().unwrap()));
    let named = parse(&format!(
        "{BASE}services: [kv, xds]\nlisteners: {{xds: '127.0.0.1:18500'}}"
    ))
    .unwrap();
    assert_eq!(named.services, ["kv"]);
    assert_eq!(
        named.listeners.xds,
        Some("127.0.0.1:18500".parse().unwrap())
    );
    let without = parse(&format!("{BASE}services: [kv]")).unwrap();
    assert_eq!(without.listeners.xds, None);
    let p = problems(&format!(
        "{BASE}services: [kv]\nlisteners: {{xds: '127.0.0.1:18500'}}"
    ));
    assert_eq!(p[0].field, "listeners.xds");
    assert!(p[0].message.contains("add `xds`"), "{}", p[0].message);
}

#[test]
fn ipv6_listeners_parse() {
    let c = parse(&format!(
        "{BASE}services: [all]\nlisteners: {{public: '[::1]:9000'}}\n"
    ))
    .unwrap();
    assert_eq!(c.listeners.public.to_string(), "[::1]:9000");
}

#[test]
fn a_file_as_data_dir_is_refused() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let p = problems(&format!(
        "node: {{id: n1}}\nservices: [all]\ndata_dir: '{}'\nauth: {{secret: 'test-secret-0123456789abcdefghijklmnop'}}\n",
        file.path().display()
    ));
    assert_eq!(p[0].field, "data_dir");
    assert!(p[0].message.contains("not a directory"), "{}", p[0].message);
}

/// Found by the config property test: an unreadable topology was
/// reported under the file's name, not the config field.
#[test]
fn an_unreadable_topology_is_a_problem_of_cluster_topology() {
    let found = problems(&format!(
        "{BASE}services: [all]\ncluster: {{topology: /nonexistent/topology.yaml, secret: 'a-cluster-secret-0123456789abcdef'}}\n"
    ));
    let p = found
        .iter()
        .find(|p| p.message.contains("cannot read the topology"))
        .expect("the unreadable topology is reported");
    assert_eq!(p.field, "cluster.topology");
    assert!(
        p.message.contains("/nonexistent/topology.yaml"),
        "{}",
        p.message
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Whether a problem names where it is: a config field under a
    /// known section, the line and column of a YAML shape error, or a
    /// place inside the topology file (`<file>: members[0].peer`).
    fn names_a_place(field: &str) -> bool {
        field == "(document)"
            || (field.starts_with("line ") && field.contains(" column "))
            || SECTIONS.contains(&field.split(['.', '[']).next().unwrap_or_default())
            || field
                .split_once(": ")
                .is_some_and(|(_, place)| !place.is_empty())
    }

    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            Just("0".to_owned()),
            Just("-1".to_owned()),
            Just("true".to_owned()),
            Just("~".to_owned()),
            Just("''".to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
            Just("'127.0.0.1:0'".to_owned()),
            Just("[all]".to_owned()),
            "'[ -~]{0,20}'".prop_map(|s| s.replace('\'', "")),
        ]
    }

    /// A YAML document of known and unknown keys, two levels deep,
    /// with values of every shape.
    fn document() -> impl Strategy<Value = String> {
        // `data_dir` is left out: checking it writes a probe file in
        // the directory it names.
        let sections: Vec<&str> = SECTIONS
            .iter()
            .copied()
            .filter(|s| *s != "data_dir")
            .collect();
        let key = prop_oneof![
            proptest::sample::select(sections).prop_map(str::to_owned),
            proptest::sample::select(
                &[
                    "id",
                    "public",
                    "admin",
                    "peer",
                    "secret",
                    "format",
                    "level",
                    "max_request_body_bytes",
                    "request_timeout_ms",
                    "store",
                    "services",
                    "listeners",
                    "max_connections",
                    "max_header_bytes",
                    "topology",
                    "heartbeat_ms",
                    "ingress_listener",
                ][..]
            )
            .prop_map(str::to_owned),
            "[a-z_]{1,10}",
        ];
        let inner = proptest::collection::vec((key.clone(), scalar()), 0..4).prop_map(|kv| {
            let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{{{}}}", body.join(", "))
        });
        let value = prop_oneof![scalar(), inner];
        proptest::collection::vec((key, value), 0..8)
            .prop_map(|kv| kv.into_iter().map(|(k, v)| format!("{k}: {v}\n")).collect())
    }

    proptest! {
        /// Any text: an error or a config, never a panic; every problem
        /// says where it is and what is wrong.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            if let Err(e) = parse(&text) {
                prop_assert!(!e.problems.is_empty());
                for p in &e.problems {
                    prop_assert!(!p.message.is_empty(), "{:?}", p);
                    prop_assert!(names_a_place(&p.field), "{:?}", p);
                }
            }
        }

        /// YAML of the config's own keys and strangers, every value
        /// shape: each problem names its field.
        #[test]
        fn every_problem_of_a_document_names_its_field(doc in document()) {
            if let Err(e) = parse(&doc) {
                for p in &e.problems {
                    prop_assert!(!p.message.is_empty(), "{:?} in\n{}", p, doc);
                    prop_assert!(names_a_place(&p.field), "{:?} in\n{}", p, doc);
                }
            }
        }
    }
}
