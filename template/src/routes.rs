//! Example routes: two that need any valid key, and one that needs a scope. Replace them with your
//! own; keep the attribute order, and register each handler below: that one line also puts it in
//! the OpenAPI document, with the scopes its guard enforces.

use actix_web::{HttpResponse, delete, get, web};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::auth::ApiKey;
use crate::http::{require_api_key, require_scope};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(protected).service(api_data).service(delete_user);
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Any valid key
#[utoipa::path(tag = "examples", responses((status = 200, body = Status)))]
#[get("/protected")]
#[require_api_key]
pub async fn protected() -> web::Json<Status> {
    web::Json(Status { status: "authenticated" })
}

/// Any valid key, and who it belongs to
#[utoipa::path(tag = "examples", responses((status = 200, description = "Data for the calling key")))]
#[get("/api/data")]
#[require_api_key]
pub async fn api_data(key: ApiKey) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "data": "sensitive",
        "key_id": key.id(),
        "owner_id": key.owner_id(),
    }))
}

/// Needs the `admin:delete` scope
#[utoipa::path(
    tag = "examples",
    params(("user_id" = String, Path, description = "The user to delete")),
    responses((status = 204, description = "Deleted"))
)]
#[delete("/api/admin/users/{user_id}")]
#[require_scope("admin:delete")]
pub async fn delete_user(user_id: web::Path<String>) -> HttpResponse {
    // Debug formatting escapes control characters: a path segment cannot forge log lines.
    tracing::info!(user_id = ?user_id.as_str(), "user deleted");
    HttpResponse::NoContent().finish()
}
