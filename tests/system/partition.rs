//! Raft under partitions (issue 14). A member cut off from the others
//! (fault injection: its peer traffic dropped both ways) must not disturb
//! the cluster when it comes back.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde_json::{Value, json};

use crate::support::{
    BINARY, Net, Node, TestCluster, authed, authed_for, http, run_cli, wait_until,
};

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

#[tokio::test]
async fn a_follower_cut_off_keeps_its_term_and_rejoins_without_an_election() {
    let cluster = TestCluster::start(", fault_injection: true");
    let token = cluster.admin_token().await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let before = terms(&cluster).await;
    let term = before[leader].1;
    cluster.isolate(follower, true).await;
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
    cluster.isolate(follower, false).await;
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

// ---------------------------------------------------------------------------
// Real partitions: each member on a host of its own (`Net`), packets dropped.

/// One write of the history: its key, the member it went to, its status (0:
/// no answer), and when it started and ended (since the load began).
#[derive(Clone, Debug)]
struct Write {
    key: String,
    member: usize,
    status: u16,
    start: Duration,
    end: Duration,
}

/// A read that saw less than a write acknowledged before it started.
struct StaleRead {
    key: String,
    member: usize,
    status: u16,
}

/// Writes through every member and linearizable reads of acknowledged
/// keys, until stopped; the history of both.
struct Load {
    started: std::time::Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writes: std::sync::Arc<std::sync::Mutex<Vec<Write>>>,
    stale: std::sync::Arc<std::sync::Mutex<Vec<StaleRead>>>,
    /// Which members said they led, by term (every member's `/status`,
    /// every 50 ms): Raft allows one leader per term.
    leaders: std::sync::Arc<std::sync::Mutex<BTreeMap<u64, BTreeSet<usize>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Longer than a request may take inside the cluster (10 s), so that the
/// client sees the node's answer.
fn client(token: &str) -> reqwest::Client {
    authed_for(token, Duration::from_secs(15))
}

impl Load {
    fn start(cluster: &TestCluster, token: &str) -> Load {
        use std::sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        };
        let started = std::time::Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let writes: Arc<Mutex<Vec<Write>>> = Arc::default();
        let stale: Arc<Mutex<Vec<StaleRead>>> = Arc::default();
        let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url("")).collect();
        let mut tasks = Vec::new();
        for (member, url) in urls.iter().cloned().enumerate() {
            let (stop, writes, client) = (stop.clone(), writes.clone(), client(token));
            tasks.push(tokio::spawn(async move {
                for i in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("m{member}-{i}");
                    let start = started.elapsed();
                    let status = client
                        .put(format!("{url}/api/kv/keys/{key}"))
                        .json(&json!({ "value": key }))
                        .send()
                        .await
                        .map_or(0, |r| r.status().as_u16());
                    let end = started.elapsed();
                    writes.lock().unwrap().push(Write {
                        key,
                        member,
                        status,
                        start,
                        end,
                    });
                    if status != 200 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
        for (member, url) in urls.into_iter().enumerate() {
            let (stop, writes, stale, client) =
                (stop.clone(), writes.clone(), stale.clone(), client(token));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // The latest write acknowledged before this read starts.
                    let acked = writes
                        .lock()
                        .unwrap()
                        .iter()
                        .rev()
                        .find(|w| w.status == 200)
                        .map(|w| w.key.clone());
                    let Some(key) = acked else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let r = client.get(format!("{url}/api/kv/keys/{key}")).send().await;
                    let status = r.as_ref().map_or(0, |r| r.status().as_u16());
                    let body: Value = match r {
                        Ok(r) => r.json().await.unwrap_or_default(),
                        Err(_) => Value::Null,
                    };
                    if status == 404 || (status == 200 && body["value"] != key.as_str()) {
                        stale.lock().unwrap().push(StaleRead {
                            key,
                            member,
                            status,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }));
        }
        let leaders: std::sync::Arc<std::sync::Mutex<BTreeMap<u64, BTreeSet<usize>>>> =
            Arc::default();
        let admins: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| n.admin_url("/status"))
            .collect();
        let (poll_stop, poll_leaders) = (stop.clone(), leaders.clone());
        tasks.push(tokio::spawn(async move {
            let client = http();
            while !poll_stop.load(Ordering::Relaxed) {
                for (member, url) in admins.iter().enumerate() {
                    let Ok(r) = client.get(url).send().await else {
                        continue;
                    };
                    let status: Value = r.json().await.unwrap_or_default();
                    let cluster = &status["cluster"];
                    if cluster["role"] == "Leader"
                        && let Some(term) = cluster["term"].as_u64()
                    {
                        poll_leaders
                            .lock()
                            .unwrap()
                            .entry(term)
                            .or_default()
                            .insert(member);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
        Load {
            started,
            stop,
            writes,
            stale,
            leaders,
            tasks,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the load; its writes, and what it saw go wrong (stale reads,
    /// two leaders in one term).
    async fn stop(self) -> (Vec<Write>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let writes = self.writes.lock().unwrap().clone();
        let mut problems: Vec<String> = std::mem::take(&mut *self.stale.lock().unwrap())
            .into_iter()
            .map(|s| {
                format!(
                    "stale read of {} through member {}: status {}",
                    s.key, s.member, s.status
                )
            })
            .collect();
        let leaders = self.leaders.lock().unwrap();
        if leaders.is_empty() {
            problems.push("the status poller saw no leader at all".into());
        }
        for (term, members) in leaders.iter() {
            if members.len() > 1 {
                problems.push(format!("term {term} had two leaders: members {members:?}"));
            }
        }
        (writes, problems)
    }
}

/// Heals, waits until the members agree, and checks the history: no
/// acknowledged write lost, no write refused with 503 applied, and nothing
/// the load saw go wrong (`seen`: stale reads, two leaders in one term).
/// Prints the history of any failure.
async fn check_history(
    net: &Net,
    cluster: &TestCluster,
    token: &str,
    writes: &[Write],
    seen: &[String],
) {
    net.heal();
    cluster.converge().await;
    let client = client(token);
    let mut problems = Vec::new();
    for w in writes {
        if !matches!(w.status, 200 | 503) {
            continue;
        }
        let r = wait_until(
            "a read through member 1",
            Duration::from_secs(15),
            || async {
                match client
                    .get(cluster.nodes[0].url(&format!("/api/kv/keys/{}", w.key)))
                    .send()
                    .await
                {
                    Ok(r) if matches!(r.status().as_u16(), 200 | 404) => Ok(r.status().as_u16()),
                    Ok(r) => Err(r.status().as_u16()),
                    Err(e) => Err(e.status().map_or(0, |s| s.as_u16())),
                }
            },
        )
        .await;
        match (w.status, r) {
            (200, 404) => problems.push(format!("acknowledged and lost: {w:?}")),
            (503, 200) => problems.push(format!("refused with 503 and applied: {w:?}")),
            _ => {}
        }
    }
    problems.extend_from_slice(seen);
    if !problems.is_empty() {
        let history: Vec<String> = writes.iter().map(|w| format!("{w:?}")).collect();
        panic!(
            "{}\n--- history ---\n{}",
            problems.join("\n"),
            history.join("\n")
        );
    }
    let count = |s: u16| writes.iter().filter(|w| w.status == s).count();
    eprintln!(
        "history: {} writes: {} acknowledged, {} refused (503), {} unknown (504), {} other",
        writes.len(),
        count(200),
        count(503),
        count(504),
        writes.len() - count(200) - count(503) - count(504)
    );
}

/// When the first write through `member` sent at or after `since` was
/// acknowledged.
fn first_ack(writes: &[Write], member: usize, since: Duration) -> Option<Duration> {
    writes
        .iter()
        .filter(|w| w.member == member && w.status == 200 && w.start >= since)
        .map(|w| w.end)
        .min()
}

/// The longest time between two acknowledgements through `member` within
/// `window`.
fn longest_gap(writes: &[Write], member: usize, window: (Duration, Duration)) -> Duration {
    let mut acks: Vec<Duration> = writes
        .iter()
        .filter(|w| w.member == member && w.status == 200)
        .map(|w| w.end)
        .filter(|t| *t >= window.0 && *t <= window.1)
        .collect();
    acks.sort();
    acks.windows(2)
        .map(|p| p[1] - p[0])
        .max()
        .unwrap_or(window.1 - window.0)
}

async fn net_cluster(net: &Net) -> (TestCluster, String) {
    let mut cluster = TestCluster::prepare_in(net, "");
    cluster.spawn_all();
    let token = cluster.admin_token().await;
    (cluster, token)
}

/// A history around one fault: writes and reads for 2.5 s, `fault` for 4 s,
/// the heal, 2 s more; checked (see `check_history`).
struct Run {
    writes: Vec<Write>,
    cut: Duration,
    healed: Duration,
}

async fn around(net: &Net, cluster: &TestCluster, token: &str, fault: impl FnOnce(&Net)) -> Run {
    let load = Load::start(cluster, token);
    // As long as the window after the heal, to compare the two.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    fault(net);
    // From the moment every rule is in place.
    let cut = load.now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let healed = load.now();
    net.heal();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (writes, seen) = load.stop().await;
    check_history(net, cluster, token, &writes, &seen).await;
    Run {
        writes,
        cut,
        healed,
    }
}

impl Run {
    /// The longest time without an acknowledgement through `member` in the
    /// two seconds after the heal.
    fn gap_after_heal(&self, member: usize) -> Duration {
        longest_gap(
            &self.writes,
            member,
            (self.healed, self.healed + Duration::from_secs(2)),
        )
    }

    /// The longest time without an acknowledgement through `member` in the
    /// two seconds before the fault: what is normal here.
    fn gap_before(&self, member: usize) -> Duration {
        longest_gap(
            &self.writes,
            member,
            (self.cut - Duration::from_secs(2), self.cut),
        )
    }

    /// The 99th percentile of acknowledgement latency before the fault.
    fn p99_before(&self) -> Duration {
        let mut l: Vec<Duration> = self
            .writes
            .iter()
            .filter(|w| w.status == 200 && w.end < self.cut)
            .map(|w| w.end - w.start)
            .collect();
        l.sort();
        l.get(l.len() * 99 / 100).copied().unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_by_the_network_loses_nothing_and_the_majority_goes_on() {
    let net = Net::new(3);
    let (cluster, token) = net_cluster(&net).await;
    let leader = cluster.leader().await;
    let run = around(&net, &cluster, &token, |net| net.isolate(leader)).await;
    let (cut, healed) = (run.cut, run.healed);
    for member in (0..3).filter(|m| *m != leader) {
        let first = first_ack(&run.writes, member, cut).map(|t| t - cut);
        eprintln!("bench: leader cut off, first ack through a majority member: {first:?}");
        assert!(
            first.is_some_and(|t| t < healed - cut),
            "no ack through the majority member {member}"
        );
    }
    for member in 0..3 {
        eprintln!(
            "bench: leader cut off, longest ack gap after the heal: {:?} (before the cut: {:?}; p99 latency before: {:?})",
            run.gap_after_heal(member),
            run.gap_before(member),
            run.p99_before()
        );
    }
    // The cut-off leader acknowledged nothing while cut off (beyond what
    // was committed before the cut).
    let late: Vec<&Write> = run
        .writes
        .iter()
        .filter(|w| {
            w.member == leader
                && w.status == 200
                && w.start > cut + Duration::from_millis(100)
                && w.end < healed
        })
        .collect();
    assert!(late.is_empty(), "the cut-off leader acknowledged: {late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_cut_off_by_the_network_refuses_fast_and_rejoins_quietly() {
    let net = Net::new(3);
    let (cluster, token) = net_cluster(&net).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let term = terms(&cluster).await[leader].1;
    let run = around(&net, &cluster, &token, |net| net.isolate(follower)).await;
    let (cut, healed) = (run.cut, run.healed);
    eprintln!(
        "bench: follower cut off, longest ack gap through the leader: {:?} (before the cut: {:?}; p99 latency before: {:?})",
        longest_gap(&run.writes, leader, (cut, healed)),
        run.gap_before(leader),
        run.p99_before()
    );
    // The cut-off member refuses what it has not sent, and soon.
    let refused: Vec<&Write> = run
        .writes
        .iter()
        .filter(|w| w.member == follower && w.status == 503 && w.start > cut && w.end < healed)
        .collect();
    assert!(!refused.is_empty(), "the cut-off member never refused");
    let first = refused.iter().map(|w| w.end - cut).min();
    let slowest = refused.iter().map(|w| w.end - w.start).max();
    eprintln!(
        "bench: follower cut off, first refusal after the cut: {first:?}, slowest refusal: {slowest:?}, refusals: {}",
        refused.len()
    );
    for member in 0..3 {
        eprintln!(
            "bench: follower cut off, longest ack gap after the heal: {:?} (before the cut: {:?}; p99 latency before: {:?})",
            run.gap_after_heal(member),
            run.gap_before(member),
            run.p99_before()
        );
    }
    let after = terms(&cluster).await;
    assert!(
        after
            .iter()
            .all(|(_, t, l)| *t == term && *l == Some(leader as u64 + 1)),
        "the rejoin caused an election: term {term} -> {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flapping_link_and_a_one_way_partition_lose_nothing() {
    let net = Net::new(3);
    let (cluster, token) = net_cluster(&net).await;
    let leader = cluster.leader().await;
    let follower = (leader + 2) % 3;
    let load = Load::start(&cluster, &token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for cycle in 0..10 {
        // Alternately the leader's and a follower's link to one peer.
        if cycle % 2 == 0 {
            net.cut(leader, follower);
        } else {
            net.cut(follower, (follower + 1) % 3);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        net.heal();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // One way: the follower no longer hears the leader; the leader hears it.
    net.drop_from(leader, follower);
    tokio::time::sleep(Duration::from_secs(3)).await;
    net.heal();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (writes, seen) = load.stop().await;
    check_history(&net, &cluster, &token, &writes, &seen).await;
}

/// A fourth node on `net`'s fourth host, not a member yet; started, not
/// ready until added.
fn fourth_member(net: &Net, cluster: &TestCluster) -> Node {
    let on = |port| std::net::SocketAddr::from((net.ips[3], port));
    let mut node = cluster.joiner([on(8080), on(8081), on(7070), on(18000)]);
    node.launcher = net.launcher(3);
    node.spawn_only(&[]);
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_membership_change_under_a_partition_completes_after_the_heal_and_loses_nothing() {
    let net = Net::new(4);
    let (cluster, token) = net_cluster(&net).await;
    let mut fourth = fourth_member(&net, &cluster);
    let config = cluster.nodes[0].config_path.to_str().unwrap().to_owned();
    let cli = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli(std::path::Path::new(BINARY), &args)
        })
    };
    let arg = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (code, out, err) = cli(arg(&[
        "cluster",
        "add-learner",
        "--config",
        &config,
        "--id",
        "4",
        "--peer",
        &format!("{}:7070", net.ips[3]),
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    fourth.wait_ready();
    let leader = cluster.leader().await;
    // The promotion starts, and the leader is cut off from everyone while
    // it runs: the change finishes under the new leader, or after the heal.
    let mut first = None;
    let run = around(&net, &cluster, &token, |net| {
        first = Some(cli(arg(&[
            "cluster", "promote", "--config", &config, "--id", "4",
        ])));
        std::thread::sleep(Duration::from_millis(30));
        net.isolate(leader);
    })
    .await;
    let (code, out, err) = first.unwrap().await.unwrap();
    eprintln!(
        "membership change under a partition: {} writes checked; the promotion begun before the cut ended with {code}: {out}{err}",
        run.writes.len()
    );
    // It succeeded, or says what became of it in words an operator can act
    // on.
    assert!(
        code == 0 || err.contains("run the command again"),
        "{out}{err}"
    );
    // Whatever became of that promotion, asking again settles it, and all
    // four agree.
    let (code, out, err) = cli(arg(&[
        "cluster", "promote", "--config", &config, "--id", "4",
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("\"voter\": true").count(), 4, "{out}");
    let r = authed(&token)
        .get(fourth.url("/api/kv/keys/m0-0"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the new member serves what was written before it joined"
    );
}
