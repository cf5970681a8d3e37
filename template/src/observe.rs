//! What every request leaves behind for operators: an id, a tracing span carrying it, and its
//! duration in the `http_request_duration_seconds` histogram.
//!
//! The id is the caller's `X-Request-Id` when it is short printable ASCII (a proxy's id, so logs of
//! both join up), or a new random one; the response carries it back either way.

use std::time::Instant;

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

use crate::metrics::metrics;
use crate::store::random_id;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_ID_LEN: usize = 64;

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|value| is_usable(value.as_bytes()))
        .cloned()
        .unwrap_or_else(|| HeaderValue::try_from(random_id()).expect("hex is a valid header"));
    let span = tracing::info_span!(
        "request",
        id = id.to_str().unwrap_or_default(),
        method = %req.method(),
        path = req.path(),
    );
    let started = Instant::now();
    let mut res = next.call(req).instrument(span.clone()).await?;
    let elapsed = started.elapsed();
    let status = res.status();
    let route = res.request().match_pattern();
    metrics().request_duration(
        res.request().method().as_str(),
        route.as_deref().unwrap_or("unmatched"),
        status.as_u16(),
        elapsed,
    );
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            elapsed_us = elapsed.as_micros() as u64,
            "answered"
        );
    });
    res.headers_mut().insert(REQUEST_ID, id);
    Ok(res)
}

/// An id worth keeping: 1 to 64 visible ASCII characters, so that it can go into logs as it is.
fn is_usable(id: &[u8]) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_printable_ids_are_kept() {
        assert!(is_usable(b"req-7f3a"));
        assert!(!is_usable(b""));
        assert!(!is_usable(b"two words"));
        assert!(!is_usable(&[b'a'; MAX_ID_LEN + 1]));
        assert!(!is_usable("caf\u{e9}".as_bytes()));
    }
}
