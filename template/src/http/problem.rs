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
use crate::auth::limits::{Refusal, whole_seconds};
use crate::keys::ServiceError;
use crate::store::StoreError;

/// Every way a request fails, each with its status and stable `code`: the domain's refusals as
/// they are, and what only HTTP knows (routes, methods, bodies).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The key's own rate limit or quota refused the request, or its quota could not be read.
    #[error(transparent)]
    Limited(#[from] Refusal),
    /// The key service refused the change (bad field, no such key, beyond a manager's reach, the
    /// wrong state). Its storage errors answer, and are logged, as [`StoreError`]s do: `?` turns
    /// them into `StorageUnavailable` or `Internal`.
    #[error(transparent)]
    Service(ServiceError),
    #[error("this API key lacks the required scope")]
    InsufficientScope { required: Vec<String> },
    #[error("no such route")]
    RouteNotFound,
    /// The path exists, with other methods: `allow` lists them.
    #[error("this route does not answer this method")]
    MethodNotAllowed { allow: String },
    #[error("{0}")]
    BadRequest(String),
    /// Too many failed authentications from this client (or for this key id): wait `retry_after`.
    #[error("too many failed authentications, try again later")]
    Throttled { retry_after: std::time::Duration },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("storage is unavailable, try again later")]
    StorageUnavailable,
    #[error("internal error")]
    Internal,
}

/// What a problem answer with each status means on the key-management routes, for the OpenAPI
/// document (which gives each operation those its shape allows).
pub fn management_problems() -> [(u16, String); 5] {
    let invalid = ServiceError::Invalid { field: "", message: String::new() };
    [
        (
            ApiError::BadRequest(String::new()),
            "Malformed JSON, an unknown field or a bad query string",
        ),
        (
            ApiError::InsufficientScope { required: vec![] },
            "The key lacks the admin and manage scopes, or a manager key asked beyond its reach: \
             another owner, a scope it lacks, a later expiry or looser limits than its own, \
             re-enabling a key, or every key's events",
        ),
        (ApiError::Service(ServiceError::NotFound), "No such key"),
        (ApiError::PayloadTooLarge { limit: 0 }, "Body too large"),
        (ApiError::Service(invalid), "A field is out of bounds, named in `field`"),
    ]
    .map(|(err, what)| (err.status_code().as_u16(), format!("{what} (`{}`)", err.code())))
}

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
            Self::Limited(refusal) => refusal.code(),
            Self::Service(ServiceError::Invalid { .. }) => "validation_failed",
            Self::Service(ServiceError::NotFound) => "api_key_not_found",
            Self::Service(
                ServiceError::Forbidden { code, .. } | ServiceError::Conflict { code, .. },
            ) => code,
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::BadRequest(_) => "bad_request",
            Self::Throttled { .. } => AuthError::Throttled.code(),
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Service(ServiceError::Store(err)) => answer(err).code(),
            Self::StorageUnavailable => AuthError::Unavailable.code(),
            Self::Internal => AuthError::NotInstalled.code(),
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status_code();
        Problem {
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: match self {
                Self::Service(ServiceError::Invalid { message, .. }) => message.clone(),
                Self::Service(ServiceError::Store(err)) => answer(err).to_string(),
                _ => self.to_string(),
            },
            code: self.code(),
            required_scopes: match self {
                Self::InsufficientScope { required } => Some(required.clone()),
                _ => None,
            },
            field: match self {
                Self::Service(ServiceError::Invalid { field, .. }) => Some(field),
                _ => None,
            },
        }
    }

    /// How long the client should wait, when it should.
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Throttled { retry_after } => Some(*retry_after),
            Self::Limited(refusal) => refusal.retry_after(),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Service(ServiceError::Store(err)) => answer(err).status_code(),
            Self::Auth(AuthError::Unavailable)
            | Self::Limited(Refusal::Unavailable)
            | Self::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Auth(AuthError::NotInstalled) | Self::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::Auth(AuthError::Throttled) | Self::Throttled { .. } | Self::Limited(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Auth(_) => StatusCode::UNAUTHORIZED,
            Self::Service(ServiceError::Invalid { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Service(ServiceError::NotFound) | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::Service(ServiceError::Forbidden { .. }) | Self::InsufficientScope { .. } => {
                StatusCode::FORBIDDEN
            }
            Self::Service(ServiceError::Conflict { .. }) => StatusCode::CONFLICT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Service(ServiceError::Store(err)) = self {
            log(err);
        }
        let status = self.status_code();
        let mut response = HttpResponse::build(status);
        response.content_type("application/problem+json");
        if let Self::Auth(err) = self
            && let Some(challenge) = err.challenge()
        {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge)));
        }
        if let Self::MethodNotAllowed { allow } = self {
            response.insert_header((header::ALLOW, allow.as_str()));
        }
        match self.retry_after() {
            Some(wait) => response.insert_header((header::RETRY_AFTER, whole_seconds(wait))),
            None if status == StatusCode::SERVICE_UNAVAILABLE => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")))
            }
            None => &mut response,
        };
        match self {
            Self::Auth(err) => response.body(auth_problem(*err)),
            _ => response.json(self.problem()),
        }
    }
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

/// What a storage error answers as, however it arrives: 503 while storage is unreachable, 500 for
/// anything else; never in the store's own words, which can name hosts, tables or data.
fn answer(err: &StoreError) -> ApiError {
    match err {
        StoreError::Unavailable(_) => ApiError::StorageUnavailable,
        StoreError::Duplicate | StoreError::Corrupt(_) => ApiError::Internal,
    }
}

fn log(err: &StoreError) {
    match err {
        StoreError::Unavailable(reason) => tracing::warn!(%reason, "storage is unavailable"),
        other => tracing::error!(error = %other, "storage returned an unexpected result"),
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        log(&err);
        answer(&err)
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Store(err) => err.into(),
            refused => Self::Service(refused),
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
        web::JsonConfig::default().limit(JSON_LIMIT).error_handler(|err, _: &HttpRequest| {
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
    fn a_store_error_answers_the_same_however_it_arrives() {
        let errors = || {
            [
                StoreError::Unavailable("db.internal:5432 refused".into()),
                StoreError::Corrupt("row 7 of api_keys".into()),
                StoreError::Duplicate,
            ]
        };
        for (err, status) in errors().into_iter().zip([503, 500, 500]) {
            let wrapped = ApiError::Service(ServiceError::Store(err));
            assert_eq!(wrapped.status_code().as_u16(), status);
            let body = serde_json::to_string(&wrapped.problem()).unwrap();
            assert!(!body.contains("db.internal") && !body.contains("row 7"), "{body}");
        }
        for (bare, err) in errors().into_iter().zip(errors()) {
            let (bare, wrapped) =
                (ApiError::from(bare), ApiError::Service(ServiceError::Store(err)));
            assert_eq!(
                serde_json::to_value(bare.problem()).unwrap(),
                serde_json::to_value(wrapped.problem()).unwrap()
            );
        }
    }

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
