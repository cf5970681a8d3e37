//! The authentication middleware: looks at the key of every request once and records the outcome in
//! the request's extensions. It never rejects a request by itself; the guards do, where a route asks.

use std::net::{IpAddr, SocketAddr};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};

use super::authenticator::{AuthError, Authenticator};
use super::guard::Authentication;
use crate::metrics::metrics;

pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let outcome = match req.app_data::<web::Data<Authenticator>>() {
        Some(authenticator) => {
            let trust_proxy_headers = authenticator.trusts_proxy_headers();
            let client = || client_address(&req, trust_proxy_headers);
            authenticator.authenticate(req.headers(), client).await
        }
        None => Err(AuthError::NotInstalled),
    };
    metrics().auth_attempt(&outcome);
    req.extensions_mut().insert(Authentication(outcome));
    next.call(req).await
}

/// The client's address: the connection's peer, or, behind a proxy that sets them
/// (`TRUST_PROXY_HEADERS`), the address `Forwarded` or `X-Forwarded-For` names.
fn client_address(req: &ServiceRequest, trust_proxy_headers: bool) -> Option<IpAddr> {
    if !trust_proxy_headers {
        return req.peer_addr().map(|peer| peer.ip());
    }
    let info = req.connection_info();
    let reported = info.realip_remote_addr()?;
    reported
        .parse::<SocketAddr>()
        .map(|socket| socket.ip())
        .or_else(|_| reported.parse::<IpAddr>())
        .ok()
}
