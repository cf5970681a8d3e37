//! Keys for other services. `POST {API_KEYS_ROUTE_PREFIX}/verify` tells a service that calls it
//! whether a key is good; `GET /auth/check` (`FORWARD_AUTH_PATH`) tells a proxy's forward-auth
//! (nginx `auth_request`, Traefik `forwardAuth`, Envoy `ext_authz`) whether to pass a request on.
//! Both authenticate, count, limit and audit the key exactly as a guarded route does.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;
use zeroize::Zeroizing;

use super::ApiError;
use super::guard::{self, Verifier};
use crate::auth::limits::{Admitted, LimitState, Refusal};
use crate::auth::{Allowance, ApiKey, AuthError, Authenticator};
use crate::keys::ServiceError;
use crate::keys::validation::MAX_SCOPES;
use crate::model::RateLimit;
use crate::scope::{self, Match};

/// The tag of both operations in the OpenAPI document.
pub const TAG: &str = "Other services";

/// The headers a passed check carries, for the proxy to hand upstream.
pub const KEY_ID: HeaderName = HeaderName::from_static("x-api-key-id");
pub const KEY_OWNER: HeaderName = HeaderName::from_static("x-api-key-owner");
pub const KEY_SCOPES: HeaderName = HeaderName::from_static("x-api-key-scopes");
/// The header a proxy names the scopes a request needs in, separated by spaces or commas.
pub const REQUIRED_SCOPES: HeaderName = HeaderName::from_static("x-required-scopes");

/// The verify route, registered beside the key-management routes.
pub fn verify_route(cfg: &mut ServiceConfig) {
    cfg.service(verify_key);
}

/// The forward-auth route, registered at `FORWARD_AUTH_PATH`, and below it: Envoy's `ext_authz`
/// puts the request's own path after the check's (`/auth/check/reports/monthly`).
pub fn check_route(cfg: &mut ServiceConfig) {
    cfg.service(check_key).route("/{original:.*}", web::get().to(check));
}

/// What to verify. This type has no `Debug`: the key cannot be logged by accident.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The key to verify. Never echoed back, never logged.
    #[schema(value_type = String, example = "sk_4fTq9ZbX2mKp_…")]
    key: Zeroizing<String>,
    /// Scopes the key must all hold.
    #[schema(example = json!(["reports:read"]))]
    scopes: Option<Vec<String>>,
    /// Scopes the key must hold one of (instead of `scopes`).
    any_scopes: Option<Vec<String>>,
}

/// Whether a key may do what the caller asked, and who it is.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Verdict {
    pub valid: bool,
    /// `valid`, or the code a guarded route would have refused the key with.
    #[schema(example = "valid")]
    pub code: &'static str,
    /// The key's public id, once the key is known to be genuine (also when a scope or limit
    /// refuses it); `null` for a key that did not authenticate.
    #[schema(example = "4fTq9ZbX2mKp")]
    pub key_id: Option<String>,
    pub owner_id: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The key's standing against its rate limit, when it has one.
    pub rate_limit: Option<RateStanding>,
    /// Uses left in the key's quota, when it has one.
    #[schema(example = 9999)]
    pub remaining: Option<u64>,
    /// With `rate_limit_exceeded` and `usage_exceeded`: whole seconds until the key may try again.
    pub retry_after: Option<u64>,
}

/// A rate limit and what is left of it: what the `RateLimit` fields of a guarded route say.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateStanding {
    #[serde(flatten)]
    pub limit: RateLimit,
    #[schema(example = 99)]
    pub remaining: u32,
    /// Whole seconds until the key may send a full burst again.
    #[schema(example = 1)]
    pub reset: u64,
}

impl From<LimitState> for RateStanding {
    fn from(state: LimitState) -> Self {
        let reset =
            if state.reset.is_zero() { 0 } else { super::problem::whole_seconds(state.reset) };
        Self { limit: state.limit, remaining: state.remaining, reset }
    }
}

impl Verdict {
    fn refused(code: &'static str) -> Self {
        Self { code, ..Self::default() }
    }

    /// The verdict on a genuine key: `code` and what the limits said, with who the key is.
    fn on(key: &ApiKey, code: &'static str) -> Self {
        Self {
            valid: code == "valid",
            code,
            key_id: Some(key.id().to_owned()),
            owner_id: key.owner_id().map(str::to_owned),
            scopes: Some(key.scopes().to_vec()),
            expires_at: key.expires_at(),
            ..Self::default()
        }
    }
}

/// Verify a key
///
/// For services that accept this service's keys: authenticates `key`, checks its scopes, and
/// charges its rate limit and quota, as a guarded route would. Usage is counted and failures are
/// audited (from the caller's address; the per-address failure limit does not apply to the
/// caller, which speaks for many clients). The answer is 200 whatever the verdict; a store that
/// cannot answer is 503.
#[utoipa::path(
    tag = TAG,
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The verdict", body = Verdict, examples(
            ("valid" = (value = json!({
                "valid": true, "code": "valid", "key_id": "4fTq9ZbX2mKp",
                "owner_id": "team-billing", "scopes": ["reports:read"], "expires_at": null,
                "rate_limit": {"requests": 100, "window": 60, "remaining": 99, "reset": 1},
                "remaining": 9999, "retry_after": null
            }))),
            ("revoked" = (value = json!({
                "valid": false, "code": "revoked_api_key", "key_id": null, "owner_id": null,
                "scopes": null, "expires_at": null, "rate_limit": null, "remaining": null,
                "retry_after": null
            }))),
        )),
    )
)]
#[post("/verify")]
pub async fn verify_key(
    caller: Verifier,
    authenticator: web::Data<Authenticator>,
    allowance: web::Data<Allowance>,
    body: web::Json<VerifyRequest>,
) -> Result<web::Json<Verdict>, ApiError> {
    let request = body.into_inner();
    let (required, mode) = requirement(request.scopes, request.any_scopes)?;
    let key = match authenticator.authenticate_for(request.key.as_bytes(), caller.0.client()).await
    {
        Ok(key) => key,
        Err(err @ (AuthError::Unavailable | AuthError::NotInstalled)) => return Err(err.into()),
        Err(err) => return Ok(web::Json(Verdict::refused(err.code()))),
    };
    if !scope::satisfies(key.scopes(), &required, mode) {
        return Ok(web::Json(Verdict::on(&key, "insufficient_scope")));
    }
    Ok(web::Json(match allowance.admit(&key).await {
        Ok(Admitted { rate, remaining }) => Verdict {
            rate_limit: rate.map(RateStanding::from),
            remaining,
            ..Verdict::on(&key, "valid")
        },
        Err(Refusal::Unavailable) => return Err(Refusal::Unavailable.into()),
        Err(refusal) => {
            let (rate, remaining) = match refusal {
                Refusal::RateLimited { state, .. } => (Some(state), None),
                Refusal::UsageExceeded { state, .. } => (state, Some(0)),
                Refusal::Unavailable => (None, None),
            };
            Verdict {
                rate_limit: rate.map(RateStanding::from),
                remaining,
                retry_after: refusal.retry_after().map(super::problem::whole_seconds),
                ..Verdict::on(&key, refusal.code())
            }
        }
    }))
}

/// What the key must hold: all of `scopes`, or one of `any_scopes`; nothing when neither is given.
fn requirement(
    scopes: Option<Vec<String>>,
    any_scopes: Option<Vec<String>>,
) -> Result<(Vec<String>, Match), ApiError> {
    let (field, required, mode) = match (scopes, any_scopes) {
        (Some(_), Some(_)) => {
            return Err(invalid("any_scopes", "give scopes or any_scopes, not both".into()));
        }
        (None, Some(any)) if any.is_empty() => {
            return Err(invalid("any_scopes", "must name at least one scope".into()));
        }
        (None, Some(any)) => ("any_scopes", any, Match::Any),
        (scopes, None) => ("scopes", scopes.unwrap_or_default(), Match::All),
    };
    check_scopes(&required).map_err(|message| invalid(field, message))?;
    Ok((required, mode))
}

fn invalid(field: &'static str, message: String) -> ApiError {
    ApiError::Service(ServiceError::Invalid { field, message })
}

/// At most [`MAX_SCOPES`] scopes, each one a route could require (no wildcards).
fn check_scopes(scopes: &[String]) -> Result<(), String> {
    if scopes.len() > MAX_SCOPES {
        return Err(format!("at most {MAX_SCOPES} scopes"));
    }
    match scopes.iter().find(|s| !scope::is_valid(s)) {
        Some(bad) => Err(format!(
            "{bad:?} is not a scope a route can require: segments of a-z, 0-9, _ and - joined by ':'"
        )),
        None => Ok(()),
    }
}

/// The scopes a proxy asks for, in the query when its forward-auth address can carry no header.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckParams {
    /// Scopes the key must all hold, separated by spaces or commas (added to `X-Required-Scopes`).
    #[param(example = "reports:read")]
    scopes: Option<String>,
}

/// Check a request for a proxy
///
/// Forward-auth for a proxy in front of other services: reads the key from the request's headers
/// (as the proxy forwards them) and the scopes it needs from `X-Required-Scopes` and the `scopes`
/// query parameter (all of them required). 200 carries `X-Api-Key-Id`, `X-Api-Key-Owner` and
/// `X-Api-Key-Scopes` for the proxy to pass upstream; otherwise 401, 403 or 429 as a guarded route
/// answers. Rate limits, quotas, usage, audit and the failure limits (per original client address,
/// from `TRUSTED_PROXIES`) apply as on a guarded route.
#[utoipa::path(
    tag = TAG,
    params(
        CheckParams,
        ("X-Required-Scopes" = Option<String>, Header,
            description = "Scopes the key must all hold, separated by spaces or commas",
            example = "reports:read reports:export"),
    ),
    responses(
        (status = 200, description = "Let the request through", headers(
            ("X-Api-Key-Id" = String, description = "The key's public id"),
            ("X-Api-Key-Owner" = String, description = "The key's owner, when it has one"),
            ("X-Api-Key-Scopes" = String, description = "The key's scopes, separated by spaces"),
        )),
    )
)]
#[get("")]
pub async fn check_key(
    req: HttpRequest,
    params: web::Query<CheckParams>,
) -> Result<HttpResponse, ApiError> {
    check(req, params).await
}

async fn check(
    req: HttpRequest,
    params: web::Query<CheckParams>,
) -> Result<HttpResponse, ApiError> {
    let required = demanded(&req, params.scopes.as_deref())?;
    let key = guard::with_scopes(&req, required, Match::All).await?;
    let mut answer = HttpResponse::Ok();
    answer.insert_header((KEY_ID, key.id())).insert_header((KEY_SCOPES, key.scopes().join(" ")));
    if let Some(owner) = key.owner_id().and_then(|owner| HeaderValue::from_str(owner).ok()) {
        answer.insert_header((KEY_OWNER, owner));
    }
    Ok(answer.finish())
}

/// Every scope named in `X-Required-Scopes` headers and the `scopes` query parameter.
fn demanded(req: &HttpRequest, query: Option<&str>) -> Result<Vec<String>, ApiError> {
    let headers = req.headers().get_all(REQUIRED_SCOPES).map(|value| {
        value.to_str().map_err(|_| ApiError::BadRequest("X-Required-Scopes is not text".into()))
    });
    let mut required = Vec::new();
    for list in headers.chain(query.map(Ok)) {
        let names = list?.split([' ', ',']).filter(|name| !name.is_empty());
        required.extend(names.map(str::to_owned));
    }
    required.sort_unstable();
    required.dedup();
    check_scopes(&required)
        .map_err(|problem| ApiError::BadRequest(format!("required scopes: {problem}")))?;
    Ok(required)
}
