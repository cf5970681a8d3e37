//! Keys for other services: the verify route and the forward-auth check, over HTTP.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::http::{StatusCode, header};
use actix_web::test::TestRequest;
use serde_json::{Value, json};

use common::{KEYS, call, harness_with, memory_harness, with_key, wrong_secret};
use {{crate_name}}::model::{NewKey, RateLimit};
use {{crate_name}}::store::MemoryBackend;

fn verify(caller: &str, body: Value) -> TestRequest {
    with_key(TestRequest::post().uri(&format!("{KEYS}/verify")), caller).set_json(body)
}

fn verifier() -> NewKey {
    NewKey { name: "gateway".into(), scopes: vec!["api_keys:verify".into()], ..NewKey::default() }
}

fn reader(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        owner_id: Some("team-reports".into()),
        scopes: vec!["reports:read".into()],
        ..NewKey::default()
    }
}

#[actix_web::test]
async fn only_a_key_with_the_verify_scope_may_verify() {
    let h = memory_harness().await;
    let key = h.mint(reader("r")).await.key.to_string();
    let (status, _, problem) = call(&h.app, verify(&key, json!({"key": key}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem["code"], "insufficient_scope");
    assert_eq!(problem["required_scopes"], json!(["api_keys:verify"]));
    let anonymous =
        TestRequest::post().uri(&format!("{KEYS}/verify")).set_json(json!({"key": key}));
    assert_eq!(call(&h.app, anonymous).await.0, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn verify_answers_who_the_key_is_and_never_echoes_it() {
    let h = memory_harness().await;
    let caller = h.mint(verifier()).await.key.to_string();
    let created = h.mint(reader("reports")).await;
    let key = created.key.to_string();

    let (status, _, verdict) =
        call(&h.app, verify(&caller, json!({"key": key, "scopes": ["reports:read"]}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verdict["valid"], true);
    assert_eq!(verdict["code"], "valid");
    assert_eq!(verdict["key_id"], created.record.id.as_str());
    assert_eq!(verdict["owner_id"], "team-reports");
    assert_eq!(verdict["scopes"], json!(["reports:read"]));
    assert!(!verdict.to_string().contains(&key[4..]), "the key is not echoed: {verdict}");
    let (uses, _) = h.state.usage.unflushed(&created.record.id).expect("the use is counted");
    assert_eq!(uses, 1);

    let (_, _, verdict) =
        call(&h.app, verify(&caller, json!({"key": key, "scopes": ["reports:write"]}))).await;
    assert_eq!(
        (verdict["valid"].clone(), verdict["code"].clone()),
        (json!(false), json!("insufficient_scope"))
    );
    assert_eq!(verdict["key_id"], created.record.id.as_str(), "a genuine key is named");
    let any = json!({"key": key, "any_scopes": ["reports:write", "reports:read"]});
    assert_eq!(call(&h.app, verify(&caller, any)).await.2["code"], "valid");

    let (_, _, verdict) = call(&h.app, verify(&caller, json!({"key": "sk_made_up"}))).await;
    assert_eq!(verdict["code"], "invalid_api_key");
    assert_eq!(verdict["key_id"], Value::Null);

    let revoke =
        with_key(TestRequest::delete().uri(&format!("{KEYS}/{}", created.record.id)), &h.admin);
    assert!(call(&h.app, revoke).await.0.is_success());
    let (status, _, verdict) = call(&h.app, verify(&caller, json!({"key": key}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verdict["code"], "revoked_api_key");
}

#[actix_web::test]
async fn verify_refuses_a_malformed_question() {
    let h = memory_harness().await;
    let caller = h.mint(verifier()).await.key.to_string();
    for (body, field) in [
        (json!({"key": "sk_x", "scopes": ["a:b"], "any_scopes": ["c:d"]}), "any_scopes"),
        (json!({"key": "sk_x", "any_scopes": []}), "any_scopes"),
        (json!({"key": "sk_x", "scopes": ["reports:*"]}), "scopes"),
    ] {
        let (status, _, problem) = call(&h.app, verify(&caller, body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(problem["field"], field, "{body}");
    }
    let (status, _, problem) =
        call(&h.app, verify(&caller, json!({"key": "sk_x", "echo": 1}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!problem.to_string().contains("sk_x"), "{problem}");
}

#[actix_web::test]
async fn verify_charges_rate_limits_and_quotas() {
    let h = memory_harness().await;
    let caller = h.mint(verifier()).await.key.to_string();
    let limited = NewKey {
        rate_limit: Some(RateLimit { requests: 2, window: 60 }),
        remaining: Some(3),
        ..reader("metered")
    };
    let key = h.mint(limited).await.key.to_string();
    let verdicts: Vec<Value> = {
        let mut all = Vec::new();
        for _ in 0..3 {
            all.push(call(&h.app, verify(&caller, json!({"key": key}))).await.2);
        }
        all
    };
    assert_eq!(
        verdicts[0]["rate_limit"],
        json!({"requests": 2, "window": 60, "remaining": 1, "reset": 30})
    );
    assert_eq!(verdicts[0]["remaining"], 2);
    assert_eq!(verdicts[1]["remaining"], 1);
    assert_eq!(verdicts[2]["code"], "rate_limit_exceeded");
    assert_eq!(verdicts[2]["valid"], false);
    assert!(
        verdicts[2]["retry_after"].as_u64().is_some_and(|s| (29..=30).contains(&s)),
        "{}",
        verdicts[2]
    );
    // A guarded route would say the same of the same key: the verify route charged it.
    let (status, _, problem) =
        call(&h.app, with_key(TestRequest::get().uri("/protected"), &key)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem["code"], "rate_limit_exceeded");
}

#[actix_web::test]
async fn bad_keys_sent_to_verify_do_not_lock_out_the_caller() {
    let h = harness_with(
        Arc::new(MemoryBackend::default()),
        &[("AUTH_FAILURES_PER_MINUTE", "2"), ("AUTH_FAILURES_PER_KEY_PER_MINUTE", "0")],
    )
    .await;
    let caller = h.mint(verifier()).await.key.to_string();
    let from = "198.51.100.9:4000".parse::<SocketAddr>().unwrap();
    for n in 0..5 {
        let request = verify(&caller, json!({"key": format!("sk_junk{n}")})).peer_addr(from);
        let (status, _, verdict) = call(&h.app, request).await;
        assert_eq!(
            (status, verdict["code"].clone()),
            (StatusCode::OK, json!("invalid_api_key")),
            "{n}"
        );
    }
}

#[actix_web::test]
async fn a_named_client_is_limited_and_a_key_id_is_limited_through_verify() {
    let h = harness_with(
        Arc::new(MemoryBackend::default()),
        &[("AUTH_FAILURES_PER_MINUTE", "2"), ("AUTH_FAILURES_PER_KEY_PER_MINUTE", "2")],
    )
    .await;
    let caller = h.mint(verifier()).await.key.to_string();
    let junk = |client: &str| json!({"key": "sk_junk", "client_address": client});
    let codes = |verdicts: Vec<Value>| -> Vec<String> {
        verdicts.iter().map(|v| v["code"].as_str().unwrap().to_owned()).collect()
    };
    let mut verdicts = Vec::new();
    for _ in 0..3 {
        verdicts.push(call(&h.app, verify(&caller, junk("203.0.113.7"))).await.2);
    }
    assert_eq!(
        codes(verdicts.clone()),
        ["invalid_api_key", "invalid_api_key", "too_many_failed_attempts"]
    );
    assert!(verdicts[2]["retry_after"].as_u64().is_some_and(|s| s > 0), "{}", verdicts[2]);
    let other = call(&h.app, verify(&caller, junk("203.0.113.8"))).await.2;
    assert_eq!(other["code"], "invalid_api_key", "another client is not refused");
    // A caller naming its own address is not counted: its users cannot lock it out.
    let from = "198.51.100.9:4000".parse::<SocketAddr>().unwrap();
    for _ in 0..4 {
        let request = verify(&caller, junk("198.51.100.9")).peer_addr(from);
        assert_eq!(call(&h.app, request).await.2["code"], "invalid_api_key");
    }

    // Wrong secrets for a real key id count against that key, whoever sends them.
    let key = h.mint(reader("target")).await.key.to_string();
    assert_eq!(call(&h.app, verify(&caller, json!({"key": key}))).await.2["code"], "valid");
    let wrong = wrong_secret(&key);
    let mut verdicts = Vec::new();
    for _ in 0..3 {
        verdicts.push(call(&h.app, verify(&caller, json!({"key": wrong}))).await.2);
    }
    assert_eq!(codes(verdicts), ["invalid_api_key", "invalid_api_key", "too_many_failed_attempts"]);
}

fn check(key: Option<&str>) -> TestRequest {
    let request = TestRequest::get().uri("/auth/check");
    match key {
        Some(key) => with_key(request, key),
        None => request,
    }
}

#[actix_web::test]
async fn the_check_passes_a_key_holding_the_required_scopes() {
    let h = memory_harness().await;
    let created = h.mint(reader("reports")).await;
    let key = created.key.to_string();
    let (status, headers, _) = call(&h.app, check(Some(&key))).await;
    assert_eq!(status, StatusCode::OK);
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("x-api-key-id").as_deref(), Some(created.record.id.as_str()));
    assert_eq!(header("x-api-key-owner").as_deref(), Some("team-reports"));
    assert_eq!(header("x-api-key-scopes").as_deref(), Some("reports:read"));

    let demanded = check(Some(&key)).insert_header(("X-Required-Scopes", "reports:read"));
    assert_eq!(call(&h.app, demanded).await.0, StatusCode::OK);
    let bearer = TestRequest::get()
        .uri("/auth/check?scopes=reports:read")
        .insert_header((header::AUTHORIZATION, format!("Bearer {key}")));
    assert_eq!(call(&h.app, bearer).await.0, StatusCode::OK);

    // The query adds to the header; it never takes a requirement away.
    let more = TestRequest::get()
        .uri("/auth/check?scopes=reports:export")
        .insert_header(("X-Required-Scopes", "reports:read"));
    let (status, _, problem) = call(&h.app, with_key(more, &key)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem["required_scopes"], json!(["reports:export", "reports:read"]));

    let (status, headers, problem) = call(&h.app, check(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem["code"], "missing_api_key");
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));

    let bad = check(Some(&key)).insert_header(("X-Required-Scopes", "Reports:READ"));
    let (status, _, problem) = call(&h.app, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["code"], "bad_request");
}

#[actix_web::test]
async fn the_check_charges_the_key_and_says_when_to_retry() {
    let h = memory_harness().await;
    let limited =
        NewKey { rate_limit: Some(RateLimit { requests: 1, window: 60 }), ..reader("one") };
    let key = h.mint(limited).await.key.to_string();
    assert_eq!(call(&h.app, check(Some(&key))).await.0, StatusCode::OK);
    let (status, headers, problem) = call(&h.app, check(Some(&key))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem["code"], "rate_limit_exceeded");
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert!(headers.contains_key("ratelimit"));
}

#[actix_web::test]
async fn the_check_limits_failures_per_original_client() {
    let h = harness_with(
        Arc::new(MemoryBackend::default()),
        &[("AUTH_FAILURES_PER_MINUTE", "2"), ("TRUSTED_PROXIES", "10.0.0.1")],
    )
    .await;
    let key = h.mint(reader("reports")).await.key.to_string();
    let via_proxy = |client: &str, key: &str| {
        with_key(check(None), key)
            .peer_addr("10.0.0.1:5000".parse().unwrap())
            .insert_header(("X-Forwarded-For", client))
    };
    for _ in 0..2 {
        assert_eq!(
            call(&h.app, via_proxy("203.0.113.5", "sk_junk")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        call(&h.app, via_proxy("203.0.113.5", "sk_junk")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(call(&h.app, via_proxy("203.0.113.5", &key)).await.0, StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy is not refused.
    assert_eq!(call(&h.app, via_proxy("203.0.113.6", &key)).await.0, StatusCode::OK);
}

#[actix_web::test]
async fn the_check_answers_below_its_path_for_any_method_as_envoy_asks() {
    let h = memory_harness().await;
    let key = h.mint(reader("reports")).await.key.to_string();
    // Envoy sends the request's own method, path and query; the query is the upstream's, not ours.
    let envoy = |scopes: &str| {
        with_key(TestRequest::post().uri("/auth/check/reports/monthly?scopes=admin:all"), &key)
            .insert_header(("X-Required-Scopes", scopes))
    };
    let (status, headers, _) = call(&h.app, envoy("reports:read")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("x-api-key-id"));
    assert_eq!(call(&h.app, envoy("reports:write")).await.0, StatusCode::FORBIDDEN);
    let anonymous = TestRequest::delete().uri("/auth/check/reports/1");
    assert_eq!(call(&h.app, anonymous).await.0, StatusCode::UNAUTHORIZED);
    // A trailing slash is still the check itself: its query counts.
    let slash = with_key(TestRequest::get().uri("/auth/check/?scopes=reports:write"), &key);
    assert_eq!(call(&h.app, slash).await.0, StatusCode::FORBIDDEN);
    // At its own path the check is GET only.
    let posted = with_key(TestRequest::post().uri("/auth/check"), &key);
    assert_eq!(call(&h.app, posted).await.0, StatusCode::METHOD_NOT_ALLOWED);
}

#[actix_web::test]
async fn every_identity_header_is_sent_even_empty() {
    let h = memory_harness().await;
    let ownerless = NewKey { owner_id: None, ..reader("ownerless") };
    let key = h.mint(ownerless).await.key.to_string();
    let (status, headers, _) = call(&h.app, check(Some(&key))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("x-api-key-owner").map(|v| v.as_bytes()), Some(&b""[..]));
}

#[actix_web::test]
async fn the_check_can_move_or_be_turned_off() {
    let store = || Arc::new(MemoryBackend::default());
    let moved = harness_with(store(), &[("FORWARD_AUTH_PATH", "/gateway/check")]).await;
    let key = moved.mint(reader("r")).await.key.to_string();
    let request = with_key(TestRequest::get().uri("/gateway/check"), &key);
    assert_eq!(call(&moved.app, request).await.0, StatusCode::OK);
    assert_eq!(call(&moved.app, check(Some(&key))).await.0, StatusCode::NOT_FOUND);

    let off = harness_with(store(), &[("FORWARD_AUTH_PATH", "")]).await;
    let key = off.mint(reader("r")).await.key.to_string();
    assert_eq!(call(&off.app, check(Some(&key))).await.0, StatusCode::NOT_FOUND);
}
