//! The key-management routes, mounted under `API_KEYS_ROUTE_PREFIX`: open to keys holding the admin
//! scope (every key), or the manage scope (their owner's keys; see [`Manager`]).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};
use zeroize::Zeroizing;

use super::service::{self, ApiKeyService, CreatedKey, KeyStatus, KeyUpdate, Manager, Rotation};
use super::validation::{DEFAULT_GRACE_SECONDS, MAX_LIFETIME_SECONDS};
use crate::error::{ApiError, Problem};
use crate::store::{
    ApiKeyRecord, EventAction, KeyEvent, ListQuery, Page, RateLimit, Refill, RefillInterval,
};

#[derive(OpenApi)]
#[openapi(
    paths(
        create_key,
        list_keys,
        list_all_events,
        get_key,
        update_key,
        rotate_key,
        list_key_events,
        revoke_key
    ),
    components(schemas(
        CreateKeyRequest,
        UpdateKeyRequest,
        RotateKeyRequest,
        KeyCreated,
        KeyDetails,
        KeyList,
        KeyStatus,
        RateLimit,
        Refill,
        RefillInterval,
        EventDetails,
        EventList,
        EventAction
    ))
)]
pub struct KeysApi;

pub fn routes(cfg: &mut web::ServiceConfig) {
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

/// A new key. Give at most one of `expires_in` and `expires_at`; with neither, the key does not expire.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    #[schema(example = "billing-sync", min_length = 1, max_length = 100)]
    pub name: String,
    /// Scopes the key holds: `resource:action`, `resource:*` or `*`.
    #[serde(default)]
    #[schema(example = json!(["invoices:read", "invoices:write"]))]
    pub scopes: Vec<String>,
    /// Whoever the key belongs to, for listing by owner.
    #[schema(example = "team-billing")]
    pub owner_id: Option<String>,
    /// Lifetime in seconds from now.
    #[schema(example = 2592000, minimum = 1)]
    pub expires_in: Option<u64>,
    /// Expiry as an RFC 3339 time with an offset.
    pub expires_at: Option<DateTime<Utc>>,
    /// Free-form JSON object stored with the key (at most 4 KiB).
    #[schema(value_type = Object, example = json!({"ticket": "OPS-42"}))]
    pub metadata: Option<Map<String, Value>>,
    /// At most `requests` per `window` seconds on guarded routes; then 429 `rate_limit_exceeded`.
    pub rate_limit: Option<RateLimit>,
    /// Uses the key may make on guarded routes; then 429 `usage_exceeded`. With a `refill` and no
    /// `remaining`, the quota starts full.
    #[schema(example = 10000, minimum = 0)]
    pub remaining: Option<u64>,
    pub refill: Option<Refill>,
}

/// Changes to a key: absent fields stay as they are; `null` clears `expires_at`, `rate_limit`,
/// `remaining` and `refill`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "billing-sync (2026)", "enabled": false, "rate_limit": {"requests": 100, "window": 60}}))]
pub struct UpdateKeyRequest {
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// Replaces the key's scopes. A manager key grants only scopes it holds.
    pub scopes: Option<Vec<String>>,
    /// Replaces the key's metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// `false` refuses the key (`disabled_api_key`) until set back to `true`.
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 0)]
    pub remaining: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Refill>)]
    pub refill: Option<Option<Refill>>,
}

/// A field that was sent, possibly as `null` (`Some(None)`), as opposed to one left out (`None`).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// How to rotate a key. Send `{}` for the defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// Seconds the old key keeps working, 0 to 2592000 (30 days); 86400 unless given.
    #[schema(example = 3600, minimum = 0, maximum = 2592000)]
    pub grace_period: Option<u64>,
    /// The new key's lifetime in seconds from now; the old key's expiry unless given.
    #[schema(minimum = 1)]
    pub expires_in: Option<u64>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key just created. `key` is shown here once and cannot be retrieved again; this type has no
/// `Debug`, so it cannot be logged by accident.
#[derive(Serialize, ToSchema)]
pub struct KeyCreated {
    pub id: String,
    /// The API key itself. Store it now: only its digest is kept.
    #[schema(value_type = String)]
    pub key: Zeroizing<String>,
    pub name: String,
    pub scopes: Vec<String>,
    pub owner_id: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limit: Option<RateLimit>,
    pub remaining: Option<u64>,
    pub refill: Option<Refill>,
    /// The key this one replaced, after a rotation.
    pub rotated_from: Option<String>,
}

impl From<CreatedKey> for KeyCreated {
    fn from(created: CreatedKey) -> Self {
        let record = created.record;
        Self {
            id: record.id,
            key: created.key,
            name: record.name,
            scopes: record.scopes,
            owner_id: record.owner_id,
            metadata: record.metadata,
            created_at: record.created_at,
            expires_at: record.expires_at,
            rate_limit: record.rate_limit,
            remaining: record.remaining,
            refill: record.refill,
            rotated_from: record.rotated_from,
        }
    }
}

/// A key's details. The key itself and its digest are never returned.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyDetails {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub owner_id: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub status: KeyStatus,
    /// `false` while disabled.
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Seconds until the key expires (0 once expired), for expiry warnings.
    #[schema(example = 604800)]
    pub expires_in_seconds: Option<i64>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Requests made with this key.
    pub request_count: u64,
    pub rate_limit: Option<RateLimit>,
    /// Uses left, when the key has a quota.
    pub remaining: Option<u64>,
    pub refill: Option<Refill>,
    /// The key this one replaced, after a rotation.
    pub rotated_from: Option<String>,
    /// The key that replaced this one.
    pub replaced_by: Option<String>,
    /// When this rotated key stops working.
    pub retires_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRecord> for KeyDetails {
    fn from(record: ApiKeyRecord) -> Self {
        Self {
            status: KeyStatus::of(&record),
            expires_in_seconds: record
                .expires_at
                .map(|at| (at - Utc::now()).num_seconds().max(0)),
            id: record.id,
            name: record.name,
            scopes: record.scopes,
            owner_id: record.owner_id,
            metadata: record.metadata,
            enabled: record.enabled,
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            last_used_at: record.last_used_at,
            request_count: record.request_count,
            rate_limit: record.rate_limit,
            remaining: record.remaining,
            refill: record.refill,
            rotated_from: record.rotated_from,
            replaced_by: record.replaced_by,
            retires_at: record.retires_at,
        }
    }
}

/// One recorded change to a key.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventDetails {
    pub id: String,
    pub key_id: String,
    pub action: EventAction,
    /// The key that made the change; `null` for the operator (command line, start-up, server code).
    pub actor_key_id: Option<String>,
    /// The address the change came from.
    pub client: Option<String>,
    /// Changed fields and their new values. Never a key or its digest.
    #[schema(value_type = Object, example = json!({"enabled": false}))]
    pub changes: Map<String, Value>,
    pub at: DateTime<Utc>,
}

impl From<KeyEvent> for EventDetails {
    fn from(event: KeyEvent) -> Self {
        Self {
            id: event.id,
            key_id: event.key_id,
            action: event.action,
            actor_key_id: event.actor_key_id,
            client: event.client,
            changes: event.changes,
            at: event.at,
        }
    }
}

/// One page of events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub items: Vec<EventDetails>,
    /// How many events match, over all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

impl EventList {
    fn of(page: Page<KeyEvent>, params: &PageParams) -> Self {
        Self {
            items: page.items.into_iter().map(EventDetails::from).collect(),
            total: page.total,
            limit: params.limit(),
            offset: params.offset(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<u32>,
    #[param(minimum = 0, default = 0)]
    pub offset: Option<u64>,
}

impl PageParams {
    fn limit(&self) -> u32 {
        self.limit.unwrap_or(50)
    }

    fn offset(&self) -> u64 {
        self.offset.unwrap_or(0)
    }
}

/// One page of keys, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyDetails>,
    /// How many keys match, over all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

// `limit` and `offset` repeat `PageParams` rather than flatten it: serde cannot flatten into a
// struct that denies unknown fields, and flattened query numbers arrive as strings.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only keys of this owner.
    pub owner_id: Option<String>,
    /// Only unrevoked keys that expire within this many days (1 to 3660).
    #[param(minimum = 1, maximum = 3660, example = 7)]
    pub expiring_within_days: Option<u32>,
    /// Page size, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<u32>,
    #[param(minimum = 0, default = 0)]
    pub offset: Option<u64>,
}

/// Create a key
///
/// The response carries the key itself, once.
#[utoipa::path(
    tag = "API keys",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "Key created", body = KeyCreated, example = json!({
            "id": "4fTq9ZbX2mKp", "key": "sk_4fTq9ZbX2mKp_…", "name": "billing-sync",
            "scopes": ["invoices:read"], "owner_id": "team-billing", "metadata": {},
            "created_at": "2026-11-25T09:00:00Z", "expires_at": null,
            "rate_limit": {"requests": 100, "window": 60}, "remaining": 10000,
            "refill": {"interval": "monthly", "amount": 10000}, "rotated_from": null
        })),
        (status = 400, description = "Malformed JSON or unknown field", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A manager key asked for another owner, a scope it lacks, or a later expiry than its own", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is out of bounds", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("")]
pub async fn create_key(
    by: Manager,
    req: HttpRequest,
    service: web::Data<ApiKeyService>,
    body: web::Json<CreateKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let expires_at = expiry(body.expires_in, body.expires_at)?;
    let created = service
        .create_key(
            &by,
            service::NewKey {
                name: body.name,
                scopes: body.scopes,
                owner_id: body.owner_id,
                expires_at,
                metadata: body.metadata.unwrap_or_default(),
                rate_limit: body.rate_limit,
                remaining: body.remaining,
                refill: body.refill,
            },
        )
        .await?;
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

/// An expiry given as `expires_in` seconds or as `expires_at`, not both.
fn expiry(
    expires_in: Option<u64>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    match (expires_in, expires_at) {
        (Some(_), Some(_)) => Err(ApiError::Validation {
            field: "expires_in",
            message: "give expires_in or expires_at, not both".into(),
        }),
        (Some(seconds), None) => Ok(Some(expiry_in(seconds)?)),
        (None, at) => Ok(at),
    }
}

fn expiry_in(seconds: u64) -> Result<DateTime<Utc>, ApiError> {
    let seconds = i64::try_from(seconds)
        .ok()
        .filter(|s| (1..=MAX_LIFETIME_SECONDS).contains(s))
        .ok_or_else(|| ApiError::Validation {
            field: "expires_in",
            message: format!("must be between 1 and {MAX_LIFETIME_SECONDS} seconds"),
        })?;
    Ok(service::now() + Duration::seconds(seconds))
}

/// List keys
#[utoipa::path(
    tag = "API keys",
    params(ListParams),
    responses(
        (status = 200, description = "A page of keys", body = KeyList),
        (status = 400, description = "Bad query string", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "limit or expiring_within_days out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("")]
pub async fn list_keys(
    by: Manager,
    service: web::Data<ApiKeyService>,
    params: web::Query<ListParams>,
) -> Result<web::Json<KeyList>, ApiError> {
    let params = params.into_inner();
    let expiring = match params.expiring_within_days {
        None => None,
        Some(days @ 1..=3660) => {
            let now = service::now();
            Some((now, now + Duration::days(i64::from(days))))
        }
        Some(_) => {
            return Err(ApiError::Validation {
                field: "expiring_within_days",
                message: "must be between 1 and 3660".into(),
            });
        }
    };
    let query = ListQuery {
        owner_id: params.owner_id,
        expiring,
        limit: params.limit.unwrap_or(50),
        offset: params.offset.unwrap_or(0),
    };
    let page = service.list_keys(&by, &query).await?;
    Ok(web::Json(KeyList {
        items: page.items.into_iter().map(KeyDetails::from).collect(),
        total: page.total,
        limit: query.limit,
        offset: query.offset,
    }))
}

/// Get a key
#[utoipa::path(
    tag = "API keys",
    params(("id" = String, Path, description = "The key's public id")),
    responses(
        (status = 200, description = "The key's details", body = KeyDetails),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
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
    tag = "API keys",
    params(("id" = String, Path, description = "The key's public id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
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
    tag = "API keys",
    params(("id" = String, Path, description = "The key's public id")),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, description = "The key as changed", body = KeyDetails),
        (status = 400, description = "Malformed JSON or unknown field", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A manager key asked for a scope it lacks or a later expiry than its own", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is out of bounds", body = Problem, content_type = "application/problem+json"),
    )
)]
#[patch("/{id}")]
pub async fn update_key(
    by: Manager,
    service: web::Data<ApiKeyService>,
    id: web::Path<String>,
    body: web::Json<UpdateKeyRequest>,
) -> Result<web::Json<KeyDetails>, ApiError> {
    let body = body.into_inner();
    let update = KeyUpdate {
        name: body.name,
        scopes: body.scopes,
        metadata: body.metadata,
        expires_at: body.expires_at,
        enabled: body.enabled,
        rate_limit: body.rate_limit,
        remaining: body.remaining,
        refill: body.refill,
    };
    Ok(web::Json(
        service.update_key(&by, &id, update).await?.into(),
    ))
}

/// Rotate a key
///
/// Issues a new key with the same name, owner, scopes, metadata and limits, shown once. The old key
/// keeps working for `grace_period` seconds, charged to the new key's limits, then fails with
/// `rotated_api_key`.
#[utoipa::path(
    tag = "API keys",
    params(("id" = String, Path, description = "The key's public id")),
    request_body(content = RotateKeyRequest, example = json!({"grace_period": DEFAULT_GRACE_SECONDS})),
    responses(
        (status = 201, description = "The new key", body = KeyCreated),
        (status = 400, description = "Malformed JSON or unknown field", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A manager key asked for a later expiry than its own, or the key holds scopes it lacks", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked (`key_revoked`), expired (`key_expired`) or already rotated (`already_rotated`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is out of bounds", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/{id}/rotate")]
pub async fn rotate_key(
    by: Manager,
    req: HttpRequest,
    service: web::Data<ApiKeyService>,
    id: web::Path<String>,
    body: web::Json<RotateKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let grace = body.grace_period.unwrap_or(DEFAULT_GRACE_SECONDS);
    let rotation = Rotation {
        // Beyond chrono's range is beyond the service's bound too: it refuses it with 422.
        grace_period: i64::try_from(grace)
            .ok()
            .and_then(Duration::try_seconds)
            .unwrap_or(Duration::MAX),
        expires_at: expiry(body.expires_in, body.expires_at)?.map(Some),
    };
    let created = service.rotate_key(&by, &id, rotation).await?;
    let prefix = req.path().trim_end_matches("/rotate");
    let location = format!(
        "{}/{}",
        prefix.rsplit_once('/').map_or(prefix, |(p, _)| p),
        created.record.id
    );
    Ok(created_response(location, created))
}

/// List a key's events
///
/// Every change to the key (created, updated, rotated, revoked), newest first.
#[utoipa::path(
    tag = "API keys",
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
        (status = 400, description = "Bad query string", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "limit out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/{id}/events")]
pub async fn list_key_events(
    by: Manager,
    service: web::Data<ApiKeyService>,
    id: web::Path<String>,
    params: web::Query<PageParams>,
) -> Result<web::Json<EventList>, ApiError> {
    let page = service
        .key_events(&by, &id, params.limit(), params.offset())
        .await?;
    Ok(web::Json(EventList::of(page, &params)))
}

/// List every key's events
///
/// The whole audit log, newest first. Admin keys only.
#[utoipa::path(
    tag = "API keys",
    params(PageParams),
    responses(
        (status = 200, description = "A page of events", body = EventList),
        (status = 400, description = "Bad query string", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key (`admin_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "limit out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/events")]
pub async fn list_all_events(
    by: Manager,
    service: web::Data<ApiKeyService>,
    params: web::Query<PageParams>,
) -> Result<web::Json<EventList>, ApiError> {
    let page = service
        .all_events(&by, params.limit(), params.offset())
        .await?;
    Ok(web::Json(EventList::of(page, &params)))
}
