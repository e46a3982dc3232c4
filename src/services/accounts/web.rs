//! The accounts API over HTTP/JSON, under `/api/accounts/`.

use super::*;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialsBody {
    username: String,
    password: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshBody {
    refresh_token: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordBody {
    current_password: String,
    new_password: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiKeyBody {
    name: String,
    /// Permissions, each one its owner holds (e.g. `kv.read`).
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUserBody {
    username: String,
    password: String,
    /// `user`, `admin`.
    roles: Vec<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RolesBody {
    roles: Vec<String>,
}

fn client_ip(addr: Option<Extension<ClientAddr>>) -> Option<IpAddr> {
    addr.map(|Extension(ClientAddr(a))| a.ip())
}

pub(super) async fn signup(
    State(core): State<AccountsCore>,
    addr: Option<Extension<ClientAddr>>,
    Json(body): Json<CredentialsBody>,
) -> Result<Response, ApiError> {
    let user = core
        .signup(client_ip(addr), &body.username, body.password)
        .await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

pub(super) async fn login(
    State(core): State<AccountsCore>,
    addr: Option<Extension<ClientAddr>>,
    Json(body): Json<CredentialsBody>,
) -> Result<Json<Tokens>, ApiError> {
    Ok(Json(
        core.login(client_ip(addr), &body.username, body.password)
            .await?,
    ))
}

pub(super) async fn refresh(
    State(core): State<AccountsCore>,
    Json(body): Json<RefreshBody>,
) -> Result<Json<Tokens>, ApiError> {
    Ok(Json(core.refresh(&body.refresh_token).await?))
}

pub(super) async fn logout(
    State(core): State<AccountsCore>,
    Json(body): Json<RefreshBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({ "revoked": core.logout(&body.refresh_token).await? }),
    ))
}

pub(super) async fn me(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(core.me(&p).await?))
}

pub(super) async fn password(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
    Json(body): Json<PasswordBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    core.change_password(&p, body.current_password, body.new_password)
        .await?;
    Ok(Json(serde_json::json!({ "changed": true })))
}

pub(super) async fn create_key(
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

pub(super) async fn list_keys(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({ "api_keys": core.list_api_keys(&p).await? }),
    ))
}

pub(super) async fn revoke_key(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    core.revoke_api_key(&p, &id).await?;
    Ok(Json(serde_json::json!({ "revoked": true })))
}

pub(super) async fn list_users(
    State(core): State<AccountsCore>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({ "users": core.list_users().await? }),
    ))
}

pub(super) async fn create_user(
    State(core): State<AccountsCore>,
    Json(body): Json<NewUserBody>,
) -> Result<Response, ApiError> {
    let user = core
        .create_user(&body.username, body.password, body.roles)
        .await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

pub(super) async fn disable(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(core.set_disabled(&p, &id, true).await?))
}

pub(super) async fn enable(
    State(core): State<AccountsCore>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(core.set_disabled(&p, &id, false).await?))
}

pub(super) async fn roles(
    State(core): State<AccountsCore>,
    Path(id): Path<String>,
    Json(body): Json<RolesBody>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(core.set_roles(&id, body.roles).await?))
}

// ---- gRPC ----
