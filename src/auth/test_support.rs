//! An `Auth` over a real store in a temporary directory, for the tests of
//! this module and of the layers that call it.

use std::{sync::Arc, time::Duration};

use super::{Auth, AuthSettings, accounts, now, password::HashParams};
use crate::store::{Durability, Store, StoreConfig, StoreMetrics};

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub auth: Arc<Auth>,
}

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(
            &StoreConfig {
                data_dir: dir.path().to_owned(),
                readers: 2,
                durability: Durability::Full,
            },
            StoreMetrics::default(),
        )
        .expect("the store opens");
        let settings = AuthSettings {
            secret: "a-shared-auth-secret-0123456789abcdef".into(),
            access_token_ttl: Duration::from_secs(300),
            refresh_token_ttl: Duration::from_secs(3600),
            key_rotation: None,
            signup: true,
            password_hash: HashParams::default(),
        };
        let auth = Auth::open(&store, settings).await.expect("auth opens");
        Fixture { _dir: dir, auth }
    }

    /// A new user with `roles` (the password hash is never checked here).
    pub(crate) async fn user(&self, username: &str, roles: &[&str]) -> accounts::User {
        accounts::create_user(&self.auth.accounts, username, "unused", roles, now())
            .await
            .expect("the store takes the user")
            .expect("the username is free")
    }

    /// `Authorization: Bearer <token>` for `user`.
    pub(crate) fn bearer(&self, user: &accounts::User) -> http::HeaderMap {
        let (token, _) = self.auth.issue_access_token(user).expect("a token");
        authorization(&format!("Bearer {token}"))
    }
}

pub(crate) fn authorization(value: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        value.parse().expect("a header value"),
    );
    headers
}
