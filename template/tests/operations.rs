//! What operators rely on: the liveness and readiness probes, request ids, and the request metrics.

mod common;

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;

use common::{call, harness_with, memory_harness, with_key};
use {{crate_name}}::store::MemoryBackend;

#[actix_web::test]
async fn health_and_readiness_answer_without_a_key() {
    let h = memory_harness().await;
    let (status, _, body) = call(&h.app, TestRequest::get().uri("/health")).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (status, _, body) = call(&h.app, TestRequest::get().uri("/ready")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["store"], "ok");
}

#[cfg(feature = "sqlite")]
#[actix_web::test]
async fn readiness_fails_while_the_store_is_unreachable() {
    use actix_web::test;
    use {{crate_name}}::app::{AppState, app};
    use {{crate_name}}::config::Config;

    // A database in a directory that does not exist: every connection attempt fails.
    let url = "sqlite:///nonexistent-directory/keys.db";
    let store = {{crate_name}}::store::SqlBackend::connect(url).await.unwrap();
    let state = AppState::new(Config::from_vars([]).unwrap(), Arc::new(store)).unwrap();
    let app = test::init_service(app(state)).await;
    let (status, _, body) = call(&app, TestRequest::get().uri("/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    // Why goes to the log: error texts can name hosts, files and users.
    assert_eq!(body["checks"]["store"], "unavailable", "{body}");
    assert_eq!(
        call(&app, TestRequest::get().uri("/health")).await.0,
        StatusCode::OK,
        "liveness does not depend on the database"
    );
}

#[cfg(feature = "redis")]
#[actix_web::test]
async fn readiness_names_an_unreachable_redis_cache() {
    use {{crate_name}}::store::redis::RedisCache;
    use {{crate_name}}::store::{Backend, CachedBackend};
    use std::time::Duration;

    // Nothing listens on port 1.
    let redis = RedisCache::connect("redis://127.0.0.1:1/", Duration::from_secs(60)).unwrap();
    let store: Arc<dyn Backend> =
        Arc::new(CachedBackend::new(Arc::new(MemoryBackend::default())).with_redis(redis));
    let h = harness_with(store, &[]).await;
    let (status, _, body) = call(&h.app, TestRequest::get().uri("/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["store"], "ok");
    assert_eq!(body["checks"]["redis_cache"], "unavailable", "{body}");
}

#[actix_web::test]
async fn every_answer_carries_a_request_id() {
    let h = memory_harness().await;
    let id = |headers: &actix_web::http::header::HeaderMap| {
        headers.get("x-request-id").map(|value| value.to_str().unwrap().to_owned())
    };
    let (_, headers, _) = call(&h.app, TestRequest::get().uri("/nowhere")).await;
    let made = id(&headers).expect("a new id");
    assert!(made.len() == 16 && made.bytes().all(|b| b.is_ascii_hexdigit()), "{made}");
    let (_, other, _) = call(&h.app, TestRequest::get().uri("/nowhere")).await;
    assert_ne!(id(&other).unwrap(), made, "each request gets its own");

    let given = TestRequest::get().uri("/protected").insert_header(("X-Request-Id", "edge-7f3a9c"));
    let (status, headers, _) = call(&h.app, with_key(given, &h.admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(id(&headers).as_deref(), Some("edge-7f3a9c"), "a caller's id is kept");

    let unusable =
        TestRequest::get().uri("/health").insert_header(("X-Request-Id", "has spaces in it"));
    let (_, headers, _) = call(&h.app, unusable).await;
    assert_ne!(id(&headers).as_deref(), Some("has spaces in it"));
}

#[actix_web::test]
async fn request_durations_are_recorded_by_route_pattern() {
    let h = harness_with(Arc::new(MemoryBackend::default()), &[]).await;
    let (status, _, _) =
        call(&h.app, with_key(TestRequest::get().uri("/api/v1/api-keys/4fTq9ZbX2mKp"), &h.admin))
            .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let metrics = {{crate_name}}::metrics::metrics().render();
    let series = r#"http_request_duration_seconds_count{method="GET",route="/api/v1/api-keys/{id}",status="404"}"#;
    assert!(metrics.contains(series), "{metrics}");
    assert!(!metrics.contains("4fTq9ZbX2mKp"), "ids never become label values");
    assert!(metrics.contains("usage_flush_lag_seconds"));
}

#[actix_web::test]
async fn metrics_leave_the_api_listener_when_they_have_their_own() {
    let h = harness_with(Arc::new(MemoryBackend::default()), &[("METRICS_ADDR", "127.0.0.1:9100")])
        .await;
    let (status, _, _) = call(&h.app, TestRequest::get().uri("/metrics")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, document) = call(&h.app, TestRequest::get().uri("/docs/openapi.json")).await;
    assert!(document["paths"]["/health"].is_object(), "{document}");
    assert!(document["paths"]["/metrics"].is_null());
}
