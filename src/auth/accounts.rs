//! The accounts data: users, refresh tokens and API keys, in the `accounts`
//! namespace. Used by the auth layer on every node (to check that a
//! caller's account is active) and by the `accounts` service (to manage it).
//!
//! Every timestamp is a parameter chosen by the caller (Unix seconds), never
//! the database clock, so the same statements replay identically.

use rand::{RngCore, rngs::OsRng};
use subtle::ConstantTimeEq;

use super::keys::Secrets;
use crate::store::{Migration, Namespace, Statement, StoreError, Value};

pub const NAMESPACE: &str = "accounts";

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "users, refresh tokens, api keys",
    sql: "CREATE TABLE accounts__users (
        id TEXT PRIMARY KEY NOT NULL,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        roles TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        token_generation INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE TABLE accounts__refresh_tokens (
        id TEXT PRIMARY KEY NOT NULL,
        family TEXT NOT NULL,
        user_id TEXT NOT NULL,
        token_hash BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER,
        revoked_at INTEGER
    ) STRICT;
    CREATE INDEX accounts__refresh_tokens_family ON accounts__refresh_tokens (family);
    CREATE INDEX accounts__refresh_tokens_user ON accounts__refresh_tokens (user_id);
    CREATE TABLE accounts__api_keys (
        id TEXT PRIMARY KEY NOT NULL,
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        scopes TEXT NOT NULL,
        key_hash BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    ) STRICT;
    CREATE INDEX accounts__api_keys_user ON accounts__api_keys (user_id);",
}];

/// A random identifier: 128 bits, hex.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct User {
    pub id: String,
    pub username: String,
    #[serde(skip)]
    pub password_hash: String,
    /// `user`, `admin`.
    pub roles: Vec<String>,
    pub disabled: bool,
    /// Unix seconds.
    pub created_at: i64,
    #[serde(skip)]
    /// Access tokens carry the generation they were issued in; bumping it
    /// (password change, disabling) revokes every token issued before.
    pub token_generation: i64,
}

const USER_COLUMNS: &str =
    "id, username, password_hash, roles, disabled, created_at, token_generation";

fn user(row: Vec<Value>) -> User {
    let mut it = row.into_iter();
    let mut text = || it.next().and_then(Value::into_string).unwrap_or_default();
    let id = text();
    let username = text();
    let password_hash = text();
    let roles = text();
    let mut ints = it.map(|v| v.as_i64().unwrap_or_default());
    User {
        id,
        username,
        password_hash,
        roles: roles
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect(),
        disabled: ints.next().unwrap_or_default() != 0,
        created_at: ints.next().unwrap_or_default(),
        token_generation: ints.next().unwrap_or_default(),
    }
}

/// Usernames are 3-64 characters of a-z, 0-9, '.', '_' and '-' (stored
/// lowercase).
pub fn username_problem(name: &str) -> Option<String> {
    let ok = (3..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    (!ok).then(|| "a username is 3-64 characters of a-z, 0-9, '.', '_' and '-'".to_owned())
}

pub async fn user_by_name(ns: &Namespace, username: &str) -> Result<Option<User>, StoreError> {
    let out = ns
        .read(Statement::new(
            format!("SELECT {USER_COLUMNS} FROM accounts__users WHERE username = ?1"),
            vec![username.into()],
        ))
        .await?;
    Ok(out.rows.into_iter().next().map(user))
}

pub async fn user_by_id(ns: &Namespace, id: &str) -> Result<Option<User>, StoreError> {
    let out = ns
        .read(Statement::new(
            format!("SELECT {USER_COLUMNS} FROM accounts__users WHERE id = ?1"),
            vec![id.into()],
        ))
        .await?;
    Ok(out.rows.into_iter().next().map(user))
}

pub async fn list_users(ns: &Namespace) -> Result<Vec<User>, StoreError> {
    let out = ns
        .read(Statement::new(
            format!("SELECT {USER_COLUMNS} FROM accounts__users ORDER BY username"),
            vec![],
        ))
        .await?;
    Ok(out.rows.into_iter().map(user).collect())
}

/// Creates a user; `None` if the username is taken.
pub async fn create_user(
    ns: &Namespace,
    username: &str,
    password_hash: &str,
    roles: &[&str],
    now: i64,
) -> Result<Option<User>, StoreError> {
    let id = random_id();
    let out = ns
        .write(vec![Statement::new(
            format!(
                "INSERT INTO accounts__users (id, username, password_hash, roles, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (username) DO NOTHING RETURNING {USER_COLUMNS}"
            ),
            vec![
                id.into(),
                username.into(),
                password_hash.into(),
                roles.join(",").into(),
                now.into(),
            ],
        )])
        .await?;
    Ok(out
        .into_iter()
        .next()
        .and_then(|o| o.rows.into_iter().next())
        .map(user))
}

/// Stores a new password hash in place of `previous`, the hash the caller
/// checked a password against. Returns false, and writes nothing, if the
/// stored hash is no longer `previous` (the password changed meanwhile: a
/// login's rehash must not bring an old password back). With
/// `revoke_sessions`, every access token issued so far stops working and
/// every refresh token is revoked, in the same write.
pub async fn set_password_hash(
    ns: &Namespace,
    user_id: &str,
    previous: &str,
    hash: &str,
    now: i64,
    revoke_sessions: bool,
) -> Result<bool, StoreError> {
    let mut statements = vec![Statement::new(
        "UPDATE accounts__users SET password_hash = ?3 WHERE id = ?1 AND password_hash = ?2",
        vec![user_id.into(), previous.into(), hash.into()],
    )];
    if revoke_sessions {
        // Only if the hash above was replaced: a new hash has its own salt,
        // so it is stored only if this write stored it.
        statements.extend(
            revoke_sessions_statements(user_id, now)
                .into_iter()
                .map(|s| s.only_if_user_hash(hash)),
        );
    }
    let out = ns.write(statements).await?;
    Ok(out[0].changed == 1)
}

fn revoke_sessions_statements(user_id: &str, now: i64) -> Vec<SessionRevocation> {
    vec![
        SessionRevocation(Statement::new(
            "UPDATE accounts__users SET token_generation = token_generation + 1 WHERE id = ?1",
            vec![user_id.into()],
        )),
        SessionRevocation(Statement::new(
            "UPDATE accounts__refresh_tokens SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
            vec![user_id.into(), now.into()],
        )),
    ]
}

/// A statement ending a user's sessions (`?1` is the user's id; its
/// conditions end the SQL).
struct SessionRevocation(Statement);

impl SessionRevocation {
    fn always(self) -> Statement {
        self.0
    }

    /// The same statement, run only if the user's stored hash is `hash`.
    fn only_if_user_hash(self, hash: &str) -> Statement {
        let Statement { sql, mut params } = self.0;
        params.push(hash.into());
        let n = params.len();
        Statement::new(
            format!(
                "{sql} AND EXISTS (SELECT 1 FROM accounts__users WHERE id = ?1 AND password_hash = ?{n})"
            ),
            params,
        )
    }
}

/// Disables or enables a user; disabling ends every session at once.
/// Returns false if there is no such user.
pub async fn set_disabled(
    ns: &Namespace,
    user_id: &str,
    disabled: bool,
    now: i64,
) -> Result<bool, StoreError> {
    let mut statements = vec![Statement::new(
        "UPDATE accounts__users SET disabled = ?2 WHERE id = ?1",
        vec![user_id.into(), i64::from(disabled).into()],
    )];
    if disabled {
        statements.extend(
            revoke_sessions_statements(user_id, now)
                .into_iter()
                .map(SessionRevocation::always),
        );
    }
    let out = ns.write(statements).await?;
    Ok(out[0].changed > 0)
}

/// Replaces a user's roles. Returns false if there is no such user.
pub async fn set_roles(
    ns: &Namespace,
    user_id: &str,
    roles: &[String],
) -> Result<bool, StoreError> {
    let out = ns
        .write(vec![Statement::new(
            "UPDATE accounts__users SET roles = ?2 WHERE id = ?1",
            vec![user_id.into(), roles.join(",").into()],
        )])
        .await?;
    Ok(out[0].changed > 0)
}

/// Why a refresh token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshRefused {
    /// Unknown, malformed, revoked or expired.
    Invalid,
    /// Already used once: its whole family is now revoked.
    Reused,
}

/// Starts a session: a refresh token of a new family for the user as the
/// caller saw it (`token_generation`), returned to the caller only. Stored
/// hashed. `None` if the account was disabled or its sessions were ended
/// (a password change) since the caller read it: nothing is stored then.
pub async fn start_session(
    ns: &Namespace,
    secrets: &Secrets,
    user: &User,
    now: i64,
    ttl: i64,
) -> Result<Option<String>, StoreError> {
    let id = random_id();
    let token = format!("{id}.{}", random_secret());
    let out = ns
        .write(vec![Statement::new(
            "INSERT INTO accounts__refresh_tokens (id, family, user_id, token_hash, created_at, expires_at)
             SELECT ?1, ?2, id, ?4, ?5, ?6 FROM accounts__users
             WHERE id = ?3 AND disabled = 0 AND token_generation = ?7",
            vec![
                id.into(),
                random_id().into(),
                user.id.as_str().into(),
                secrets.credential_hash(&token).into(),
                now.into(),
                (now + ttl).into(),
                user.token_generation.into(),
            ],
        )])
        .await?;
    Ok((out[0].changed == 1).then_some(token))
}

/// A refresh token exchanged for its successor.
#[derive(Debug)]
pub struct Rotated {
    pub user_id: String,
    pub family: String,
    /// The successor, shown only to the caller.
    pub token: String,
}

/// Exchanges a refresh token for its successor in the same family, in one
/// write: the successor is stored, and the presented token marked used,
/// only if the presented token is unused, unexpired and unrevoked, no token
/// of its family is revoked, and its user is enabled. Of concurrent
/// presentations of one token at most one wins; every other one is a reuse
/// and revokes the whole family, the winner's successor included (it was
/// stored in the same write that spent the token, so it exists by then).
pub async fn rotate_refresh(
    ns: &Namespace,
    secrets: &Secrets,
    token: &str,
    now: i64,
    ttl: i64,
) -> Result<Result<Rotated, RefreshRefused>, StoreError> {
    let Some((id, _)) = token.split_once('.') else {
        return Ok(Err(RefreshRefused::Invalid));
    };
    // The presented secret is compared in constant time, in Rust, before
    // anything is written.
    let Some(seen) = refresh_state(ns, id).await? else {
        return Ok(Err(RefreshRefused::Invalid));
    };
    if !bool::from(seen.hash.ct_eq(&secrets.credential_hash(token))) {
        return Ok(Err(RefreshRefused::Invalid));
    }
    if seen.revoked || seen.expires_at <= now {
        return Ok(Err(RefreshRefused::Invalid));
    }
    if !seen.used {
        let next = random_id();
        let successor = format!("{next}.{}", random_secret());
        let out = ns
            .write(vec![
                Statement::new(
                    "INSERT INTO accounts__refresh_tokens (id, family, user_id, token_hash, created_at, expires_at)
                     SELECT ?2, t.family, t.user_id, ?3, ?4, ?5
                     FROM accounts__refresh_tokens t JOIN accounts__users u ON u.id = t.user_id
                     WHERE t.id = ?1 AND t.used_at IS NULL AND t.revoked_at IS NULL
                       AND t.expires_at > ?4 AND u.disabled = 0
                       AND NOT EXISTS (SELECT 1 FROM accounts__refresh_tokens r
                                       WHERE r.family = t.family AND r.revoked_at IS NOT NULL)",
                    vec![
                        id.into(),
                        next.as_str().into(),
                        secrets.credential_hash(&successor).into(),
                        now.into(),
                        (now + ttl).into(),
                    ],
                ),
                Statement::new(
                    "UPDATE accounts__refresh_tokens SET used_at = ?3
                     WHERE id = ?1 AND used_at IS NULL
                       AND EXISTS (SELECT 1 FROM accounts__refresh_tokens WHERE id = ?2)",
                    vec![id.into(), next.as_str().into(), now.into()],
                ),
            ])
            .await?;
        if out[0].changed == 1 {
            return Ok(Ok(Rotated {
                user_id: seen.user_id,
                family: seen.family,
                token: successor,
            }));
        }
        // Something changed since the read: what decides the answer.
        let Some(now_seen) = refresh_state(ns, id).await? else {
            return Ok(Err(RefreshRefused::Invalid));
        };
        if !now_seen.used {
            // Revoked or its user disabled meanwhile: not a reuse.
            return Ok(Err(RefreshRefused::Invalid));
        }
    }
    revoke_family(ns, &seen.family, now).await?;
    tracing::warn!(family = %seen.family, "a used refresh token was presented again: its family is revoked");
    Ok(Err(RefreshRefused::Reused))
}

/// A refresh token's stored state.
struct RefreshState {
    family: String,
    user_id: String,
    hash: Vec<u8>,
    expires_at: i64,
    used: bool,
    revoked: bool,
}

async fn refresh_state(ns: &Namespace, id: &str) -> Result<Option<RefreshState>, StoreError> {
    let out = ns
        .read(Statement::new(
            "SELECT family, user_id, token_hash, expires_at, used_at, revoked_at FROM accounts__refresh_tokens WHERE id = ?1",
            vec![id.into()],
        ))
        .await?;
    let Some(row) = out.rows.into_iter().next() else {
        return Ok(None);
    };
    let mut it = row.into_iter();
    let family = it.next().and_then(Value::into_string).unwrap_or_default();
    let user_id = it.next().and_then(Value::into_string).unwrap_or_default();
    let Some(Value::Blob(hash)) = it.next() else {
        return Ok(None);
    };
    let expires_at = it.next().and_then(|v| v.as_i64()).unwrap_or_default();
    let used = it.next().is_some_and(|v| v != Value::Null);
    let revoked = it.next().is_some_and(|v| v != Value::Null);
    Ok(Some(RefreshState {
        family,
        user_id,
        hash,
        expires_at,
        used,
        revoked,
    }))
}

pub async fn revoke_family(ns: &Namespace, family: &str, now: i64) -> Result<(), StoreError> {
    ns.write(vec![Statement::new(
        "UPDATE accounts__refresh_tokens SET revoked_at = ?2 WHERE family = ?1 AND revoked_at IS NULL",
        vec![family.into(), now.into()],
    )])
    .await?;
    Ok(())
}

/// The family of a refresh token presented for logout, if the token is
/// genuine (used or not).
pub async fn refresh_family(
    ns: &Namespace,
    secrets: &Secrets,
    token: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let Some((id, _)) = token.split_once('.') else {
        return Ok(None);
    };
    let out = ns
        .read(Statement::new(
            "SELECT family, user_id, token_hash FROM accounts__refresh_tokens WHERE id = ?1",
            vec![id.into()],
        ))
        .await?;
    let Some(row) = out.rows.into_iter().next() else {
        return Ok(None);
    };
    let mut it = row.into_iter();
    let family = it.next().and_then(Value::into_string).unwrap_or_default();
    let user_id = it.next().and_then(Value::into_string).unwrap_or_default();
    match it.next() {
        Some(Value::Blob(h)) if bool::from(h.ct_eq(&secrets.credential_hash(token))) => {
            Ok(Some((family, user_id)))
        }
        _ => Ok(None),
    }
}

/// An API key as listed (never with its secret).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct ApiKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// The permissions it narrows its owner's to.
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub revoked: bool,
}

/// What the auth layer needs to check a presented key.
#[derive(Clone, Debug)]
pub struct ApiKeyRecord {
    pub key: ApiKey,
    pub key_hash: Vec<u8>,
}

pub const API_KEY_PREFIX: &str = "flt_";

/// Splits `flt_<id>_<secret>` into its id.
pub fn api_key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(API_KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 32 && !secret.is_empty()).then_some(id)
}

/// Creates an API key for an enabled account and returns it with its
/// secret (shown once). `None` if the account is disabled or gone: nothing
/// is stored then.
pub async fn create_api_key(
    ns: &Namespace,
    secrets: &Secrets,
    user_id: &str,
    name: &str,
    scopes: &[String],
    now: i64,
) -> Result<Option<(ApiKey, String)>, StoreError> {
    let id = random_id();
    let presented = format!("{API_KEY_PREFIX}{id}_{}", random_secret());
    let out = ns
        .write(vec![Statement::new(
            "INSERT INTO accounts__api_keys (id, user_id, name, scopes, key_hash, created_at)
             SELECT ?1, id, ?3, ?4, ?5, ?6 FROM accounts__users WHERE id = ?2 AND disabled = 0",
            vec![
                id.clone().into(),
                user_id.into(),
                name.into(),
                scopes.join(",").into(),
                secrets.credential_hash(&presented).into(),
                now.into(),
            ],
        )])
        .await?;
    if out[0].changed == 0 {
        return Ok(None);
    }
    Ok(Some((
        ApiKey {
            id,
            user_id: user_id.into(),
            name: name.into(),
            scopes: scopes.to_vec(),
            created_at: now,
            revoked: false,
        },
        presented,
    )))
}

fn api_key_row(row: Vec<Value>) -> ApiKeyRecord {
    let mut it = row.into_iter();
    let mut text = || it.next().and_then(Value::into_string).unwrap_or_default();
    let (id, user_id, name, scopes) = (text(), text(), text(), text());
    let key_hash = match it.next() {
        Some(Value::Blob(b)) => b,
        _ => Vec::new(),
    };
    let created_at = it.next().and_then(|v| v.as_i64()).unwrap_or_default();
    let revoked = it.next().is_some_and(|v| v != Value::Null);
    ApiKeyRecord {
        key: ApiKey {
            id,
            user_id,
            name,
            scopes: scopes
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            created_at,
            revoked,
        },
        key_hash,
    }
}

const API_KEY_COLUMNS: &str = "id, user_id, name, scopes, key_hash, created_at, revoked_at";

pub async fn api_key(ns: &Namespace, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
    let out = ns
        .read(Statement::new(
            format!("SELECT {API_KEY_COLUMNS} FROM accounts__api_keys WHERE id = ?1"),
            vec![id.into()],
        ))
        .await?;
    Ok(out.rows.into_iter().next().map(api_key_row))
}

pub async fn list_api_keys(ns: &Namespace, user_id: &str) -> Result<Vec<ApiKey>, StoreError> {
    let out = ns
        .read(Statement::new(
            format!("SELECT {API_KEY_COLUMNS} FROM accounts__api_keys WHERE user_id = ?1 ORDER BY created_at, id"),
            vec![user_id.into()],
        ))
        .await?;
    Ok(out.rows.into_iter().map(|r| api_key_row(r).key).collect())
}

/// Revokes a key of `user_id`. Returns false if the user has no such key.
pub async fn revoke_api_key(
    ns: &Namespace,
    user_id: &str,
    id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let out = ns
        .write(vec![Statement::new(
            "UPDATE accounts__api_keys SET revoked_at = coalesce(revoked_at, ?3) WHERE id = ?1 AND user_id = ?2",
            vec![id.into(), user_id.into(), now.into()],
        )])
        .await?;
    Ok(out[0].changed > 0)
}

/// Checks a presented API key against its stored hash, in constant time.
pub fn api_key_matches(secrets: &Secrets, record: &ApiKeyRecord, presented: &str) -> bool {
    bool::from(record.key_hash.ct_eq(&secrets.credential_hash(presented)))
}
