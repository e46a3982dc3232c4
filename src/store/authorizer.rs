//! The namespace guard: a SQLite authorizer that lets a service's statements
//! touch only the tables of its own namespace.
//!
//! SQLite calls the authorizer for every table, column, function and schema
//! operation while it compiles a statement (including the statements inside
//! triggers and views it expands), always with the canonical object name, so
//! quoting and case tricks cannot hide a table from it. The guard decides
//! from those calls alone; it never parses SQL.
//!
//! **Invariant:** a statement compiled under [`Mode::Service`] can read or
//! write only objects whose name starts with `<namespace>__`, in the `main`
//! database. Schema changes to those objects are allowed (migrations), with
//! the internal bookkeeping they cause on `sqlite_master`; everything else on
//! `sqlite_master` is denied, so a service cannot even list other namespaces.

use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// Functions whose result differs between two runs of the same statement.
/// Denied in writes so that the same statements can be replayed on replicas.
const NON_DETERMINISTIC: &[&str] = &[
    "random",
    "randomblob",
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
    "current_date",
    "current_time",
    "current_timestamp",
    "changes",
    "total_changes",
    "last_insert_rowid",
];

/// Table-valued functions that read nothing but their arguments.
const PURE_TABLE_FUNCTIONS: &[&str] = &["json_each", "json_tree"];

/// Functions SQLite itself calls while compiling `ALTER TABLE`.
const ALTER_INTERNALS: &[&str] = &[
    "like",
    "substr",
    "printf",
    "length",
    "sqlite_rename_test",
    "sqlite_rename_quotefix",
    "sqlite_rename_column",
    "sqlite_drop_column",
];

/// What the connection is currently compiling statements for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// flotilla's own code: migrations bookkeeping, transactions, reserved
    /// namespaces. Everything is allowed.
    System,
    /// A service's statement inside a write transaction.
    Service { namespace: String, write: bool },
}

/// The kind of statement being compiled, learned from its first callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No callback seen yet for this statement.
    Start,
    /// An ordinary query or DML statement.
    Query,
    /// CREATE/DROP of a table, view, index or trigger.
    Define { saw_select: bool },
    /// ALTER TABLE, which SQLite compiles into nested statements on
    /// `sqlite_master`.
    Alter,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    prefix: String,
    phase: Phase,
    denial: Option<String>,
}

/// Shared between the connection's authorizer callback and the code that
/// drives the connection. One per connection; a connection is only ever used
/// by one thread at a time, so the lock is never contended.
#[derive(Clone, Debug)]
pub struct Guard {
    state: Arc<Mutex<State>>,
}

impl Default for Guard {
    fn default() -> Self {
        Self::new()
    }
}

impl Guard {
    pub fn new() -> Self {
        Guard {
            state: Arc::new(Mutex::new(State {
                mode: Mode::System,
                prefix: String::new(),
                phase: Phase::Start,
                denial: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half
        // written (every field is assigned whole), so poisoning is harmless.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs this guard as the connection's authorizer.
    pub fn install(&self, conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
        let guard = self.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| guard.decide(&ctx)))
    }

    /// Sets the mode for the statements compiled from now on, and starts a
    /// new statement.
    pub fn set_mode(&self, mode: Mode) {
        let mut s = self.lock();
        s.prefix = match &mode {
            Mode::System => String::new(),
            Mode::Service { namespace, .. } => format!("{namespace}__"),
        };
        s.mode = mode;
        s.phase = Phase::Start;
        s.denial = None;
    }

    /// Marks the start of a new statement under the current mode.
    pub fn begin_statement(&self) {
        let mut s = self.lock();
        s.phase = Phase::Start;
        s.denial = None;
    }

    /// The reason of the last denial, if the last statement was denied.
    pub fn take_denial(&self) -> Option<String> {
        self.lock().denial.take()
    }

    fn decide(&self, ctx: &AuthContext<'_>) -> Authorization {
        let mut s = self.lock();
        let Mode::Service { namespace, write } = s.mode.clone() else {
            return Authorization::Allow;
        };
        match s.check(&namespace, write, ctx) {
            Ok(()) => Authorization::Allow,
            Err(reason) => {
                // Keep the first reason: later callbacks of the same
                // statement are usually consequences of it.
                if s.denial.is_none() {
                    s.denial = Some(reason);
                }
                Authorization::Deny
            }
        }
    }
}

fn is_schema_table(name: &str) -> bool {
    matches!(
        name,
        "sqlite_master" | "sqlite_schema" | "sqlite_temp_master" | "sqlite_temp_schema"
    )
}

impl State {
    fn owns(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        lower.len() > self.prefix.len() && lower.starts_with(&self.prefix)
    }

    fn own(&self, namespace: &str, what: &str, name: &str) -> Result<(), String> {
        if self.owns(name) {
            Ok(())
        } else {
            Err(format!(
                "{what} `{name}` is outside namespace `{namespace}`: a service may only use objects named `{namespace}__*`"
            ))
        }
    }

    /// Indexes SQLite creates for PRIMARY KEY and UNIQUE constraints are
    /// named `sqlite_autoindex_<table>_<n>`: they belong to their table.
    fn own_index(&self, namespace: &str, index: &str) -> Result<(), String> {
        match index.strip_prefix("sqlite_autoindex_") {
            Some(table) if self.owns(table) => Ok(()),
            _ => self.own(namespace, "index", index),
        }
    }

    fn check(&mut self, namespace: &str, write: bool, ctx: &AuthContext<'_>) -> Result<(), String> {
        use AuthAction as A;
        let database = ctx.database_name.unwrap_or("main");
        if self.phase == Phase::Start {
            self.phase = match ctx.action {
                A::Insert { table_name } | A::Delete { table_name }
                    if is_schema_table(table_name) =>
                {
                    Phase::Define { saw_select: false }
                }
                A::CreateTrigger { .. } | A::DropTrigger { .. } => {
                    Phase::Define { saw_select: false }
                }
                A::AlterTable { .. } => Phase::Alter,
                _ => Phase::Query,
            };
        }
        let phase = self.phase;
        match ctx.action {
            A::Select | A::Recursive => {
                if let Phase::Define { .. } = phase {
                    self.phase = Phase::Define { saw_select: true };
                }
                Ok(())
            }
            A::Read { table_name, .. } if is_schema_table(table_name) => match phase {
                Phase::Define { saw_select: false } | Phase::Alter => Ok(()),
                _ => Err("reading the schema table is not allowed: it lists every namespace".into()),
            },
            A::Insert { table_name } | A::Delete { table_name } | A::Update { table_name, .. }
                if is_schema_table(table_name) =>
            {
                match phase {
                    Phase::Define { .. } | Phase::Alter => Ok(()),
                    _ => Err("the schema table can only change through CREATE, DROP or ALTER".into()),
                }
            }
            _ if database != "main" && phase != Phase::Alter => Err(format!(
                "database `{database}` is not allowed: services use only the main database (no TEMP objects, no ATTACH)"
            )),
            A::Read { table_name, .. } => {
                if PURE_TABLE_FUNCTIONS.contains(&table_name) {
                    Ok(())
                } else {
                    self.own(namespace, "table", table_name)
                }
            }
            A::Insert { table_name } | A::Delete { table_name } | A::Update { table_name, .. } => {
                if !write {
                    return Err(format!("writing `{table_name}` is not allowed in a read"));
                }
                self.own(namespace, "table", table_name)
            }
            A::CreateTable { table_name } | A::DropTable { table_name } => {
                self.own(namespace, "table", table_name)
            }
            A::CreateView { view_name } | A::DropView { view_name } => self.own(namespace, "view", view_name),
            A::CreateIndex { index_name, table_name } | A::DropIndex { index_name, table_name } => {
                self.own_index(namespace, index_name)?;
                self.own(namespace, "table", table_name)
            }
            A::CreateTrigger { trigger_name, table_name } | A::DropTrigger { trigger_name, table_name } => {
                self.own(namespace, "trigger", trigger_name)?;
                self.own(namespace, "table", table_name)
            }
            A::Reindex { index_name } => self.own_index(namespace, index_name),
            A::AlterTable { database_name, table_name } => {
                if database_name != "main" {
                    return Err(format!("database `{database_name}` is not allowed"));
                }
                self.own(namespace, "table", table_name)
            }
            A::Function { function_name } => {
                let name = function_name.to_ascii_lowercase();
                if name == "sqlite_rename_table" {
                    return Err(
                        "ALTER TABLE ... RENAME TO is not allowed (it could move a table into another namespace): create the new table, copy the rows, drop the old one".into(),
                    );
                }
                if phase == Phase::Alter && ALTER_INTERNALS.contains(&name.as_str()) {
                    return Ok(());
                }
                if name == "load_extension" || name.starts_with("sqlite_rename") || name == "sqlite_drop_column" {
                    return Err(format!("function `{function_name}` is not allowed"));
                }
                if write && NON_DETERMINISTIC.contains(&name.as_str()) {
                    return Err(format!(
                        "function `{function_name}` is not deterministic and is not allowed in a write: pass the value as a parameter instead"
                    ));
                }
                Ok(())
            }
            A::Pragma { pragma_name, .. } => Err(format!("PRAGMA {pragma_name} is not allowed in a service")),
            A::Attach { .. } | A::Detach { .. } => Err("ATTACH and DETACH are not allowed in a service".into()),
            A::Transaction { .. } | A::Savepoint { .. } => Err(
                "transaction control is not allowed: every call to the store already runs in its own transaction".into(),
            ),
            A::Analyze { .. } => Err("ANALYZE is not allowed in a service".into()),
            A::CreateTempTable { .. }
            | A::CreateTempIndex { .. }
            | A::CreateTempTrigger { .. }
            | A::CreateTempView { .. }
            | A::DropTempTable { .. }
            | A::DropTempIndex { .. }
            | A::DropTempTrigger { .. }
            | A::DropTempView { .. } => Err("TEMP objects are not allowed in a service".into()),
            A::CreateVtable { .. } | A::DropVtable { .. } => Err("virtual tables are not allowed in a service".into()),
            other => Err(format!("operation {other:?} is not allowed in a service")),
        }
    }
}

/// Statements SQLite compiles without consulting the authorizer at all.
/// They are recognised by their first keyword and refused before compiling.
pub fn unguarded_statement(sql: &str) -> Option<&'static str> {
    let keyword = first_keyword(sql)?.to_ascii_uppercase();
    match keyword.as_str() {
        "VACUUM" => Some("VACUUM is not allowed in a service: it rewrites the whole database"),
        "REINDEX" => {
            Some("REINDEX is not allowed in a service: it rebuilds every namespace's indexes")
        }
        _ => None,
    }
}

/// The first keyword of a statement, skipping whitespace and SQL comments.
fn first_keyword(sql: &str) -> Option<&str> {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, tail)| tail);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, tail)| tail);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_keyword_skips_comments() {
        assert_eq!(first_keyword("  -- x\n /* y */ vacuum;"), Some("vacuum"));
        assert_eq!(first_keyword("/* unterminated"), None);
        assert_eq!(first_keyword("SELECT 1"), Some("SELECT"));
    }

    #[test]
    fn unguarded_statements_are_recognised() {
        assert!(unguarded_statement("/**/VACUUM").is_some());
        assert!(unguarded_statement("reindex kv__i").is_some());
        assert!(unguarded_statement("SELECT 'VACUUM'").is_none());
    }
}
