//! The routes for operators: `GET /health` (the process answers), `GET /ready` (it can do its job:
//! the key store, and the Redis cache when configured, answer) and `GET /metrics`.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::metrics;
use crate::store::Backend;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// What the readiness probe found, dependency by dependency.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: &'static str,
    /// `ok` or `unavailable` for each dependency; why one is unavailable goes to the log, not to
    /// whoever asks.
    #[schema(example = json!({"store": "ok", "redis_cache": "unavailable"}))]
    pub checks: std::collections::BTreeMap<&'static str, &'static str>,
}

/// Liveness check
///
/// Answers while the process serves requests; it checks nothing else, so that a database outage
/// does not get every instance restarted.
#[utoipa::path(tag = "operations", responses((status = 200, body = Health)))]
#[get("/health")]
pub async fn health() -> web::Json<Health> {
    web::Json(Health { status: "ok" })
}

/// Readiness check
///
/// 200 when the key store (and the Redis cache, when configured) answers; 503 naming what does not.
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency cannot be reached", body = Readiness),
    )
)]
#[get("/ready")]
pub async fn ready(store: web::Data<dyn Backend>) -> HttpResponse {
    let mut ready = true;
    let mut checks = std::collections::BTreeMap::new();
    for (name, outcome) in store.health_checks().await {
        let verdict = match outcome {
            Ok(()) => "ok",
            Err(err) => {
                tracing::warn!(dependency = name, error = %err, "not ready");
                ready = false;
                "unavailable"
            }
        };
        checks.insert(name, verdict);
    }
    let body = Readiness { status: if ready { "ready" } else { "not_ready" }, checks };
    if !ready {
        return HttpResponse::ServiceUnavailable().json(body);
    }
    HttpResponse::Ok().json(body)
}

/// Prometheus metrics
///
/// Counters of authentication outcomes, cache hits and store round trips, request durations and the
/// usage flush lag, for a Prometheus scraper.
/// They carry no key ids or secrets; still, expose this route to your monitoring network only.
#[utoipa::path(
    tag = "operations",
    operation_id = "metrics",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text"))
)]
#[get("/metrics")]
pub async fn serve_metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics().render())
}
