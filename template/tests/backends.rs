//! The backend conformance suite against every backend, and the caches' revocation bound.
//!
//! PostgreSQL and Redis cases run when `TEST_POSTGRES_URL` / `TEST_REDIS_URL` name a server, and
//! print a `SKIPPED` line otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use {{crate_name}}::store::cache::DEFAULT_LOCAL_TTL;
use {{crate_name}}::store::{Backend, CachedBackend, MemoryBackend, conformance};

#[tokio::test]
async fn memory_backend_conforms() {
    conformance::run(&MemoryBackend::default()).await;
}

#[tokio::test]
async fn cached_memory_backend_conforms() {
    conformance::run(&CachedBackend::new(Arc::new(MemoryBackend::default()))).await;
}

#[cfg(feature = "sqlite")]
async fn sqlite() -> (tempfile::TempDir, Arc<dyn Backend>) {
    use {{crate_name}}::store::{SqlBackend, migrate};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"));
    assert_eq!(
        migrate(&url).await.unwrap(),
        shipped.unwrap().count(),
        "a new database gets every migration"
    );
    assert_eq!(migrate(&url).await.unwrap(), 0, "migrating twice is a no-op");
    (dir, Arc::new(SqlBackend::connect(&url).await.unwrap()))
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_backend_conforms() {
    let (_dir, sql) = sqlite().await;
    conformance::run(sql.as_ref()).await;
    conformance::run(&CachedBackend::new(sql)).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_backend_conforms() {
    use {{crate_name}}::store::{SqlBackend, migrate};

    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        eprintln!(
            "SKIPPED postgres_backend_conforms: set TEST_POSTGRES_URL=postgres://... to run it"
        );
        return;
    };
    migrate(&url).await.unwrap();
    assert_eq!(migrate(&url).await.unwrap(), 0, "migrating twice is a no-op");
    let sql = Arc::new(SqlBackend::connect(&url).await.unwrap());
    conformance::run(sql.as_ref()).await;
    conformance::run(&CachedBackend::new(sql.clone())).await;
    #[cfg(feature = "redis")]
    if let Ok(redis) = std::env::var("TEST_REDIS_URL") {
        use {{crate_name}}::store::redis::RedisCache;

        let ttl = Duration::from_secs(60);
        conformance::run(
            &CachedBackend::new(sql).with_redis(RedisCache::connect(&redis, ttl).unwrap()),
        )
        .await;
    }
}

/// Two instances sharing one database (and, when given, one Redis): a key revoked through the first
/// is refused by the second within the documented bound.
async fn revocation_reaches_other_instances(
    first: CachedBackend,
    second: CachedBackend,
) -> Duration {
    let key = conformance::sample("bound", Utc::now());
    first.insert(&key, &conformance::event(&key.id)).await.unwrap();
    assert!(!is_revoked(&second, &key.id).await, "cached as valid");

    first.revoke(&key.id, Utc::now(), &conformance::event(&key.id)).await.unwrap();
    let revoked_at = Instant::now();
    assert!(is_revoked(&first, &key.id).await, "at once where it was revoked");
    while !is_revoked(&second, &key.id).await {
        assert!(revoked_at.elapsed() < DEFAULT_LOCAL_TTL * 3, "the revocation never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = revoked_at.elapsed();
    assert!(took <= DEFAULT_LOCAL_TTL + Duration::from_millis(250), "took {took:?}");
    took
}

async fn is_revoked(backend: &CachedBackend, id: &str) -> bool {
    let key = backend.lookup(id).await.unwrap().expect("the key exists");
    key.revoked_at.is_some()
}

#[tokio::test]
async fn revocation_reaches_other_instances_within_the_local_ttl() {
    let primary: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
    revocation_reaches_other_instances(
        CachedBackend::new(primary.clone()),
        CachedBackend::new(primary),
    )
    .await;
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use {{crate_name}}::store::redis::RedisCache;

    fn redis_url() -> Option<String> {
        let url = std::env::var("TEST_REDIS_URL").ok();
        if url.is_none() {
            eprintln!("SKIPPED Redis cache tests: set TEST_REDIS_URL=redis://... to run them");
        }
        url
    }

    fn cached(primary: Arc<dyn Backend>, url: &str) -> CachedBackend {
        CachedBackend::new(primary)
            .with_redis(RedisCache::connect(url, Duration::from_secs(60)).unwrap())
    }

    // The primary here is the memory backend; `tests/api.rs` and the harness cover SQL primaries.
    fn primary() -> Arc<dyn Backend> {
        Arc::new(MemoryBackend::default())
    }

    #[tokio::test]
    async fn redis_backend_conforms() {
        use {{crate_name}}::store::redis::RedisBackend;

        let Some(url) = redis_url() else { return };
        let redis = Arc::new(RedisBackend::connect(&url).unwrap());
        conformance::run(redis.as_ref()).await;
        conformance::run(&CachedBackend::new(redis)).await;
    }

    #[tokio::test]
    async fn redis_cache_conforms() {
        let Some(url) = redis_url() else { return };
        conformance::run(&cached(primary(), &url)).await;
    }

    #[tokio::test]
    async fn revocation_reaches_other_instances_through_redis() {
        let Some(url) = redis_url() else { return };
        let shared = primary();
        let took =
            revocation_reaches_other_instances(cached(shared.clone(), &url), cached(shared, &url))
                .await;
        eprintln!("revocation reached the second instance in {took:?}");
    }

    #[tokio::test]
    async fn an_unreachable_redis_only_slows_lookups_down() {
        let sql = primary();
        // Nothing listens on port 1: every Redis call fails, and the primary answers instead.
        let backend = cached(sql.clone(), "redis://127.0.0.1:1/");
        conformance::stores_and_returns_keys(&backend).await;
        conformance::lists_newest_first_with_the_real_total(&backend).await;
        conformance::adds_usage_and_moves_last_use_forward(&backend).await;

        let key = conformance::sample("outage", Utc::now());
        backend.insert(&key, &conformance::event(&key.id)).await.unwrap();
        assert!(backend.lookup(&key.id).await.unwrap().is_some());
        // A revocation is saved and enforced here at once; fencing its Redis entry off is retried
        // in the background until Redis answers (see the harness's fault tests).
        let revoked = conformance::event(&key.id);
        assert!(backend.revoke(&key.id, Utc::now(), &revoked).await.unwrap());
        assert!(sql.get(&key.id).await.unwrap().unwrap().revoked_at.is_some());
        assert!(backend.lookup(&key.id).await.unwrap().unwrap().revoked_at.is_some());
    }
}
