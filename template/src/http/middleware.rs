//! The authentication middleware: looks at the key of every request once and records the outcome in
//! the request's extensions. It never rejects a request by itself; the guards do, where a route asks.
//! On the way out, it reports a rate-limited key's standing in `RateLimit-*` headers
//! (draft-ietf-httpapi-ratelimit-headers).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};

use super::guard::{Admission, Authentication};
use super::problem::whole_seconds;
use super::proxies::TrustedProxies;
use crate::auth::limits::LimitState;
use crate::auth::{AuthError, Authenticator};

pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let outcome = match req.app_data::<web::Data<Authenticator>>() {
        Some(authenticator) => {
            let client = || {
                let peer = req.peer_addr().map(|peer| peer.ip());
                let proxies = req.app_data::<web::Data<TrustedProxies>>();
                proxies.map_or(peer, |proxies| proxies.client(peer, req.headers()))
            };
            authenticator.authenticate(req.headers(), client).await
        }
        None => Err(AuthError::NotInstalled),
    };
    req.extensions_mut().insert(Authentication(outcome));
    let mut res = next.call(req).await?;
    let state = res.request().extensions().get::<Admission>().and_then(Admission::limit_state);
    if let Some(state) = state {
        report(res.headers_mut(), state);
    }
    Ok(res)
}

fn report(headers: &mut HeaderMap, state: LimitState) {
    let limit = state.limit;
    let reset = if state.reset.is_zero() { 0 } else { whole_seconds(state.reset) };
    for (name, value) in [
        ("ratelimit-limit", limit.requests.to_string()),
        ("ratelimit-remaining", state.remaining.to_string()),
        ("ratelimit-reset", reset.to_string()),
        ("ratelimit-policy", format!("{};w={}", limit.requests, limit.window)),
    ] {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}
