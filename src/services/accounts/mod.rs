//! `accounts`: sign-up, login, token refresh and logout, the caller's own
//! account and API keys, and user management for admins. HTTP/JSON under
//! `/api/accounts/` and gRPC `flotilla.accounts.v1.Accounts`, both calling
//! [`AccountsCore`].
//!
//! Checking credentials is not this service's job (the ingress does it on
//! every node); issuing and revoking them is.

mod grpc;
mod web;

use std::{net::IpAddr, sync::Arc};

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use crate::{
    auth::{
        Auth,
        accounts::{self, ApiKey, RefreshRefused, User},
        authz::{self, ALL_PERMISSIONS, Principal, ROLES},
        now,
        password::{Verdict, password_problem},
        ratelimit::retry_after_secs,
    },
    catalogue::api_error::ApiError,
    catalogue::{
        Access, Capability, ClientAddr,
        Idempotence::{Idempotent, NotIdempotent},
        Routes, Service, ServiceContext, StartError,
    },
    proto::accounts::{self as pb, accounts_server},
    store::Migration,
};

pub struct Accounts;

/// An answer `{"<name>": bool}`.
fn flag(name: &str) -> schemars::Schema {
    let mut schema = schemars::json_schema!({"type": "object"});
    schema.insert("required".into(), serde_json::json!([name]));
    schema.insert(
        "properties".into(),
        serde_json::json!({ name: {"type": "boolean"} }),
    );
    schema
}

/// An answer `{"<name>": [T, …]}`.
fn list_of<T: schemars::JsonSchema>(name: &str) -> schemars::Schema {
    let mut schema = schemars::json_schema!({"type": "object"});
    schema.insert("required".into(), serde_json::json!([name]));
    schema.insert(
        "properties".into(),
        serde_json::json!({ name: {"type": "array", "items": crate::catalogue::schema_of::<T>()} }),
    );
    schema
}

const SELF: Access = Access::Permission(authz::ACCOUNT_SELF);
const ADMIN: Access = Access::Permission(authz::ACCOUNTS_ADMIN);

/// Access and refresh tokens, as returned by login and refresh.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Tokens {
    /// An EdDSA JWT, sent as `Authorization: Bearer <token>`.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Spent by its one use at /refresh, which gives new tokens.
    pub refresh_token: String,
}

const LOGIN_FAILED: &str = "invalid username or password";

/// A login whose account changed between the password check and the new
/// session (its password changed, or it was disabled): no session starts.
fn changed_meanwhile() -> ApiError {
    ApiError::unauthenticated(
        "the account changed while logging in (new password, or disabled): log in again",
    )
}

#[derive(Clone)]
pub struct AccountsCore {
    auth: Arc<Auth>,
    /// The accounts namespace, within the service's budget.
    ns: crate::store::Namespace,
}

fn validate_roles(roles: &[String]) -> Result<(), ApiError> {
    if roles.is_empty() {
        return Err(ApiError::bad_request(format!(
            "give at least one role; roles: {}",
            ROLES.join(", ")
        )));
    }
    match roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
        Some(r) => Err(ApiError::bad_request(format!(
            "unknown role `{r}`; roles: {}",
            ROLES.join(", ")
        ))),
        None => Ok(()),
    }
}

fn address_key(client: Option<IpAddr>) -> String {
    client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

impl AccountsCore {
    fn ns(&self) -> &crate::store::Namespace {
        &self.ns
    }

    async fn hash(&self, password: String) -> Result<String, ApiError> {
        let hasher = self.auth.hasher.clone();
        tokio::task::spawn_blocking(move || hasher.hash(&password))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })
    }

    fn take_attempt(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        self.auth
            .attempts_per_address
            .take(&address_key(client))
            .map_err(|wait| {
                ApiError::too_many_requests(
                    "too many login or sign-up attempts from this address: wait and retry",
                    retry_after_secs(wait),
                )
            })
    }

    fn refresh_ttl(&self) -> i64 {
        self.auth.settings.refresh_token_ttl.as_secs() as i64
    }

    /// An access token for `user`, beside the refresh token of its session.
    fn tokens(&self, user: &User, refresh_token: String) -> Result<Tokens, ApiError> {
        let (access_token, expires_in) = self
            .auth
            .issue_access_token(user)
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable", e))?;
        Ok(Tokens {
            access_token,
            token_type: "Bearer",
            expires_in,
            refresh_token,
        })
    }

    pub async fn signup(
        &self,
        client: Option<IpAddr>,
        username: &str,
        password: String,
    ) -> Result<User, ApiError> {
        if !self.auth.settings.signup {
            return Err(ApiError::forbidden(
                "sign-up is disabled on this server (auth.signup: false); ask an admin for an account",
            ));
        }
        self.take_attempt(client)?;
        self.create(username, password, &[authz::ROLE_USER.to_owned()])
            .await
    }

    async fn create(
        &self,
        username: &str,
        password: String,
        roles: &[String],
    ) -> Result<User, ApiError> {
        let username = username.trim().to_ascii_lowercase();
        if let Some(p) = accounts::username_problem(&username) {
            return Err(ApiError::bad_request(p));
        }
        if let Some(p) = password_problem(&password) {
            return Err(ApiError::bad_request(p));
        }
        validate_roles(roles)?;
        let hash = self.hash(password).await?;
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        accounts::create_user(self.ns(), &username, &hash, &roles, now())
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "username_taken",
                    format!("the username `{username}` is taken"),
                )
            })
    }

    pub async fn login(
        &self,
        client: Option<IpAddr>,
        username: &str,
        password: String,
    ) -> Result<Tokens, ApiError> {
        self.take_attempt(client)?;
        let username = username.trim().to_ascii_lowercase();
        let account_key = format!("{username}|{}", address_key(client));
        if let Err(wait) = self.auth.failures_per_account_address.check(&account_key) {
            return Err(ApiError::too_many_requests(
                "too many failed logins for this account from this address: wait and retry",
                retry_after_secs(wait),
            ));
        }
        let user = accounts::user_by_name(self.ns(), &username).await?;
        let hasher = self.auth.hasher.clone();
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let verdict = tokio::task::spawn_blocking(move || match stored {
            Some(stored) => hasher.verify(&password, &stored),
            None => {
                hasher.verify_dummy(&password);
                Verdict::Wrong
            }
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        let user = match (user, verdict) {
            (Some(user), Verdict::Right) if !user.disabled => user,
            (Some(mut user), Verdict::RightRehashed(hash)) if !user.disabled => {
                // Stored only over the hash just checked: a password
                // changed meanwhile is never brought back.
                if !accounts::set_password_hash(
                    self.ns(),
                    &user.id,
                    &user.password_hash,
                    &hash,
                    now(),
                    false,
                )
                .await?
                {
                    return Err(changed_meanwhile());
                }
                tracing::info!(user = %user.id, "password rehashed with the current parameters");
                user.password_hash = hash;
                user
            }
            _ => {
                let _ = self.auth.failures_per_account_address.take(&account_key);
                return Err(ApiError::unauthenticated(LOGIN_FAILED));
            }
        };
        let refresh_token = accounts::start_session(
            self.ns(),
            &self.auth.secrets,
            &user,
            now(),
            self.refresh_ttl(),
        )
        .await?
        .ok_or_else(changed_meanwhile)?;
        self.tokens(&user, refresh_token)
    }

    pub async fn refresh(&self, token: &str) -> Result<Tokens, ApiError> {
        let refused = || ApiError::unauthenticated("the refresh token is not valid: log in again");
        let rotated = accounts::rotate_refresh(
            self.ns(),
            &self.auth.secrets,
            token,
            now(),
            self.refresh_ttl(),
        )
        .await?;
        match rotated {
            Ok(rotated) => match accounts::user_by_id(self.ns(), &rotated.user_id).await? {
                Some(user) if !user.disabled => self.tokens(&user, rotated.token),
                _ => {
                    accounts::revoke_family(self.ns(), &rotated.family, now()).await?;
                    Err(refused())
                }
            },
            Err(RefreshRefused::Invalid) => Err(refused()),
            Err(RefreshRefused::Reused) => Err(ApiError::unauthenticated(
                "the refresh token was already used: every token of this session is revoked; log in again",
            )),
        }
    }

    pub async fn logout(&self, token: &str) -> Result<bool, ApiError> {
        match accounts::refresh_family(self.ns(), &self.auth.secrets, token).await? {
            Some((family, _)) => {
                accounts::revoke_family(self.ns(), &family, now()).await?;
                Ok(true)
            }
            None => Err(ApiError::unauthenticated("the refresh token is not valid")),
        }
    }

    async fn user(&self, id: &str) -> Result<User, ApiError> {
        accounts::user_by_id(self.ns(), id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no user `{id}`")))
    }

    pub async fn me(&self, p: &Principal) -> Result<User, ApiError> {
        self.user(&p.user_id).await
    }

    pub async fn change_password(
        &self,
        p: &Principal,
        current: String,
        new: String,
    ) -> Result<(), ApiError> {
        if let Some(problem) = password_problem(&new) {
            return Err(ApiError::bad_request(problem));
        }
        let user = self.user(&p.user_id).await?;
        let hasher = self.auth.hasher.clone();
        let stored = user.password_hash.clone();
        let right =
            tokio::task::spawn_blocking(move || hasher.verify(&current, &stored) != Verdict::Wrong)
                .await
                .map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?;
        if !right {
            return Err(ApiError::forbidden("the current password is wrong"));
        }
        let hash = self.hash(new).await?;
        // Every session of the account ends: tokens issued before now stop
        // working, refresh tokens are revoked.
        let replaced = accounts::set_password_hash(
            self.ns(),
            &user.id,
            &user.password_hash,
            &hash,
            now(),
            true,
        )
        .await?;
        if !replaced {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "the password was changed by another request meanwhile: nothing was changed; retry with the current password",
            ));
        }
        self.auth.invalidate_user(&user.id);
        Ok(())
    }

    pub async fn create_api_key(
        &self,
        p: &Principal,
        name: &str,
        scopes: Vec<String>,
    ) -> Result<(ApiKey, String), ApiError> {
        if name.trim().is_empty() || name.len() > 100 {
            return Err(ApiError::bad_request(
                "give the key a name of 1-100 characters",
            ));
        }
        if scopes.is_empty() {
            return Err(ApiError::bad_request(format!(
                "give the key at least one scope; scopes: {}",
                ALL_PERMISSIONS.join(", ")
            )));
        }
        for scope in &scopes {
            if !ALL_PERMISSIONS.contains(&scope.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown scope `{scope}`; scopes: {}",
                    ALL_PERMISSIONS.join(", ")
                )));
            }
            if !p.has(scope) {
                return Err(ApiError::forbidden(format!(
                    "you do not hold `{scope}`, so a key of yours cannot"
                )));
            }
        }
        accounts::create_api_key(
            self.ns(),
            &self.auth.secrets,
            &p.user_id,
            name.trim(),
            &scopes,
            now(),
        )
        .await?
        .ok_or_else(|| ApiError::unauthenticated("this account is disabled: no key was made"))
    }

    pub async fn list_api_keys(&self, p: &Principal) -> Result<Vec<ApiKey>, ApiError> {
        Ok(accounts::list_api_keys(self.ns(), &p.user_id).await?)
    }

    pub async fn revoke_api_key(&self, p: &Principal, id: &str) -> Result<(), ApiError> {
        if !accounts::revoke_api_key(self.ns(), &p.user_id, id, now()).await? {
            return Err(ApiError::not_found(format!("you have no API key `{id}`")));
        }
        self.auth.invalidate_api_key(id);
        Ok(())
    }

    pub async fn list_users(&self) -> Result<Vec<User>, ApiError> {
        Ok(accounts::list_users(self.ns()).await?)
    }

    pub async fn create_user(
        &self,
        username: &str,
        password: String,
        roles: Vec<String>,
    ) -> Result<User, ApiError> {
        self.create(username, password, &roles).await
    }

    pub async fn set_disabled(
        &self,
        p: &Principal,
        id: &str,
        disabled: bool,
    ) -> Result<User, ApiError> {
        if disabled && id == p.user_id {
            return Err(ApiError::bad_request("you cannot disable your own account"));
        }
        if !accounts::set_disabled(self.ns(), id, disabled, now()).await? {
            return Err(ApiError::not_found(format!("no user `{id}`")));
        }
        self.auth.invalidate_user(id);
        self.user(id).await
    }

    pub async fn set_roles(&self, id: &str, roles: Vec<String>) -> Result<User, ApiError> {
        validate_roles(&roles)?;
        if !accounts::set_roles(self.ns(), id, &roles).await? {
            return Err(ApiError::not_found(format!("no user `{id}`")));
        }
        self.auth.invalidate_user(id);
        self.user(id).await
    }
}

// ---- HTTP ----

impl Service for Accounts {
    type State = AccountsCore;

    fn name(&self) -> &'static str {
        "accounts"
    }

    fn summary(&self) -> &'static str {
        "sign-up, login, token refresh and logout, API keys, and user management"
    }

    fn routes(&self) -> Routes<AccountsCore> {
        Routes::new()
            .post("/signup", Access::Public, web::signup)
            .doc(|d| {
                d.summary("Create an account (only with auth.signup on; 404 otherwise)")
                    .body::<web::CredentialsBody>()
                    .answers::<User>(201, "the new account")
            })
            .post("/login", Access::Public, web::login)
            .doc(|d| {
                d.summary("Log in: an access token and a refresh token")
                    .body::<web::CredentialsBody>()
                    .answers::<Tokens>(200, "the tokens")
            })
            .post("/refresh", Access::Public, web::refresh)
            .doc(|d| {
                d.summary("Trade a refresh token for new tokens; the old one is spent")
                    .body::<web::RefreshBody>()
                    .answers::<Tokens>(200, "the new tokens")
            })
            .post("/logout", Access::Public, web::logout)
            .doc(|d| {
                d.summary("End the session of a refresh token")
                    .body::<web::RefreshBody>()
                    .answers_with(200, "whether a session was ended", flag("revoked"))
            })
            .get("/me", SELF, web::me)
            .doc(|d| d.summary("The caller's account").answers::<User>(200, "the account"))
            .post("/me/password", SELF, web::password)
            .doc(|d| {
                d.summary("Change the caller's password; every session ends")
                    .body::<web::PasswordBody>()
                    .answers_with(200, "changed", flag("changed"))
            })
            .post("/api-keys", SELF, web::create_key)
            .doc(|d| {
                d.summary("Create an API key; its secret is shown this once")
                    .body::<web::ApiKeyBody>()
                    .answers_with(201, "the key, and its secret as `key`", {
                        let mut schema = schemars::json_schema!({
                            "type": "object",
                            "required": ["api_key", "key"],
                            "properties": {"key": {"type": "string", "description": "sent as `Authorization: ApiKey <key>`"}},
                        });
                        schema.ensure_object()["properties"]["api_key"] =
                            crate::catalogue::schema_of::<ApiKey>().to_value();
                        schema
                    })
            })
            .get("/api-keys", SELF, web::list_keys)
            .doc(|d| {
                d.summary("The caller's API keys, without their secrets")
                    .answers_with(200, "the keys", list_of::<ApiKey>("api_keys"))
            })
            .delete("/api-keys/{id}", SELF, web::revoke_key)
            .doc(|d| d.summary("Revoke one of the caller's API keys").answers_with(200, "revoked", flag("revoked")))
            .get("/users", ADMIN, web::list_users)
            .doc(|d| d.summary("Every account").answers_with(200, "the accounts", list_of::<User>("users")))
            .post("/users", ADMIN, web::create_user)
            .doc(|d| {
                d.summary("Create an account with roles")
                    .body::<web::NewUserBody>()
                    .answers::<User>(201, "the new account")
            })
            .post("/users/{id}/disable", ADMIN, web::disable)
            .doc(|d| d.summary("Disable an account; its sessions end").answers::<User>(200, "the account"))
            .post("/users/{id}/enable", ADMIN, web::enable)
            .doc(|d| d.summary("Enable an account").answers::<User>(200, "the account"))
            .put("/users/{id}/roles", ADMIN, web::roles)
            .doc(|d| {
                d.summary("Set an account's roles")
                    .body::<web::RolesBody>()
                    .answers::<User>(200, "the account")
            })
            .grpc(
                &[
                    ("Signup", Access::Public, NotIdempotent),
                    ("Login", Access::Public, NotIdempotent),
                    ("Refresh", Access::Public, NotIdempotent),
                    ("Logout", Access::Public, Idempotent),
                    ("Me", SELF, Idempotent),
                    ("ChangePassword", SELF, NotIdempotent),
                    ("CreateApiKey", SELF, NotIdempotent),
                    ("ListApiKeys", SELF, Idempotent),
                    ("RevokeApiKey", SELF, Idempotent),
                    ("ListUsers", ADMIN, Idempotent),
                    ("CreateUser", ADMIN, NotIdempotent),
                    ("SetDisabled", ADMIN, Idempotent),
                    ("SetRoles", ADMIN, Idempotent),
                ],
                accounts_server::AccountsServer::new,
            )
    }

    fn migrations(&self) -> &'static [Migration] {
        accounts::MIGRATIONS
    }

    fn capabilities(&self) -> &'static [Capability] {
        &[Capability::IssueCredentials]
    }

    fn start(&self, ctx: ServiceContext) -> Result<AccountsCore, StartError> {
        let auth = ctx.grants.credentials.ok_or_else(|| StartError {
            service: "accounts",
            message: "it was not granted the issue-credentials capability it declares".into(),
        })?;
        Ok(AccountsCore {
            auth,
            ns: ctx.store,
        })
    }
}

/// Creates an admin account (the `accounts create-admin` command): the way
/// to the first admin without an open sign-up.
pub async fn create_admin(
    auth: &Arc<Auth>,
    username: &str,
    password: String,
) -> Result<User, ApiError> {
    AccountsCore {
        auth: auth.clone(),
        ns: auth.accounts.clone(),
    }
    .create(username, password, &[authz::ROLE_ADMIN.to_owned()])
    .await
}
