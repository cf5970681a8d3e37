//! The authentication middleware: looks at the key of every request once and records the outcome in
//! the request's extensions. It never rejects a request by itself; the guards do, where a route asks.
//! On the way out, it reports a rate-limited key's standing in the `RateLimit-Policy` and
//! `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-10.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, InvalidHeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};

use super::guard::{Admission, Authentication};
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

/// `RateLimit-Policy: "key";q=100;w=60` is the key's limit (q requests per w seconds);
/// `RateLimit: "key";r=99;t=1` what is left of it and the whole seconds until a full burst is back.
fn report(headers: &mut HeaderMap, state: LimitState) {
    const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    const STANDING: HeaderName = HeaderName::from_static("ratelimit");
    let limit = state.limit;
    let policy = field([(b'q', limit.requests.into()), (b'w', limit.window.into())]);
    let standing = field([(b'r', state.remaining.into()), (b't', state.reset_seconds())]);
    for (name, value) in [(POLICY, policy), (STANDING, standing)] {
        if let Ok(value) = value {
            headers.insert(name, value);
        }
    }
}

/// `"key";a=1;b=2`, put together byte by byte rather than by `format!`: this runs on every request
/// of a rate-limited key.
fn field(parameters: [(u8, u64); 2]) -> Result<HeaderValue, InvalidHeaderValue> {
    let mut value = Vec::with_capacity(48);
    value.extend_from_slice(b"\"key\"");
    for (name, number) in parameters {
        value.extend_from_slice(&[b';', name, b'=']);
        value.extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
    }
    HeaderValue::from_maybe_shared(web::Bytes::from(value))
}
