//! A conformance suite for [`Backend`] implementations: the behaviour the service relies on.
//!
//! Run it against your own backend from a test:
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_backend_conforms() {
//!     let backend = MyBackend::connect("...").await.unwrap();
//!     my_service::store::conformance::run(&backend).await;
//! }
//! ```
//!
//! Each check uses fresh ids and its own owner, so it can run against a database that already holds
//! data. A failed check panics with what was expected.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::json;

use super::{ApiKeyRecord, Backend, ListQuery, StoreError, Usage};
use crate::auth::key::KeyHash;

/// Runs every check.
pub async fn run(backend: &dyn Backend) {
    stores_and_returns_keys(backend).await;
    rejects_duplicate_ids(backend).await;
    lists_newest_first_with_the_real_total(backend).await;
    revokes_idempotently(backend).await;
    lookups_see_revocation_at_once(backend).await;
    adds_usage_and_moves_last_use_forward(backend).await;
}

/// A record with a fresh random id, owned by `owner`, created at `created_at`.
pub fn sample(owner: &str, created_at: DateTime<Utc>) -> ApiKeyRecord {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("the OS random number generator is available");
    ApiKeyRecord {
        id: hex::encode(random),
        key_hash: KeyHash::from([7; 32]),
        name: "conformance".into(),
        owner_id: Some(owner.into()),
        scopes: vec!["users:read".into(), "billing:*".into()],
        metadata: json!({"team": "core", "limits": {"rps": 5}})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        created_at: created_at.trunc_subsecs(6),
        expires_at: Some((created_at + Duration::days(30)).trunc_subsecs(6)),
        revoked_at: None,
        last_used_at: None,
        request_count: 0,
    }
}

fn fresh_owner() -> String {
    format!("owner-{}", sample("", Utc::now()).id)
}

pub async fn stores_and_returns_keys(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    backend.insert(&key).await.expect("insert");
    assert_eq!(
        backend.get(&key.id).await.expect("get"),
        Some(key.clone()),
        "a stored key reads back unchanged"
    );
    assert_eq!(
        backend.get("no-such-id").await.expect("get"),
        None,
        "an unknown id is None"
    );
}

pub async fn rejects_duplicate_ids(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    backend.insert(&key).await.expect("insert");
    let mut again = key.clone();
    again.name = "impostor".into();
    assert!(
        matches!(backend.insert(&again).await, Err(StoreError::Duplicate)),
        "a second key with the same id is refused"
    );
    assert_eq!(
        backend.get(&key.id).await.expect("get").map(|k| k.name),
        Some(key.name),
        "the first key is intact"
    );
}

pub async fn lists_newest_first_with_the_real_total(backend: &dyn Backend) {
    let owner = fresh_owner();
    let start = Utc::now() - Duration::minutes(10);
    let mut keys = Vec::new();
    for minute in 0..5 {
        let key = sample(&owner, start + Duration::minutes(minute));
        backend.insert(&key).await.expect("insert");
        keys.push(key);
    }
    backend
        .insert(&sample(&fresh_owner(), start))
        .await
        .expect("insert");
    keys.reverse();

    let query = |limit, offset| ListQuery {
        owner_id: Some(owner.clone()),
        limit,
        offset,
    };
    let page = backend.list(&query(2, 0)).await.expect("list");
    assert_eq!(page.total, 5, "total counts every match, not the page");
    assert_eq!(ids(&page.items), ids(&keys[..2]), "newest first");
    let page = backend.list(&query(2, 4)).await.expect("list");
    assert_eq!(ids(&page.items), ids(&keys[4..]), "offset skips");
    let page = backend.list(&query(2, 100)).await.expect("list");
    assert!(page.items.is_empty());
    assert_eq!(page.total, 5, "total is kept past the end");

    let everyone = backend
        .list(&ListQuery {
            owner_id: None,
            limit: 100,
            offset: 0,
        })
        .await
        .expect("list");
    assert!(everyone.total >= 6, "without an owner every key counts");
}

fn ids(keys: &[ApiKeyRecord]) -> Vec<&str> {
    keys.iter().map(|k| k.id.as_str()).collect()
}

pub async fn revokes_idempotently(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    backend.insert(&key).await.expect("insert");
    let first = Utc::now().trunc_subsecs(6);
    assert!(backend.revoke(&key.id, first).await.expect("revoke"));
    assert!(
        backend
            .revoke(&key.id, first + Duration::minutes(1))
            .await
            .expect("revoke again")
    );
    let stored = backend
        .get(&key.id)
        .await
        .expect("get")
        .expect("still stored");
    assert_eq!(
        stored.revoked_at,
        Some(first),
        "the first revocation time is kept"
    );
    assert!(
        !backend.revoke("no-such-id", first).await.expect("revoke"),
        "an unknown id reports false"
    );
}

pub async fn lookups_see_revocation_at_once(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    backend.insert(&key).await.expect("insert");
    assert_eq!(
        backend.lookup(&key.id).await.expect("lookup").as_deref(),
        Some(&key),
        "a lookup finds the key"
    );
    assert_eq!(
        backend
            .lookup(&key.id)
            .await
            .expect("lookup again")
            .as_deref(),
        Some(&key),
        "and again"
    );
    let at = Utc::now().trunc_subsecs(6);
    backend.revoke(&key.id, at).await.expect("revoke");
    let seen = backend
        .lookup(&key.id)
        .await
        .expect("lookup")
        .expect("still there");
    assert_eq!(
        seen.revoked_at,
        Some(at),
        "the next lookup on this instance sees the revocation"
    );
    assert_eq!(backend.lookup("no-such-id").await.expect("lookup"), None);
}

pub async fn adds_usage_and_moves_last_use_forward(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    backend.insert(&key).await.expect("insert");
    let later = Utc::now().trunc_subsecs(6);
    let earlier = later - Duration::minutes(5);
    let usage = |requests, last_used_at| {
        vec![Usage {
            id: key.id.clone(),
            requests,
            last_used_at,
        }]
    };
    backend
        .record_usage(&usage(3, later))
        .await
        .expect("record");
    backend
        .record_usage(&usage(4, earlier))
        .await
        .expect("record");
    let stored = backend.get(&key.id).await.expect("get").expect("stored");
    assert_eq!(stored.request_count, 7, "counts add up");
    assert_eq!(
        stored.last_used_at,
        Some(later),
        "last use never moves back"
    );

    let unknown = vec![Usage {
        id: "no-such-id".into(),
        requests: 1,
        last_used_at: later,
    }];
    backend
        .record_usage(&unknown)
        .await
        .expect("usage of a deleted key is ignored");
}
