//! A key's life after creation, over HTTP: updates and the enabled flag, rotation with a grace
//! period, per-key rate limits and quotas, expiry warnings and the audit log. The flow runs on every
//! backend; the concurrency cases on the memory backend and a SQLite file (the conformance suite and
//! the harness's two-instance test take them to PostgreSQL and Redis).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use actix_web::web;
use chrono::{Duration, Utc};
use futures_util::future::join_all;
use serde_json::{Value, json};

use common::{Harness, KEYS, call, create, harness_with, memory_harness, with_key};
use {{crate_name}}::app::app;
use {{crate_name}}::auth::ApiKey;
use {{crate_name}}::model::{NewKey, RateLimit};
use {{crate_name}}::store::{Backend, MemoryBackend};

const CLIENT: &str = "203.0.113.7:40000";

async fn get<S, B>(app: &S, key: &str, uri: &str) -> (StatusCode, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, _, body) = call(app, with_key(TestRequest::get().uri(uri), key)).await;
    (status, body)
}

async fn patch<S, B>(app: &S, key: &str, id: &str, body: Value) -> (StatusCode, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let req = TestRequest::patch()
        .uri(&format!("{KEYS}/{id}"))
        .peer_addr(CLIENT.parse::<SocketAddr>().unwrap())
        .set_json(body);
    let (status, _, body) = call(app, with_key(req, key)).await;
    (status, body)
}

async fn rotate<S, B>(app: &S, key: &str, id: &str, body: Value) -> (StatusCode, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let req = TestRequest::post().uri(&format!("{KEYS}/{id}/rotate")).set_json(body);
    let (status, _, body) = call(app, with_key(req, key)).await;
    (status, body)
}

fn actions(events: &Value) -> Vec<&str> {
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["action"].as_str().unwrap())
        .collect()
}

/// Update, disable, rotate, read the audit trail: what an operator does over a key's life.
async fn lifecycle_flow(store: Arc<dyn Backend>) {
    let h = harness_with(store, &[]).await;
    let admin_id = h.admin[3..15].to_owned();
    let owner = format!("team-{admin_id}");
    let (status, created) = create(
        &h.app,
        &h.admin,
        json!({"name": "billing", "scopes": ["users:read"], "owner_id": owner, "expires_in": 3 * 86_400}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();

    // Expiry warnings: the key expires in three days, so it is listed within seven, not within one.
    let (_, details) = get(&h.app, &h.admin, &format!("{KEYS}/{id}")).await;
    let left = details["expires_in_seconds"].as_i64().unwrap();
    assert!((3 * 86_400 - 60..=3 * 86_400).contains(&left), "{left}");
    let expiring = |days| format!("{KEYS}?owner_id={owner}&expiring_within_days={days}");
    assert_eq!(get(&h.app, &h.admin, &expiring(7)).await.1["total"], 1);
    assert_eq!(get(&h.app, &h.admin, &expiring(1)).await.1["total"], 0);

    // Update: rename and disable; the key is refused with its own code, then works again.
    let (status, updated) =
        patch(&h.app, &h.admin, &id, json!({"name": "billing v2", "enabled": false})).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        (&updated["name"], &updated["enabled"], &updated["status"]),
        (&json!("billing v2"), &json!(false), &json!("disabled"))
    );
    assert_eq!(updated["scopes"], json!(["users:read"]), "untouched fields stay");
    let (status, problem) = get(&h.app, &key, "/protected").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("disabled_api_key"))
    );
    let (status, _) = patch(&h.app, &h.admin, &id, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(get(&h.app, &key, "/protected").await.0, StatusCode::OK);

    // Rotation: a new key with the same description; both work during the grace period.
    let (status, rotated) = rotate(&h.app, &h.admin, &id, json!({"grace_period": 2})).await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    assert_eq!(rotated["rotated_from"], id.as_str());
    for field in ["name", "owner_id", "scopes", "expires_at"] {
        assert_eq!(rotated[field], updated[field], "{field} is carried over");
    }
    let (_, old) = get(&h.app, &h.admin, &format!("{KEYS}/{id}")).await;
    assert_eq!(old["replaced_by"], new_id.as_str());
    assert!(old["retires_at"].is_string());
    assert_eq!(get(&h.app, &key, "/protected").await.0, StatusCode::OK);
    assert_eq!(get(&h.app, &new_key, "/protected").await.0, StatusCode::OK);
    let (status, again) = rotate(&h.app, &h.admin, &id, json!({})).await;
    assert_eq!((status, again["code"].as_str()), (StatusCode::CONFLICT, Some("already_rotated")));

    // After the grace period the old key fails with its own code; the new one carries on.
    tokio::time::sleep(StdDuration::from_millis(2100)).await;
    let (status, problem) = get(&h.app, &key, "/protected").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("rotated_api_key"))
    );
    assert_eq!(get(&h.app, &new_key, "/protected").await.0, StatusCode::OK);
    let (_, old) = get(&h.app, &h.admin, &format!("{KEYS}/{id}")).await;
    assert_eq!(old["status"], "rotated");

    // The audit trail: every change, newest first, by whom and from where; never a key.
    let (status, events) = get(&h.app, &h.admin, &format!("{KEYS}/{id}/events")).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    assert_eq!(actions(&events), ["rotated", "updated", "updated", "created"]);
    assert_eq!(events["total"], 4);
    let update = &events["items"][2];
    assert_eq!(update["actor_key_id"], admin_id.as_str());
    assert_eq!(update["client"], "203.0.113.7");
    assert_eq!(update["changes"], json!({"name": "billing v2", "enabled": false}));
    assert_eq!(events["items"][0]["changes"]["replaced_by"], new_id.as_str());
    let (_, new_events) = get(&h.app, &h.admin, &format!("{KEYS}/{new_id}/events")).await;
    assert_eq!(actions(&new_events), ["created"]);
    assert_eq!(new_events["items"][0]["changes"]["rotated_from"], id.as_str());
    let (_, page) = get(&h.app, &h.admin, &format!("{KEYS}/events?limit=2")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(page["total"].as_u64().unwrap() >= 5, "{page}");
    for text in [events.to_string(), new_events.to_string(), page.to_string()] {
        assert!(!text.contains(&key[3..]) && !text.contains(&new_key[3..]));
    }
}

#[actix_web::test]
async fn lifecycle_on_memory() {
    lifecycle_flow(Arc::new(MemoryBackend::default())).await;
}

#[cfg(feature = "sqlite")]
#[actix_web::test]
async fn lifecycle_on_sqlite() {
    let (_dir, store) = common::sqlite_store().await;
    lifecycle_flow(store).await;
}

#[cfg(feature = "postgres")]
#[actix_web::test]
async fn lifecycle_on_postgres() {
    if let Some(store) = common::postgres_store("lifecycle_on_postgres").await {
        lifecycle_flow(store).await;
    }
}

#[cfg(feature = "redis")]
#[actix_web::test]
async fn lifecycle_on_redis() {
    if let Some(store) = common::redis_store("lifecycle_on_redis") {
        lifecycle_flow(store).await;
    }
}

/// A key allowed `requests` per `window` seconds, minted as the operator.
async fn rate_limited<S>(h: &Harness<S>, requests: u32, window: u32) -> String {
    let limit = Some(RateLimit { requests, window });
    let new = NewKey { name: "limited".into(), rate_limit: limit, ..NewKey::default() };
    h.mint(new).await.key.to_string()
}

#[actix_web::test]
async fn a_rate_limit_answers_429_with_its_headers() {
    let h = memory_harness().await;
    let key = rate_limited(&h, 5, 60).await;
    let header = |headers: &actix_web::http::header::HeaderMap, name: &str| {
        headers.get(name).map(|value| value.to_str().unwrap().to_owned())
    };
    for left in (0..5).rev() {
        let (status, headers, _) =
            call(&h.app, with_key(TestRequest::get().uri("/protected"), &key)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&headers, "ratelimit-policy").as_deref(), Some(r#""key";q=5;w=60"#));
        let standing = header(&headers, "ratelimit").unwrap();
        assert!(standing.starts_with(&format!(r#""key";r={left};t="#)), "{standing}");
    }
    // Open routes do not charge the key, nor report its limit.
    let (status, headers, _) =
        call(&h.app, with_key(TestRequest::get().uri("/health"), &key)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(header(&headers, "ratelimit").is_none());
    assert!(header(&headers, "ratelimit-policy").is_none());

    let (status, headers, problem) =
        call(&h.app, with_key(TestRequest::get().uri("/protected"), &key)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem["code"], "rate_limit_exceeded");
    assert_eq!(header(&headers, "ratelimit").as_deref(), Some(r#""key";r=0;t=60"#));
    let retry: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((11..=12).contains(&retry), "one request every 12 s: {retry}");
    let metrics = {{crate_name}}::metrics::metrics().render();
    assert!(
        metrics.contains(r#"key_limit_refusals_total{code="rate_limit_exceeded"}"#),
        "{metrics}"
    );
    // Another key is not affected.
    let (status, _, _) =
        call(&h.app, with_key(TestRequest::get().uri("/protected"), &h.admin)).await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn a_used_up_quota_still_reports_the_rate_limit() {
    let h = memory_harness().await;
    let key = h
        .mint(NewKey {
            name: "metered and limited".into(),
            rate_limit: Some(RateLimit { requests: 5, window: 60 }),
            remaining: Some(1),
            ..NewKey::default()
        })
        .await
        .key
        .to_string();
    let (status, _, _) = call(&h.app, with_key(TestRequest::get().uri("/protected"), &key)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, problem) =
        call(&h.app, with_key(TestRequest::get().uri("/protected"), &key)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem["code"], "usage_exceeded");
    let standing = headers.get("ratelimit").map(|v| v.to_str().unwrap());
    assert!(
        standing.is_some_and(|s| s.starts_with(r#""key";r=3;"#)),
        "the refused request was counted too: {standing:?}"
    );
}

/// A handler whose guard comes after an argument that can refuse the request.
async fn numbered(_: web::Path<u32>, key: ApiKey) -> String {
    key.id().to_owned()
}

#[actix_web::test]
async fn a_request_refused_before_its_guard_costs_the_key_nothing() {
    let h = memory_harness().await;
    // actix makes every argument's extractor before running the first: the guard's must not charge.
    let numbered = app(h.state.clone()).route("/numbered/{n}", web::get().to(numbered));
    let numbered = test::init_service(numbered).await;
    let key = rate_limited(&h, 2, 60).await;
    let mut statuses = Vec::new();
    for n in ["x", "y", "z", "1", "2", "3"] {
        let request = TestRequest::get().uri(&format!("/numbered/{n}"));
        statuses.push(call(&numbered, with_key(request, &key)).await.0.as_u16());
    }
    assert_eq!(statuses, [400, 400, 400, 200, 200, 429], "only the admitted requests count");
}

/// `requests` parallel calls of `uri` with `key`; how many got each status.
async fn in_parallel<S, B>(app: &S, key: &str, uri: &str, requests: usize) -> Vec<StatusCode>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let calls = (0..requests).map(|_| call(app, with_key(TestRequest::get().uri(uri), key)));
    join_all(calls).await.into_iter().map(|(status, _, _)| status).collect()
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[actix_web::test]
async fn a_rate_limit_holds_under_parallel_requests() {
    let h = memory_harness().await;
    let key = rate_limited(&h, 10, 3600).await;
    let statuses = in_parallel(&h.app, &key, "/protected", 40).await;
    assert_eq!(count(&statuses, StatusCode::OK), 10, "{statuses:?}");
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 30);
}

/// A quota of 20 against 60 parallel requests to a route with two guards (`/api/data` takes the
/// key twice): exactly 20 pass, each charged once, and the count ends at zero.
async fn quota_is_never_overspent(store: Arc<dyn Backend>) {
    let h = harness_with(store, &[]).await;
    let (status, created) =
        create(&h.app, &h.admin, json!({"name": "metered", "remaining": 20})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    let statuses = in_parallel(&h.app, key, "/api/data", 60).await;
    assert_eq!(count(&statuses, StatusCode::OK), 20, "{statuses:?}");
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 40);
    let (_, details) = get(&h.app, &h.admin, &format!("{KEYS}/{id}")).await;
    assert_eq!(details["remaining"], 0);
    let (status, problem) = get(&h.app, key, "/protected").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("usage_exceeded"))
    );

    // Topping the quota up lets the key in again.
    let (status, _) = patch(&h.app, &h.admin, id, json!({"remaining": 1})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(get(&h.app, key, "/protected").await.0, StatusCode::OK);
    assert_eq!(get(&h.app, key, "/protected").await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[actix_web::test]
async fn quota_on_memory() {
    quota_is_never_overspent(Arc::new(MemoryBackend::default())).await;
}

#[cfg(feature = "sqlite")]
#[actix_web::test]
async fn quota_on_sqlite() {
    let (_dir, store) = common::sqlite_store().await;
    quota_is_never_overspent(store).await;
}

#[actix_web::test]
async fn a_rotated_key_in_its_grace_period_shares_the_new_keys_quota() {
    let h = memory_harness().await;
    let (_, created) = create(&h.app, &h.admin, json!({"name": "metered", "remaining": 4})).await;
    let old = created["key"].as_str().unwrap();
    let (status, rotated) =
        rotate(&h.app, &h.admin, created["id"].as_str().unwrap(), json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(rotated["remaining"], 4, "the quota moves to the new key");
    let new = rotated["key"].as_str().unwrap();
    let mut statuses = in_parallel(&h.app, old, "/protected", 3).await;
    statuses.extend(in_parallel(&h.app, new, "/protected", 3).await);
    assert_eq!(count(&statuses, StatusCode::OK), 4, "old and new together: {statuses:?}");
}

#[actix_web::test]
async fn a_key_rotated_twice_in_its_grace_period_charges_the_newest() {
    let h = memory_harness().await;
    let (_, first) = create(&h.app, &h.admin, json!({"name": "metered", "remaining": 4})).await;
    let (_, second) = rotate(&h.app, &h.admin, first["id"].as_str().unwrap(), json!({})).await;
    let (status, third) = rotate(&h.app, &h.admin, second["id"].as_str().unwrap(), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{third}");
    let mut statuses = Vec::new();
    for key in [&first, &second, &third] {
        statuses.extend(in_parallel(&h.app, key["key"].as_str().unwrap(), "/protected", 2).await);
    }
    assert_eq!(count(&statuses, StatusCode::OK), 4, "three keys, one quota: {statuses:?}");
    let (_, newest) =
        get(&h.app, &h.admin, &format!("{KEYS}/{}", third["id"].as_str().unwrap())).await;
    assert_eq!(newest["remaining"], 0);
}

#[actix_web::test]
async fn rotation_while_requests_use_the_old_key() {
    let h = memory_harness().await;
    let (_, created) = create(&h.app, &h.admin, json!({"name": "busy"})).await;
    let old = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    // Requests keep coming with the old key while it is rotated: none of them fails.
    let load = async {
        let mut statuses = Vec::new();
        for _ in 0..200 {
            statuses.push(get(&h.app, old, "/protected").await.0);
            tokio::task::yield_now().await;
        }
        statuses
    };
    let rotation = async {
        tokio::task::yield_now().await;
        rotate(&h.app, &h.admin, id, json!({"grace_period": 60})).await
    };
    let (statuses, (status, rotated)) = tokio::join!(load, rotation);
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    assert_eq!(count(&statuses, StatusCode::OK), 200, "{statuses:?}");
    let new = rotated["key"].as_str().unwrap();
    assert_eq!(get(&h.app, new, "/protected").await.0, StatusCode::OK);
}

#[actix_web::test]
async fn managers_cannot_escalate_through_updates_or_rotation() {
    let h = memory_harness().await;
    let mint = |name: &str, scopes: &[&str], owner: &str, days| {
        h.mint(NewKey {
            name: name.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            owner_id: Some(owner.into()),
            expires_at: Some(Utc::now() + Duration::days(days)),
            ..NewKey::default()
        })
    };
    let manager =
        mint("manager", &["api_keys:manage", "reports:read"], "team-a", 30).await.key.to_string();
    let target = mint("target", &["reports:read"], "team-a", 10).await.record.id;
    let refused = [
        (json!({"scopes": ["reports:read", "billing:write"]}), "scope_escalation"),
        (json!({"expires_at": null}), "expiry_escalation"),
        (
            json!({"expires_at": (Utc::now() + Duration::days(90)).to_rfc3339()}),
            "expiry_escalation",
        ),
    ];
    for (body, code) in refused {
        let (status, problem) = patch(&h.app, &manager, &target, body.clone()).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::FORBIDDEN, Some(code)),
            "{body}"
        );
    }
    let (status, problem) =
        rotate(&h.app, &manager, &target, json!({"expires_in": 90 * 86_400})).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("expiry_escalation"))
    );
    // Nothing was stored: the target is as minted, with its creation as its only event.
    let (_, details) = get(&h.app, &h.admin, &format!("{KEYS}/{target}")).await;
    assert_eq!(details["scopes"], json!(["reports:read"]));
    assert!(details["replaced_by"].is_null());
    let (_, events) = get(&h.app, &h.admin, &format!("{KEYS}/{target}/events")).await;
    assert_eq!(actions(&events), ["created"]);
    // Within its own grants, the manager can change the key.
    let (status, updated) =
        patch(&h.app, &manager, &target, json!({"name": "renamed", "enabled": false})).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
}

#[actix_web::test]
async fn bad_updates_and_rotations_store_nothing() {
    let h = memory_harness().await;
    let (_, created) = create(&h.app, &h.admin, json!({"name": "target"})).await;
    let id = created["id"].as_str().unwrap();
    let updates = [
        (json!({"colour": "red"}), StatusCode::BAD_REQUEST),
        (json!({"name": ""}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"scopes": ["Not A Scope"]}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"rate_limit": {"requests": 0, "window": 60}}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"rate_limit": {"requests": 5, "window": 0}}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"rate_limit": {"requests": 5}}), StatusCode::BAD_REQUEST),
        (json!({"remaining": -1}), StatusCode::BAD_REQUEST),
        (json!({"refill": {"interval": "hourly", "amount": 5}}), StatusCode::BAD_REQUEST),
        (json!({"refill": {"interval": "daily", "amount": 0}}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"refill": {"interval": "daily", "amount": 5}, "remaining": null}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"enabled": "no"}), StatusCode::BAD_REQUEST),
    ];
    for (body, expected) in updates {
        let (status, problem) = patch(&h.app, &h.admin, id, body.clone()).await;
        assert_eq!(status, expected, "{body}: {problem}");
    }
    let rotations = [
        (json!({"grace_period": 2_592_001}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"grace_period": -1}), StatusCode::BAD_REQUEST),
        (
            json!({"expires_in": 60, "expires_at": "2100-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (body, expected) in rotations {
        let (status, problem) = rotate(&h.app, &h.admin, id, body.clone()).await;
        assert_eq!(status, expected, "{body}: {problem}");
    }
    let (status, problem) = rotate(&h.app, &h.admin, "no-such-key", json!({})).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("api_key_not_found"))
    );

    let (_, details) = get(&h.app, &h.admin, &format!("{KEYS}/{id}")).await;
    assert_eq!(details["name"], "target");
    assert!(details["rate_limit"].is_null() && details["remaining"].is_null());
    let (_, events) = get(&h.app, &h.admin, &format!("{KEYS}/{id}/events")).await;
    assert_eq!(actions(&events), ["created"], "no event for a refused change");
    let (_, all) = get(&h.app, &h.admin, KEYS).await;
    assert_eq!(all["total"], 2, "the admin and the target: no rotated key was stored");

    // A revoked key cannot be rotated.
    let revoke = with_key(TestRequest::delete().uri(&format!("{KEYS}/{id}")), &h.admin);
    assert_eq!(call(&h.app, revoke).await.0, StatusCode::NO_CONTENT);
    let (status, problem) = rotate(&h.app, &h.admin, id, json!({})).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::CONFLICT, Some("key_revoked")));
}
