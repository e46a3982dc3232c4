//! When this member last heard from each other member over Raft, and what
//! that says of them, for `/status` (and the status page).
//!
//! A member hears from another when a Raft call it made is answered (a
//! refusal is an answer), or when a leader's call reaches it. Who hears
//! from whom regularly depends on the role: a leader calls every follower
//! at each heartbeat, a follower hears from its leader only. So only those
//! pairs tell anything: a leader knows which followers it cannot reach, a
//! follower whether its leader is there; a follower cannot tell of another
//! follower.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;

/// The last time each member (by Raft id) was heard from.
#[derive(Default)]
pub struct Contacts(Mutex<BTreeMap<u64, Instant>>);

impl Contacts {
    /// `member` answered, or called: it is there now.
    pub fn heard(&self, member: u64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(member, Instant::now());
    }

    /// How long ago `member` was last heard from; `None` if never since
    /// this member started.
    pub fn since(&self, member: u64) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&member)
            .map(Instant::elapsed)
    }
}

/// What this member can tell of another's reachability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// The member itself.
    Me,
    /// Heard from within the limit.
    Reachable,
    /// Expected to be heard from regularly, and not heard from within the
    /// limit (or never since this member started).
    Unreachable,
    /// This member does not call it, nor it this member, in their roles
    /// (two followers): ask the leader.
    NotTracked,
}

/// Where a member stands in this member's eyes.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub me: u64,
    pub leader: Option<u64>,
    /// Silence longer than this makes a tracked member unreachable.
    pub limit: Duration,
}

impl View {
    /// What this member can tell of `member`, last heard from `since` ago.
    pub fn reachability(&self, member: u64, since: Option<Duration>) -> Reachability {
        let i_lead = self.leader == Some(self.me);
        if member == self.me {
            Reachability::Me
        } else if !i_lead && self.leader != Some(member) {
            Reachability::NotTracked
        } else if since.is_some_and(|s| s <= self.limit) {
            Reachability::Reachable
        } else {
            Reachability::Unreachable
        }
    }
}

/// How many entries `member` lacks of the leader's log (`last_log_index`),
/// from the index it has matched; `None` when that is not known (this
/// member does not lead, or the follower has matched nothing yet).
pub fn lag(last_log_index: Option<u64>, matched: Option<u64>) -> Option<u64> {
    Some(last_log_index.unwrap_or(0).saturating_sub(matched?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(400);

    #[test]
    fn a_leader_tracks_every_follower_by_its_last_answer() {
        let view = View {
            me: 1,
            leader: Some(1),
            limit: LIMIT,
        };
        assert_eq!(view.reachability(1, None), Reachability::Me);
        assert_eq!(
            view.reachability(2, Some(Duration::from_millis(50))),
            Reachability::Reachable
        );
        assert_eq!(view.reachability(2, Some(LIMIT)), Reachability::Reachable);
        assert_eq!(
            view.reachability(3, Some(LIMIT + Duration::from_millis(1))),
            Reachability::Unreachable
        );
        assert_eq!(view.reachability(3, None), Reachability::Unreachable);
    }

    #[test]
    fn a_follower_tracks_its_leader_only() {
        let view = View {
            me: 2,
            leader: Some(1),
            limit: LIMIT,
        };
        assert_eq!(
            view.reachability(1, Some(Duration::from_secs(2))),
            Reachability::Unreachable
        );
        assert_eq!(
            view.reachability(3, Some(Duration::from_secs(2))),
            Reachability::NotTracked
        );
        // Without a leader, nobody is tracked.
        let electing = View {
            leader: None,
            ..view
        };
        assert_eq!(electing.reachability(1, None), Reachability::NotTracked);
    }

    #[test]
    fn lag_counts_the_entries_a_follower_lacks() {
        assert_eq!(lag(Some(120), Some(100)), Some(20));
        assert_eq!(lag(Some(120), Some(120)), Some(0));
        assert_eq!(lag(Some(120), None), None);
        // A match reported ahead of a log read a moment earlier.
        assert_eq!(lag(Some(100), Some(101)), Some(0));
    }

    #[test]
    fn a_member_is_heard_from_since_its_last_call() {
        let contacts = Contacts::default();
        assert_eq!(contacts.since(2), None);
        contacts.heard(2);
        assert!(contacts.since(2).unwrap() < Duration::from_secs(1));
        assert_eq!(contacts.since(3), None);
    }
}
