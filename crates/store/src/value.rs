//! Owned SQL values and statements: what a service hands to the store.
//!
//! They are plain data (no borrowed connection state), so a write can later
//! be shipped to a replica exactly as it was executed here.

use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

use super::budget::{ReadBudget, WriteBudget};

/// One SQL value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn into_string(self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        // Versions and counters never reach 2^63; saturate rather than wrap.
        Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl FromSql for Value {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(match value {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        })
    }
}

/// One SQL statement with positional parameters (`?1`, `?2`, … or `?`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
}

impl Statement {
    pub fn new(sql: impl Into<String>, params: Vec<Value>) -> Self {
        Statement {
            sql: sql.into(),
            params,
        }
    }
}

/// What one statement produced: the rows it returned (a SELECT, or a write
/// with RETURNING) and the number of rows it changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub rows: Vec<Vec<Value>>,
    pub changed: u64,
    /// For a stale read in a cluster: the Raft log index this member's
    /// copy had applied (at least) when it was read.
    #[serde(default)]
    pub applied_index: Option<u64>,
}

/// A migration as data, so it can be replicated with the write that applies
/// it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationSpec {
    pub version: u32,
    pub name: String,
    pub sql: String,
}

/// A change to the database, as replicated through the Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A service's write: its statements, atomically, within the budget
    /// of the node that sent it (so every member stops it at the same
    /// point). Entries logged before budgets existed apply unlimited.
    Write {
        namespace: String,
        statements: Vec<Statement>,
        #[serde(default = "WriteBudget::unlimited")]
        budget: WriteBudget,
    },
    /// A namespace's pending migrations.
    Migrate {
        namespace: String,
        migrations: Vec<MigrationSpec>,
    },
}

impl Command {
    /// The namespace the command acts on.
    pub fn namespace(&self) -> &str {
        match self {
            Command::Write { namespace, .. } | Command::Migrate { namespace, .. } => namespace,
        }
    }
}

/// One read of a namespace, with its budget: what a node that does not
/// read locally sends to the one that does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadCall {
    pub namespace: String,
    pub statement: Statement,
    pub budget: ReadBudget,
}

/// A command with what the leader decided for it: a request id (a retried
/// proposal applies once), the time and a random seed that
/// `flotilla_now()` and `flotilla_random()` return while it applies, so every
/// replica computes the same result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: String,
    pub time_ms: i64,
    pub seed: i64,
    pub command: Command,
}

/// What applying a command produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    Outcomes(Vec<Outcome>),
    Migrated(usize),
}
