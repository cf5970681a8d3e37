//! Keys for other services. `POST {API_KEYS_ROUTE_PREFIX}/verify` tells a service that calls it
//! whether a key is good; `GET /auth/check` (`FORWARD_AUTH_PATH`) tells a proxy's forward-auth
//! (nginx `auth_request`, Traefik `forwardAuth`, Envoy `ext_authz`) whether to pass a request on.
//! Both authenticate, count, limit and audit the key exactly as a guarded route does.

use std::net::IpAddr;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;
use zeroize::Zeroizing;

use super::ApiError;
use super::guard::{self, Verifier};
use crate::auth::limits::{Admitted, LimitState, Refusal, whole_seconds};
use crate::auth::{Allowance, ApiKey, AuthError, Authenticator};
use crate::keys::error::invalid;
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

/// The forward-auth route, registered at `FORWARD_AUTH_PATH`, and below it for any method: Envoy's
/// `ext_authz` asks with the request's own method and puts its path and query after the check's
/// (`POST /auth/check/reports/monthly?page=2`), so there the scopes come from the header only.
pub fn check_route(cfg: &mut ServiceConfig) {
    cfg.service(check_key).route("/{original:.*}", web::route().to(check_below));
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
    /// The address of the client that presented the key, when the caller knows it: failures are
    /// then audited from it and count against its failure limit (`AUTH_FAILURES_PER_MINUTE`).
    /// Without it, they are audited from the caller, whose address no limit counts.
    #[schema(value_type = Option<String>, example = "203.0.113.7")]
    client_address: Option<IpAddr>,
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
        Self { limit: state.limit, remaining: state.remaining, reset: state.reset_seconds() }
    }
}

impl Verdict {
    fn refused(code: &'static str) -> Self {
        Self { code, ..Self::default() }
    }

    fn valid(key: &ApiKey) -> Self {
        Self { valid: true, ..Self::on(key, "valid") }
    }

    /// A genuine key, with who it is, refused with `code` (by a scope or a limit).
    fn on(key: &ApiKey, code: &'static str) -> Self {
        Self {
            valid: false,
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
/// audited, from `client_address` when given (and counted against its failure limit), else from
/// the caller, which speaks for many clients and so is never refused for their bad keys. The
/// answer is 200 whatever the verdict; a store that cannot answer is 503.
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
    let presented = request.key.as_bytes();
    let client = request.client_address;
    let key = match authenticator.authenticate_for(presented, client, caller.key.client()).await {
        Ok(key) => key,
        Err(err @ (AuthError::Unavailable | AuthError::NotInstalled)) => return Err(err.into()),
        Err(err) => {
            let wait = (err == AuthError::Throttled).then(|| authenticator.retry_after());
            let retry_after = wait.map(whole_seconds);
            return Ok(web::Json(Verdict { retry_after, ..Verdict::refused(err.code()) }));
        }
    };
    if !scope::satisfies(key.scopes(), &required, mode) {
        return Ok(web::Json(Verdict::on(&key, "insufficient_scope")));
    }
    Ok(web::Json(match allowance.admit(&key).await {
        Ok(Admitted { rate, remaining }) => {
            Verdict { rate_limit: rate.map(RateStanding::from), remaining, ..Verdict::valid(&key) }
        }
        Err(Refusal::Unavailable) => return Err(Refusal::Unavailable.into()),
        Err(refusal) => Verdict {
            rate_limit: refusal.limit_state().map(RateStanding::from),
            // A rate limit refuses before the quota is asked, so only a used-up quota is known.
            remaining: matches!(refusal, Refusal::UsageExceeded { .. }).then_some(0),
            retry_after: refusal.retry_after().map(whole_seconds),
            ..Verdict::on(&key, refusal.code())
        },
    }))
}

/// What the key must hold: all of `scopes`, or one of `any_scopes`; nothing when neither is given.
fn requirement(
    scopes: Option<Vec<String>>,
    any_scopes: Option<Vec<String>>,
) -> Result<(Vec<String>, Match), ApiError> {
    let (field, required, mode) = match (scopes, any_scopes) {
        (Some(_), Some(_)) => {
            return Err(invalid("any_scopes", "give scopes or any_scopes, not both").into());
        }
        (None, Some(any)) if any.is_empty() => {
            return Err(invalid("any_scopes", "must name at least one scope").into());
        }
        (None, Some(any)) => ("any_scopes", any, Match::Any),
        (scopes, None) => ("scopes", scopes.unwrap_or_default(), Match::All),
    };
    check_scopes(&required).map_err(|message| invalid(field, message))?;
    Ok((required, mode))
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
            ("X-Api-Key-Owner" = String, description = "The key's owner; empty when it has none"),
            ("X-Api-Key-Scopes" = String, description = "The key's scopes, separated by spaces"),
        )),
    )
)]
#[get("")]
pub async fn check_key(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query = scopes_in_query(&req)?;
    check(req, query).await
}

/// Below the check's path, Envoy's form: the query is the upstream's and is not read. A bare
/// trailing slash (`/auth/check/?scopes=…`) is still the check itself, and its query counts.
async fn check_below(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query = match req.match_info().query("original") {
        "" => scopes_in_query(&req)?,
        _ => None,
    };
    check(req, query).await
}

/// The `scopes` query parameter. The query is parsed only when there is one: most checks carry
/// none, and this runs on every request a proxy passes on.
fn scopes_in_query(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    Ok(match req.query_string() {
        "" => None,
        query => {
            web::Query::<CheckParams>::from_query(query)
                .map_err(|err| ApiError::BadRequest(err.to_string()))?
                .into_inner()
                .scopes
        }
    })
}

/// Admits the request's key if it holds the scopes demanded in `X-Required-Scopes` and `query`, and
/// says who it is. All three identity headers are always sent, the owner empty when there is none,
/// so that a proxy which copies only the headers present cannot pass on the client's own.
async fn check(req: HttpRequest, query: Option<String>) -> Result<HttpResponse, ApiError> {
    let required = demanded(&req, query.as_deref())?;
    let key = guard::with_scopes(&req, required, Match::All).await?;
    let owner = HeaderValue::from_str(key.owner_id().unwrap_or_default()).map_err(|_| {
        tracing::error!(key_id = key.id(), "the key's owner id cannot be sent in a header");
        ApiError::Internal
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((KEY_ID, key.id()))
        .insert_header((KEY_OWNER, owner))
        .insert_header((KEY_SCOPES, key.scopes().join(" ")))
        .finish())
}

/// Every scope named in `X-Required-Scopes` headers and in `query`, each a list separated by spaces
/// or commas.
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
