//! Sessions: which nodes this member is in touch with right now, so that a
//! node that crashes is noticed when its connection breaks, not when its
//! registry record's TTL runs out.
//!
//! - A store client's session is its `WatchRegistry` stream to a member
//!   (it follows one member at a time). The stream ends when the client's
//!   process dies (its kernel closes the connection) or stops answering
//!   the peer listener's HTTP/2 pings (a paused process, a machine gone).
//! - A member's session is the leader's Raft traffic to it: the leader
//!   calls every follower at each heartbeat, and a call that fails or goes
//!   unanswered starts the silence.
//!
//! This module only keeps the facts: who has been out of touch, since
//! when. What that means for the registry is decided above (`node`), which
//! knows the registry and waits out a grace before it marks a record.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use tokio::sync::watch;

use crate::store::now_ms;

/// Out of touch: node name → since when.
pub type Lost = BTreeMap<String, Silence>;

/// How long a node has been out of touch, and through what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    /// Since when (ms since the epoch).
    pub since: i64,
    /// A member, silent to this member's Raft traffic as its leader (so it
    /// means something only while this member leads); otherwise a store
    /// client whose sessions here all ended.
    pub member: bool,
}

#[derive(Default)]
pub struct Sessions {
    /// Open `WatchRegistry` streams, by store client.
    open: Mutex<HashMap<String, usize>>,
    /// The nodes out of touch now.
    lost: watch::Sender<Lost>,
}

/// Holds a store client's session open while it lives.
pub struct Session {
    sessions: std::sync::Arc<Sessions>,
    node: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.sessions.closed(&self.node);
    }
}

impl Sessions {
    /// A store client's session opens: it is in touch.
    pub fn opened(self: &std::sync::Arc<Self>, node: &str) -> Session {
        *self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(node.to_owned())
            .or_default() += 1;
        self.heard(node);
        Session {
            sessions: self.clone(),
            node: node.to_owned(),
        }
    }

    fn closed(&self, node: &str) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let Some(count) = open.get_mut(node) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            open.remove(node);
            drop(open);
            self.silent(node, now_ms(), false);
        }
    }

    /// `node` answered: in touch (again).
    pub fn heard(&self, node: &str) {
        self.lost
            .send_if_modified(|lost| lost.remove(node).is_some());
    }

    /// `node` has not answered since `since` (kept if it was already out
    /// of touch: the silence started then).
    pub fn silent(&self, node: &str, since: i64, member: bool) {
        self.lost.send_if_modified(|lost| {
            if lost.contains_key(node) {
                return false;
            }
            lost.insert(node.to_owned(), Silence { since, member });
            true
        });
    }

    /// The nodes out of touch now, and each change to them.
    pub fn lost(&self) -> watch::Receiver<Lost> {
        self.lost.subscribe()
    }

    /// How many store clients have a session open here.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_node_is_lost_when_its_last_session_closes_and_found_when_heard() {
        let sessions = Arc::new(Sessions::default());
        let lost = sessions.lost();
        let first = sessions.opened("kv-1");
        let second = sessions.opened("kv-1");
        drop(first);
        assert!(lost.borrow().is_empty(), "one session is still open");
        assert_eq!(sessions.open(), 1);
        drop(second);
        let silence = *lost.borrow().get("kv-1").expect("lost");
        assert!(silence.since <= now_ms() && !silence.member);
        assert_eq!(sessions.open(), 0);
        // A later silence keeps the first time.
        sessions.silent("kv-1", silence.since + 10_000, false);
        assert_eq!(lost.borrow()["kv-1"], silence);
        let _again = sessions.opened("kv-1");
        assert!(lost.borrow().is_empty());
    }

    #[test]
    fn members_go_silent_and_are_heard_again() {
        let sessions = Sessions::default();
        let mut lost = sessions.lost();
        sessions.silent("db-2", 5, true);
        assert!(lost.has_changed().unwrap());
        assert_eq!(
            lost.borrow_and_update()["db-2"],
            Silence {
                since: 5,
                member: true
            }
        );
        // Heard from a node that was never lost: nothing changes.
        sessions.heard("db-3");
        assert!(!lost.has_changed().unwrap());
        sessions.heard("db-2");
        assert!(lost.borrow_and_update().is_empty());
    }
}
