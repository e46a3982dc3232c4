//! `kv`: a key/value store with versions and compare-and-set, over HTTP/JSON
//! and gRPC. Both front ends call the same [`KvCore`].
//!
//! Every key carries a version: 1 when created, +1 on every write. A
//! compare-and-set names the version it expects (0: the key must not
//! exist), which makes it the workload for linearizability checks.
//!
//! Entries are owned per user: a caller reads and writes their own keys.
//! Naming another `owner` needs the `accounts.admin` permission (the admin
//! override); anyone else gets 403.

use axum::{
    Extension, Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    auth::authz::Principal,
    catalogue::api_error::ApiError,
    catalogue::{
        Access,
        Idempotence::{Idempotent, NotIdempotent},
        Routes, Service, ServiceContext, StartError,
    },
    proto::kv::{self as pb, kv_server},
    store::{Migration, Namespace, Statement, Value},
};

pub const MAX_KEY_BYTES: usize = 1024;
const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = 1000;
const READ: Access = Access::Permission("kv.read");
const WRITE: Access = Access::Permission("kv.write");

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "entries",
        sql: "CREATE TABLE kv__entries (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL,
        version INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;",
    },
    Migration {
        version: 2,
        name: "entries owned per user",
        // Entries written before ownership existed belong to owner '' and
        // are reachable with the admin override.
        sql: "CREATE TABLE kv__items (
        owner TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (owner, key)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO kv__items (owner, key, value, version) SELECT '', key, value, version FROM kv__entries;
    DROP TABLE kv__entries;",
    },
];

/// The owner a call acts on: the caller, or with the admin override the
/// one named.
pub fn resolve_owner(caller: &Principal, requested: Option<&str>) -> Result<String, ApiError> {
    match requested {
        None | Some("") => Ok(caller.user_id.clone()),
        Some(owner) if owner == caller.user_id => Ok(caller.user_id.clone()),
        Some(owner) if caller.is_admin() => Ok(owner.to_owned()),
        Some(_) => Err(ApiError::forbidden(
            "only an admin (accounts.admin) can act on another user's entries",
        )),
    }
}

pub struct Kv;

/// One entry as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// 1 when created, one more at each write.
    pub version: u64,
}

impl From<Entry> for pb::Entry {
    fn from(e: Entry) -> Self {
        pb::Entry {
            key: e.key,
            value: e.value,
            version: e.version,
        }
    }
}

/// Result of a compare-and-set.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Swap {
    /// Whether the value was written (200), or the version did not match
    /// (409).
    pub swapped: bool,
    /// The entry after the call: the one written, or the one that did not
    /// match (null if there is none).
    pub current: Option<Entry>,
}

/// One page of a listing.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Pass as `start_after` for the next page; null on the last one.
    pub next_start_after: Option<String>,
}

/// The operations, shared by the HTTP and gRPC front ends.
#[derive(Clone)]
pub struct KvCore {
    store: Namespace,
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("the key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(format!(
            "the key is {} bytes long; keys are at most {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

fn entry(row: Vec<Value>) -> Entry {
    let mut it = row.into_iter();
    let key = it.next().and_then(Value::into_string).unwrap_or_default();
    let value = it.next().and_then(Value::into_string).unwrap_or_default();
    let version = it.next().and_then(|v| v.as_i64()).unwrap_or_default();
    Entry {
        key,
        value,
        version: u64::try_from(version).unwrap_or_default(),
    }
}

/// The smallest string greater than every string that starts with `prefix`,
/// if there is one. UTF-8 byte order is code point order, so bumping the
/// last code point that can be bumped gives the bound.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl KvCore {
    async fn read(
        &self,
        consistency: Consistency,
        statement: Statement,
    ) -> Result<crate::store::Outcome, ApiError> {
        Ok(match consistency {
            Consistency::Linearizable => self.store.read(statement).await?,
            Consistency::Stale => self.store.read_stale(statement).await?,
            Consistency::Local => self.store.read_local_copy(statement).await?,
        })
    }

    pub async fn get(
        &self,
        owner: &str,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<Entry>, ApiError> {
        Ok(self.get_at(owner, key, consistency).await?.0)
    }

    /// The entry, and for a stale read in a cluster the Raft log index of
    /// the copy it was read from (see `APPLIED_INDEX`).
    pub async fn get_at(
        &self,
        owner: &str,
        key: &str,
        consistency: Consistency,
    ) -> Result<(Option<Entry>, Option<u64>), ApiError> {
        check_key(key)?;
        let out = self
            .read(
                consistency,
                Statement::new(
                    "SELECT key, value, version FROM kv__items WHERE owner = ?1 AND key = ?2",
                    vec![owner.into(), key.into()],
                ),
            )
            .await?;
        let applied = out.applied_index;
        Ok((out.rows.into_iter().next().map(entry), applied))
    }

    pub async fn put(&self, owner: &str, key: &str, value: String) -> Result<u64, ApiError> {
        check_key(key)?;
        let out = self
            .store
            .write(vec![Statement::new(
                "INSERT INTO kv__items (owner, key, value, version) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (owner, key) DO UPDATE SET value = excluded.value, version = version + 1
                 RETURNING version",
                vec![owner.into(), key.into(), value.into()],
            )])
            .await?;
        let version = out
            .first()
            .and_then(|o| o.rows.first())
            .and_then(|r| r.first())
            .and_then(Value::as_i64)
            .unwrap_or_default();
        Ok(u64::try_from(version).unwrap_or_default())
    }

    pub async fn delete(&self, owner: &str, key: &str) -> Result<bool, ApiError> {
        check_key(key)?;
        let out = self
            .store
            .write(vec![Statement::new(
                "DELETE FROM kv__items WHERE owner = ?1 AND key = ?2",
                vec![owner.into(), key.into()],
            )])
            .await?;
        Ok(out.first().is_some_and(|o| o.changed > 0))
    }

    /// Writes `value` if the key's version is `expected_version` (0: the key
    /// must not exist), atomically, and returns the entry as it is after.
    pub async fn compare_and_set(
        &self,
        owner: &str,
        key: &str,
        expected_version: u64,
        value: String,
    ) -> Result<Swap, ApiError> {
        check_key(key)?;
        let swap = if expected_version == 0 {
            Statement::new(
                "INSERT INTO kv__items (owner, key, value, version) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (owner, key) DO NOTHING RETURNING key",
                vec![owner.into(), key.into(), value.into()],
            )
        } else {
            Statement::new(
                "UPDATE kv__items SET value = ?3, version = version + 1
                 WHERE owner = ?1 AND key = ?2 AND version = ?4 RETURNING key",
                vec![
                    owner.into(),
                    key.into(),
                    value.into(),
                    expected_version.into(),
                ],
            )
        };
        let current = Statement::new(
            "SELECT key, value, version FROM kv__items WHERE owner = ?1 AND key = ?2",
            vec![owner.into(), key.into()],
        );
        let mut out = self.store.write(vec![swap, current]).await?.into_iter();
        let swapped = out.next().is_some_and(|o| !o.rows.is_empty());
        let current = out
            .next()
            .and_then(|o| o.rows.into_iter().next())
            .map(entry);
        Ok(Swap { swapped, current })
    }

    pub async fn list(
        &self,
        owner: &str,
        prefix: &str,
        start_after: &str,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Page, ApiError> {
        let limit = match limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        let lower = if start_after.is_empty() || *start_after < *prefix {
            (prefix.to_owned(), ">=")
        } else {
            (start_after.to_owned(), ">")
        };
        // Bound the index scan above by the first key past the prefix; only a
        // prefix of U+10FFFF characters has no such key and is filtered.
        let (bound, second) = match prefix_end(prefix) {
            Some(end) => ("key < ?2", Value::from(end)),
            None => ("substr(key, 1, length(?2)) = ?2", Value::from(prefix)),
        };
        let sql = format!(
            "SELECT key, value, version FROM kv__items WHERE owner = ?4 AND key {} ?1 AND {bound} ORDER BY key LIMIT ?3",
            lower.1
        );
        let params = vec![
            Value::from(lower.0),
            second,
            Value::Integer(i64::from(limit) + 1),
            Value::from(owner),
        ];
        let out = self.read(consistency, Statement::new(sql, params)).await?;
        let mut entries: Vec<Entry> = out.rows.into_iter().map(entry).collect();
        let next_start_after = if entries.len() > limit as usize {
            entries.truncate(limit as usize);
            entries.last().map(|e| e.key.clone())
        } else {
            None
        };
        Ok(Page {
            entries,
            next_start_after,
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CasBody {
    key: String,
    /// The version the entry must have for the write to happen; 0: it
    /// must not exist.
    expected_version: u64,
    value: String,
    /// Another user's id, whose entry an admin acts on.
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OwnerQuery {
    /// Another user's id, whose entry an admin acts on.
    owner: Option<String>,
    /// How fresh a read must be (reads only).
    #[serde(default)]
    consistency: Consistency,
}

/// How fresh a read must be. Linearizable (the default) sees every write
/// acknowledged before it started; stale reads this node's copy, which in a
/// cluster may lag by up to `cluster.stale_read_max_lag_ms` (refused beyond);
/// local reads this node's copy whatever its age, even cut off from the
/// cluster (etcd's serializable read), with the index it had applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    Linearizable,
    /// This node's copy, within the cluster's staleness bound.
    Stale,
    /// This node's copy whatever its age, even cut off from the cluster,
    /// with the index it had applied (`APPLIED_INDEX`).
    Local,
}

impl Consistency {
    fn from_stale(stale: bool) -> Consistency {
        if stale {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        }
    }
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only keys that start with this.
    #[serde(default)]
    prefix: String,
    /// Only keys after this one (the previous page's `next_start_after`).
    #[serde(default)]
    start_after: String,
    /// Entries per page; 0: the most allowed.
    #[serde(default)]
    limit: u32,
    /// Another user's id, whose entries an admin lists.
    owner: Option<String>,
    /// How fresh the listing must be.
    #[serde(default)]
    consistency: Consistency,
}

/// The header (and gRPC metadata) of a stale read in a cluster: the Raft
/// log index the answering member's copy had applied, so that a client can
/// tell how current the answer is.
pub const APPLIED_INDEX: &str = "x-flotilla-applied-index";

async fn http_get(
    State(kv): State<KvCore>,
    Extension(caller): Extension<Principal>,
    Path(key): Path<String>,
    Query(q): Query<OwnerQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let owner = resolve_owner(&caller, q.owner.as_deref())?;
    let (found, applied) = kv.get_at(&owner, &key, q.consistency).await?;
    let entry = found.ok_or_else(|| ApiError::not_found(format!("no key `{key}`")))?;
    let mut response = Json(entry).into_response();
    if let Some(index) = applied {
        response.headers_mut().insert(APPLIED_INDEX, index.into());
    }
    Ok(response)
}

async fn http_put(
    State(kv): State<KvCore>,
    Extension(caller): Extension<Principal>,
    Path(key): Path<String>,
    Query(q): Query<OwnerQuery>,
    Json(body): Json<PutBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let owner = resolve_owner(&caller, q.owner.as_deref())?;
    let version = kv.put(&owner, &key, body.value).await?;
    Ok(Json(serde_json::json!({ "key": key, "version": version })))
}

async fn http_delete(
    State(kv): State<KvCore>,
    Extension(caller): Extension<Principal>,
    Path(key): Path<String>,
    Query(q): Query<OwnerQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let owner = resolve_owner(&caller, q.owner.as_deref())?;
    let deleted = kv.delete(&owner, &key).await?;
    Ok(Json(serde_json::json!({ "deleted": deleted })))
}

async fn http_cas(
    State(kv): State<KvCore>,
    Extension(caller): Extension<Principal>,
    Json(body): Json<CasBody>,
) -> Result<Response, ApiError> {
    let owner = resolve_owner(&caller, body.owner.as_deref())?;
    let swap = kv
        .compare_and_set(&owner, &body.key, body.expected_version, body.value)
        .await?;
    let status = if swap.swapped {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Ok((status, Json(swap)).into_response())
}

async fn http_list(
    State(kv): State<KvCore>,
    Extension(caller): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    let owner = resolve_owner(&caller, q.owner.as_deref())?;
    Ok(Json(
        kv.list(&owner, &q.prefix, &q.start_after, q.limit, q.consistency)
            .await?,
    ))
}

fn grpc_owner<T>(r: &tonic::Request<T>, requested: &str) -> Result<String, tonic::Status> {
    let caller = r
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| tonic::Status::unauthenticated("credentials required"))?;
    Ok(resolve_owner(caller, Some(requested))?)
}

#[tonic::async_trait]
impl kv_server::Kv for KvCore {
    async fn get(
        &self,
        r: tonic::Request<pb::GetRequest>,
    ) -> Result<tonic::Response<pb::GetResponse>, tonic::Status> {
        let owner = grpc_owner(&r, &r.get_ref().owner)?;
        let consistency = Consistency::from_stale(r.get_ref().stale);
        let key = r.into_inner().key;
        match KvCore::get_at(self, &owner, &key, consistency).await? {
            (Some(e), applied) => {
                let mut response = tonic::Response::new(pb::GetResponse {
                    entry: Some(e.into()),
                });
                if let Some(index) = applied {
                    response.metadata_mut().insert(APPLIED_INDEX, index.into());
                }
                Ok(response)
            }
            (None, _) => Err(tonic::Status::not_found(format!("no key `{key}`"))),
        }
    }

    async fn put(
        &self,
        r: tonic::Request<pb::PutRequest>,
    ) -> Result<tonic::Response<pb::PutResponse>, tonic::Status> {
        let owner = grpc_owner(&r, &r.get_ref().owner)?;
        let r = r.into_inner();
        let version = KvCore::put(self, &owner, &r.key, r.value).await?;
        Ok(tonic::Response::new(pb::PutResponse { version }))
    }

    async fn delete(
        &self,
        r: tonic::Request<pb::DeleteRequest>,
    ) -> Result<tonic::Response<pb::DeleteResponse>, tonic::Status> {
        let owner = grpc_owner(&r, &r.get_ref().owner)?;
        let deleted = KvCore::delete(self, &owner, &r.into_inner().key).await?;
        Ok(tonic::Response::new(pb::DeleteResponse { deleted }))
    }

    async fn compare_and_set(
        &self,
        r: tonic::Request<pb::CompareAndSetRequest>,
    ) -> Result<tonic::Response<pb::CompareAndSetResponse>, tonic::Status> {
        let owner = grpc_owner(&r, &r.get_ref().owner)?;
        let r = r.into_inner();
        let swap =
            KvCore::compare_and_set(self, &owner, &r.key, r.expected_version, r.value).await?;
        Ok(tonic::Response::new(pb::CompareAndSetResponse {
            swapped: swap.swapped,
            current: swap.current.map(Into::into),
        }))
    }

    async fn list(
        &self,
        r: tonic::Request<pb::ListRequest>,
    ) -> Result<tonic::Response<pb::ListResponse>, tonic::Status> {
        let owner = grpc_owner(&r, &r.get_ref().owner)?;
        let r = r.into_inner();
        let consistency = Consistency::from_stale(r.stale);
        let page = KvCore::list(
            self,
            &owner,
            &r.prefix,
            &r.start_after,
            r.limit,
            consistency,
        )
        .await?;
        Ok(tonic::Response::new(pb::ListResponse {
            entries: page.entries.into_iter().map(Into::into).collect(),
            next_start_after: page.next_start_after.unwrap_or_default(),
        }))
    }
}

impl Service for Kv {
    type State = KvCore;

    fn name(&self) -> &'static str {
        "kv"
    }

    fn summary(&self) -> &'static str {
        "versioned key/value store with compare-and-set and prefix listing"
    }

    fn routes(&self) -> Routes<KvCore> {
        Routes::new()
            .get("/keys", READ, http_list)
            .doc(|d| {
                d.summary("List the caller's entries in key order, a page at a time")
                    .query::<ListQuery>()
                    .answers::<Page>(200, "a page of entries")
            })
            .get("/keys/{*key}", READ, http_get)
            .doc(|d| {
                d.summary("Read an entry (404 if there is none)")
                    .query::<OwnerQuery>()
                    .answers::<Entry>(200, "the entry; a stale or local read says the Raft index its copy had applied in x-flotilla-applied-index")
            })
            .put("/keys/{*key}", WRITE, http_put)
            .doc(|d| {
                d.summary("Create or overwrite an entry")
                    .query::<OwnerQuery>()
                    .body::<PutBody>()
                    .answers_with(200, "the key and its new version", schemars::json_schema!({
                        "type": "object",
                        "required": ["key", "version"],
                        "properties": {"key": {"type": "string"}, "version": {"type": "integer", "minimum": 1}},
                    }))
            })
            .delete("/keys/{*key}", WRITE, http_delete)
            .doc(|d| {
                d.summary("Delete an entry")
                    .query::<OwnerQuery>()
                    .answers_with(200, "whether there was an entry to delete", schemars::json_schema!({
                        "type": "object",
                        "required": ["deleted"],
                        "properties": {"deleted": {"type": "boolean"}},
                    }))
            })
            .post("/cas", WRITE, http_cas)
            .doc(|d| {
                d.summary("Write an entry only if its version is the expected one")
                    .body::<CasBody>()
                    .answers::<Swap>(200, "written")
                    .answers::<Swap>(409, "not written: the version did not match; the current entry")
            })
            .grpc(
                &[
                    ("Get", READ, Idempotent),
                    ("List", READ, Idempotent),
                    // Setting a value, or deleting a key, twice leaves what
                    // once does (the version grows, the value does not).
                    ("Put", WRITE, Idempotent),
                    ("Delete", WRITE, Idempotent),
                    ("CompareAndSet", WRITE, NotIdempotent),
                ],
                kv_server::KvServer::new,
            )
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    fn start(&self, ctx: ServiceContext) -> Result<KvCore, StartError> {
        Ok(KvCore { store: ctx.store })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_every_extension() {
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        assert_eq!(prefix_end(""), None);
        let end = prefix_end("user/").unwrap();
        for k in ["user/", "user/a", "user/\u{10FFFF}\u{10FFFF}"] {
            assert!(k < end.as_str());
        }
        assert!("user0" >= end.as_str());
    }
}
