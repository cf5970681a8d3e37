//! The authentication middleware: looks at the key of every request once and records the outcome in
//! the request's extensions. It never rejects a request by itself; the guards do, where a route asks.

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
        Some(authenticator) => authenticator.authenticate(req.headers()).await,
        None => Err(AuthError::NotInstalled),
    };
    metrics().auth_attempt(&outcome);
    if let Err(err) = &outcome
        && *err != AuthError::Missing
    {
        tracing::debug!(
            outcome = err.code(),
            path = req.path(),
            "authentication failed"
        );
    }
    req.extensions_mut().insert(Authentication(outcome));
    next.call(req).await
}
