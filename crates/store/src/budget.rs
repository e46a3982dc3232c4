//! What one call of a service to the store may cost, and the meter that
//! stops it when it costs more.
//!
//! A write is applied on every replica, so whatever stops it must stop it on
//! every replica at the same point: its limits are counted in SQLite virtual
//! machine instructions ("steps"), rows and bytes of one value, never in
//! time, and they travel with the write in the Raft log, so that every member
//! applies the limits of the node that sent it. A read runs on one node only,
//! so its limit is wall-clock time.
//!
//! What a write call may store is bounded by its rows and the size of each:
//! a row, like any value a statement makes, may not be larger than
//! `value_bytes` (SQLite's length limit, set for the call), and the call may
//! write at most `rows` rows, its triggers' included.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// SQLite calls the progress handler once per this many VM instructions.
pub const STEPS_PER_TICK: u64 = 1000;

/// The longest string, blob or row any statement may make or read: the
/// largest request body the ingress accepts. SQLite's own default (1 GB)
/// would let one `zeroblob()` take a gigabyte of memory.
pub const MAX_VALUE_BYTES: u64 = 64 * 1024 * 1024;

/// The limits of one write call: all of its statements, atomically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBudget {
    /// SQLite VM instructions one statement may take (triggers included).
    pub steps: u64,
    /// Rows the call may return (RETURNING), and rows it may write, over
    /// all its statements and their triggers.
    pub rows: u64,
    /// The largest string, blob or row one of its statements may make.
    pub value_bytes: u64,
}

impl WriteBudget {
    /// No limit: flotilla's own namespaces, and writes logged before
    /// budgets existed (replayed exactly as they first applied).
    pub const UNLIMITED: WriteBudget = WriteBudget {
        steps: u64::MAX,
        rows: u64::MAX,
        value_bytes: MAX_VALUE_BYTES,
    };

    pub fn unlimited() -> WriteBudget {
        Self::UNLIMITED
    }
}

/// The limits of one read call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadBudget {
    /// Wall-clock time the statement may run, in milliseconds.
    pub time_ms: u64,
    /// Rows it may return.
    pub rows: u64,
}

impl ReadBudget {
    pub const UNLIMITED: ReadBudget = ReadBudget {
        time_ms: u64::MAX,
        rows: u64::MAX,
    };
}

/// The budgets of one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub read: ReadBudget,
    pub write: WriteBudget,
}

impl Budget {
    /// For flotilla's own namespaces (registry, signing keys, Raft state):
    /// its own code, bounded by construction.
    pub const SYSTEM: Budget = Budget {
        read: ReadBudget::UNLIMITED,
        write: WriteBudget::UNLIMITED,
    };

    /// The default for a service: a read may run a second (readers run
    /// beside the writer); a write statement 10 million SQLite steps, a
    /// quarter of a second or less on this class of machine (BENCHMARKS.md),
    /// because every other write waits for it; 10,000 rows per call; values
    /// up to 1 MiB.
    pub const SERVICE_DEFAULT: Budget = Budget {
        read: ReadBudget {
            time_ms: 1000,
            rows: 10_000,
        },
        write: WriteBudget {
            steps: 10_000_000,
            rows: 10_000,
            value_bytes: 1024 * 1024,
        },
    };
}

/// Counts what the current statement and call use, on one connection.
#[derive(Debug)]
pub(crate) struct Meter {
    /// Progress ticks one statement may take.
    statement_ticks: u64,
    /// Ticks the current statement took.
    ticks: u64,
    /// Per statement, for reads.
    time: Option<Duration>,
    deadline: Option<Instant>,
    rows_limit: u64,
    /// Rows the call may still return.
    returned_left: u64,
    /// Rows the call may still write.
    written_left: u64,
    value_bytes: u64,
    /// Why the statement went over its budget, once it did.
    exceeded: Option<String>,
}

impl Meter {
    pub fn write(budget: &WriteBudget) -> Meter {
        Meter {
            statement_ticks: budget.steps.div_ceil(STEPS_PER_TICK),
            ticks: 0,
            time: None,
            deadline: None,
            rows_limit: budget.rows,
            returned_left: budget.rows,
            written_left: budget.rows,
            value_bytes: budget.value_bytes,
            exceeded: None,
        }
    }

    pub fn read(budget: &ReadBudget) -> Meter {
        Meter {
            statement_ticks: u64::MAX,
            ticks: 0,
            time: (budget.time_ms != u64::MAX).then(|| Duration::from_millis(budget.time_ms)),
            deadline: None,
            rows_limit: budget.rows,
            returned_left: budget.rows,
            written_left: 0,
            value_bytes: MAX_VALUE_BYTES,
            exceeded: None,
        }
    }

    /// The largest value the call's statements may make, as SQLite's
    /// length limit.
    pub fn value_limit(&self) -> i32 {
        i32::try_from(self.value_bytes.min(MAX_VALUE_BYTES)).unwrap_or(i32::MAX)
    }

    /// A statement starts: its step count and clock start over.
    pub fn begin_statement(&mut self) {
        self.ticks = 0;
        self.deadline = self.time.map(|t| Instant::now() + t);
    }

    /// Called every [`STEPS_PER_TICK`] instructions; true stops the
    /// statement.
    pub fn tick(&mut self) -> bool {
        if self.exceeded.is_none() {
            self.ticks += 1;
            if self.ticks > self.statement_ticks {
                self.exceeded = Some(format!(
                    "a statement took more than {} SQLite steps (the write budget): add an index, or split the work",
                    self.statement_ticks.saturating_mul(STEPS_PER_TICK)
                ));
            } else if let (Some(deadline), Some(time)) = (self.deadline, self.time)
                && Instant::now() >= deadline
            {
                self.exceeded = Some(format!(
                    "a statement ran longer than {} ms (the read budget): add an index, or read less at once",
                    time.as_millis()
                ));
            }
        }
        self.exceeded.is_some()
    }

    /// A row is about to be returned: refused past the call's row budget.
    pub fn returned_row(&mut self) -> Result<(), String> {
        match self.returned_left.checked_sub(1) {
            Some(left) => {
                self.returned_left = left;
                Ok(())
            }
            None => Err(format!(
                "the call returned more than {} rows (its budget): page with LIMIT",
                self.rows_limit
            )),
        }
    }

    /// A statement wrote `rows` rows: refused past the call's row budget.
    pub fn wrote_rows(&mut self, rows: u64) -> Result<(), String> {
        match self.written_left.checked_sub(rows) {
            Some(left) => {
                self.written_left = left;
                Ok(())
            }
            None => Err(format!(
                "the call wrote more than {} rows (its budget): write less at once",
                self.rows_limit
            )),
        }
    }

    /// Why a value was too big, in terms of the budget.
    pub fn too_big(&self) -> String {
        format!(
            "a value or row is larger than {} bytes (the write budget): store less in one row",
            self.value_limit()
        )
    }

    pub fn take_exceeded(&mut self) -> Option<String> {
        self.exceeded.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_counted_per_statement() {
        let mut m = Meter::write(&WriteBudget {
            steps: 2 * STEPS_PER_TICK,
            rows: 1,
            value_bytes: 10,
        });
        m.begin_statement();
        assert!(!m.tick() && !m.tick());
        m.begin_statement();
        assert!(!m.tick() && !m.tick());
        assert!(m.tick(), "the third tick of one statement is over budget");
        assert!(m.take_exceeded().unwrap().contains("2000 SQLite steps"));
    }

    #[test]
    fn rows_are_counted_per_call() {
        let mut m = Meter::write(&WriteBudget {
            steps: u64::MAX,
            rows: 3,
            value_bytes: 10,
        });
        m.wrote_rows(2).unwrap();
        m.wrote_rows(1).unwrap();
        assert!(m.wrote_rows(1).unwrap_err().contains("more than 3 rows"));
        for _ in 0..3 {
            m.returned_row().unwrap();
        }
        assert!(m.returned_row().unwrap_err().contains("more than 3 rows"));
        assert_eq!(m.value_limit(), 10);
        assert!(m.too_big().contains("larger than 10 bytes"));
    }

    #[test]
    fn reads_are_timed() {
        let mut m = Meter::read(&ReadBudget {
            time_ms: 0,
            rows: 1,
        });
        m.begin_statement();
        assert!(m.tick());
        assert!(m.take_exceeded().unwrap().contains("longer than 0 ms"));
        let mut unlimited = Meter::read(&ReadBudget::UNLIMITED);
        unlimited.begin_statement();
        assert!(!unlimited.tick());
    }
}
