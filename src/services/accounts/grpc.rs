//! The accounts API over gRPC (`flotilla.accounts.v1.Accounts`).

use super::*;

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
