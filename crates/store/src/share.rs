//! Sharing the one writer between namespaces.
//!
//! Budgets bound how long one statement holds the writer; they do not stop a
//! service from sending one maximal statement after another, which would
//! keep the writer from every other service. So a namespace whose last
//! write call held the writer for a long time (`HEAVY`) waits, before its
//! next call runs, as long as that call took, if another namespace wrote
//! meanwhile: no namespace takes much more than half of the writer from
//! others that want it. A namespace that writes alone is never held back.
//!
//! Others count as wanting the writer if they wrote since the long call
//! started, not only if a call of theirs waits at this instant: their
//! clients may be between two calls (an HTTP round trip) just when the
//! writer decides.
//!
//! This orders a single node's local writes only. A replicated store applies
//! entries in the order of the Raft log, the same on every member, and never
//! reorders them.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

/// A write call that held the writer this long makes its namespace wait.
/// An ordinary call takes tens of microseconds.
pub(super) const HEAVY: Duration = Duration::from_millis(5);

/// How long a namespace's last write is remembered.
const MEMORY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(super) struct Shares {
    /// Namespaces whose last call was long: since when that call ran, and
    /// until when the namespace waits.
    waits: HashMap<Arc<str>, (Instant, Instant)>,
    /// When each namespace last had a write waiting or done.
    seen: HashMap<Arc<str>, Instant>,
}

impl Shares {
    /// A call of `namespace` held the writer for `took`, ending `now`.
    pub fn charge(&mut self, namespace: &Arc<str>, took: Duration, now: Instant) {
        self.seen.insert(namespace.clone(), now);
        if took >= HEAVY {
            self.waits.insert(
                namespace.clone(),
                (now.checked_sub(took).unwrap_or(now), now + took),
            );
        }
    }

    /// Splits waiting calls into those to run now and those to hold back,
    /// keeping each namespace's calls in order.
    pub fn select<T>(
        &mut self,
        waiting: Vec<T>,
        namespace: impl Fn(&T) -> &Arc<str>,
        now: Instant,
    ) -> (Vec<T>, Vec<T>) {
        for call in &waiting {
            self.seen.insert(namespace(call).clone(), now);
        }
        self.seen
            .retain(|_, at| now.saturating_duration_since(*at) < MEMORY);
        self.waits.retain(|_, (_, until)| *until > now);
        if self.waits.is_empty() {
            return (waiting, Vec::new());
        }
        let contested = |ns: &Arc<str>| {
            self.waits.get(ns).is_some_and(|(since, _)| {
                self.seen
                    .iter()
                    .any(|(other, at)| other != ns && at >= since)
            })
        };
        let (held, run): (Vec<T>, Vec<T>) = waiting
            .into_iter()
            .partition(|call| contested(namespace(call)));
        (run, held)
    }

    /// When the first namespace that waits may run again.
    pub fn next_turn(&self) -> Option<Instant> {
        self.waits.values().map(|(_, until)| *until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn a_heavy_namespace_waits_while_others_write_and_only_then() {
        let (kv, hog) = (ns("kv"), ns("hog"));
        let mut shares = Shares::default();
        let now = Instant::now();
        // kv wrote while hog's long call ran.
        shares.charge(&kv, Duration::from_micros(50), now);
        shares.charge(&hog, Duration::from_millis(100), now);
        assert_eq!(shares.next_turn(), Some(now + Duration::from_millis(100)));
        let waiting = vec![(hog.clone(), 1), (kv.clone(), 2), (hog.clone(), 3)];
        let (run, held) = shares.select(waiting, |c| &c.0, now);
        assert_eq!(run, vec![(kv.clone(), 2)]);
        assert_eq!(held, vec![(hog.clone(), 1), (hog.clone(), 3)]);
        // kv's clients are between two calls: hog still waits its turn.
        let soon = now + Duration::from_millis(10);
        let (run, held) = shares.select(held, |c| &c.0, soon);
        assert!(run.is_empty());
        assert_eq!(held.len(), 2);
        // Its turn has come: it runs, in order.
        let later = now + Duration::from_millis(101);
        let (run, held) = shares.select(held, |c| &c.0, later);
        assert_eq!(run, vec![(hog.clone(), 1), (hog.clone(), 3)]);
        assert!(held.is_empty());
        assert_eq!(shares.next_turn(), None);
    }

    #[test]
    fn a_namespace_that_writes_alone_is_never_held() {
        let hog = ns("hog");
        let mut shares = Shares::default();
        let now = Instant::now();
        shares.charge(&hog, Duration::from_millis(100), now);
        let (run, held) = shares.select(vec![(hog.clone(), 1)], |c| &c.0, now);
        assert_eq!(run.len(), 1);
        assert!(held.is_empty());
    }
}
