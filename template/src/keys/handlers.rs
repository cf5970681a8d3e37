//! The key-management routes, mounted under `API_KEYS_ROUTE_PREFIX`: open to keys holding the admin
//! scope (every key), or the manage scope (their owner's keys; see [`Manager`]).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::service::{self, ApiKeyService, KeyStatus, MAX_LIFETIME_SECONDS, Manager};
use crate::error::{ApiError, Problem};
use crate::store::{ApiKeyRecord, ListQuery};

#[derive(OpenApi)]
#[openapi(
    paths(create_key, list_keys, get_key, revoke_key),
    components(schemas(CreateKeyRequest, KeyCreated, KeyDetails, KeyList, KeyStatus))
)]
pub struct KeysApi;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create_key)
        .service(list_keys)
        .service(get_key)
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
}

/// A key just created. `key` is shown here once and cannot be retrieved again.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    pub id: String,
    /// The API key itself. Store it now: only its digest is kept.
    pub key: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub owner_id: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
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
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Requests made with this key.
    pub request_count: u64,
}

impl From<ApiKeyRecord> for KeyDetails {
    fn from(record: ApiKeyRecord) -> Self {
        Self {
            status: KeyStatus::of(&record),
            id: record.id,
            name: record.name,
            scopes: record.scopes,
            owner_id: record.owner_id,
            metadata: record.metadata,
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            last_used_at: record.last_used_at,
            request_count: record.request_count,
        }
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only keys of this owner.
    pub owner_id: Option<String>,
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
        (status = 201, description = "Key created", body = KeyCreated),
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
    let expires_at = match (body.expires_in, body.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Validation {
                field: "expires_in",
                message: "give expires_in or expires_at, not both".into(),
            });
        }
        (Some(seconds), None) => Some(expiry_in(seconds)?),
        (None, at) => at,
    };
    let created = service
        .create_key(
            &by,
            service::NewKey {
                name: body.name,
                scopes: body.scopes,
                owner_id: body.owner_id,
                expires_at,
                metadata: body.metadata.unwrap_or_default(),
            },
        )
        .await?;
    let location = format!("{}/{}", req.path().trim_end_matches('/'), created.record.id);
    let record = created.record;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(KeyCreated {
            id: record.id,
            key: created.key.to_string(),
            name: record.name,
            scopes: record.scopes,
            owner_id: record.owner_id,
            metadata: record.metadata,
            created_at: record.created_at,
            expires_at: record.expires_at,
        }))
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
        (status = 422, description = "limit out of range", body = Problem, content_type = "application/problem+json"),
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
        owner_id: params.owner_id,
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
