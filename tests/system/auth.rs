//! Authentication and authorization against the real binary: the attack
//! table (each row with the exact status it expects, over HTTP and gRPC) and
//! the happy paths.

use std::{net::IpAddr, time::Duration};

use base64::Engine;
use flotilla::{
    auth::keys::Secrets,
    proto::{
        accounts::{
            Credentials, ListUsersRequest, RefreshRequest, accounts_client::AccountsClient,
        },
        echo::{EchoRequest, echo_client::EchoClient},
        kv::{GetRequest, PutRequest, kv_client::KvClient},
    },
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::Code;

use crate::support::{
    ADMIN, ADMIN_PASSWORD, BINARY, Node, NodeConfig, SECRET, authed, grpc_channel, http, run_cli,
    user_password, wait_until_every,
};

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn now() -> i64 {
    flotilla::auth::now()
}

/// The node's current signing key, read from its SQLite file and unsealed
/// with the configured secret: what an attacker would need, to show that
/// only tokens with valid claims pass even when signed correctly.
fn signing_key(node: &Node) -> (String, EncodingKey, Vec<u8>) {
    let db = rusqlite::Connection::open_with_flags(
        node.dir.path().join("data").join("flotilla.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let (kid, public, sealed): (String, Vec<u8>, Vec<u8>) = db
        .query_row(
            "SELECT kid, public_key, sealed_private_key FROM auth__signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let private = Secrets::from_secret(SECRET).unseal(&kid, &sealed).unwrap();
    (kid, EncodingKey::from_ed_der(&private), public)
}

fn claims(sub: &str, iat: i64, nbf: i64, exp: i64) -> Value {
    json!({"iss": "flotilla", "sub": sub, "iat": iat, "nbf": nbf, "exp": exp, "jti": "t", "typ": "access"})
}

fn sign(kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let header = Header {
        kid: Some(kid.into()),
        ..Header::new(Algorithm::EdDSA)
    };
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// Sends the same protected call over HTTP (GET a kv key) and gRPC (kv
/// Get) with `authorization`, and returns both outcomes.
async fn call_both(node: &Node, authorization: Option<&str>) -> (u16, Code) {
    let mut req = http().get(node.url("/api/kv/keys/probe"));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let status = req.send().await.unwrap().status().as_u16();
    let mut kv = KvClient::new(grpc_channel(node, authorization.map(str::to_owned)).await);
    let code = match kv
        .get(GetRequest {
            key: "probe".into(),
            ..Default::default()
        })
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    (status, code)
}

#[tokio::test]
async fn attack_table() {
    let node = Node::start(NodeConfig::default());
    let admin = node.admin_token().await;
    let (alice_id, alice) = node.user_token(&admin, "alice").await;
    let (_bob_id, bob) = node.user_token(&admin, "bob").await;
    let (kid, key, public) = signing_key(&node);
    let t = now();

    // A valid token of alice's, forged variants of it, and other garbage.
    let valid = sign(&kid, &key, &claims(&alice_id, t, t, t + 600));
    let parts: Vec<&str> = valid.split('.').collect();
    let alg_none = format!(
        "{}.{}.",
        b64(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#).as_bytes()),
        parts[1]
    );
    let hmac_with_public_key = jsonwebtoken::encode(
        &Header {
            kid: Some(kid.clone()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(&alice_id, t, t, t + 600),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    let expired = sign(&kid, &key, &claims(&alice_id, t - 3600, t - 3600, t - 1800));
    let not_yet_valid = sign(&kid, &key, &claims(&alice_id, t, t + 1800, t + 3600));
    let stranger = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let stranger_der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&stranger).unwrap();
    let unknown_kid = sign(
        "0123456789abcdef",
        &EncodingKey::from_ed_der(stranger_der.as_bytes()),
        &claims(&alice_id, t, t, t + 600),
    );
    let admin_claims_payload = b64(serde_json::to_vec(&claims("someone-else", t, t, t + 600))
        .unwrap()
        .as_slice());
    let tampered = format!("{}.{}.{}", parts[0], admin_claims_payload, parts[2]);
    let wrong_issuer = {
        let mut c = claims(&alice_id, t, t, t + 600);
        c["iss"] = json!("not-flotilla");
        sign(&kid, &key, &c)
    };

    let bearer = |t: &str| format!("Bearer {t}");
    let rows: Vec<(&str, Option<String>, u16, Code)> = vec![
        ("no token", None, 401, Code::Unauthenticated),
        (
            "garbage",
            Some(bearer("not-a-token")),
            401,
            Code::Unauthenticated,
        ),
        (
            "unknown scheme",
            Some("Basic YWxpY2U6eA==".into()),
            401,
            Code::Unauthenticated,
        ),
        (
            "alg none",
            Some(bearer(&alg_none)),
            401,
            Code::Unauthenticated,
        ),
        (
            "HMAC signed with the public key",
            Some(bearer(&hmac_with_public_key)),
            401,
            Code::Unauthenticated,
        ),
        (
            "expired",
            Some(bearer(&expired)),
            401,
            Code::Unauthenticated,
        ),
        (
            "not yet valid",
            Some(bearer(&not_yet_valid)),
            401,
            Code::Unauthenticated,
        ),
        (
            "unknown key id",
            Some(bearer(&unknown_kid)),
            401,
            Code::Unauthenticated,
        ),
        (
            "tampered claims",
            Some(bearer(&tampered)),
            401,
            Code::Unauthenticated,
        ),
        (
            "wrong issuer",
            Some(bearer(&wrong_issuer)),
            401,
            Code::Unauthenticated,
        ),
        (
            "unknown API key",
            Some(format!("ApiKey flt_{}_x", "0".repeat(32))),
            401,
            Code::Unauthenticated,
        ),
        // Control rows: the same call with valid credentials passes auth
        // (404/NotFound: alice has no key `probe`).
        (
            "valid forged-format token",
            Some(bearer(&valid)),
            404,
            Code::NotFound,
        ),
        (
            "valid issued token",
            Some(bearer(&alice)),
            404,
            Code::NotFound,
        ),
    ];
    for (name, authorization, http_status, grpc_code) in &rows {
        let got = call_both(&node, authorization.as_deref()).await;
        assert_eq!(got, (*http_status, *grpc_code), "row `{name}`");
    }

    // A user reading or writing another user's kv entries: 403; the admin
    // override works; nobody sees another's keys by default.
    authed(&alice)
        .put(node.url("/api/kv/keys/diary"))
        .json(&json!({"value": "alice's"}))
        .send()
        .await
        .unwrap();
    let as_bob = authed(&bob);
    let owner = format!("?owner={alice_id}");
    let r = as_bob
        .get(node.url(&format!("/api/kv/keys/diary{owner}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = as_bob
        .put(node.url(&format!("/api/kv/keys/diary{owner}")))
        .json(&json!({"value": "bob was here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = as_bob
        .post(node.url("/api/kv/cas"))
        .json(&json!({"key": "diary", "expected_version": 1, "value": "x", "owner": alice_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = as_bob
        .get(node.url("/api/kv/keys/diary"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "bob's own namespace has no `diary`");
    let mut bob_kv = KvClient::new(grpc_channel(&node, Some(bearer(&bob))).await);
    let err = bob_kv
        .get(GetRequest {
            key: "diary".into(),
            owner: alice_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = bob_kv
        .put(PutRequest {
            key: "diary".into(),
            value: "x".into(),
            owner: alice_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let r: Value = authed(&admin)
        .get(node.url(&format!("/api/kv/keys/diary{owner}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["value"], "alice's", "admin override");

    // A user calling admin routes: 403 / PermissionDenied.
    let r = authed(&alice)
        .get(node.url("/api/accounts/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = authed(&alice)
        .post(node.url(&format!("/api/accounts/users/{alice_id}/disable")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let mut accounts = AccountsClient::new(grpc_channel(&node, Some(bearer(&alice))).await);
    let err = accounts.list_users(ListUsersRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A disabled user's token (and API key) stop working at once.
    let key: Value = authed(&alice)
        .post(node.url("/api/accounts/api-keys"))
        .json(&json!({"name": "ci", "scopes": ["kv.read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api_key = format!("ApiKey {}", key["key"].as_str().unwrap());
    assert_eq!(
        call_both(&node, Some(&api_key)).await,
        (404, Code::NotFound)
    );
    let r = authed(&admin)
        .post(node.url(&format!("/api/accounts/users/{alice_id}/disable")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        call_both(&node, Some(&bearer(&alice))).await,
        (401, Code::Unauthenticated)
    );
    assert_eq!(
        call_both(&node, Some(&bearer(&valid))).await,
        (401, Code::Unauthenticated)
    );
    assert_eq!(
        call_both(&node, Some(&api_key)).await,
        (401, Code::Unauthenticated)
    );
    // ... and a disabled user cannot log in, with the one login error.
    let r = http()
        .post(node.url("/api/accounts/login"))
        .json(&json!({"username": "alice", "password": user_password("alice")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "invalid username or password"
    );
}

#[tokio::test]
async fn api_keys_are_scoped_shown_once_and_revocable() {
    let node = Node::start(NodeConfig::default());
    let admin = node.admin_token().await;
    let (_, carol) = node.user_token(&admin, "carol").await;
    let as_carol = authed(&carol);
    // A user cannot mint a key with a permission they lack.
    let r = as_carol
        .post(node.url("/api/accounts/api-keys"))
        .json(&json!({"name": "x", "scopes": ["accounts.admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let created: Value = as_carol
        .post(node.url("/api/accounts/api-keys"))
        .json(&json!({"name": "reader", "scopes": ["kv.read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["api_key"]["id"].as_str().unwrap().to_owned();
    let api_key = format!("ApiKey {key}");
    // Listed without the secret.
    let listed = as_carol
        .get(node.url("/api/accounts/api-keys"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains(&id) && !listed.contains(&key), "{listed}");
    // Scoped: reads pass, writes are forbidden.
    assert_eq!(
        call_both(&node, Some(&api_key)).await,
        (404, Code::NotFound)
    );
    let r = http()
        .put(node.url("/api/kv/keys/k"))
        .header("authorization", &api_key)
        .json(&json!({"value": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Revoked: refused at once.
    let r = as_carol
        .delete(node.url(&format!("/api/accounts/api-keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        call_both(&node, Some(&api_key)).await,
        (401, Code::Unauthenticated)
    );
    // Another user cannot revoke it (it is not theirs).
    let (_, dave) = node.user_token(&admin, "dave").await;
    let r = authed(&dave)
        .delete(node.url(&format!("/api/accounts/api-keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let node = Node::start(NodeConfig::default());
    let admin = node.admin_token().await;
    node.user_token(&admin, "erin").await;
    let first = node.login("erin", &user_password("erin")).await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |token: String| {
        let url = node.url("/api/accounts/refresh");
        async move {
            http()
                .post(url)
                .json(&json!({ "refresh_token": token }))
                .send()
                .await
                .unwrap()
        }
    };
    let second = refresh(r1.clone()).await;
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    // The new access token works.
    let access = second["access_token"].as_str().unwrap();
    assert_eq!(
        call_both(&node, Some(&format!("Bearer {access}"))).await,
        (404, Code::NotFound)
    );
    // Reusing the old refresh token: 401, and the whole family is revoked,
    // including the token that replaced it.
    let reused = refresh(r1.clone()).await;
    assert_eq!(reused.status(), 401);
    assert!(reused.text().await.unwrap().contains("already used"));
    assert_eq!(refresh(r2.clone()).await.status(), 401);
    // Over gRPC too: a fresh session, reused.
    let third = node.login("erin", &user_password("erin")).await;
    let r3 = third["refresh_token"].as_str().unwrap().to_owned();
    let mut accounts = AccountsClient::new(grpc_channel(&node, None).await);
    let r4 = accounts
        .refresh(RefreshRequest {
            refresh_token: r3.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .refresh_token;
    let err = accounts
        .refresh(RefreshRequest {
            refresh_token: r3.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = accounts
        .refresh(RefreshRequest { refresh_token: r4 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Logout revokes.
    let fourth = node.login("erin", &user_password("erin")).await;
    let r5 = fourth["refresh_token"].as_str().unwrap().to_owned();
    let r = http()
        .post(node.url("/api/accounts/logout"))
        .json(&json!({ "refresh_token": r5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(refresh(r5).await.status(), 401);
}

/// Thief and owner race with one refresh token. Each trial logs in from its
/// own loopback address (logins are limited per address) and presents the
/// token 2-5 times at once: at most one presentation gets a new token, and
/// since the others were reuses, that new token is dead too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_of_one_token_never_leave_a_live_session() {
    let node = Node::start(NodeConfig::default());
    let admin = node.admin_token().await;
    node.user_token(&admin, "race").await;
    let url = node.url("/api/accounts/refresh");
    let mut won_total = 0;
    for trial in 0..16u8 {
        let client = reqwest::Client::builder()
            .local_address(IpAddr::from([127, 0, 0, 20 + trial]))
            .build()
            .unwrap();
        let login: Value = client
            .post(node.url("/api/accounts/login"))
            .json(&json!({"username": "race", "password": user_password("race")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["refresh_token"].as_str().unwrap().to_owned();
        let racers = 2 + usize::from(trial) % 4;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..racers {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            tasks.spawn(async move {
                let r = client
                    .post(url)
                    .json(&json!({ "refresh_token": token }))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            });
        }
        let answers = tasks.join_all().await;
        let winners: Vec<&Value> = answers
            .iter()
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
            .collect();
        assert!(winners.len() <= 1, "trial {trial}: {answers:?}");
        for (status, body) in &answers {
            assert!(
                *status == 200 || *status == 401,
                "trial {trial}: {status} {body}"
            );
        }
        won_total += winners.len();
        for winner in winners {
            let successor = winner["refresh_token"].as_str().unwrap();
            let r = client
                .post(&url)
                .json(&json!({ "refresh_token": successor }))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                401,
                "trial {trial}: the winner's token outlived the reuse of its predecessor"
            );
        }
    }
    // Mostly one presentation wins; the reuse kills its successor.
    assert!(won_total > 0, "no refresh ever succeeded");
}

#[tokio::test]
async fn brute_force_is_limited_per_address_without_locking_the_owner_out() {
    let node = Node::start(NodeConfig::default());
    let admin = node.admin_token().await;
    node.user_token(&admin, "frank").await;
    // The attacker sends from 127.0.0.2.
    let attacker_ip: IpAddr = "127.0.0.2".parse().unwrap();
    let attacker = reqwest::Client::builder()
        .local_address(attacker_ip)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..7 {
        let r = attacker
            .post(node.url("/api/accounts/login"))
            .json(&json!({"username": "frank", "password": format!("guess-{i}-xxxxxx")}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
        }
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 429, 429]);
    let retry_after: u64 = retry_after.expect("Retry-After on 429").parse().unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    // Even the right password is refused from the attacker's address now...
    let r = attacker
        .post(node.url("/api/accounts/login"))
        .json(&json!({"username": "frank", "password": user_password("frank")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // ... but frank, from his own address, logs in.
    node.login("frank", &user_password("frank")).await;
    // Over gRPC from the attacker's address: RESOURCE_EXHAUSTED with retry-after.
    let channel = tonic::transport::Endpoint::from_shared(node.url(""))
        .unwrap()
        .local_address(Some(attacker_ip))
        .connect()
        .await
        .unwrap();
    let err = AccountsClient::new(channel)
        .login(Credentials {
            username: "frank".into(),
            password: "guess-again-xxxx".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.metadata().get("retry-after").is_some());
}

#[tokio::test]
async fn one_error_for_every_failed_login() {
    let node = Node::start(NodeConfig::default());
    let admin = node.admin_token().await;
    node.user_token(&admin, "gina").await;
    let mut bodies = Vec::new();
    for (user, password) in [
        ("gina", "wrong-password-1"),
        ("nobody-here", "whatever-password"),
    ] {
        let r = http()
            .post(node.url("/api/accounts/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        bodies.push(r.text().await.unwrap());
    }
    assert_eq!(bodies[0], bodies[1]);
}

#[tokio::test]
async fn happy_paths_signup_login_refresh_kv_and_echo_over_http_and_grpc() {
    let node = Node::start(NodeConfig {
        auth: format!("{{secret: '{SECRET}', signup: true}}"),
        ..Default::default()
    });
    let r = http()
        .post(node.url("/api/accounts/signup"))
        .json(&json!({"username": "Hank", "password": "hank-password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["username"], "hank");
    assert_eq!(user["roles"], json!(["user"]));
    assert!(user.get("password_hash").is_none());
    // Taken.
    let r = http()
        .post(node.url("/api/accounts/signup"))
        .json(&json!({"username": "hank", "password": "another-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Weak password.
    let r = http()
        .post(node.url("/api/accounts/signup"))
        .json(&json!({"username": "ivy", "password": "short"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // gRPC: log in, call me, kv and the authenticated echo.
    let mut accounts = AccountsClient::new(grpc_channel(&node, None).await);
    let tokens = accounts
        .login(Credentials {
            username: "hank".into(),
            password: "hank-password-123".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tokens.token_type, "Bearer");
    let auth = Some(format!("Bearer {}", tokens.access_token));
    let me = AccountsClient::new(grpc_channel(&node, auth.clone()).await)
        .me(flotilla::proto::accounts::MeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.username, "hank");
    let mut kv = KvClient::new(grpc_channel(&node, auth.clone()).await);
    kv.put(PutRequest {
        key: "k".into(),
        value: "v".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let reply = EchoClient::new(grpc_channel(&node, auth.clone()).await)
        .echo_authenticated(EchoRequest {
            message: "hi".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.user, "hank");
    let err = EchoClient::new(grpc_channel(&node, None).await)
        .echo_authenticated(EchoRequest {
            message: "hi".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // HTTP: refresh, then read the entry written over gRPC, and echo.
    let refreshed: Value = http()
        .post(node.url("/api/accounts/refresh"))
        .json(&json!({"refresh_token": tokens.refresh_token}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c = authed(refreshed["access_token"].as_str().unwrap());
    let entry: Value = c
        .get(node.url("/api/kv/keys/k"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entry["value"], "v");
    let echo: Value = c
        .get(node.url("/api/echo/private?message=x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["user"], "hank");
    assert_eq!(
        http()
            .get(node.url("/api/echo/private"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Changing the password ends every session.
    let r = c
        .post(node.url("/api/accounts/me/password"))
        .json(&json!({"current_password": "hank-password-123", "new_password": "hank-new-password-456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get(node.url("/api/kv/keys/k"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    node.login("hank", "hank-new-password-456").await;
}

#[tokio::test]
async fn admins_manage_users_over_http_and_grpc() {
    let node = Node::start(NodeConfig::default());
    let admin = node.admin_token().await;
    let (judy_id, judy) = node.user_token(&admin, "judy").await;
    let users: Value = authed(&admin)
        .get(node.url("/api/accounts/users"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["admin", "judy"]);
    // Unknown roles are refused; granting admin takes effect on judy's
    // existing token.
    let r = authed(&admin)
        .put(node.url(&format!("/api/accounts/users/{judy_id}/roles")))
        .json(&json!({"roles": ["superuser"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        authed(&judy)
            .get(node.url("/api/accounts/users"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let r = authed(&admin)
        .put(node.url(&format!("/api/accounts/users/{judy_id}/roles")))
        .json(&json!({"roles": ["user", "admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        authed(&judy)
            .get(node.url("/api/accounts/users"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Over gRPC: create a user, disable and re-enable it.
    let mut accounts =
        AccountsClient::new(grpc_channel(&node, Some(format!("Bearer {admin}"))).await);
    let kim = accounts
        .create_user(flotilla::proto::accounts::CreateUserRequest {
            username: "kim".into(),
            password: "kim-password-123".into(),
            roles: vec!["user".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let disabled = accounts
        .set_disabled(flotilla::proto::accounts::SetDisabledRequest {
            id: kim.id.clone(),
            disabled: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(disabled.disabled);
    let r = http()
        .post(node.url("/api/accounts/login"))
        .json(&json!({"username": "kim", "password": "kim-password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    accounts
        .set_disabled(flotilla::proto::accounts::SetDisabledRequest {
            id: kim.id,
            disabled: false,
        })
        .await
        .unwrap();
    node.login("kim", "kim-password-123").await;
    let listed = accounts
        .list_users(ListUsersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.users.len(), 3);
}

#[tokio::test]
async fn signup_is_off_by_default() {
    let node = Node::start(NodeConfig::default());
    let r = http()
        .post(node.url("/api/accounts/signup"))
        .json(&json!({"username": "mallory", "password": "mallory-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("sign-up is disabled"));
}

#[tokio::test]
async fn rotating_keys_while_tokens_are_in_flight_fails_nothing() {
    let node = Node::start(NodeConfig::default());
    let old_token = node.admin_token().await;
    let old_kid = flotilla::auth::tokens::key_id(&old_token).unwrap();
    let url = node.url("/api/echo/private?message=r");
    let load = {
        let token = old_token.clone();
        tokio::spawn(async move {
            let c = authed(&token);
            let mut failures = 0;
            for _ in 0..600 {
                if c.get(&url)
                    .send()
                    .await
                    .map(|r| r.status() != 200)
                    .unwrap_or(true)
                {
                    failures += 1;
                }
            }
            failures
        })
    };
    let config = node.config_path.to_str().unwrap().to_owned();
    for _ in 0..2 {
        let (code, out, err) = run_cli(
            std::path::Path::new(BINARY),
            &["auth", "rotate-keys", "--config", &config],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("new signing key"), "{out}");
    }
    // New logins are signed with the new key (the node reloads it within
    // seconds); the old token keeps working meanwhile.
    // Logins are rate limited (20 a minute per address): look gently.
    let token = wait_until_every(
        "the node signs with the rotated key",
        Duration::from_secs(11),
        Duration::from_millis(700),
        || async {
            let token = node.login(ADMIN, ADMIN_PASSWORD).await["access_token"]
                .as_str()
                .unwrap()
                .to_owned();
            let kid = flotilla::auth::tokens::key_id(&token).unwrap();
            if kid != old_kid { Ok(token) } else { Err(kid) }
        },
    )
    .await;
    let r = authed(&token)
        .get(node.url("/api/echo/private"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(load.await.unwrap(), 0, "requests failed during rotation");
    let r = authed(&old_token)
        .get(node.url("/api/echo/private"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a token of the retired key is valid until it expires"
    );
}

#[tokio::test]
async fn changed_hash_parameters_rehash_on_login() {
    let mut node = Node::start(NodeConfig::default());
    node.create_admin();
    let hash = |node: &Node| -> String {
        let db =
            rusqlite::Connection::open(node.dir.path().join("data").join("flotilla.db")).unwrap();
        db.query_row(
            "SELECT password_hash FROM accounts__users WHERE username = 'admin'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(hash(&node).contains("m=19456,t=2,p=1"), "{}", hash(&node));
    node.signal("TERM");
    node.wait_exit(Duration::from_secs(10));
    let config = std::fs::read_to_string(&node.config_path).unwrap();
    let config = config.replace(
        &format!("auth: {{secret: '{SECRET}'}}"),
        &format!("auth: {{secret: '{SECRET}', password_hash: {{memory_kib: 19456, iterations: 3, parallelism: 1}}}}"),
    );
    std::fs::write(&node.config_path, config).unwrap();
    node.spawn(&[]);
    node.login(ADMIN, ADMIN_PASSWORD).await;
    assert!(hash(&node).contains("m=19456,t=3,p=1"), "{}", hash(&node));
    node.login(ADMIN, ADMIN_PASSWORD).await;
}

#[tokio::test]
async fn create_admin_with_nothing_on_standard_input_says_no_password_was_read() {
    let node = Node::start(NodeConfig::default());
    let (code, _, err) = node.run_create_admin("");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("no password read from standard input"),
        "{err}"
    );
}

/// create-admin with a member's config while no member runs (the
/// committed HA configs, never started here) says the cluster is down,
/// names the members and how to start them, instead of retrying one.
#[test]
fn create_admin_against_a_stopped_cluster_says_it_is_down() {
    let (code, out, err) = crate::support::run_cli_with_input(
        std::path::Path::new(BINARY),
        &[
            "accounts",
            "create-admin",
            "--config",
            "config/ha/node1.yaml",
            "--username",
            ADMIN,
        ],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert_eq!(code, 1, "{out}\n{err}");
    for expected in [
        "the cluster is down",
        "ha-1 (127.0.0.1:7071)",
        "ha-2",
        "ha-3",
        "examples/cluster.sh ha start",
    ] {
        assert!(err.contains(expected), "{expected} in:\n{err}");
    }
}
