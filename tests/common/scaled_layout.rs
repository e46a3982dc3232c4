//! The 9-node scaled layout, shared by `tests/system/scaled.rs` and
//! `benches/scaled.rs` (both include this file): (node name, its services,
//! whether it is a db member). It matches `config/scaled/topology.yaml`.

pub const LAYOUT: &[(&str, &str, bool)] = &[
    ("db-1", "db", true),
    ("db-2", "db", true),
    ("db-3", "db", true),
    ("accounts-1", "accounts", false),
    ("accounts-2", "accounts", false),
    ("kv-1", "kv", false),
    ("kv-2", "kv", false),
    ("echo-1", "echo", false),
    ("echo-2", "echo", false),
];
