//! The status page at `/` on the admin listener, rendered by a real browser
//! (Chromium, headless): what it shows of a cluster that loses a member and
//! of an Envoy that refuses an update, and a screenshot of each for a
//! reviewer (in the tests' output folder, see `test_output`).

use std::time::{Duration, Instant};

use crate::support::{
    Envoy, Node, NodeConfig, TestCluster, free_addr, rendered_dom, rows, screenshot, test_output,
    wait_until,
};

/// What the page says once it has read and rendered `/status` (a failed
/// read, or a script error while rendering, says `no answer` and why).
const LIVE: &str = r#"<span class="state ok">live</span>"#;

/// The markup of member `name`'s row, if the page has one.
fn member_row<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    rows(dom, "data-member", name).first().copied()
}

#[tokio::test]
async fn a_cluster_member_killed_shows_as_unreachable_on_the_leaders_page() {
    let mut cluster = TestCluster::start("");
    let leader = cluster.leader().await;
    let victim = (leader + 1) % 3;
    let survivor = 3 - leader - victim;
    let name = |i: usize| format!("ha-{}", i + 1);
    let page = cluster.nodes[leader].admin_url("/");

    // Every member is named: the leader as itself, the others reachable.
    wait_until(
        "the leader's page names every member, the others reachable",
        Duration::from_secs(20),
        || async {
            let dom = rendered_dom(&page).await;
            if !dom.contains(LIVE) {
                return Err(format!("the page did not render /status:\n{dom}"));
            }
            for i in 0..3 {
                let expected = if i == leader {
                    ">this member<"
                } else {
                    ">reachable<"
                };
                match member_row(&dom, &name(i)) {
                    Some(row) if row.contains(expected) => {}
                    other => return Err(format!("{}: {other:?}", name(i))),
                }
            }
            Ok(())
        },
    )
    .await;

    cluster.nodes[victim].kill9();
    let killed = Instant::now();
    let dom = wait_until(
        "the leader's page shows the killed member unreachable",
        Duration::from_secs(10),
        || async {
            let dom = rendered_dom(&page).await;
            match member_row(&dom, &name(victim)) {
                Some(row) if row.contains(">unreachable<") => Ok(dom),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    println!(
        "{} shown unreachable {:?} after kill -9",
        name(victim),
        killed.elapsed()
    );
    // Said in the problems, and only of the killed member.
    let problem = format!("member {} ({}) is unreachable", name(victim), victim + 1);
    assert!(dom.contains(&problem), "no problem `{problem}` in:\n{dom}");
    let other = member_row(&dom, &name(survivor)).unwrap();
    assert!(other.contains(">reachable<"), "{other}");

    let shot = test_output("status-page").join("cluster-member-unreachable.png");
    screenshot(&page, &shot).await;
    println!("screenshot: {}", shot.display());
}

#[tokio::test]
async fn an_envoy_that_nacks_shows_its_error_text_on_the_page() {
    // The Envoys' ingress listener goes on a port this test holds: the
    // Envoy cannot bind it and refuses the listener (a NACK) with its own
    // error text.
    let held = std::net::TcpListener::bind(free_addr()).unwrap();
    let ingress = held.local_addr().unwrap();
    let xds = free_addr();
    let node = Node::start(NodeConfig {
        xds: Some(xds),
        extra: format!("xds: {{ingress_listener: '{ingress}'}}\n"),
        ..Default::default()
    });
    let _envoy = Envoy::start(xds);
    let error = format!("cannot bind '{ingress}': Address already in use");
    wait_until(
        "the Envoy's NACK is in /status",
        Duration::from_secs(30),
        || async {
            let status = node.status().await.ok_or("no /status")?;
            let text = status["xds"].to_string();
            if text.contains(&error) {
                Ok(())
            } else {
                Err(text)
            }
        },
    )
    .await;

    let page = node.admin_url("/");
    let dom = rendered_dom(&page).await;
    assert!(
        dom.contains(LIVE),
        "the page did not render /status:\n{dom}"
    );
    let client = rows(&dom, "data-client", "test-envoy");
    assert!(
        client.iter().any(|row| row.contains(">Listener<")
            && row.contains(">NACK<")
            && row.contains(&error)),
        "no NACK row with `{error}` for test-envoy in:\n{dom}"
    );
    assert!(
        client
            .iter()
            .any(|row| row.contains(">Cluster<") && row.contains(">ACKed<")),
        "the clusters it took are not shown ACKed:\n{dom}"
    );
    assert!(
        dom.contains(
            "xDS client test-envoy refused Listener (NACK): Error adding/updating listener(s)"
        ),
        "the NACK is not among the problems:\n{dom}"
    );

    let shot = test_output("status-page").join("xds-nack.png");
    screenshot(&page, &shot).await;
    println!("screenshot: {}", shot.display());
    drop(held);
}
