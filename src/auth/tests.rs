//! `Auth::authenticate` against a real store: what each kind of credential
//! resolves to, and that a change to the account takes effect.

use super::{
    accounts,
    authz::{Credential, Identity, ROLE_USER},
    now,
    test_support::{Fixture, authorization},
};

fn invalid(identity: Identity) -> String {
    match identity {
        Identity::Invalid(reason) => reason,
        other => panic!("expected the credential to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn no_credential_is_anonymous_and_an_unknown_scheme_is_refused() {
    let f = Fixture::new().await;
    let identity = f.auth.authenticate(&http::HeaderMap::new()).await.unwrap();
    assert!(matches!(identity, Identity::Anonymous), "{identity:?}");
    let reason = invalid(
        f.auth
            .authenticate(&authorization("Basic abc"))
            .await
            .unwrap(),
    );
    assert!(reason.contains("use Bearer or ApiKey"), "{reason}");
    let reason = invalid(
        f.auth
            .authenticate(&authorization("Bearer not.a.token"))
            .await
            .unwrap(),
    );
    assert!(!reason.is_empty());
}

#[tokio::test]
async fn an_access_token_names_its_user_until_the_sessions_are_revoked() {
    let f = Fixture::new().await;
    let ada = f.user("ada", &[ROLE_USER]).await;
    let headers = f.bearer(&ada);
    let Identity::Known(principal) = f.auth.authenticate(&headers).await.unwrap() else {
        panic!("the token is valid");
    };
    assert_eq!(principal.username, "ada");
    assert_eq!(principal.roles, vec![ROLE_USER.to_owned()]);
    assert_eq!(principal.credential, Credential::AccessToken);
    // A password change that ends the sessions: the same token is refused,
    // even though its signature still checks and it is cached as verified.
    let replaced = accounts::set_password_hash(
        &f.auth.accounts,
        &ada.id,
        &ada.password_hash,
        "other",
        now(),
        true,
    )
    .await
    .unwrap();
    assert!(replaced);
    f.auth.invalidate_user(&ada.id);
    let reason = invalid(f.auth.authenticate(&headers).await.unwrap());
    assert!(reason.contains("revoked"), "{reason}");
}

#[tokio::test]
async fn a_disabled_account_is_refused_whatever_its_credential() {
    let f = Fixture::new().await;
    let bob = f.user("bob", &[ROLE_USER]).await;
    let (_, key) = accounts::create_api_key(
        &f.auth.accounts,
        &f.auth.secrets,
        &bob.id,
        "ci",
        &["kv.read".to_owned()],
        now(),
    )
    .await
    .unwrap()
    .unwrap();
    let by_key = authorization(&format!("ApiKey {key}"));
    let by_token = f.bearer(&bob);
    assert!(matches!(
        f.auth.authenticate(&by_key).await.unwrap(),
        Identity::Known(_)
    ));
    accounts::set_disabled(&f.auth.accounts, &bob.id, true, now())
        .await
        .unwrap();
    f.auth.invalidate_user(&bob.id);
    for headers in [by_key, by_token] {
        let reason = invalid(f.auth.authenticate(&headers).await.unwrap());
        assert!(
            reason.contains("disabled") || reason.contains("revoked"),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn an_api_key_carries_its_scopes_and_a_wrong_or_revoked_key_is_refused() {
    let f = Fixture::new().await;
    let cy = f.user("cy", &[ROLE_USER]).await;
    let (record, key) = accounts::create_api_key(
        &f.auth.accounts,
        &f.auth.secrets,
        &cy.id,
        "reader",
        &["kv.read".to_owned()],
        now(),
    )
    .await
    .unwrap()
    .unwrap();
    let Identity::Known(principal) = f
        .auth
        .authenticate(&authorization(&format!("ApiKey {key}")))
        .await
        .unwrap()
    else {
        panic!("the key is valid");
    };
    assert!(principal.has("kv.read"));
    assert!(!principal.has("kv.write"), "outside the key's scopes");
    // Right id, wrong secret.
    let (prefix, _) = key.rsplit_once('_').unwrap();
    let forged = format!("ApiKey {prefix}_wrongsecret");
    invalid(f.auth.authenticate(&authorization(&forged)).await.unwrap());
    accounts::revoke_api_key(&f.auth.accounts, &cy.id, &record.id, now())
        .await
        .unwrap();
    f.auth.invalidate_api_key(&record.id);
    let reason = invalid(
        f.auth
            .authenticate(&authorization(&format!("ApiKey {key}")))
            .await
            .unwrap(),
    );
    assert!(reason.contains("revoked"), "{reason}");
}
