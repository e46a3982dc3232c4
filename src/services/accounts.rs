//! `accounts`: sign-up, login, token refresh and logout, the caller's own
//! account and API keys, and user management for admins. HTTP/JSON under
//! `/api/accounts/` and gRPC `flotilla.accounts.v1.Accounts`, both calling
//! [`AccountsCore`].
//!
//! Checking credentials is not this service's job (the ingress does it on
//! every node); issuing and revoking them is.

use std::{net::IpAddr, sync::Arc};

use axum::{
    Extension, Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
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
        Access, Api, Capability, ClientAddr, GrpcMethod, GrpcService, Handlers, HttpRoute, Service,
        ServiceContext, StartError, grpc_router,
    },
    proto::accounts::{self as pb, accounts_server},
    store::Migration,
};

pub struct Accounts;

const SELF: Access = Access::Permission(authz::ACCOUNT_SELF);
const ADMIN: Access = Access::Permission(authz::ACCOUNTS_ADMIN);

/// Access and refresh tokens, as returned by login and refresh.
#[derive(Debug, Serialize)]
pub struct Tokens {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_token: String,
}

const LOGIN_FAILED: &str = "invalid username or password";

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

    async fn tokens(&self, user: &User, family: Option<&str>) -> Result<Tokens, ApiError> {
        let (access_token, expires_in) = self
            .auth
            .issue_access_token(user)
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable", e))?;
        let refresh_token = accounts::issue_refresh(
            self.ns(),
            &self.auth.secrets,
            &user.id,
            family,
            now(),
            self.auth.settings.refresh_token_ttl.as_secs() as i64,
        )
        .await?;
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
            (Some(user), Verdict::RightRehashed(hash)) if !user.disabled => {
                accounts::set_password_hash(self.ns(), &user.id, &hash, now(), false).await?;
                tracing::info!(user = %user.id, "password rehashed with the current parameters");
                user
            }
            _ => {
                let _ = self.auth.failures_per_account_address.take(&account_key);
                return Err(ApiError::unauthenticated(LOGIN_FAILED));
            }
        };
        self.tokens(&user, None).await
    }

    pub async fn refresh(&self, token: &str) -> Result<Tokens, ApiError> {
        let refused = || ApiError::unauthenticated("the refresh token is not valid: log in again");
        match accounts::redeem_refresh(self.ns(), &self.auth.secrets, token, now()).await? {
            Ok((user_id, family)) => {
                let user = accounts::user_by_id(self.ns(), &user_id).await?;
                match user {
                    Some(user) if !user.disabled => self.tokens(&user, Some(&family)).await,
                    _ => {
                        accounts::revoke_family(self.ns(), &family, now()).await?;
                        Err(refused())
                    }
                }
            }
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
        accounts::set_password_hash(self.ns(), &user.id, &hash, now(), true).await?;
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
        Ok(accounts::create_api_key(
            self.ns(),
            &self.auth.secrets,
            &p.user_id,
            name.trim(),
            &scopes,
            now(),
        )
        .await?)
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsBody {
    username: String,
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    current_password: String,
    new_password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyBody {
    name: String,
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    username: String,
    password: String,
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesBody {
    roles: Vec<String>,
}

fn client_ip(addr: Option<Extension<ClientAddr>>) -> Option<IpAddr> {
    addr.map(|Extension(ClientAddr(a))| a.ip())
}

async fn http_signup(
    State(core): State<AccountsCore>,
    addr: Option<Extension<ClientAddr>>,
    Json(body): Json<CredentialsBody>,
) -> Result<Response, ApiError> {
    let user = core
        .signup(client_ip(addr), &body.username, body.password)
        .await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

async fn http_login(
    State(core): State<AccountsCore>,
    addr: Option<Extension<ClientAddr>>,
    Json(body): Json<CredentialsBody>,
) -> Result<Json<Tokens>, ApiError> {
    Ok(Json(
        core.login(client_ip(addr), &body.username, body.password)
            .await?,
    ))
}

async fn http_refresh(
    State(core): State<AccountsCore>,
    Json(body): Json<RefreshBody>,
) -> Result<Json<Tokens>, ApiError> {
    Ok(Json(core.refresh(&body.refresh_token).await?))
}

async fn http_logout(
    State(core): State<AccountsCore>,
    Json(body): Json<RefreshBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({ "revoked": core.logout(&body.refresh_token).await? }),
    ))
}

async fn http_me(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(core.me(&p).await?))
}

async fn http_password(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
    Json(body): Json<PasswordBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    core.change_password(&p, body.current_password, body.new_password)
        .await?;
    Ok(Json(serde_json::json!({ "changed": true })))
}

async fn http_create_key(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
    Json(body): Json<ApiKeyBody>,
) -> Result<Response, ApiError> {
    let (key, secret) = core.create_api_key(&p, &body.name, body.scopes).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "api_key": key, "key": secret })),
    )
        .into_response())
}

async fn http_list_keys(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({ "api_keys": core.list_api_keys(&p).await? }),
    ))
}

async fn http_revoke_key(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    core.revoke_api_key(&p, &id).await?;
    Ok(Json(serde_json::json!({ "revoked": true })))
}

async fn http_list_users(
    State(core): State<AccountsCore>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({ "users": core.list_users().await? }),
    ))
}

async fn http_create_user(
    State(core): State<AccountsCore>,
    Json(body): Json<NewUserBody>,
) -> Result<Response, ApiError> {
    let user = core
        .create_user(&body.username, body.password, body.roles)
        .await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

async fn http_disable(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(core.set_disabled(&p, &id, true).await?))
}

async fn http_enable(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(core.set_disabled(&p, &id, false).await?))
}

async fn http_roles(
    State(core): State<AccountsCore>,
    Path(id): Path<String>,
    Json(body): Json<RolesBody>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(core.set_roles(&id, body.roles).await?))
}

// ---- gRPC ----

fn pb_user(u: User) -> pb::User {
    pb::User {
        id: u.id,
        username: u.username,
        roles: u.roles,
        disabled: u.disabled,
        created_at: u.created_at,
    }
}

fn pb_key(k: ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id,
        name: k.name,
        scopes: k.scopes,
        created_at: k.created_at,
        revoked: k.revoked,
    }
}

fn pb_tokens(t: Tokens) -> pb::Tokens {
    pb::Tokens {
        access_token: t.access_token,
        token_type: t.token_type.into(),
        expires_in: t.expires_in,
        refresh_token: t.refresh_token,
    }
}

fn principal<T>(r: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    r.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("credentials required"))
}

fn grpc_client<T>(r: &tonic::Request<T>) -> Option<IpAddr> {
    r.extensions().get::<ClientAddr>().map(|a| a.0.ip())
}

type GrpcResult<T> = Result<tonic::Response<T>, tonic::Status>;

fn reply<T>(v: T) -> GrpcResult<T> {
    Ok(tonic::Response::new(v))
}

#[tonic::async_trait]
impl accounts_server::Accounts for AccountsCore {
    async fn signup(&self, r: tonic::Request<pb::Credentials>) -> GrpcResult<pb::User> {
        let client = grpc_client(&r);
        let c = r.into_inner();
        reply(pb_user(
            AccountsCore::signup(self, client, &c.username, c.password).await?,
        ))
    }

    async fn login(&self, r: tonic::Request<pb::Credentials>) -> GrpcResult<pb::Tokens> {
        let client = grpc_client(&r);
        let c = r.into_inner();
        reply(pb_tokens(
            AccountsCore::login(self, client, &c.username, c.password).await?,
        ))
    }

    async fn refresh(&self, r: tonic::Request<pb::RefreshRequest>) -> GrpcResult<pb::Tokens> {
        reply(pb_tokens(
            AccountsCore::refresh(self, &r.into_inner().refresh_token).await?,
        ))
    }

    async fn logout(&self, r: tonic::Request<pb::RefreshRequest>) -> GrpcResult<pb::LogoutReply> {
        let revoked = AccountsCore::logout(self, &r.into_inner().refresh_token).await?;
        reply(pb::LogoutReply { revoked })
    }

    async fn me(&self, r: tonic::Request<pb::MeRequest>) -> GrpcResult<pb::User> {
        let p = principal(&r)?;
        reply(pb_user(AccountsCore::me(self, &p).await?))
    }

    async fn change_password(
        &self,
        r: tonic::Request<pb::ChangePasswordRequest>,
    ) -> GrpcResult<pb::ChangePasswordReply> {
        let p = principal(&r)?;
        let b = r.into_inner();
        AccountsCore::change_password(self, &p, b.current_password, b.new_password).await?;
        reply(pb::ChangePasswordReply { changed: true })
    }

    async fn create_api_key(
        &self,
        r: tonic::Request<pb::CreateApiKeyRequest>,
    ) -> GrpcResult<pb::CreatedApiKey> {
        let p = principal(&r)?;
        let b = r.into_inner();
        let (key, secret) = AccountsCore::create_api_key(self, &p, &b.name, b.scopes).await?;
        reply(pb::CreatedApiKey {
            api_key: Some(pb_key(key)),
            key: secret,
        })
    }

    async fn list_api_keys(
        &self,
        r: tonic::Request<pb::ListApiKeysRequest>,
    ) -> GrpcResult<pb::ApiKeyList> {
        let p = principal(&r)?;
        let keys = AccountsCore::list_api_keys(self, &p).await?;
        reply(pb::ApiKeyList {
            api_keys: keys.into_iter().map(pb_key).collect(),
        })
    }

    async fn revoke_api_key(
        &self,
        r: tonic::Request<pb::RevokeApiKeyRequest>,
    ) -> GrpcResult<pb::RevokeApiKeyReply> {
        let p = principal(&r)?;
        AccountsCore::revoke_api_key(self, &p, &r.into_inner().id).await?;
        reply(pb::RevokeApiKeyReply { revoked: true })
    }

    async fn list_users(
        &self,
        _: tonic::Request<pb::ListUsersRequest>,
    ) -> GrpcResult<pb::UserList> {
        let users = AccountsCore::list_users(self).await?;
        reply(pb::UserList {
            users: users.into_iter().map(pb_user).collect(),
        })
    }

    async fn create_user(&self, r: tonic::Request<pb::CreateUserRequest>) -> GrpcResult<pb::User> {
        let b = r.into_inner();
        reply(pb_user(
            AccountsCore::create_user(self, &b.username, b.password, b.roles).await?,
        ))
    }

    async fn set_disabled(
        &self,
        r: tonic::Request<pb::SetDisabledRequest>,
    ) -> GrpcResult<pb::User> {
        let p = principal(&r)?;
        let b = r.into_inner();
        reply(pb_user(
            AccountsCore::set_disabled(self, &p, &b.id, b.disabled).await?,
        ))
    }

    async fn set_roles(&self, r: tonic::Request<pb::SetRolesRequest>) -> GrpcResult<pb::User> {
        let b = r.into_inner();
        reply(pb_user(
            AccountsCore::set_roles(self, &b.id, b.roles).await?,
        ))
    }
}

impl Service for Accounts {
    fn name(&self) -> &'static str {
        "accounts"
    }

    fn summary(&self) -> &'static str {
        "sign-up, login, token refresh and logout, API keys, and user management"
    }

    fn api(&self) -> Api {
        use http::Method;
        let route = |method, path, access| HttpRoute {
            method,
            path,
            access,
        };
        let method = |name, access| GrpcMethod { name, access };
        Api {
            http: vec![
                route(Method::POST, "/signup", Access::Public),
                route(Method::POST, "/login", Access::Public),
                route(Method::POST, "/refresh", Access::Public),
                route(Method::POST, "/logout", Access::Public),
                route(Method::GET, "/me", SELF),
                route(Method::POST, "/me/password", SELF),
                route(Method::POST, "/api-keys", SELF),
                route(Method::GET, "/api-keys", SELF),
                route(Method::DELETE, "/api-keys/{id}", SELF),
                route(Method::GET, "/users", ADMIN),
                route(Method::POST, "/users", ADMIN),
                route(Method::POST, "/users/{id}/disable", ADMIN),
                route(Method::POST, "/users/{id}/enable", ADMIN),
                route(Method::PUT, "/users/{id}/roles", ADMIN),
            ],
            grpc: vec![GrpcService {
                name: <accounts_server::AccountsServer<AccountsCore> as tonic::server::NamedService>::NAME,
                methods: vec![
                    method("Signup", Access::Public),
                    method("Login", Access::Public),
                    method("Refresh", Access::Public),
                    method("Logout", Access::Public),
                    method("Me", SELF),
                    method("ChangePassword", SELF),
                    method("CreateApiKey", SELF),
                    method("ListApiKeys", SELF),
                    method("RevokeApiKey", SELF),
                    method("ListUsers", ADMIN),
                    method("CreateUser", ADMIN),
                    method("SetDisabled", ADMIN),
                    method("SetRoles", ADMIN),
                ],
            }],
        }
    }

    fn migrations(&self) -> &'static [Migration] {
        accounts::MIGRATIONS
    }

    fn capabilities(&self) -> &'static [Capability] {
        &[Capability::IssueCredentials]
    }

    fn start(&self, ctx: ServiceContext) -> Result<Handlers, StartError> {
        let auth = ctx.grants.credentials.ok_or_else(|| StartError {
            service: "accounts",
            message: "it was not granted the issue-credentials capability it declares".into(),
        })?;
        let core = AccountsCore {
            auth,
            ns: ctx.store,
        };
        let http = Router::new()
            .route("/signup", post(http_signup))
            .route("/login", post(http_login))
            .route("/refresh", post(http_refresh))
            .route("/logout", post(http_logout))
            .route("/me", get(http_me))
            .route("/me/password", post(http_password))
            .route("/api-keys", post(http_create_key).get(http_list_keys))
            .route("/api-keys/{id}", delete(http_revoke_key))
            .route("/users", get(http_list_users).post(http_create_user))
            .route("/users/{id}/disable", post(http_disable))
            .route("/users/{id}/enable", post(http_enable))
            .route("/users/{id}/roles", put(http_roles))
            .with_state(core.clone());
        let grpc = grpc_router(accounts_server::AccountsServer::new(core));
        Ok(Handlers { http, grpc })
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
