//! Authentication and authorization, done by flotilla on every node before
//! any service handler runs, identically for HTTP and gRPC.
//!
//! - `keys`: Ed25519 signing keys in the reserved `auth` namespace,
//!   sealed with the configured secret, rotated without logging anyone out.
//! - `tokens`: EdDSA JWT access tokens with a key id.
//! - `accounts`: users, refresh tokens (rotating, reuse revokes the
//!   family) and API keys (shown once, stored hashed).
//! - `password`: argon2id.
//! - `authz`: roles, permissions and the one authorization decision.
//! - `ratelimit`: login and sign-up limits.
//!
//! [`Auth`] ties them together for the ingress (`authenticate`) and the
//! `accounts` service (issuing and revoking credentials).

pub mod accounts;
pub mod authz;
pub mod keys;
pub mod password;
pub mod ratelimit;
pub mod tokens;

#[cfg(test)]
mod accounts_tests;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use http::HeaderMap;

use crate::store::{Store, StoreError};
use authz::{Credential, Identity, Principal};
use keys::{KeyRing, Secrets};
use password::{HashParams, Hasher};
use ratelimit::Limiter;
use tokens::TokenError;

/// The auth part of a validated config.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub secret: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Rotate the signing key when it is this old; `None`: only by command.
    pub key_rotation: Option<Duration>,
    pub signup: bool,
    pub password_hash: HashParams,
}

/// How long a cached account or API key state is trusted. A change made on
/// this node invalidates its cache at once; this bounds how long another
/// node sharing the store may lag.
const STATE_TTL: Duration = Duration::from_secs(2);
/// How often the signing keys are reloaded from the store.
const RING_RELOAD: Duration = Duration::from_secs(5);
/// Verified tokens remembered, to skip the signature check on reuse.
const VERIFIED_CACHE: usize = 65_536;

#[derive(Clone)]
struct Cached<T> {
    value: T,
    at: Instant,
}

#[derive(Clone)]
struct VerifiedToken {
    sub: String,
    generation: i64,
    exp: i64,
    nbf: i64,
    kid: String,
}

/// Unix time in seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Keys(String),
}

pub struct Auth {
    pub settings: AuthSettings,
    pub secrets: Secrets,
    pub hasher: Hasher,
    pub accounts: crate::store::Namespace,
    keys: crate::store::Namespace,
    ring: RwLock<Arc<KeyRing>>,
    last_reload: Mutex<Instant>,
    verified: Mutex<HashMap<String, VerifiedToken>>,
    users: Mutex<HashMap<String, Cached<Option<accounts::User>>>>,
    api_keys: Mutex<HashMap<String, Cached<Option<accounts::ApiKeyRecord>>>>,
    /// Login and sign-up attempts per client address.
    pub attempts_per_address: Limiter,
    /// Failed logins per (account, client address).
    pub failures_per_account_address: Limiter,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Auth {
    /// Migrates the `auth` and `accounts` namespaces, creates the first
    /// signing key if there is none, and loads the key ring.
    pub async fn open(store: &Store, settings: AuthSettings) -> Result<Arc<Auth>, AuthError> {
        let keys_ns = store.namespace(keys::NAMESPACE);
        let accounts_ns = store.namespace(accounts::NAMESPACE);
        keys_ns.migrate(keys::MIGRATIONS).await?;
        accounts_ns.migrate(accounts::MIGRATIONS).await?;
        let secrets = Secrets::from_secret(&settings.secret);
        keys::ensure_current(&keys_ns, &secrets, now()).await?;
        let hasher = Hasher::new(settings.password_hash);
        let auth = Auth {
            hasher,
            secrets,
            accounts: accounts_ns,
            keys: keys_ns,
            ring: RwLock::new(Arc::new(KeyRing::default())),
            last_reload: Mutex::new(Instant::now()),
            verified: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            api_keys: Mutex::new(HashMap::new()),
            attempts_per_address: Limiter::new(20, Duration::from_secs(60), 100_000),
            failures_per_account_address: Limiter::new(5, Duration::from_secs(15 * 60), 100_000),
            settings,
        };
        auth.reload_ring().await.map_err(AuthError::Keys)?;
        Ok(Arc::new(auth))
    }

    fn verify_retired_secs(&self) -> i64 {
        self.settings.access_token_ttl.as_secs() as i64 + tokens::LEEWAY_SECS as i64 + 60
    }

    /// Reloads the signing keys from the store.
    pub async fn reload_ring(&self) -> Result<(), String> {
        let ring = keys::load(&self.keys, &self.secrets, now(), self.verify_retired_secs()).await?;
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
        *lock(&self.last_reload) = Instant::now();
        Ok(())
    }

    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Retires the current signing key and creates a new one.
    pub async fn rotate_keys(&self) -> Result<String, AuthError> {
        let kid = keys::rotate(
            &self.keys,
            &self.secrets,
            now(),
            self.verify_retired_secs() * 2,
        )
        .await?;
        self.reload_ring().await.map_err(AuthError::Keys)?;
        tracing::info!(kid = %kid, "rotated the token signing key");
        Ok(kid)
    }

    /// Periodic work: reload keys (another process or node may have
    /// rotated them) and rotate when the current key is due.
    pub async fn maintain(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RING_RELOAD) => {}
            }
            // A round may wait on the store (in a cluster, on a quorum):
            // stopping must not wait for it.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.maintenance_round() => {}
            }
        }
    }

    async fn maintenance_round(&self) {
        if let Some(period) = self.settings.key_rotation {
            match keys::current_created_at(&self.keys).await {
                Ok(Some(created)) if created + period.as_secs() as i64 <= now() => {
                    if let Err(e) = self.rotate_keys().await {
                        tracing::error!(error = %e, "scheduled key rotation failed");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the signing keys"),
            }
        }
        if let Err(e) = self.reload_ring().await {
            tracing::error!(error = %e, "cannot reload the signing keys; keeping the previous ones");
        }
    }

    /// Issues an access token for `user`; returns it with its lifetime.
    pub fn issue_access_token(&self, user: &accounts::User) -> Result<(String, i64), String> {
        let ttl = self.settings.access_token_ttl.as_secs() as i64;
        let token = tokens::sign(
            &self.ring(),
            &tokens::AccessClaims::new(&user.id, user.token_generation, now(), ttl),
        )?;
        Ok((token, ttl))
    }

    /// Forgets what this node cached about a user (after a change to it).
    pub fn invalidate_user(&self, user_id: &str) {
        lock(&self.users).remove(user_id);
    }

    pub fn invalidate_api_key(&self, id: &str) {
        lock(&self.api_keys).remove(id);
    }

    async fn user(&self, id: &str) -> Result<Option<accounts::User>, StoreError> {
        if let Some(c) = lock(&self.users).get(id)
            && c.at.elapsed() < STATE_TTL
        {
            return Ok(c.value.clone());
        }
        let user = accounts::user_by_id(&self.accounts, id).await?;
        let mut users = lock(&self.users);
        if users.len() >= VERIFIED_CACHE {
            users.clear();
        }
        users.insert(
            id.to_owned(),
            Cached {
                value: user.clone(),
                at: Instant::now(),
            },
        );
        Ok(user)
    }

    /// Who the request's credentials say the caller is. Store failures are
    /// errors, not identities: the caller answers 503, never "allowed".
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, StoreError> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(Identity::Anonymous);
        };
        let Ok(value) = value.to_str() else {
            return Ok(Identity::Invalid(
                "the Authorization header is not valid text".into(),
            ));
        };
        let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
        let credential = credential.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            self.authenticate_token(credential).await
        } else if scheme.eq_ignore_ascii_case("apikey") {
            self.authenticate_api_key(credential).await
        } else {
            Ok(Identity::Invalid(format!(
                "unsupported Authorization scheme `{scheme}`: use Bearer or ApiKey"
            )))
        }
    }

    async fn authenticate_token(&self, token: &str) -> Result<Identity, StoreError> {
        let now = now();
        let ring = self.ring();
        let cached = lock(&self.verified).get(token).cloned();
        let verified = match cached {
            Some(v) if ring.verifying.contains_key(&v.kid) => {
                let leeway = tokens::LEEWAY_SECS as i64;
                if v.exp + leeway <= now {
                    return Ok(Identity::Invalid(TokenError::Expired.to_string()));
                }
                if v.nbf - leeway > now {
                    return Ok(Identity::Invalid(TokenError::NotYetValid.to_string()));
                }
                v
            }
            _ => match self.verify_token(token, now).await {
                Ok(v) => v,
                Err(e) => return Ok(Identity::Invalid(e.to_string())),
            },
        };
        let Some(user) = self.user(&verified.sub).await? else {
            return Ok(Identity::Invalid(
                "the token's account does not exist".into(),
            ));
        };
        if user.disabled {
            return Ok(Identity::Invalid("the account is disabled".into()));
        }
        if verified.generation < user.token_generation {
            return Ok(Identity::Invalid(
                "the token was revoked (the password changed or the account was disabled): log in again".into(),
            ));
        }
        Ok(Identity::Known(Principal {
            user_id: user.id,
            username: user.username,
            roles: user.roles,
            credential: Credential::AccessToken,
        }))
    }

    async fn verify_token(&self, token: &str, now: i64) -> Result<VerifiedToken, TokenError> {
        let mut ring = self.ring();
        let mut result = tokens::verify(&ring, token, now);
        if result == Err(TokenError::UnknownKeyId)
            && lock(&self.last_reload).elapsed() > Duration::from_secs(1)
        {
            // Another process may have rotated: look once more, at most
            // once a second.
            if self.reload_ring().await.is_ok() {
                ring = self.ring();
                result = tokens::verify(&ring, token, now);
            }
        }
        let claims = result?;
        let kid = tokens::key_id(token)?;
        let verified = VerifiedToken {
            sub: claims.sub,
            generation: claims.generation,
            exp: claims.exp,
            nbf: claims.nbf,
            kid,
        };
        let mut cache = lock(&self.verified);
        if cache.len() >= VERIFIED_CACHE {
            cache.retain(|_, v| v.exp > now);
            if cache.len() >= VERIFIED_CACHE {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), verified.clone());
        Ok(verified)
    }

    async fn authenticate_api_key(&self, presented: &str) -> Result<Identity, StoreError> {
        let invalid = || Ok(Identity::Invalid("the API key is not valid".into()));
        let Some(id) = accounts::api_key_id(presented) else {
            return invalid();
        };
        let cached = lock(&self.api_keys)
            .get(id)
            .filter(|c| c.at.elapsed() < STATE_TTL)
            .map(|c| c.value.clone());
        let record = match cached {
            Some(r) => r,
            None => {
                let r = accounts::api_key(&self.accounts, id).await?;
                let mut keys = lock(&self.api_keys);
                if keys.len() >= VERIFIED_CACHE {
                    keys.clear();
                }
                keys.insert(
                    id.to_owned(),
                    Cached {
                        value: r.clone(),
                        at: Instant::now(),
                    },
                );
                r
            }
        };
        let Some(record) = record else {
            return invalid();
        };
        if !accounts::api_key_matches(&self.secrets, &record, presented) {
            return invalid();
        }
        if record.key.revoked {
            return Ok(Identity::Invalid("the API key was revoked".into()));
        }
        let Some(user) = self.user(&record.key.user_id).await? else {
            return invalid();
        };
        if user.disabled {
            return Ok(Identity::Invalid("the account is disabled".into()));
        }
        Ok(Identity::Known(Principal {
            user_id: user.id,
            username: user.username,
            roles: user.roles,
            credential: Credential::ApiKey {
                id: record.key.id,
                scopes: record.key.scopes,
            },
        }))
    }
}
