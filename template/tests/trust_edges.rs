//! The edges of trust: what a self-service manager key may not loosen, which client address counts
//! behind proxies, what a stale key costs its address, what a tenant learns from the audit log, and
//! numbers too large for anything.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use chrono::{Duration, Utc};
use serde_json::{Value, json};

use common::{KEYS, call, harness_with, memory_harness, with_key};
use {{crate_name}}::keys::{Manager, Rotation};
use {{crate_name}}::model::{NewKey, RateLimit, Refill, RefillInterval};
use {{crate_name}}::store::MemoryBackend;

fn team_a(name: &str, scopes: &[&str]) -> NewKey {
    NewKey {
        name: name.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        owner_id: Some("team-a".into()),
        expires_at: Some(Utc::now() + Duration::days(30)),
        ..NewKey::default()
    }
}

fn limited(new: NewKey) -> NewKey {
    NewKey { rate_limit: Some(RateLimit { requests: 10, window: 60 }), remaining: Some(100), ..new }
}

fn patch(id: &str, key: &str, body: Value) -> TestRequest {
    with_key(TestRequest::patch().uri(&format!("{KEYS}/{id}")), key).set_json(body)
}

#[actix_web::test]
async fn a_manager_cannot_raise_or_remove_a_limit_an_admin_set() {
    let h = memory_harness().await;
    let manager = h.mint(team_a("manager", &["api_keys:manage", "users:read"])).await;
    let manager = manager.key.as_str();
    let target = h.mint(limited(team_a("metered", &["users:read"]))).await;
    let id = target.record.id.as_str();

    for body in [
        json!({"rate_limit": null}),
        json!({"rate_limit": {"requests": 20, "window": 60}}),
        json!({"rate_limit": {"requests": 10, "window": 30}}),
        json!({"remaining": null}),
        json!({"remaining": 101}),
        json!({"refill": {"interval": "daily", "amount": 200}}),
        json!({"rate_limit": null, "remaining": null, "enabled": true}),
    ] {
        let (status, _, problem) = call(&h.app, patch(id, manager, body.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {problem}");
        assert_eq!(problem["code"], "limit_escalation", "{body}");
    }
    // Refills may not grow either, once an admin set one.
    let refilled = NewKey {
        refill: Some(Refill { interval: RefillInterval::Daily, amount: 100 }),
        ..limited(team_a("refilled", &["users:read"]))
    };
    let refilled = h.mint(refilled).await.record.id;
    for body in [
        json!({"refill": {"interval": "daily", "amount": 101}}),
        json!({"refill": {"interval": "monthly", "amount": 100}}),
    ] {
        let (status, _, problem) = call(&h.app, patch(&refilled, manager, body.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {problem}");
        assert_eq!(problem["code"], "limit_escalation", "{body}");
    }

    // Tightening is self-service.
    let body = json!({"rate_limit": {"requests": 5, "window": 60}, "remaining": 50});
    let (status, _, details) = call(&h.app, patch(id, manager, body)).await;
    assert_eq!(status, StatusCode::OK, "{details}");
    // An admin may loosen again.
    let (status, _, details) = call(&h.app, patch(id, &h.admin, json!({"remaining": 500}))).await;
    assert_eq!(status, StatusCode::OK, "{details}");
    assert_eq!(details["rate_limit"], json!({"requests": 5, "window": 60}));
    assert_eq!(details["remaining"], 500);
}

#[actix_web::test]
async fn a_manager_creates_no_key_looser_than_itself() {
    let h = memory_harness().await;
    let manager = h.mint(limited(team_a("manager", &["api_keys:manage", "users:read"]))).await;
    let manager = manager.key.as_str();
    let create =
        |body: Value| call(&h.app, with_key(TestRequest::post().uri(KEYS), manager).set_json(body));
    for body in [
        json!({"name": "x", "expires_in": 60, "rate_limit": {"requests": 11, "window": 60}}),
        json!({"name": "x", "expires_in": 60, "remaining": 101}),
        json!({"name": "x", "expires_in": 60, "refill": {"interval": "daily", "amount": 500}}),
    ] {
        let (status, _, problem) = create(body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {problem}");
        assert_eq!(problem["code"], "limit_escalation", "{body}");
    }
    // Naming no limits inherits the manager's own; tighter ones are kept.
    let (status, _, created) = create(json!({"name": "x", "expires_in": 60})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["rate_limit"], json!({"requests": 10, "window": 60}));
    // The manager's quota as it stands: its three refused requests and this one used four.
    assert_eq!(created["remaining"], 96);
    let body = json!({"name": "y", "expires_in": 60, "rate_limit": {"requests": 1, "window": 60}, "remaining": 5});
    let (status, _, created) = create(body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["remaining"], 5);
}

#[actix_web::test]
async fn a_manager_only_tightens_the_keys_it_changes() {
    let h = memory_harness().await;
    // A manager with no expiry of its own and wide scopes.
    let manager = h
        .mint(NewKey { expires_at: None, ..team_a("manager", &["api_keys:manage", "users:*"]) })
        .await;
    let manager = manager.key.as_str();
    let target = h.mint(team_a("narrow", &["users:read"])).await;
    let id = target.record.id.as_str();
    for (body, code) in [
        (json!({"expires_at": null}), "expiry_escalation"),
        (
            json!({"expires_at": (Utc::now() + Duration::days(90)).to_rfc3339()}),
            "expiry_escalation",
        ),
        (json!({"scopes": ["users:read", "users:write"]}), "scope_escalation"),
    ] {
        let (status, _, problem) = call(&h.app, patch(id, manager, body.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {problem}");
        assert_eq!(problem["code"], code, "{body}");
    }
    let sooner = (Utc::now() + Duration::days(1)).to_rfc3339();
    let (status, _, details) =
        call(&h.app, patch(id, manager, json!({"expires_at": sooner}))).await;
    assert_eq!(status, StatusCode::OK, "{details}");

    // Rotating a key hands out its secret's successor: not for a key looser than the manager.
    let limited_manager =
        h.mint(limited(team_a("limited manager", &["api_keys:manage", "users:read"]))).await;
    let rotate = TestRequest::post().uri(&format!("{KEYS}/{id}/rotate")).set_json(json!({}));
    let (status, _, problem) = call(&h.app, with_key(rotate, limited_manager.key.as_str())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(problem["code"], "limit_escalation");
}

#[actix_web::test]
async fn an_expired_key_is_not_brought_back_by_a_rotation() {
    let h = memory_harness().await;
    let expired = h
        .mint(NewKey {
            expires_at: Some(Utc::now() + Duration::seconds(1)),
            ..team_a("short-lived", &["users:read"])
        })
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let rotate = TestRequest::post()
        .uri(&format!("{KEYS}/{}/rotate", expired.record.id))
        .set_json(json!({"expires_in": 3600}));
    let (status, _, problem) = call(&h.app, with_key(rotate, &h.admin)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "key_expired");
}

#[actix_web::test]
async fn a_key_an_admin_disabled_stays_disabled_for_managers_and_rotations() {
    let h = memory_harness().await;
    let manager = h.mint(team_a("manager", &["api_keys:manage", "users:read"])).await;
    let manager = manager.key.as_str();
    let target = h.mint(limited(team_a("target", &["users:read"]))).await;
    let id = target.record.id.as_str();

    let (status, _, _) = call(&h.app, patch(id, &h.admin, json!({"enabled": false}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, problem) = call(&h.app, patch(id, manager, json!({"enabled": true}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(problem["code"], "admin_required");

    // A rotation, even an admin's, keeps the key disabled and keeps its limits.
    let rotated =
        h.state.service.rotate_key(&Manager::Operator, id, Rotation::default()).await.unwrap();
    assert!(!rotated.record.enabled);
    assert_eq!(rotated.record.rate_limit, target.record.rate_limit);
    assert_eq!(rotated.record.remaining, target.record.remaining);
    assert_eq!(rotated.record.refill, target.record.refill);
    let (status, _, problem) =
        call(&h.app, with_key(TestRequest::get().uri("/protected"), rotated.key.as_str())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem["code"], "disabled_api_key");
}

#[actix_web::test]
async fn limits_set_on_a_replacement_bind_the_old_key_in_its_grace_period() {
    let h = memory_harness().await;
    let old = h.mint(team_a("old", &["users:read"])).await;
    let rotation = Rotation { grace_period: Some(3600), ..Rotation::default() };
    let new =
        h.state.service.rotate_key(&Manager::Operator, &old.record.id, rotation).await.unwrap();
    // The replacement gets a limit the old key never had.
    let body = json!({"rate_limit": {"requests": 1, "window": 3600}});
    let (status, _, _) = call(&h.app, patch(&new.record.id, &h.admin, body)).await;
    assert_eq!(status, StatusCode::OK);
    let get = |key: &str| with_key(TestRequest::get().uri("/protected"), key);
    assert_eq!(call(&h.app, get(old.key.as_str())).await.0, StatusCode::OK);
    let (status, _, problem) = call(&h.app, get(old.key.as_str())).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{problem}");
    assert_eq!(problem["code"], "rate_limit_exceeded");
    assert_eq!(
        call(&h.app, get(new.key.as_str())).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "one budget for both keys"
    );
}

#[actix_web::test]
async fn a_manager_changes_no_key_holding_scopes_it_lacks() {
    let h = memory_harness().await;
    let manager = h.mint(team_a("manager", &["api_keys:manage", "users:read"])).await;
    let manager = manager.key.as_str();
    let billing = h.mint(team_a("billing", &["billing:write"])).await;
    let item = format!("{KEYS}/{}", billing.record.id);

    for (what, request) in [
        ("update", TestRequest::patch().uri(&item).set_json(json!({"name": "mine"}))),
        ("rotate", TestRequest::post().uri(&format!("{item}/rotate")).set_json(json!({}))),
        ("revoke", TestRequest::delete().uri(&item)),
    ] {
        let (status, _, problem) = call(&h.app, with_key(request, manager)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {problem}");
        assert_eq!(problem["code"], "scope_escalation", "{what}");
    }
    // It may still see the key: it is its owner's.
    let (status, _, details) = call(&h.app, with_key(TestRequest::get().uri(&item), manager)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(details["name"], "billing");
    assert_eq!(details["status"], "active");
}

#[actix_web::test]
async fn a_manager_in_its_grace_period_grants_nothing_beyond_it() {
    let h = memory_harness().await;
    let manager = h
        .mint(NewKey { expires_at: None, ..team_a("manager", &["api_keys:manage", "users:read"]) })
        .await;
    let rotation = Rotation { grace_period: Some(3600), ..Rotation::default() };
    h.state.service.rotate_key(&Manager::Operator, &manager.record.id, rotation).await.unwrap();
    let create = |body: Value| {
        call(&h.app, with_key(TestRequest::post().uri(KEYS), manager.key.as_str()).set_json(body))
    };
    for body in [json!({"name": "forever"}), json!({"name": "later", "expires_in": 2 * 3600})] {
        let (status, _, problem) = create(body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {problem}");
        assert_eq!(problem["code"], "expiry_escalation");
    }
    let (status, _, created) = create(json!({"name": "soon", "expires_in": 1800})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}

#[actix_web::test]
async fn tenants_do_not_learn_who_outside_them_acted() {
    let h = memory_harness().await;
    let manager = h.mint(team_a("manager", &["api_keys:manage", "users:read"])).await;
    let target = h.mint(team_a("target", &["users:read"])).await;
    let id = target.record.id.as_str();
    let from = |address: &str, request: TestRequest| {
        request.peer_addr(address.parse::<SocketAddr>().unwrap())
    };
    let admin_change = from("192.0.2.10:5000", patch(id, &h.admin, json!({"name": "by admin"})));
    assert_eq!(call(&h.app, admin_change).await.0, StatusCode::OK);
    let own_change =
        from("198.51.100.20:5000", patch(id, manager.key.as_str(), json!({"name": "by manager"})));
    assert_eq!(call(&h.app, own_change).await.0, StatusCode::OK);

    let events = TestRequest::get().uri(&format!("{KEYS}/{id}/events"));
    let (status, _, page) = call(&h.app, with_key(events, manager.key.as_str())).await;
    assert_eq!(status, StatusCode::OK);
    let items = page["items"].as_array().unwrap();
    let by_admin = items.iter().find(|e| e["changes"]["name"] == "by admin").unwrap();
    assert!(by_admin["actor_key_id"].is_null(), "{by_admin}");
    assert!(by_admin["client"].is_null(), "{by_admin}");
    let by_manager = items.iter().find(|e| e["changes"]["name"] == "by manager").unwrap();
    assert_eq!(by_manager["actor_key_id"], manager.record.id.as_str());
    assert_eq!(by_manager["client"], "198.51.100.20");

    // The admin sees both in full.
    let events = TestRequest::get().uri(&format!("{KEYS}/{id}/events"));
    let (_, _, page) = call(&h.app, with_key(events, &h.admin)).await;
    let by_admin = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["changes"]["name"] == "by admin")
        .unwrap()
        .clone();
    assert_eq!(by_admin["client"], "192.0.2.10");
}

#[actix_web::test]
async fn a_stale_key_does_not_lock_its_address_out() {
    let h = harness_with(Arc::new(MemoryBackend::default()), &[("AUTH_FAILURES_PER_MINUTE", "3")])
        .await;
    let stale = h.mint(team_a("stale", &["users:read"])).await;
    h.state.service.revoke_key(&Manager::Operator, &stale.record.id).await.unwrap();
    let shared_nat = "203.0.113.50:4000".parse::<SocketAddr>().unwrap();
    let get = |key: &str| with_key(TestRequest::get().uri("/protected"), key).peer_addr(shared_nat);
    for n in 0..10 {
        let (status, _, problem) = call(&h.app, get(stale.key.as_str())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "use {n}: {problem}");
        assert_eq!(problem["code"], "revoked_api_key");
    }
    let (status, _, _) = call(&h.app, get(&h.admin)).await;
    assert_eq!(status, StatusCode::OK, "the valid key behind the same address");
}

#[actix_web::test]
async fn behind_trusted_proxies_the_client_is_who_the_last_proxy_saw() {
    let h = harness_with(
        Arc::new(MemoryBackend::default()),
        &[
            ("AUTH_FAILURES_PER_MINUTE", "2"),
            ("AUTH_FAILURES_PER_KEY_PER_MINUTE", "0"),
            ("TRUSTED_PROXIES", "10.0.0.0/8"),
        ],
    )
    .await;
    let proxy = "10.0.0.5:443".parse::<SocketAddr>().unwrap();
    let via_proxy = |key: &str, forwarded_for: &str| {
        with_key(TestRequest::get().uri("/protected"), key)
            .peer_addr(proxy)
            .insert_header(("X-Forwarded-For", forwarded_for))
    };
    // The attacker picks a new leftmost address every time; nginx appends the one it saw.
    for n in 0..2 {
        let spoofed = format!("192.0.2.{n}, 198.51.100.7");
        let (status, _, _) = call(&h.app, via_proxy("sk_junk", &spoofed)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _, problem) = call(&h.app, via_proxy("sk_junk", "192.0.2.9, 198.51.100.7")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{problem}");
    // Another client behind the same proxy is not affected.
    let (status, _, _) = call(&h.app, via_proxy(&h.admin, "198.51.100.8")).await;
    assert_eq!(status, StatusCode::OK);
    // A peer that is not a configured proxy is the client, whatever it claims.
    let direct = with_key(TestRequest::get().uri("/protected"), &h.admin)
        .peer_addr("198.51.100.9:5000".parse().unwrap())
        .insert_header(("X-Forwarded-For", "198.51.100.7"));
    assert_eq!(call(&h.app, direct).await.0, StatusCode::OK);

    // The audit log records the client, not the proxy.
    let create = with_key(TestRequest::post().uri(KEYS), &h.admin)
        .peer_addr(proxy)
        .insert_header(("X-Forwarded-For", "6.6.6.6, 2001:db8::7"))
        .set_json(json!({"name": "audited"}));
    let (status, _, created) = call(&h.app, create).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let events =
        TestRequest::get().uri(&format!("{KEYS}/{}/events", created["id"].as_str().unwrap()));
    let (_, _, page) = call(&h.app, with_key(events, &h.admin)).await;
    assert_eq!(page["items"][0]["client"], "2001:db8::7");
}

#[actix_web::test]
async fn an_unreadable_forwarded_header_still_counts_failures() {
    let h = harness_with(
        Arc::new(MemoryBackend::default()),
        &[
            ("AUTH_FAILURES_PER_MINUTE", "2"),
            ("TRUSTED_PROXIES", "10.0.0.5"),
            ("PROXY_HEADER", "forwarded"),
        ],
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let request = with_key(TestRequest::get().uri("/protected"), "sk_junk")
            .peer_addr("10.0.0.5:443".parse().unwrap())
            .insert_header(("Forwarded", "for=unknown"));
        statuses.push(call(&h.app, request).await.0.as_u16());
    }
    assert_eq!(statuses, [401, 401, 429, 429], "counted against the proxy");
}

#[actix_web::test]
async fn numbers_too_large_for_anything_are_refused_not_a_panic() {
    let h = memory_harness().await;
    let target = h.mint(team_a("target", &["users:read"])).await;
    let rotate = format!("{KEYS}/{}/rotate", target.record.id);
    for grace in [json!(10_000_000_000_000_000_u64), json!(u64::MAX), json!(2_592_001)] {
        let request = with_key(TestRequest::post().uri(&rotate), &h.admin)
            .set_json(json!({"grace_period": grace}));
        let (status, _, problem) = call(&h.app, request).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{grace}: {problem}");
        assert_eq!(problem["code"], "validation_failed", "{grace}");
    }
    let body = json!({"name": "x", "expires_in": u64::MAX});
    let request = with_key(TestRequest::post().uri(KEYS), &h.admin).set_json(body);
    assert_eq!(call(&h.app, request).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    let huge =
        format!("{KEYS}?expiring_within_days=18446744073709551616&offset=18446744073709551615");
    let status = call(&h.app, with_key(TestRequest::get().uri(&huge), &h.admin)).await.0;
    assert!(status.is_client_error(), "{status}");
}
