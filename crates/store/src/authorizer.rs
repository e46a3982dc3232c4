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

use super::budget::{Meter, STEPS_PER_TICK};

/// Statement texts whose lexical check a connection remembers (as many as
/// its prepared-statement cache holds).
const CHECKED_TEXTS: usize = 256;

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
    /// What the current call may still cost, while one is metered.
    meter: Option<Meter>,
    /// Statements (by their cache key) that passed the lexical check, and
    /// whether each changes the schema: the check runs once per text.
    checked: std::collections::HashMap<String, bool>,
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
                meter: None,
                checked: std::collections::HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half
        // written (every field is assigned whole), so poisoning is harmless.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs this guard as the connection's authorizer, and its budget
    /// meter as the connection's progress handler.
    pub fn install(&self, conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
        let guard = self.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| guard.decide(&ctx)))?;
        let guard = self.clone();
        conn.progress_handler(STEPS_PER_TICK as i32, Some(move || guard.tick()))
    }

    /// The lexical check of `sql` for `namespace` (see `sql::check`),
    /// remembered under `key` once it passed.
    pub fn check_text(&self, key: &str, sql: &str, namespace: &str) -> Result<bool, String> {
        if let Some(defines) = self.lock().checked.get(key) {
            return Ok(*defines);
        }
        let defines = super::sql::check(sql, namespace)?;
        let mut s = self.lock();
        if s.checked.len() >= CHECKED_TEXTS {
            s.checked.clear();
        }
        s.checked.insert(key.to_owned(), defines);
        Ok(defines)
    }

    /// Meters the calls from now on against `meter`, until
    /// [`Guard::unmeter`]. Only statements compiled in a service's mode
    /// count.
    pub fn meter(&self, meter: Meter) {
        self.lock().meter = Some(meter);
    }

    pub fn unmeter(&self) {
        self.lock().meter = None;
    }

    /// Why the metered call went over its budget, if it did; the meter
    /// forgets it.
    pub fn take_exceeded(&self) -> Option<String> {
        self.lock().meter.as_mut().and_then(Meter::take_exceeded)
    }

    /// A row is about to be returned to the service: refused past the
    /// call's row budget.
    pub fn returned_row(&self) -> Result<(), String> {
        match self.lock().meter.as_mut() {
            Some(meter) => meter.returned_row(),
            None => Ok(()),
        }
    }

    /// A statement of the call wrote `rows` rows (its triggers' included):
    /// refused past the call's row budget.
    pub fn wrote_rows(&self, rows: u64) -> Result<(), String> {
        match self.lock().meter.as_mut() {
            Some(meter) => meter.wrote_rows(rows),
            None => Ok(()),
        }
    }

    /// Why a value was too big, in terms of the call's budget, if one is
    /// metered.
    pub fn too_big(&self) -> Option<String> {
        self.lock().meter.as_ref().map(Meter::too_big)
    }

    /// The progress handler: true interrupts the running statement.
    fn tick(&self) -> bool {
        let mut s = self.lock();
        if s.mode == Mode::System {
            return false;
        }
        s.meter.as_mut().is_some_and(Meter::tick)
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

    /// Marks the start of a new statement under the current mode: its
    /// step count and clock start over.
    pub fn begin_statement(&self) {
        let mut s = self.lock();
        s.phase = Phase::Start;
        s.denial = None;
        if let Some(meter) = s.meter.as_mut() {
            meter.begin_statement();
        }
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
            // Lowercase, as the lexical check and the "no such" mapping
            // report it: the message is the same whether the object exists
            // (SQLite reports its canonical name) or not.
            Err(super::sql::outside_namespace(
                what,
                &name.to_ascii_lowercase(),
                namespace,
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
            A::Read { table_name, .. } if PURE_TABLE_FUNCTIONS.contains(&table_name) => Ok(()),
            // SQLite reports a source none of whose columns is read (as in
            // `SELECT count(*) FROM c`) with an empty column, and a common
            // table expression under its own name. Every table of the
            // database is named `<namespace>__*` or `sqlite_*`, so a name
            // of neither shape is a CTE or a subquery's alias.
            A::Read { table_name, column_name: "" }
                if !table_name.contains("__") && !table_name.to_ascii_lowercase().starts_with("sqlite_") =>
            {
                Ok(())
            }
            A::Read { table_name, .. } => self.own(namespace, "table", table_name),
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
