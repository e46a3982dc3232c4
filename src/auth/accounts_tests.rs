//! The accounts' read-then-write sequences against a real store: each is
//! one conditional write, so a concurrent change is never overwritten and a
//! spent or revoked credential never yields a live one.

use super::{
    accounts::{self, RefreshRefused},
    authz::ROLE_USER,
    now,
    test_support::Fixture,
};
use crate::store::Statement;

const TTL: i64 = 3600;

async fn login(f: &Fixture, user: &accounts::User) -> String {
    accounts::start_session(&f.auth.accounts, &f.auth.secrets, user, now(), TTL)
        .await
        .unwrap()
        .expect("an enabled account starts a session")
}

/// The refresh tokens of a family that are neither used, revoked nor
/// expired: those that would still rotate.
async fn live_tokens(f: &Fixture, family: &str) -> Vec<String> {
    let out = f
        .auth
        .accounts
        .read(Statement::new(
            "SELECT id FROM accounts__refresh_tokens
             WHERE family = ?1 AND used_at IS NULL AND revoked_at IS NULL",
            vec![family.into()],
        ))
        .await
        .unwrap();
    out.rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().and_then(|v| v.into_string()))
        .collect()
}

async fn family_of(f: &Fixture, token: &str) -> String {
    accounts::refresh_family(&f.auth.accounts, &f.auth.secrets, token)
        .await
        .unwrap()
        .expect("a genuine token")
        .0
}

#[tokio::test]
async fn a_refresh_token_rotates_once_and_its_successor_goes_on() {
    let f = Fixture::new().await;
    let ada = f.user("ada", &[ROLE_USER]).await;
    let first = login(&f, &ada).await;
    let family = family_of(&f, &first).await;
    let ns = &f.auth.accounts;
    let secrets = &f.auth.secrets;
    let second = accounts::rotate_refresh(ns, secrets, &first, now(), TTL)
        .await
        .unwrap()
        .expect("an unused token rotates");
    assert_eq!(
        (second.user_id.as_str(), second.family.as_str()),
        (ada.id.as_str(), family.as_str())
    );
    let third = accounts::rotate_refresh(ns, secrets, &second.token, now(), TTL)
        .await
        .unwrap()
        .expect("its successor rotates too");
    assert_eq!(live_tokens(&f, &family).await.len(), 1);
    // The first again: a reuse, and the whole family dies, the live one too.
    let again = accounts::rotate_refresh(ns, secrets, &first, now(), TTL)
        .await
        .unwrap();
    assert_eq!(again.unwrap_err(), RefreshRefused::Reused);
    assert!(live_tokens(&f, &family).await.is_empty());
    let after = accounts::rotate_refresh(ns, secrets, &third.token, now(), TTL)
        .await
        .unwrap();
    assert_eq!(after.unwrap_err(), RefreshRefused::Invalid);
}

/// Thief and owner race with one token: whatever the interleaving, at most
/// one presentation wins, and if any lost, no token of the family is left
/// alive (the winner's successor included).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_presentations_of_one_token_leave_no_live_token() {
    let f = Fixture::new().await;
    let ada = f.user("ada", &[ROLE_USER]).await;
    for round in 0..30 {
        let token = login(&f, &ada).await;
        let family = family_of(&f, &token).await;
        let racers = 2 + round % 4;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..racers {
            let (ns, secrets, token) = (
                f.auth.accounts.clone(),
                f.auth.secrets.clone(),
                token.clone(),
            );
            tasks.spawn(async move {
                accounts::rotate_refresh(&ns, &secrets, &token, now(), TTL)
                    .await
                    .unwrap()
            });
        }
        let results = tasks.join_all().await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert!(
            won <= 1,
            "round {round}: {won} presentations of one token won"
        );
        if results.iter().any(|r| r.is_err()) {
            assert_eq!(
                live_tokens(&f, &family).await,
                Vec::<String>::new(),
                "round {round}: a token of a reused family is alive"
            );
        }
    }
}

#[tokio::test]
async fn a_password_change_is_never_overwritten_by_a_stale_hash() {
    let f = Fixture::new().await;
    let ada = f.user("ada", &[ROLE_USER]).await;
    let ns = &f.auth.accounts;
    assert!(
        accounts::set_password_hash(ns, &ada.id, &ada.password_hash, "new", now(), true)
            .await
            .unwrap()
    );
    // A login's rehash over the old hash, landing after the change.
    assert!(
        !accounts::set_password_hash(
            ns,
            &ada.id,
            &ada.password_hash,
            "rehashed-old",
            now(),
            false
        )
        .await
        .unwrap()
    );
    let stored = accounts::user_by_id(ns, &ada.id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash, "new");
    assert_eq!(
        stored.token_generation,
        ada.token_generation + 1,
        "bumped once"
    );
}

#[tokio::test]
async fn a_session_does_not_start_for_an_account_changed_since_it_was_read() {
    let f = Fixture::new().await;
    let ada = f.user("ada", &[ROLE_USER]).await;
    let ns = &f.auth.accounts;
    let secrets = &f.auth.secrets;
    // Read at login, then the password changes (sessions ended).
    assert!(
        accounts::set_password_hash(ns, &ada.id, &ada.password_hash, "new", now(), true)
            .await
            .unwrap()
    );
    assert_eq!(
        accounts::start_session(ns, secrets, &ada, now(), TTL)
            .await
            .unwrap(),
        None
    );
    // Disabled after it was read.
    let bob = f.user("bob", &[ROLE_USER]).await;
    let token = login(&f, &bob).await;
    accounts::set_disabled(ns, &bob.id, true, now())
        .await
        .unwrap();
    assert_eq!(
        accounts::start_session(ns, secrets, &bob, now(), TTL)
            .await
            .unwrap(),
        None
    );
    let rotated = accounts::rotate_refresh(ns, secrets, &token, now(), TTL)
        .await
        .unwrap();
    assert_eq!(rotated.unwrap_err(), RefreshRefused::Invalid);
    let key = accounts::create_api_key(ns, secrets, &bob.id, "ci", &["kv.read".into()], now())
        .await
        .unwrap();
    assert!(key.is_none(), "no key for a disabled account");
}
