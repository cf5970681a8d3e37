//! Brute-force limits over HTTP: per client address, and per key id.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::http::{StatusCode, header};
use actix_web::test::TestRequest;

use common::{call, harness_with, with_key, wrong_secret};
use {{crate_name}}::store::MemoryBackend;

fn from(address: &str) -> TestRequest {
    TestRequest::get().uri("/protected").peer_addr(address.parse::<SocketAddr>().unwrap())
}

#[actix_web::test]
async fn an_address_that_keeps_failing_is_refused_for_a_while() {
    let h = harness_with(
        Arc::new(MemoryBackend::default()),
        &[("AUTH_FAILURES_PER_MINUTE", "3"), ("AUTH_FAILURES_PER_KEY_PER_MINUTE", "0")],
    )
    .await;
    let attacker = "198.51.100.7:40000";
    for n in 0..3 {
        let (status, _, problem) =
            call(&h.app, with_key(from(attacker), &format!("sk_junk{n}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "failure {n}: {problem}");
    }
    // The fourth failure is one too many: refused, and so is everything after it for a while.
    let (status, headers, problem) = call(&h.app, with_key(from(attacker), "sk_junk")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{problem}");
    assert_eq!(problem["code"], "too_many_failed_attempts");
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "20");

    // Refused whatever it sends now, a valid key included; others are not affected, nor open routes.
    let (status, _, _) = call(&h.app, with_key(from(attacker), &h.admin)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _, _) = call(&h.app, with_key(from("198.51.100.8:40000"), &h.admin)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) =
        call(&h.app, TestRequest::get().uri("/health").peer_addr(attacker.parse().unwrap())).await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn wrong_secrets_for_one_key_are_refused_but_its_holder_is_not() {
    let h = harness_with(
        Arc::new(MemoryBackend::default()),
        &[("AUTH_FAILURES_PER_MINUTE", "0"), ("AUTH_FAILURES_PER_KEY_PER_MINUTE", "2")],
    )
    .await;
    // Warm the cache: the wrong secrets below then reach the digest comparison without a lookup.
    let (status, _, _) = call(&h.app, with_key(from("203.0.113.9:5000"), &h.admin)).await;
    assert_eq!(status, StatusCode::OK);
    // A changed secret with the old checksum stops at the checksum, before the cache and the digest:
    // it does not count against the key, so three of them leave its limit of 2 untouched.
    let at = h.admin.len() - 10;
    let mut unchecked = h.admin.clone();
    unchecked.replace_range(at..=at, if &h.admin[at..=at] == "a" { "b" } else { "a" });
    for _ in 0..3 {
        let (status, _, problem) =
            call(&h.app, with_key(from("203.0.113.9:5000"), &unchecked)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
        assert_eq!(problem["code"], "invalid_api_key");
    }
    let wrong = wrong_secret(&h.admin);
    let mut statuses = Vec::new();
    for n in 0..4 {
        let address = format!("203.0.113.{n}:5000");
        let (status, _, _) = call(&h.app, with_key(from(&address), &wrong)).await;
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [401, 401, 429, 429], "counted per key, from any address");
    let (status, _, _) = call(&h.app, with_key(from("203.0.113.9:5000"), &h.admin)).await;
    assert_eq!(status, StatusCode::OK, "the right secret still works");
}
