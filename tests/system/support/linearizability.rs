//! A linearizability checker for per-key compare-and-set registers (the kv
//! service's model), in the style of Wing & Gong with memoization, and its
//! own tests on known-good and known-bad histories.
//!
//! Each key is checked on its own (linearizability is local). An operation
//! whose outcome is unknown (a timeout or a transport error) may have taken
//! effect at any point after it was invoked, or never.

use std::collections::HashSet;

/// A register's state: version 0 means the key does not exist.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub version: u64,
    pub value: String,
}

impl State {
    pub fn absent() -> State {
        State {
            version: 0,
            value: String::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// Write `value` if the version is `expected`; the observed outcome is
    /// whether it swapped and the state after.
    Cas {
        expected: u64,
        value: String,
        observed: Option<(bool, State)>,
    },
    /// A read that observed a state.
    Read { observed: Option<State> },
}

#[derive(Clone, Debug)]
pub struct Op {
    /// Invocation and response times in nanoseconds from a common origin;
    /// `ret` is `None` when the outcome is unknown.
    pub call: u64,
    pub ret: Option<u64>,
    pub kind: Kind,
}

/// Applies `op` to `state`; `None` if the op's observed outcome is
/// impossible from `state`.
fn step(state: &State, op: &Op) -> Option<State> {
    match &op.kind {
        Kind::Cas {
            expected,
            value,
            observed,
        } => {
            let swaps = state.version == *expected;
            let after = if swaps {
                State {
                    version: state.version + 1,
                    value: value.clone(),
                }
            } else {
                state.clone()
            };
            match observed {
                None => Some(after),
                Some((swapped, seen)) if *swapped == swaps && *seen == after => Some(after),
                Some(_) => None,
            }
        }
        Kind::Read { observed } => match observed {
            Some(seen) if seen != state => None,
            _ => Some(state.clone()),
        },
    }
}

/// Whether the history of one key is linearizable from `initial`.
pub fn linearizable(ops: &[Op], initial: State) -> bool {
    assert!(ops.len() <= 128, "checker limit: 128 operations per key");
    let mut memo = HashSet::new();
    let must: u128 = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.ret.is_some())
        .fold(0, |m, (i, _)| m | (1 << i));
    search(ops, 0, &initial, must, &mut memo)
}

fn search(
    ops: &[Op],
    done: u128,
    state: &State,
    must: u128,
    memo: &mut HashSet<(u128, State)>,
) -> bool {
    if done & must == must {
        return true;
    }
    // Only an operation invoked before every pending operation returned can
    // come next.
    let horizon = ops
        .iter()
        .enumerate()
        .filter(|(i, _)| done & (1 << i) == 0)
        .filter_map(|(_, o)| o.ret)
        .min()
        .unwrap_or(u64::MAX);
    for (i, op) in ops.iter().enumerate() {
        if done & (1 << i) != 0 || op.call > horizon {
            continue;
        }
        if let Some(next) = step(state, op) {
            let now = done | (1 << i);
            if memo.insert((now, next.clone())) && search(ops, now, &next, must, memo) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(version: u64, value: &str) -> State {
        State {
            version,
            value: value.into(),
        }
    }

    fn cas(
        call: u64,
        ret: Option<u64>,
        expected: u64,
        value: &str,
        observed: Option<(bool, State)>,
    ) -> Op {
        Op {
            call,
            ret,
            kind: Kind::Cas {
                expected,
                value: value.into(),
                observed,
            },
        }
    }

    fn read(call: u64, ret: u64, observed: State) -> Op {
        Op {
            call,
            ret: Some(ret),
            kind: Kind::Read {
                observed: Some(observed),
            },
        }
    }

    #[test]
    fn good_histories_pass() {
        // Sequential.
        assert!(linearizable(
            &[
                cas(0, Some(1), 0, "a", Some((true, s(1, "a")))),
                read(2, 3, s(1, "a")),
                cas(4, Some(5), 1, "b", Some((true, s(2, "b")))),
            ],
            State::absent()
        ));
        // Concurrent CAS: one wins, the other sees the winner.
        assert!(linearizable(
            &[
                cas(0, Some(10), 0, "a", Some((false, s(1, "b")))),
                cas(1, Some(9), 0, "b", Some((true, s(1, "b")))),
            ],
            State::absent()
        ));
        // A read concurrent with a write may see either state.
        assert!(linearizable(
            &[
                cas(0, Some(10), 0, "a", Some((true, s(1, "a")))),
                read(1, 2, State::absent())
            ],
            State::absent()
        ));
        // An unknown write may have happened...
        assert!(linearizable(
            &[cas(0, None, 0, "a", None), read(5, 6, s(1, "a"))],
            State::absent()
        ));
        // ... or not.
        assert!(linearizable(
            &[cas(0, None, 0, "a", None), read(5, 6, State::absent())],
            State::absent()
        ));
    }

    #[test]
    fn bad_histories_fail() {
        // A stale read after a completed write.
        assert!(!linearizable(
            &[
                cas(0, Some(1), 0, "a", Some((true, s(1, "a")))),
                read(2, 3, State::absent())
            ],
            State::absent()
        ));
        // Two winners for the same expected version.
        assert!(!linearizable(
            &[
                cas(0, Some(5), 0, "a", Some((true, s(1, "a")))),
                cas(1, Some(6), 0, "b", Some((true, s(1, "b")))),
            ],
            State::absent()
        ));
        // A lost acknowledged write: read after it sees the older value.
        assert!(!linearizable(
            &[
                cas(0, Some(1), 0, "a", Some((true, s(1, "a")))),
                cas(2, Some(3), 1, "b", Some((true, s(2, "b")))),
                read(4, 5, s(1, "a")),
            ],
            State::absent()
        ));
        // A value nobody wrote.
        assert!(!linearizable(&[read(0, 1, s(1, "ghost"))], State::absent()));
        // Reads going back in time.
        assert!(!linearizable(
            &[
                cas(0, None, 0, "a", None),
                read(1, 2, s(1, "a")),
                read(3, 4, State::absent()),
            ],
            State::absent()
        ));
    }
}
