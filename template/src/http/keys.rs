//! The key-management routes, mounted under `API_KEYS_ROUTE_PREFIX`: open to keys holding the admin
//! scope (every key), or the manage scope (their owner's keys; see [`Manager`]).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use utoipa_actix_web::service_config::ServiceConfig;

use super::bodies::{EventList, KeyCreated, KeyDetails, KeyList, ListParams, PageParams};
use super::{ApiError, Problem};
use crate::keys::validation::{DEFAULT_GRACE_SECONDS, DEFAULT_PAGE_SIZE, expiring_within};
use crate::keys::{ApiKeyService, CreatedKey, Manager, Rotation};
use crate::model::{KeyChanges, NewKey};
use crate::store::ListQuery;

/// The tag of these operations, by which the OpenAPI document finds them to give them the
/// management scopes and problem answers.
pub const MANAGEMENT_TAG: &str = "API keys";

pub fn routes(cfg: &mut ServiceConfig) {
    // `/events` before `/{id}`, which would otherwise take it for a key id.
    cfg.service(create_key)
        .service(list_keys)
        .service(list_all_events)
        .service(get_key)
        .service(update_key)
        .service(rotate_key)
        .service(list_key_events)
        .service(revoke_key);
}

/// Create a key
///
/// The response carries the key itself, once.
#[utoipa::path(
    tag = MANAGEMENT_TAG,
    request_body = NewKey,
    responses(
        (status = 201, description = "Key created", body = KeyCreated, example = json!({
            "id": "4fTq9ZbX2mKp", "key": "sk_4fTq9ZbX2mKp_…", "name": "billing-sync",
            "scopes": ["invoices:read"], "owner_id": "team-billing", "metadata": {},
            "status": "active", "enabled": true, "created_at": "2026-11-25T09:00:00Z",
            "expires_at": null, "expires_in_seconds": null, "revoked_at": null,
            "last_used_at": null, "request_count": 0,
            "rate_limit": {"requests": 100, "window": 60}, "remaining": 10000,
            "refill": {"interval": "monthly", "amount": 10000},
            "refilled_at": "2026-11-25T09:00:00Z", "rotated_from": null, "replaced_by": null,
            "retires_at": null
        })),
    )
)]
#[post("")]
pub async fn create_key(
    by: Manager,
    req: HttpRequest,
    service: web::Data<ApiKeyService>,
    body: web::Json<NewKey>,
) -> Result<HttpResponse, ApiError> {
    let created = service.create_key(&by, body.into_inner()).await?;
    let location = format!("{}/{}", req.path().trim_end_matches('/'), created.record.id);
    Ok(created_response(location, created))
}

/// 201 with the new key, which no cache may keep.
fn created_response(location: String, created: CreatedKey) -> HttpResponse {
    HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(KeyCreated::from(created))
}

/// List keys
#[utoipa::path(
    tag = MANAGEMENT_TAG,
    params(ListParams),
    responses(
        (status = 200, description = "A page of keys", body = KeyList),
    )
)]
#[get("")]
pub async fn list_keys(
    by: Manager,
    service: web::Data<ApiKeyService>,
    params: web::Query<ListParams>,
) -> Result<web::Json<KeyList>, ApiError> {
    let params = params.into_inner();
    let query = ListQuery {
        expiring: expiring_within(params.expiring_within_days)?,
        owner_id: params.owner_id,
        limit: params.limit.unwrap_or(DEFAULT_PAGE_SIZE),
        offset: params.offset.unwrap_or(0),
    };
    let page = service.list_keys(&by, &query).await?;
    Ok(web::Json(KeyList::of(page, query.limit, query.offset)))
}

/// Get a key
#[utoipa::path(
    tag = MANAGEMENT_TAG,
    params(("id" = String, Path, description = "The key's public id")),
    responses(
        (status = 200, description = "The key's details", body = KeyDetails),
    )
)]
#[get("/{id}")]
pub async fn get_key(
    by: Manager,
    service: web::Data<ApiKeyService>,
    id: web::Path<String>,
) -> Result<web::Json<KeyDetails>, ApiError> {
    Ok(web::Json(service.get_key(&by, &id).await?.into()))
}

/// Revoke a key
///
/// The key stops working at once. Revoking a revoked key succeeds again.
#[utoipa::path(
    tag = MANAGEMENT_TAG,
    params(("id" = String, Path, description = "The key's public id")),
    responses(
        (status = 204, description = "Revoked"),
    )
)]
#[delete("/{id}")]
pub async fn revoke_key(
    by: Manager,
    service: web::Data<ApiKeyService>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    service.revoke_key(&by, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Update a key
///
/// Rename it, replace its scopes or metadata, change its expiry or limits, or disable and enable it.
/// Every instance sees the change within the revocation bound.
#[utoipa::path(
    tag = MANAGEMENT_TAG,
    params(("id" = String, Path, description = "The key's public id")),
    request_body = KeyChanges,
    responses(
        (status = 200, description = "The key as changed", body = KeyDetails),
    )
)]
#[patch("/{id}")]
pub async fn update_key(
    by: Manager,
    service: web::Data<ApiKeyService>,
    id: web::Path<String>,
    body: web::Json<KeyChanges>,
) -> Result<web::Json<KeyDetails>, ApiError> {
    Ok(web::Json(service.update_key(&by, &id, body.into_inner()).await?.into()))
}

/// Rotate a key
///
/// Issues a new key with the same name, owner, scopes, metadata and limits, shown once. The old key
/// keeps working for `grace_period` seconds, charged to the new key's limits, then fails with
/// `rotated_api_key`.
#[utoipa::path(
    tag = MANAGEMENT_TAG,
    params(("id" = String, Path, description = "The key's public id")),
    request_body(content = Rotation, example = json!({"grace_period": DEFAULT_GRACE_SECONDS})),
    responses(
        (status = 201, description = "The new key", body = KeyCreated),
        (status = 409, description = "The key is revoked (`key_revoked`), expired (`key_expired`) or already rotated (`already_rotated`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/{id}/rotate")]
pub async fn rotate_key(
    by: Manager,
    req: HttpRequest,
    service: web::Data<ApiKeyService>,
    id: web::Path<String>,
    body: web::Json<Rotation>,
) -> Result<HttpResponse, ApiError> {
    let created = service.rotate_key(&by, &id, body.into_inner()).await?;
    let prefix = req.path().trim_end_matches("/rotate");
    let location =
        format!("{}/{}", prefix.rsplit_once('/').map_or(prefix, |(p, _)| p), created.record.id);
    Ok(created_response(location, created))
}

/// List a key's events
///
/// Every change to the key (created, updated, rotated, revoked), newest first.
#[utoipa::path(
    tag = MANAGEMENT_TAG,
    params(("id" = String, Path, description = "The key's public id"), PageParams),
    responses(
        (status = 200, description = "A page of events", body = EventList, example = json!({
            "items": [{
                "id": "9c1f0e4b7a2d3e58", "key_id": "4fTq9ZbX2mKp", "action": "updated",
                "actor_key_id": "Qm8Jr2VxTn4L", "client": "203.0.113.7",
                "changes": {"enabled": false}, "at": "2026-11-25T09:30:00Z"
            }],
            "total": 1, "limit": 50, "offset": 0
        })),
    )
)]
#[get("/{id}/events")]
pub async fn list_key_events(
    by: Manager,
    service: web::Data<ApiKeyService>,
    id: web::Path<String>,
    params: web::Query<PageParams>,
) -> Result<web::Json<EventList>, ApiError> {
    let page = service.key_events(&by, &id, params.limit(), params.offset()).await?;
    Ok(web::Json(EventList::of(page, params.limit(), params.offset())))
}

/// List every key's events
///
/// The whole audit log, newest first. Admin keys only.
#[utoipa::path(
    tag = MANAGEMENT_TAG,
    params(PageParams),
    responses(
        (status = 200, description = "A page of events", body = EventList),
    )
)]
#[get("/events")]
pub async fn list_all_events(
    by: Manager,
    service: web::Data<ApiKeyService>,
    params: web::Query<PageParams>,
) -> Result<web::Json<EventList>, ApiError> {
    let page = service.all_events(&by, params.limit(), params.offset()).await?;
    Ok(web::Json(EventList::of(page, params.limit(), params.offset())))
}
