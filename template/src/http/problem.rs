//! The one place where failures become HTTP responses: `application/problem+json` bodies (RFC 9457)
//! with a stable `code` that clients can match on.

use std::sync::LazyLock;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::keys::ServiceError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("this API key lacks the required scope")]
    InsufficientScope { required: Vec<String> },
    /// Refused for a reason of its own, with its own stable code (a manager asking beyond its reach).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// The key is not in a state that allows the change.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("no API key with this id")]
    KeyNotFound,
    #[error("no such route")]
    RouteNotFound,
    /// The path exists, with other methods: `allow` lists them.
    #[error("this route does not answer this method")]
    MethodNotAllowed { allow: String },
    #[error("{message}")]
    Validation {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    BadRequest(String),
    /// Too many failed authentications from this client (or for this key id): wait `retry_after`.
    #[error("too many failed authentications, try again later")]
    Throttled { retry_after: std::time::Duration },
    /// The key's own rate limit: wait `retry_after`.
    #[error("this API key's rate limit is exhausted, try again later")]
    RateLimited { retry_after: std::time::Duration },
    /// The key's quota is used up; with a refill, it fills again after `retry_after`.
    #[error("this API key has no uses left")]
    UsageExceeded {
        retry_after: Option<std::time::Duration>,
    },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("storage is unavailable, try again later")]
    StorageUnavailable,
    #[error("internal error")]
    Internal,
}

/// What a problem answer with each status means on the key-management routes, for the OpenAPI
/// document (which gives each operation those its shape allows).
pub const MANAGEMENT_PROBLEMS: [(u16, &str); 5] = [
    (
        400,
        "Malformed JSON, an unknown field or a bad query string (`bad_request`)",
    ),
    (
        403,
        "The key lacks the admin and manage scopes (`insufficient_scope`), or a manager key asked \
         beyond its reach: another owner, a scope it lacks, a later expiry or looser limits than its \
         own, re-enabling a key, or every key's events",
    ),
    (404, "No such key (`api_key_not_found`)"),
    (413, "Body too large (`payload_too_large`)"),
    (
        422,
        "A field is out of bounds (`validation_failed`, naming the `field`)",
    ),
];

/// An `application/problem+json` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// The HTTP status phrase.
    #[schema(example = "Forbidden")]
    pub title: String,
    #[schema(example = 403)]
    pub status: u16,
    /// What went wrong, for people.
    #[schema(example = "this API key lacks the required scope")]
    pub detail: String,
    /// What went wrong, for programs; stable across versions.
    #[schema(example = "insufficient_scope")]
    pub code: &'static str,
    /// With `insufficient_scope`: the scopes the route requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_scopes: Option<Vec<String>>,
    /// With `validation_failed`: the offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Auth(err) => err.code(),
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::Forbidden { code, .. } | Self::Conflict { code, .. } => code,
            Self::KeyNotFound => "api_key_not_found",
            Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Validation { .. } => "validation_failed",
            Self::BadRequest(_) => "bad_request",
            Self::Throttled { .. } => "too_many_failed_attempts",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::UsageExceeded { .. } => "usage_exceeded",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::StorageUnavailable => "storage_unavailable",
            Self::Internal => "internal_error",
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status_code();
        Problem {
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: self.code(),
            required_scopes: match self {
                Self::InsufficientScope { required } => Some(required.clone()),
                _ => None,
            },
            field: match self {
                Self::Validation { field, .. } => Some(field),
                _ => None,
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Auth(AuthError::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Auth(AuthError::NotInstalled) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Auth(AuthError::Throttled)
            | Self::Throttled { .. }
            | Self::RateLimited { .. }
            | Self::UsageExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Auth(_) => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope { .. } | Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::KeyNotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.content_type("application/problem+json");
        if let Self::Auth(err) = self
            && let Some(challenge) = err.challenge()
        {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            ));
        }
        if matches!(
            self,
            Self::StorageUnavailable | Self::Auth(AuthError::Unavailable)
        ) {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        if let Self::MethodNotAllowed { allow } = self {
            response.insert_header((header::ALLOW, allow.as_str()));
        }
        if let Self::Throttled { retry_after }
        | Self::RateLimited { retry_after }
        | Self::UsageExceeded {
            retry_after: Some(retry_after),
        } = self
        {
            response.insert_header((header::RETRY_AFTER, whole_seconds(*retry_after)));
        }
        match self {
            Self::Auth(err) => response.body(auth_problem(*err)),
            _ => response.json(self.problem()),
        }
    }
}

/// Whole seconds, rounded up, and at least one (RFC 9110 §10.2.3).
pub fn whole_seconds(duration: std::time::Duration) -> u64 {
    (duration.as_secs() + u64::from(duration.subsec_nanos() > 0)).max(1)
}

/// The body of an authentication failure. Bad keys are what a flood sends, so these bodies are
/// rendered once and then shared, not serialised per request.
fn auth_problem(err: AuthError) -> Bytes {
    static BODIES: LazyLock<Vec<Bytes>> = LazyLock::new(|| {
        AuthError::ALL
            .iter()
            .map(|&err| {
                let body = serde_json::to_vec(&ApiError::Auth(err).problem());
                Bytes::from(body.expect("a problem serialises"))
            })
            .collect()
    });
    BODIES[err as usize].clone()
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Duplicate | StoreError::Corrupt(_) => {
                tracing::error!(error = %err, "storage returned an unexpected result");
                Self::Internal
            }
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "storage is unavailable");
                Self::StorageUnavailable
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Invalid { field, message } => Self::Validation { field, message },
            ServiceError::NotFound => Self::KeyNotFound,
            ServiceError::Forbidden { code, message } => Self::Forbidden { code, message },
            ServiceError::Conflict { code, message } => Self::Conflict { code, message },
            ServiceError::Store(err) => err.into(),
        }
    }
}

/// Turns actix's own extractor errors (bad JSON, bad query strings, oversize bodies) into problems.
pub mod extractors {
    use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
    use actix_web::{HttpRequest, web};

    use super::ApiError;

    /// Largest JSON body accepted, in bytes.
    pub const JSON_LIMIT: usize = 16 * 1024;

    pub fn json_config() -> web::JsonConfig {
        web::JsonConfig::default()
            .limit(JSON_LIMIT)
            .error_handler(|err, _: &HttpRequest| {
                match err {
                    JsonPayloadError::OverflowKnownLength { .. }
                    | JsonPayloadError::Overflow { .. } => {
                        ApiError::PayloadTooLarge { limit: JSON_LIMIT }
                    }
                    JsonPayloadError::ContentType => ApiError::BadRequest(
                        "the body must be JSON (Content-Type: application/json)".into(),
                    ),
                    JsonPayloadError::Deserialize(err) => {
                        ApiError::BadRequest(format!("invalid JSON body: {err}"))
                    }
                    other => ApiError::BadRequest(format!("invalid JSON body: {other}")),
                }
                .into()
            })
    }

    pub fn query_config() -> web::QueryConfig {
        web::QueryConfig::default().error_handler(|err, _: &HttpRequest| {
            let QueryPayloadError::Deserialize(err) = err else {
                return ApiError::BadRequest("invalid query string".into()).into();
            };
            ApiError::BadRequest(format!("invalid query string: {err}")).into()
        })
    }

    pub fn path_config() -> web::PathConfig {
        web::PathConfig::default().error_handler(|err, _: &HttpRequest| {
            let PathError::Deserialize(err) = err else {
                return ApiError::BadRequest("invalid path".into()).into();
            };
            ApiError::BadRequest(format!("invalid path: {err}")).into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_auth_bodies_are_the_problems_they_stand_for() {
        for (i, &err) in AuthError::ALL.iter().enumerate() {
            assert_eq!(err as usize, i, "AuthError::ALL is in declaration order");
            let shared: serde_json::Value = serde_json::from_slice(&auth_problem(err)).unwrap();
            let fresh = serde_json::to_value(ApiError::Auth(err).problem()).unwrap();
            assert_eq!(shared, fresh);
            assert_eq!(shared["code"], err.code());
        }
    }
}
