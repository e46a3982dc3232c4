//! The leader's own appends, acknowledged to openraft before they are on
//! disk, and what waits for them.
//!
//! openraft 0.9 waits until the leader's log write (an fsync) is done
//! before it sends the new entries to the followers, so a write paid the
//! leader's fsync and then a follower's, one after the other. Raft lets the
//! leader write its log while it replicates, provided that its own copy
//! counts towards a majority only once it is on disk. So the log store
//! acknowledges the leader's own appends at once (`LogStore::append`), and
//! this keeps back the two things through which such an entry could count
//! early, until its write is done:
//! - applying it on the leader (`wait`, called by the state machine):
//!   nothing is answered, read or put in a snapshot from an entry before it
//!   is on the leader's disk;
//! - telling the followers that it is committed (`hold_back`, on each
//!   AppendEntries): a follower applies only entries on the leader's disk.
//!
//! An entry that anyone applies is then on the leader's disk and on the
//! disks of the followers whose answers made it committed: a majority. An
//! entry the leader loses in a crash before its write was applied nowhere
//! and answered to no one, like any entry that was never committed.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use openraft::{LogId, raft::AppendEntriesRequest};
use tokio::sync::{Notify, watch};

use super::TypeConfig;

type NodeId = u64;

/// How far the early-acknowledged writes have got.
#[derive(Clone, Debug, Default)]
pub struct Written {
    /// The ticket of the last early-acknowledged append on disk (tickets
    /// are given in the writer's queue order).
    pub ticket: u64,
    /// Why a write failed: nothing acknowledged early after it will be.
    pub failed: Option<Arc<str>>,
}

/// See the module's documentation.
pub struct Durable {
    /// Appends acknowledged before their write and not known to be on disk
    /// yet: first index → ticket.
    early: Mutex<BTreeMap<u64, u64>>,
    next_ticket: AtomicU64,
    written: watch::Sender<Written>,
    /// The highest commit index held back from a follower since the last
    /// heartbeat that could tell it (0: none), and a nudge for the task
    /// that sends that heartbeat (`heartbeat_when_written`).
    held: AtomicU64,
    held_nudge: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Durable {
    fn default() -> Self {
        Durable {
            early: Mutex::default(),
            next_ticket: AtomicU64::new(1),
            written: watch::channel(Written::default()).0,
            held: AtomicU64::new(0),
            held_nudge: Notify::new(),
        }
    }
}

impl Durable {
    /// Records an append of entries from `first` on that is acknowledged
    /// before its write; returns its ticket, for `written`. Called in the
    /// order the appends are queued for the writer.
    pub fn acknowledged_early(&self, first: u64) -> u64 {
        let ticket = self.next_ticket.fetch_add(1, Ordering::SeqCst);
        lock(&self.early).insert(first, ticket);
        ticket
    }

    /// The writer has put every append up to `ticket` on disk. After a
    /// failure nothing counts as written any more.
    pub fn written(&self, ticket: u64) {
        let mut failed = false;
        self.written.send_modify(|w| match w.failed {
            None => w.ticket = w.ticket.max(ticket),
            Some(_) => failed = true,
        });
        if !failed {
            lock(&self.early).retain(|_, t| *t > ticket);
        }
    }

    /// A write failed: what waits for an early-acknowledged append fails
    /// with `why` (openraft then stops, as on any storage error), and the
    /// writer writes nothing more (see `log_store::write_loop`).
    pub fn failed(&self, why: &str) {
        self.written.send_modify(|w| {
            w.failed.get_or_insert_with(|| Arc::from(why));
        });
    }

    /// Why an early-acknowledged write failed, if one did.
    pub fn failure(&self) -> Option<Arc<str>> {
        self.written.borrow().failed.clone()
    }

    /// The ticket of the last early-acknowledged append on disk.
    #[cfg(test)]
    pub fn tickets_written(&self) -> u64 {
        self.written.borrow().ticket
    }

    /// The first index of the early-acknowledged appends still being
    /// written, if any: everything below it is on disk.
    fn pending_from(&self) -> Option<u64> {
        lock(&self.early).keys().next().copied()
    }

    /// Waits until every entry up to `index` is on this node's disk.
    pub async fn wait(&self, index: u64) -> Result<(), String> {
        let need = lock(&self.early)
            .range(..=index)
            .map(|(_, ticket)| *ticket)
            .max();
        let Some(need) = need else {
            return Ok(());
        };
        let mut written = self.written.subscribe();
        let seen = written
            .wait_for(|w| w.ticket >= need || w.failed.is_some())
            .await
            .map_err(|_| "the Raft log writer has stopped".to_string())?;
        match &seen.failed {
            Some(why) if seen.ticket < need => Err(format!(
                "entry {index} cannot be applied: writing it to this member's Raft log failed ({why})"
            )),
            _ => Ok(()),
        }
    }

    /// Lowers the commit index an AppendEntries tells a follower to the
    /// last entry on this leader's disk that the message names (or none):
    /// the follower learns the rest once the write is done.
    pub fn hold_back(&self, rpc: &mut AppendEntriesRequest<TypeConfig>) {
        let (Some(commit), Some(pending)) = (rpc.leader_commit, self.pending_from()) else {
            return;
        };
        if commit.index < pending {
            return;
        }
        rpc.leader_commit = rpc
            .entries
            .iter()
            .map(|e| e.log_id)
            .chain(rpc.prev_log_id)
            .filter(|id| id.index < pending)
            .max_by_key(|id: &LogId<NodeId>| id.index);
        self.held.fetch_max(commit.index, Ordering::SeqCst);
        self.held_nudge.notify_one();
    }

    /// Sends a heartbeat (through `heartbeat`) once a commit index held back
    /// from the followers is on disk, so they need not wait for the next
    /// one. Ends when `heartbeat` fails (Raft has stopped).
    pub async fn heartbeat_when_written<F, Fut>(self: Arc<Self>, heartbeat: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut written = self.written.subscribe();
        loop {
            let held = self.held.load(Ordering::SeqCst);
            if held == 0 {
                // Nothing held back: not woken by every write.
                self.held_nudge.notified().await;
                continue;
            }
            if self.pending_from().is_none_or(|p| p > held) {
                self.held.store(0, Ordering::SeqCst);
                if !heartbeat().await {
                    return;
                }
                continue;
            }
            tokio::select! {
                changed = written.changed() => if changed.is_err() { return },
                _ = self.held_nudge.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::{CommittedLeaderId, Entry, EntryPayload, Vote};

    use super::*;

    fn id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(3, 1), index)
    }

    fn rpc(prev: u64, entries: &[u64], commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(id(prev)),
            entries: entries
                .iter()
                .map(|i| Entry {
                    log_id: id(*i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: Some(id(commit)),
        }
    }

    #[tokio::test]
    async fn an_entry_waits_for_its_own_write_and_those_before_it_only() {
        let d = Arc::new(Durable::default());
        let first = d.acknowledged_early(5);
        let second = d.acknowledged_early(6);
        assert!(d.wait(4).await.is_ok(), "nothing before 5 is pending");
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.wait(6).await }
        });
        d.written(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "entry 6 is not written yet");
        d.written(second);
        assert!(waiting.await.unwrap().is_ok());
        assert!(d.wait(100).await.is_ok(), "nothing is pending any more");
    }

    #[tokio::test]
    async fn a_failed_write_fails_what_waits_for_it() {
        let d = Durable::default();
        let ticket = d.acknowledged_early(7);
        d.failed("disk full");
        let err = d.wait(7).await.unwrap_err();
        assert!(
            err.contains("entry 7") && err.contains("disk full"),
            "{err}"
        );
        // A later write that succeeds does not make it written.
        d.written(ticket + 1);
        assert!(d.wait(7).await.is_err());
    }

    #[test]
    fn a_follower_is_told_only_of_commits_on_the_leaders_disk() {
        let d = Durable::default();
        // Nothing pending: the commit goes as it is.
        let mut m = rpc(4, &[5, 6], 6);
        d.hold_back(&mut m);
        assert_eq!(m.leader_commit, Some(id(6)));
        // Entry 6 is being written: the commit is lowered to 5, named by
        // the message itself.
        let ticket = d.acknowledged_early(6);
        let mut m = rpc(4, &[5, 6], 6);
        d.hold_back(&mut m);
        assert_eq!(m.leader_commit, Some(id(5)));
        // A heartbeat naming only entries being written tells no commit.
        let mut m = rpc(6, &[], 6);
        d.hold_back(&mut m);
        assert_eq!(m.leader_commit, None);
        // A commit below what is pending is not touched.
        let mut m = rpc(3, &[4], 4);
        d.hold_back(&mut m);
        assert_eq!(m.leader_commit, Some(id(4)));
        d.written(ticket);
        let mut m = rpc(6, &[], 6);
        d.hold_back(&mut m);
        assert_eq!(m.leader_commit, Some(id(6)));
    }

    #[tokio::test]
    async fn a_held_back_commit_is_sent_once_written() {
        let d = Arc::new(Durable::default());
        let beats = Arc::new(AtomicU64::new(0));
        tokio::spawn(d.clone().heartbeat_when_written({
            let beats = beats.clone();
            move || {
                beats.fetch_add(1, Ordering::SeqCst);
                std::future::ready(true)
            }
        }));
        let ticket = d.acknowledged_early(6);
        let mut m = rpc(6, &[], 6);
        d.hold_back(&mut m);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(beats.load(Ordering::SeqCst), 0, "not written yet");
        d.written(ticket);
        tokio::time::timeout(Duration::from_secs(5), async {
            while beats.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("a heartbeat once written");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(beats.load(Ordering::SeqCst), 1, "one heartbeat, not more");
    }
}
