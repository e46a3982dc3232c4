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
//! This module only keeps the facts: who is in session here (and the
//! opaque token each store client gave when it opened, its registry
//! claim), who has been out of touch, since when. What that means for the
//! registry is decided above (`node`), which knows the registry: it keeps
//! the records of the nodes in session here alive, and waits out a grace
//! before it marks a lost one.
//!
//! A member that cannot keep its sessions' nodes alive (it cannot commit,
//! cut off from the leader) *suspends* them: the open sessions end, new
//! ones are refused with the reason, and the store clients follow another
//! member. Sessions ended that way are not silences: the nodes did
//! nothing wrong.

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
    open: Mutex<HashMap<String, Open>>,
    /// The nodes out of touch now.
    lost: watch::Sender<Lost>,
    /// Why sessions are suspended here, if they are; each suspension ends
    /// the sessions open at the time.
    suspended: watch::Sender<Option<String>>,
}

/// A store client's open sessions here.
struct Open {
    count: usize,
    /// The token it gave with its latest session.
    token: String,
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
    /// A store client's session opens: it is in touch. `token` is what it
    /// gave to be known by (its registry claim; empty for a node of the
    /// topology). Refused, with the reason, while sessions are suspended.
    pub fn opened(self: &std::sync::Arc<Self>, node: &str, token: &str) -> Result<Session, String> {
        if let Some(why) = self.suspended.borrow().as_ref() {
            return Err(why.clone());
        }
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let entry = open.entry(node.to_owned()).or_insert(Open {
                count: 0,
                token: String::new(),
            });
            entry.count += 1;
            token.clone_into(&mut entry.token);
        }
        self.heard(node);
        Ok(Session {
            sessions: self.clone(),
            node: node.to_owned(),
        })
    }

    fn closed(&self, node: &str) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = open.get_mut(node) else {
            return;
        };
        entry.count -= 1;
        if entry.count == 0 {
            open.remove(node);
            drop(open);
            // Ended by this member (suspended): not the node's silence.
            if self.suspended.borrow().is_none() {
                self.silent(node, now_ms(), false);
            }
        }
    }

    /// The store clients in session here, each with its token.
    pub fn in_session(&self) -> Vec<(String, String)> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes: Vec<(String, String)> = open
            .iter()
            .map(|(node, o)| (node.clone(), o.token.clone()))
            .collect();
        nodes.sort();
        nodes
    }

    /// Suspends sessions (`why` says why, to those refused): the open ones
    /// end, and no new one opens until `resume`. Returns whether they were
    /// open until now.
    pub fn suspend(&self, why: &str) -> bool {
        self.suspended.send_if_modified(|s| {
            if s.is_some() {
                return false;
            }
            *s = Some(why.to_owned());
            true
        })
    }

    /// Sessions open again. Returns whether they were suspended.
    pub fn resume(&self) -> bool {
        self.suspended.send_if_modified(|s| s.take().is_some())
    }

    /// Whether sessions are suspended, and each change: a session ends
    /// when they are.
    pub fn suspension(&self) -> watch::Receiver<Option<String>> {
        self.suspended.subscribe()
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

/// The first message of a `WatchRegistry` stream carries this: the member
/// renews what a session keeps alive, so the store client need not (a
/// member of an earlier version sends nothing, and its store clients renew
/// their records themselves).
pub(crate) const SESSION_RENEWED: &[u8] = b"renewed";
/// The longest token a store client may open a session with.
pub(super) const MAX_SESSION_TOKEN: usize = 256;

/// A member's sessions as the layers above use them: the registry it
/// publishes to them, who is out of touch, who is in session, and the
/// suspension.
impl super::Cluster {
    /// Publishes the registry as this member sees it (encoded) to the store
    /// clients that follow it; an unchanged one is not sent again.
    pub fn publish_registry(&self, encoded: Vec<u8>) {
        self.registry_feed.send_if_modified(|current| {
            if **current == encoded[..] {
                false
            } else {
                *current = std::sync::Arc::from(encoded);
                true
            }
        });
    }

    /// The nodes this member has been out of touch with (see `sessions`),
    /// and each change to them.
    pub fn lost(&self) -> watch::Receiver<Lost> {
        self.sessions.lost()
    }

    /// How many store clients have a session open with this member.
    pub fn open_sessions(&self) -> usize {
        self.sessions.open()
    }

    /// The store clients in session with this member, each with the token
    /// it opened its session with (its registry claim, or empty).
    pub fn in_session(&self) -> Vec<(String, String)> {
        self.sessions.in_session()
    }

    /// Ends this member's sessions and refuses new ones, saying `why`,
    /// until `resume_sessions`: its store clients follow another member.
    pub fn suspend_sessions(&self, why: &str) {
        let open = self.sessions.open();
        if self.sessions.suspend(why) {
            tracing::warn!(
                sessions = open,
                reason = why,
                "this member suspends its store clients' sessions: they follow another member until it can keep them again"
            );
        }
    }

    /// Takes sessions again after `suspend_sessions`.
    pub fn resume_sessions(&self) {
        if self.sessions.resume() {
            tracing::info!("this member takes store clients' sessions again");
        }
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
        let first = sessions.opened("kv-1", "").unwrap();
        let second = sessions.opened("kv-1", "").unwrap();
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
        let _again = sessions.opened("kv-1", "").unwrap();
        assert!(lost.borrow().is_empty());
    }

    #[test]
    fn nodes_in_session_are_listed_with_their_latest_token() {
        let sessions = Arc::new(Sessions::default());
        let _a = sessions.opened("web-2", "claim-old").unwrap();
        let _b = sessions.opened("web-2", "claim-new").unwrap();
        let kv = sessions.opened("kv-1", "").unwrap();
        assert_eq!(
            sessions.in_session(),
            vec![
                ("kv-1".to_owned(), String::new()),
                ("web-2".to_owned(), "claim-new".to_owned())
            ]
        );
        drop(kv);
        assert_eq!(sessions.in_session().len(), 1);
    }

    #[test]
    fn a_suspension_refuses_sessions_and_its_ends_are_no_silence() {
        let sessions = Arc::new(Sessions::default());
        let lost = sessions.lost();
        let mut suspension = sessions.suspension();
        let open = sessions.opened("kv-1", "").unwrap();
        sessions.suspend("cannot commit");
        assert!(suspension.has_changed().unwrap());
        assert_eq!(
            suspension.borrow_and_update().as_deref(),
            Some("cannot commit")
        );
        // The stream holding it sees the suspension and ends it.
        drop(open);
        assert!(lost.borrow().is_empty(), "ended by the member, not lost");
        assert_eq!(
            sessions.opened("kv-1", "").err().as_deref(),
            Some("cannot commit")
        );
        sessions.resume();
        assert!(suspension.borrow_and_update().is_none());
        assert!(sessions.opened("kv-1", "").is_ok());
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
