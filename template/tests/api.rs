//! The HTTP API end to end, on the memory backend and on a SQLite file.

mod common;

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::test::{self, TestRequest};
use chrono::{Duration, Utc};
use serde_json::json;

use common::{KEYS, call, create, harness_with, memory_harness, with_key, wrong_secret};
use {{crate_name}}::model::NewKey;
use {{crate_name}}::store::{Backend, MemoryBackend};

/// The flow litestar-api-auth documents: create, use, scope denial, list, get, revoke, rejected.
async fn seed_flow(store: Arc<dyn Backend>) {
    let h = harness_with(store, &[("API_KEY_PREFIX", "acme_")]).await;
    // A shared database may hold earlier runs' keys: this run's owner is new.
    let owner = format!("user-{}", &h.admin[5..17]);

    let (status, created) = create(
        &h.app,
        &h.admin,
        json!({"name": "reader", "scopes": ["users:read"], "owner_id": owner, "expires_in": 3600, "metadata": {"team": "core"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(created.get("key_hash").is_none(), "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("acme_"), "the configured prefix is used: {key}");
    assert!(key.contains(&id), "the key carries its public id");

    let (status, _, body) =
        call(&h.app, with_key(TestRequest::get().uri("/protected"), &key)).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("authenticated")));
    let bearer = TestRequest::get()
        .uri("/api/data")
        .insert_header(("Authorization", format!("Bearer {key}")));
    let (status, _, body) = call(&h.app, bearer).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["owner_id"], owner.as_str());

    let (status, _, problem) =
        call(&h.app, with_key(TestRequest::delete().uri("/api/admin/users/42"), &key)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem["code"], "insufficient_scope");
    assert_eq!(problem["required_scopes"], json!(["admin:delete"]));
    assert!(!problem.to_string().contains("users:read"), "a 403 never lists the key's own scopes");

    let (status, _, list) = call(
        &h.app,
        with_key(TestRequest::get().uri(&format!("{KEYS}?owner_id={owner}")), &h.admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert!(!list.to_string().contains("key_hash"), "{list}");

    let (status, _, details) =
        call(&h.app, with_key(TestRequest::get().uri(&format!("{KEYS}/{id}")), &h.admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(details["status"], "active");
    assert_eq!(details["request_count"], 3, "uses are counted, including the 403");
    assert!(details["last_used_at"].is_string());
    assert_eq!(details["metadata"], json!({"team": "core"}));
    assert!(details.get("key").is_none() && details.get("key_hash").is_none());

    let revoke = || with_key(TestRequest::delete().uri(&format!("{KEYS}/{id}")), &h.admin);
    assert_eq!(call(&h.app, revoke()).await.0, StatusCode::NO_CONTENT);
    assert_eq!(call(&h.app, revoke()).await.0, StatusCode::NO_CONTENT, "revoking twice is fine");

    let (status, headers, problem) =
        call(&h.app, with_key(TestRequest::get().uri("/protected"), &key)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem["code"], "revoked_api_key");
    assert!(headers.get(header::WWW_AUTHENTICATE).is_some());
    assert_eq!(headers.get(header::CONTENT_TYPE).unwrap(), "application/problem+json");

    // Usage counted in memory reaches the store with one flush, exactly.
    h.state.usage.flush(h.state.store.as_ref()).await.unwrap();
    let stored = h.state.store.get(&id).await.unwrap().unwrap();
    assert_eq!(stored.request_count, 3);
}

#[actix_web::test]
async fn seed_flow_on_memory() {
    seed_flow(Arc::new(MemoryBackend::default())).await;
}

#[cfg(feature = "sqlite")]
#[actix_web::test]
async fn seed_flow_on_sqlite() {
    let (_dir, store) = common::sqlite_store().await;
    seed_flow(store).await;
}

#[cfg(feature = "postgres")]
#[actix_web::test]
async fn seed_flow_on_postgres() {
    if let Some(store) = common::postgres_store("seed_flow_on_postgres").await {
        seed_flow(store).await;
    }
}

#[cfg(feature = "redis")]
#[actix_web::test]
async fn seed_flow_on_redis() {
    if let Some(store) = common::redis_store("seed_flow_on_redis") {
        seed_flow(store).await;
    }
}

#[actix_web::test]
async fn key_routes_need_a_management_scope() {
    let h = memory_harness().await;
    let (_, plain) = create(&h.app, &h.admin, json!({"name": "plain", "scopes": ["*:read"]})).await;
    assert_eq!(plain["code"], "validation_failed", "'*:read' is not a scope");
    let (_, plain) =
        create(&h.app, &h.admin, json!({"name": "plain", "scopes": ["users:*"]})).await;
    let plain = plain["key"].as_str().unwrap().to_owned();

    let routes = [
        TestRequest::post().uri(KEYS).set_json(json!({"name": "x"})),
        TestRequest::get().uri(KEYS),
        TestRequest::get().uri(&format!("{KEYS}/abc")),
        TestRequest::delete().uri(&format!("{KEYS}/abc")),
    ];
    for route in routes {
        let req = route.to_request();
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let anonymous = TestRequest::default().method(method.clone()).uri(&uri.to_string());
        let (status, _, problem) = call(&h.app, anonymous.set_json(json!({"name": "x"}))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} without a key");
        assert_eq!(problem["code"], "missing_api_key");
        let plain_key =
            with_key(TestRequest::default().method(method.clone()).uri(&uri.to_string()), &plain);
        let (status, _, problem) = call(&h.app, plain_key.set_json(json!({"name": "x"}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri} with a plain key");
        assert_eq!(problem["required_scopes"], json!(["api_keys:admin", "api_keys:manage"]));
    }
}

#[actix_web::test]
async fn bad_keys_are_rejected_with_their_own_codes() {
    let h = memory_harness().await;
    let expired = h
        .mint(NewKey {
            name: "short-lived".into(),
            expires_at: Some(Utc::now() + Duration::milliseconds(50)),
            ..NewKey::default()
        })
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;

    // One character changed in the id (fails the checksum), or in the secret of a key the cache
    // holds, with a checksum that fits (fails the digest comparison).
    let (status, _, _) =
        call(&h.app, with_key(TestRequest::get().uri("/protected"), &h.admin)).await;
    assert_eq!(status, StatusCode::OK);
    let mut forged_id = h.admin.clone();
    forged_id.replace_range(10..=10, if &h.admin[10..=10] == "a" { "b" } else { "a" });
    let forged_secret = wrong_secret(&h.admin);
    let cases = [
        ("", "missing_api_key"),
        ("garbage", "invalid_api_key"),
        (forged_id.as_str(), "invalid_api_key"),
        (forged_secret.as_str(), "invalid_api_key"),
        (&h.admin.replacen("sk_", "pk_", 1), "invalid_api_key"),
        (expired.key.as_str(), "expired_api_key"),
    ];
    for (key, code) in cases {
        let req = if key.is_empty() {
            TestRequest::get().uri("/protected")
        } else {
            with_key(TestRequest::get().uri("/protected"), key)
        };
        let (status, headers, problem) = call(&h.app, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{code}");
        assert_eq!(problem["code"], code);
        assert!(
            headers.get(header::WWW_AUTHENTICATE).unwrap().to_str().unwrap().starts_with("Bearer")
        );
        assert!(!problem.to_string().contains(&h.admin[4..]), "no key material in errors");
    }

    let twice = TestRequest::get()
        .uri("/protected")
        .append_header(("X-API-Key", h.admin.as_str()))
        .append_header(("X-API-Key", h.admin.as_str()));
    assert_eq!(
        call(&h.app, twice).await.2["code"],
        "invalid_api_key",
        "a repeated key header is ambiguous"
    );
    let basic =
        TestRequest::get().uri("/protected").insert_header(("Authorization", "Basic dXNlcjpwYXNz"));
    assert_eq!(call(&h.app, basic).await.2["code"], "invalid_api_key");
    let non_ascii = TestRequest::get()
        .uri("/protected")
        .insert_header(("X-API-Key", header::HeaderValue::from_bytes(b"sk_\xff\xfe").unwrap()));
    assert_eq!(call(&h.app, non_ascii).await.0, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn bad_input_gets_a_problem_and_stores_nothing() {
    let h = memory_harness().await;
    let long_name = "x".repeat(101);
    let cases = [
        (json!({"scopes": []}), StatusCode::BAD_REQUEST),
        (json!({"name": "x", "surprise": true}), StatusCode::BAD_REQUEST),
        (json!({"name": ""}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"name": "   "}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"name": long_name}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"name": "x\u{7}"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"name": "x", "scopes": ["Users:Read"]}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"name": "x", "scopes": vec!["a"; 33]}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"name": "x", "expires_in": 0}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"name": "x", "expires_in": 10, "expires_at": "2999-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"name": "x", "expires_at": "2999-01-01T00:00:00"}), StatusCode::BAD_REQUEST),
        (
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "x", "metadata": {"blob": "y".repeat(5000)}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"name": "x", "metadata": ["not", "an", "object"]}), StatusCode::BAD_REQUEST),
        // A key pasted where it would be stored in clear.
        (json!({"name": h.admin}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"name": "x", "owner_id": format!("team-{}", h.admin)}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "x", "metadata": {"note": format!("old key was {}", h.admin)}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"name": "x", "owner_id": "has space"}), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (body, expected) in cases {
        let (status, problem) = create(&h.app, &h.admin, body.clone()).await;
        assert_eq!(status, expected, "{body}: {problem}");
        assert!(problem["code"].is_string() && problem["detail"].is_string(), "{problem}");
    }
    let malformed = with_key(TestRequest::post().uri(KEYS), &h.admin)
        .insert_header(("Content-Type", "application/json"))
        .set_payload("{\"name\": ");
    assert_eq!(call(&h.app, malformed).await.0, StatusCode::BAD_REQUEST);
    let oversize = with_key(TestRequest::post().uri(KEYS), &h.admin)
        .set_json(json!({"name": "x".repeat(20_000)}));
    let (status, _, problem) = call(&h.app, oversize).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    for query in ["limit=0", "limit=101", "limit=abc", "offset=-1", "colour=red"] {
        let (status, _, problem) =
            call(&h.app, with_key(TestRequest::get().uri(&format!("{KEYS}?{query}")), &h.admin))
                .await;
        assert!(status.is_client_error(), "{query}: {status}");
        assert!(problem["code"].is_string());
    }
    let (_, _, list) = call(&h.app, with_key(TestRequest::get().uri(KEYS), &h.admin)).await;
    assert_eq!(list["total"], 1, "only the admin key exists: nothing was half-stored");

    let (status, _, problem) =
        call(&h.app, with_key(TestRequest::get().uri(&format!("{KEYS}/nope")), &h.admin)).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("api_key_not_found"))
    );
    let (status, _, problem) = call(&h.app, TestRequest::get().uri("/no/such/route")).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

#[actix_web::test]
async fn list_total_is_the_real_count() {
    let h = memory_harness().await;
    for i in 0..5 {
        create(&h.app, &h.admin, json!({"name": format!("k{i}"), "owner_id": "team"})).await;
    }
    let (_, _, page) = call(
        &h.app,
        with_key(
            TestRequest::get().uri(&format!("{KEYS}?owner_id=team&limit=2&offset=1")),
            &h.admin,
        ),
    )
    .await;
    assert_eq!(page["total"], 5);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["name"], "k3", "newest first");
    assert_eq!((page["limit"].as_u64(), page["offset"].as_u64()), (Some(2), Some(1)));
}

#[actix_web::test]
async fn an_empty_docs_path_serves_no_docs() {
    let h = harness_with(Arc::new(MemoryBackend::default()), &[("DOCS_PATH", "")]).await;
    for path in ["/docs", "/docs/", "/docs/openapi.json"] {
        assert_eq!(
            call(&h.app, TestRequest::get().uri(path)).await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let (status, _, _) =
        call(&h.app, with_key(TestRequest::get().uri("/protected"), &h.admin)).await;
    assert_eq!(status, StatusCode::OK, "the routes are served as before");
}

#[actix_web::test]
async fn wildcards_and_the_docs() {
    let h = memory_harness().await;
    let (_, admin_star) =
        create(&h.app, &h.admin, json!({"name": "ops", "scopes": ["admin:*"]})).await;
    let key = admin_star["key"].as_str().unwrap();
    let (status, _, _) =
        call(&h.app, with_key(TestRequest::delete().uri("/api/admin/users/1"), key)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "admin:* grants admin:delete");

    let (status, headers, _) = call(&h.app, TestRequest::get().uri("/docs")).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers.get(header::LOCATION).unwrap(), "docs/");
    let response = test::call_service(&h.app, TestRequest::get().uri("/docs/").to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(String::from_utf8_lossy(&test::read_body(response).await).contains("swagger-ui"));
    let (status, _, doc) = call(&h.app, TestRequest::get().uri("/docs/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["components"]["securitySchemes"]["api_key"]["name"], "X-API-Key");
    assert_eq!(
        doc["paths"]["/api/admin/users/{user_id}"]["delete"]["security"][0]["api_key"],
        json!(["admin:delete"])
    );
    assert!(doc["paths"][KEYS]["post"]["responses"]["401"].is_object());
    // The lifecycle routes, with their examples and limit headers, are in the document Swagger UI shows.
    let item = KEYS.to_owned() + "/{id}";
    for (path, method) in [
        (item.clone(), "patch"),
        (format!("{item}/rotate"), "post"),
        (format!("{item}/events"), "get"),
        (format!("{KEYS}/events"), "get"),
    ] {
        let operation = &doc["paths"][path.as_str()][method];
        assert!(operation["responses"]["429"]["headers"]["RateLimit"].is_object(), "{path}");
    }
    assert!(
        doc["paths"][format!("{item}/rotate").as_str()]["post"]["requestBody"]
            .to_string()
            .contains("grace_period")
    );
    assert!(doc["components"]["schemas"]["UpdateKeyRequest"]["example"].is_object());
    assert!(!doc.to_string().contains("key_hash"), "the document never names the digest");
    let list = doc["paths"][KEYS]["get"]["parameters"].to_string();
    assert!(list.contains("expiring_within_days"), "{list}");
}

#[actix_web::test]
async fn a_known_path_with_another_method_is_405_naming_the_methods() {
    let h = memory_harness().await;
    let (status, headers, problem) = call(&h.app, TestRequest::put().uri("/health")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(problem["code"], "method_not_allowed");
    assert_eq!(headers.get(header::ALLOW).unwrap(), "GET");
    let (status, _, _) = call(&h.app, with_key(TestRequest::patch().uri(KEYS), &h.admin)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, problem) = call(&h.app, TestRequest::get().uri("/nowhere")).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

#[actix_web::test]
async fn key_routes_can_be_switched_off() {
    let h = harness_with(Arc::new(MemoryBackend::default()), &[("API_KEYS_ROUTES", "false")]).await;
    let (status, _, _) = call(&h.app, with_key(TestRequest::get().uri(KEYS), &h.admin)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) =
        call(&h.app, with_key(TestRequest::get().uri("/protected"), &h.admin)).await;
    assert_eq!(status, StatusCode::OK, "guards still work");
}

/// The value of one series in the `/metrics` text, 0 when it has not appeared yet.
fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

async fn metrics_text<S, B>(app: &S) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let response = test::call_service(app, TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = test::read_body(response).await;
    String::from_utf8(body.to_vec()).unwrap()
}

#[actix_web::test]
async fn metrics_count_outcomes_and_store_round_trips() {
    let h = memory_harness().await;
    let authenticated = r#"auth_attempts_total{outcome="authenticated"}"#;
    let invalid = r#"auth_attempts_total{outcome="invalid_api_key"}"#;
    let lookups = r#"storage_operations_total{operation="lookup"}"#;
    // Other tests in this process count into the same registry, so compare with at-least.
    let before = metrics_text(&h.app).await;

    for _ in 0..3 {
        let (status, _, _) =
            call(&h.app, with_key(TestRequest::get().uri("/protected"), &h.admin)).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Change the last checksum character, so the key fails before any lookup.
    let last = if h.admin.ends_with('x') { 'y' } else { 'x' };
    let garbage = format!("{}{last}", &h.admin[..h.admin.len() - 1]);
    call(&h.app, with_key(TestRequest::get().uri("/protected"), &garbage)).await;

    let after = metrics_text(&h.app).await;
    assert!(series(&after, authenticated) >= series(&before, authenticated) + 3);
    assert!(series(&after, invalid) > series(&before, invalid));
    assert!(
        series(&after, lookups) > series(&before, lookups),
        "the first use of a key reads the store:\n{after}"
    );
    assert!(after.ends_with("# EOF\n"), "OpenMetrics text");
    assert!(!after.contains(&h.admin[..20]), "no key material");
}
