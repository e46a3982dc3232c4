//! kv over HTTP/JSON and gRPC, through the built-in ingress.

use flotilla::proto::kv::{self as pb, kv_client::KvClient};
use serde_json::{Value, json};

use crate::support::{Node, NodeConfig, authed, grpc_channel};

#[tokio::test]
async fn kv_over_http() {
    let node = Node::start(NodeConfig::default());
    let admin = node.admin_token().await;
    let (_, token) = node.user_token(&admin, "ada").await;
    let c = authed(&token);
    let put = |key: &str, value: &str| {
        c.put(node.url(&format!("/api/kv/keys/{key}")))
            .json(&json!({ "value": value }))
            .send()
    };
    let r = put("users/ada", "1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"key": "users/ada", "version": 1})
    );
    let r = put("users/ada", "2").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 2);
    put("users/bob", "x").await.unwrap();
    put("other", "y").await.unwrap();

    let r = c
        .get(node.url("/api/kv/keys/users/ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"key": "users/ada", "value": "2", "version": 2})
    );

    let r = c
        .get(node.url("/api/kv/keys/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");

    // Listing by prefix, paged.
    let r: Value = c
        .get(node.url("/api/kv/keys?prefix=users/&limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["entries"].as_array().unwrap().len(), 1);
    assert_eq!(r["entries"][0]["key"], "users/ada");
    assert_eq!(r["next_start_after"], "users/ada");
    let r: Value = c
        .get(node.url("/api/kv/keys?prefix=users/&start_after=users/ada"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["entries"][0]["key"], "users/bob");
    assert_eq!(r["next_start_after"], Value::Null);

    // Compare-and-set: a stale version loses and sees the current entry.
    let cas = |key: &str, expected: u64, value: &str| {
        c.post(node.url("/api/kv/cas"))
            .json(&json!({"key": key, "expected_version": expected, "value": value}))
            .send()
    };
    let r = cas("users/ada", 1, "stale").await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["swapped"], false);
    assert_eq!(body["current"]["value"], "2");
    let r = cas("users/ada", 2, "fresh").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["current"]["version"], 3);
    let r = cas("new-key", 0, "created").await.unwrap();
    assert_eq!(r.status(), 200);
    let r = cas("new-key", 0, "again").await.unwrap();
    assert_eq!(r.status(), 409);

    let r = c
        .delete(node.url("/api/kv/keys/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"deleted": true}));
    let r = c
        .delete(node.url("/api/kv/keys/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"deleted": false}));

    // Bad input gets a clear error and changes nothing.
    let r = c
        .put(node.url("/api/kv/keys/users/ada"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .put(node.url("/api/kv/keys/users/ada"))
        .json(&json!({"value": "v", "unexpected": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let long = "k".repeat(1025);
    let r = put(&long, "v").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("at most 1024 bytes"));
    let r = c
        .get(node.url("/api/kv/keys/users/ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["value"], "fresh");
}

#[tokio::test]
async fn kv_over_grpc() {
    let node = Node::start(NodeConfig::default());
    let admin = node.admin_token().await;
    let (_, token) = node.user_token(&admin, "grace").await;
    let mut kv = KvClient::new(grpc_channel(&node, Some(format!("Bearer {token}"))).await);
    let v = kv
        .put(pb::PutRequest {
            key: "g/1".into(),
            value: "one".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, 1);
    let got = kv
        .get(pb::GetRequest {
            key: "g/1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entry.unwrap().value, "one");
    let err = kv
        .get(pb::GetRequest {
            key: "g/none".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = kv
        .get(pb::GetRequest {
            key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let swap = kv
        .compare_and_set(pb::CompareAndSetRequest {
            key: "g/1".into(),
            expected_version: 7,
            value: "no".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!swap.swapped);
    assert_eq!(swap.current.unwrap().version, 1);
    let swap = kv
        .compare_and_set(pb::CompareAndSetRequest {
            key: "g/1".into(),
            expected_version: 1,
            value: "two".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(swap.swapped);

    let list = kv
        .list(pb::ListRequest {
            prefix: "g/".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.entries[0].value, "two");
    let del = kv
        .delete(pb::DeleteRequest {
            key: "g/1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(del.deleted);

    // The same data through both front ends.
    kv.put(pb::PutRequest {
        key: "shared".into(),
        value: "from grpc".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let r: Value = authed(&token)
        .get(node.url("/api/kv/keys/shared"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["value"], "from grpc");
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let mut node = Node::start(NodeConfig::default());
    let token = node.admin_token().await;
    let c = authed(&token);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let c = c.clone();
        let url = node.url(&format!("/api/kv/keys/durable/{i}"));
        tasks.push(tokio::spawn(async move {
            c.put(url)
                .json(&json!({"value": format!("v{i}")}))
                .send()
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    node.kill9();
    node.spawn(&[]);
    // A new client: the old one's pooled connections died with the process.
    let r: Value = authed(&token)
        .get(node.url("/api/kv/keys?prefix=durable/&limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["entries"].as_array().unwrap().len(), 64);
}
