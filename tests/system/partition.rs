//! Raft under partitions (issue 14). A member cut off from the others
//! (fault injection: its peer traffic dropped both ways) must not disturb
//! the cluster when it comes back.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestCluster, authed, http, wait_until};

/// Each member's (role, term, leader), as its `/status` says.
async fn terms(cluster: &TestCluster) -> Vec<(String, u64, Option<u64>)> {
    let mut out = Vec::new();
    for i in 0..cluster.nodes.len() {
        let s: Value = cluster.status(i).await.unwrap_or_default();
        out.push((
            s["role"].as_str().unwrap_or_default().to_owned(),
            s["term"].as_u64().unwrap_or_default(),
            s["leader"].as_u64(),
        ));
    }
    out
}

async fn isolate(cluster: &TestCluster, i: usize, isolated: bool) {
    let r = http()
        .post(cluster.nodes[i].admin_url("/debug/isolate"))
        .json(&json!({ "isolated": isolated }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_follower_cut_off_keeps_its_term_and_rejoins_without_an_election() {
    let cluster = TestCluster::start(", fault_injection: true");
    let token = cluster.admin_token().await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let before = terms(&cluster).await;
    let term = before[leader].1;
    isolate(&cluster, follower, true).await;
    // Many election timeouts (200-400 ms) pass, and writes go on.
    let client = authed(&token);
    for i in 0..30 {
        let r = client
            .put(cluster.nodes[leader].url(&format!("/api/kv/keys/during-{i}")))
            .json(&json!({ "value": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut_off = terms(&cluster).await;
    assert_eq!(
        cut_off[follower].1, term,
        "the cut-off member raised its term: {cut_off:?}"
    );
    isolate(&cluster, follower, false).await;
    // It catches up, and nobody was elected meanwhile.
    wait_until("the member catches up", Duration::from_secs(15), || async {
        let r = client
            .get(cluster.nodes[follower].url("/api/kv/keys/during-29?consistency=stale"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            Ok(())
        } else {
            Err(r.status())
        }
    })
    .await;
    let after = terms(&cluster).await;
    for (i, (role, t, l)) in after.iter().enumerate() {
        assert_eq!(
            *t, term,
            "member {i}: the term moved: {before:?} -> {after:?}"
        );
        assert_eq!(*l, Some(leader as u64 + 1), "member {i}: {after:?}");
        assert_eq!(role == "Leader", i == leader, "{after:?}");
    }
}
