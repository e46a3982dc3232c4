//! The registry's unit tests: records, writes read back, ages, and the
//! statements against a real store.
use super::*;

#[test]
fn a_record_ages_from_its_last_write_and_never_below_zero() {
    assert_eq!(age_ms(10_000, 8_500), 1_500);
    assert_eq!(age_ms(10_000, 10_000), 0);
    // Written by a leader whose clock is ahead of this node's.
    assert_eq!(age_ms(10_000, 10_200), 0);
}

#[test]
fn status_shows_each_record_with_its_age_where_known() {
    let local = NodeRecord {
        id: "kv-1".into(),
        public: "127.0.0.1:8011".parse().unwrap(),
        services: vec!["kv".into()],
        healthy: true,
    };
    let registry = Registry::single(local.clone());
    let status = registry.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].record, local);
    assert_eq!(status[0].age_ms, None, "a single node does not renew");
    registry
        .renewed
        .write()
        .unwrap()
        .insert("kv-1".into(), now_ms() - 700);
    let age = registry.status()[0].age_ms.unwrap();
    assert!((700..5_000).contains(&age), "{age}");
    let json = serde_json::to_value(&registry.status()[0]).unwrap();
    assert_eq!(
        json["id"], "kv-1",
        "the record's fields stay at the top: {json}"
    );
    assert!(json["updated_ms"].is_i64(), "{json}");
}

#[test]
fn registry_writes_are_read_back_into_what_they_mean() {
    let record = NodeRecord {
        id: "kv-1".into(),
        public: "127.0.0.1:8011".parse().unwrap(),
        services: vec!["kv".into(), "echo".into()],
        healthy: true,
    };
    for write in [
        RegistryWrite::Claimed {
            record: record.clone(),
            claim: "c1".into(),
        },
        RegistryWrite::Leave {
            node: "kv-1".into(),
            claim: "c1".into(),
        },
        RegistryWrite::Own(record.clone()),
        RegistryWrite::Own(NodeRecord {
            healthy: false,
            ..record.clone()
        }),
        RegistryWrite::Seed(NodeRecord {
            healthy: false,
            ..record.clone()
        }),
        RegistryWrite::Lost {
            node: "kv-1".into(),
            since: 1_700_000_000_000,
        },
        RegistryWrite::Renew {
            nodes: vec![
                ("kv-1".into(), String::new()),
                ("web-7f".into(), "c1".into()),
            ],
        },
    ] {
        assert_eq!(RegistryWrite::parse(&write.statement()), Some(write));
    }
    let mut odd = RegistryWrite::Own(record).statement();
    odd.params[3] = 7i64.into();
    assert_eq!(RegistryWrite::parse(&odd), None);
    let other = Statement::new("DELETE FROM registry__records", vec![]);
    assert_eq!(RegistryWrite::parse(&other), None);
}

#[test]
fn single_registry_knows_its_services() {
    let r = Registry::single(NodeRecord {
        id: "n1".into(),
        public: "127.0.0.1:8080".parse().unwrap(),
        services: vec!["kv".into()],
        healthy: false,
    });
    assert!(r.is_local("kv"));
    assert!(!r.is_local("echo"));
    assert_eq!(r.instances("kv").len(), 1);
    assert!(r.instances("echo").is_empty());
    r.set_healthy("n1", true);
    assert!(r.instances("kv")[0].healthy);
}

fn record(id: &str, public: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        public: public.parse().unwrap(),
        services: vec!["echo".into()],
        healthy: true,
    }
}

fn scratch_store(dir: &std::path::Path) -> crate::store::Store {
    crate::store::Store::open(
        &crate::store::StoreConfig {
            data_dir: dir.to_owned(),
            readers: 1,
            durability: crate::store::Durability::Full,
        },
        crate::telemetry::metrics::Metrics::new().store,
    )
    .unwrap()
}

fn names(rows: Vec<Vec<Value>>) -> Vec<String> {
    rows.into_iter()
        .map(|r| r.into_iter().next().and_then(Value::into_string).unwrap())
        .collect()
}

/// A member's renewal moves the time of the records of the nodes in
/// session with it, each by its name and claim, and nothing else: not
/// another node's record, not a claimed record under a wrong claim, not
/// anyone's health.
#[tokio::test]
async fn a_members_renewal_moves_only_its_sessions_records_times() {
    let dir = tempfile::tempdir().unwrap();
    let ns = scratch_store(dir.path()).namespace(NAMESPACE);
    ns.migrate(MIGRATIONS).await.unwrap();
    let member = Registry::single(record("db-1", "10.0.0.1:8080"));
    let kv = Registry::single(record("kv-1", "10.0.0.2:8080"));
    let joined = Registry::single(record("echo-abc", "10.0.0.3:8080")).claimed();
    let other = Registry::single(record("echo-2", "10.0.0.4:8080"));
    for r in [&member, &kv, &joined, &other] {
        r.register(&ns, &[]).await.unwrap();
    }
    ns.write(vec![Statement::new(
        "UPDATE registry__records SET updated_ms = 1000, healthy = (node != 'kv-1')",
        vec![],
    )])
    .await
    .unwrap();
    member
        .renew(
            &ns,
            vec![
                ("kv-1".into(), String::new()),
                ("echo-abc".into(), joined.claim().to_owned()),
                ("echo-2".into(), "not its claim".into()),
            ],
        )
        .await
        .unwrap();
    let rows = ns
        .read_stale(Statement::new(
            "SELECT node, healthy, updated_ms > 1000 FROM registry__records ORDER BY node",
            vec![],
        ))
        .await
        .unwrap()
        .rows;
    let seen: Vec<(String, i64, i64)> = rows
        .into_iter()
        .map(|r| {
            (
                r[0].clone().into_string().unwrap(),
                r[1].as_i64().unwrap(),
                r[2].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("db-1".into(), 1, 1),
            ("echo-2".into(), 1, 0),
            ("echo-abc".into(), 1, 1),
            ("kv-1".into(), 0, 1),
        ],
        "(node, healthy, renewed)"
    );
}

/// Two nodes that joined with the same token and call themselves by the
/// same name: the second cannot take the first one's live record, nor
/// delete it; it leaves with its owner, and expired ones are collected
/// while the topology's stay.
#[tokio::test]
async fn a_claimed_record_belongs_to_its_claim_and_is_collected_when_gone() {
    let dir = tempfile::tempdir().unwrap();
    let ns = scratch_store(dir.path()).namespace(NAMESPACE);
    ns.migrate(MIGRATIONS).await.unwrap();
    assert!(CLAIMED.contains(&format!("- {}", TTL.as_millis())));
    let owner = Registry::single(record("echo-abc", "10.0.0.1:8080")).claimed();
    owner.register(&ns, &[]).await.unwrap();
    let impostor = Registry::single(record("echo-abc", "10.6.6.6:8080")).claimed();
    let why = impostor.register(&ns, &[]).await.unwrap_err();
    assert!(
        why.to_string().contains("held by another live node"),
        "{why}"
    );
    impostor.deregister(&ns).await.unwrap();
    let all = || async {
        ns.read_stale(Statement::new(
            "SELECT node, public FROM registry__records ORDER BY node",
            vec![],
        ))
        .await
        .unwrap()
        .rows
    };
    let rows = all().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][1], Value::from("10.0.0.1:8080".to_owned()));
    owner.heartbeat(&ns).await.unwrap();
    owner.deregister(&ns).await.unwrap();
    assert!(all().await.is_empty(), "a graceful stop deletes the record");

    // A thousand joined nodes gone long ago, one that just went, and a
    // topology node gone as long: only the thousand are collected.
    let mut gone = vec![Statement::new(
        "INSERT INTO registry__records (node, public, services, healthy, updated_ms, claim)
         VALUES ('kv-1', '127.0.0.1:1', 'kv', 0, 0, ''), ('echo-new', '127.0.0.1:2', 'echo', 1, flotilla_now() - 5000, 'c')",
        vec![],
    )];
    for i in 0..1000 {
        gone.push(Statement::new(
            "INSERT INTO registry__records (node, public, services, healthy, updated_ms, claim)
             VALUES (?1, '127.0.0.1:3', 'echo', 1, flotilla_now() - 61000, 'c')",
            vec![format!("echo-{i}").into()],
        ));
    }
    ns.write(gone).await.unwrap();
    assert_eq!(Registry::collect(&ns).await.unwrap(), 1000);
    assert_eq!(names(all().await), vec!["echo-new", "kv-1"]);
    // An expired claim may be taken over by a new node of that name.
    let next = Registry::single(record("echo-new", "10.0.0.9:8080")).claimed();
    next.register(&ns, &[]).await.unwrap();
}

/// A copy of the store that has not caught up with this node's own
/// registration (only another member's seed of it, without services)
/// must not make the node forget what it runs.
#[tokio::test]
async fn a_stale_copy_does_not_hide_the_local_services() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(
        &crate::store::StoreConfig {
            data_dir: dir.path().to_owned(),
            readers: 1,
            durability: crate::store::Durability::Full,
        },
        crate::telemetry::metrics::Metrics::new().store,
    )
    .unwrap();
    let ns = store.namespace(NAMESPACE);
    ns.migrate(MIGRATIONS).await.unwrap();
    ns.write(vec![Statement::new(
        "INSERT INTO registry__records (node, public, services, healthy, updated_ms)
         VALUES ('n1', '127.0.0.1:8080', '', 0, 0), ('n2', '127.0.0.1:8081', 'kv', 1, 0)",
        vec![],
    )])
    .await
    .unwrap();
    let r = Registry::single(NodeRecord {
        id: "n1".into(),
        public: "127.0.0.1:8080".parse().unwrap(),
        services: vec!["kv".into(), "echo".into()],
        healthy: true,
    });
    r.refresh(&ns).await.unwrap();
    assert!(r.is_local("kv") && r.is_local("echo"));
    assert_eq!(r.instances("kv").len(), 2, "the other member is learned");
}

#[tokio::test]
async fn a_refresh_says_when_the_next_record_runs_out_and_a_follower_takes_what_it_sees() {
    let dir = tempfile::tempdir().unwrap();
    let store = scratch_store(dir.path());
    let ns = store.namespace(NAMESPACE);
    ns.migrate(MIGRATIONS).await.unwrap();
    let member = Registry::single(record("m1", "127.0.0.1:8080"));
    // No other record alive: nothing runs out.
    assert_eq!(member.refresh(&ns).await.unwrap(), None);
    let renewed = now_ms() - 1000;
    ns.write(vec![Statement::new(
        "INSERT INTO registry__records (node, public, services, healthy, updated_ms)
         VALUES ('n2', '127.0.0.1:8081', 'kv', 1, ?1), ('n3', '127.0.0.1:8082', 'kv', 1, ?2)",
        vec![renewed.into(), (renewed + 500).into()],
    )])
    .await
    .unwrap();
    let due = member.refresh(&ns).await.unwrap().expect("n2 runs out");
    assert!(
        due <= TTL - Duration::from_millis(1000) + Duration::from_millis(1)
            && due > TTL - Duration::from_millis(1500),
        "{due:?}"
    );
    // A store client follows what the member sees, keeping its own.
    let client = Registry::single(NodeRecord {
        services: vec!["echo".into()],
        ..record("c1", "127.0.0.1:8090")
    });
    client.adopt_encoded(&member.encode()).unwrap();
    assert_eq!(client.instances("kv").len(), 2);
    assert!(client.is_local("echo"));
    assert!(client.nodes().iter().any(|n| n.id == "c1"));
    let e = client.adopt_encoded(b"junk").unwrap_err();
    assert!(e.contains("does not decode"), "{e}");
}
