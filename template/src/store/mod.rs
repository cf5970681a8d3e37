//! Where keys live: the [`Backend`] trait, its records, and opening a backend from `DATABASE_URL`.
//!
//! Implement [`Backend`] to keep keys somewhere else; [`conformance`] checks an implementation
//! against the behaviour the rest of the service relies on.

pub mod cache;
pub mod conformance;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::auth::key::KeyHash;
use crate::config::Config;

pub use cache::CachedBackend;
pub use memory::MemoryBackend;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::SqlBackend;

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "redis")))]
compile_error!("enable at least one of the `sqlite`, `postgres` and `redis` features");

/// A stored key. It holds the digest of the key, never the key itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub key_hash: KeyHash,
    pub name: String,
    pub owner_id: Option<String>,
    pub scopes: Vec<String>,
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub request_count: u64,
}

/// Which keys to list: newest first, optionally one owner's.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub owner_id: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

/// One page of a listing, with the size of the whole result.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// Requests counted for one key since the last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub id: String,
    pub requests: u64,
    pub last_used_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a key with this id already exists")]
    Duplicate,
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

/// Storage for API keys.
///
/// Every method is one logical operation; implementations make each one atomic.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Stores a new key; [`StoreError::Duplicate`] if its id is taken.
    async fn insert(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// The key with this id, revoked and expired ones included, as currently stored.
    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// The key with this id, for authenticating a request. A caching backend answers from its cache,
    /// within its documented staleness bound; usage counts in the answer may lag.
    async fn lookup(&self, id: &str) -> Result<Option<Arc<ApiKeyRecord>>, StoreError> {
        Ok(self.get(id).await?.map(Arc::new))
    }

    /// The key with this id if a copy is held in memory, fresh within the staleness bound, without
    /// any I/O. Only caches answer; the authenticator asks here first and skips work for a hit.
    fn cached(&self, _id: &str) -> Option<Arc<ApiKeyRecord>> {
        None
    }

    /// Keys newest first (by `created_at`, then `id`), with the total matching `query`.
    async fn list(&self, query: &ListQuery) -> Result<Page<ApiKeyRecord>, StoreError>;

    /// Marks a key revoked at `at`, keeping an earlier revocation time. `false` if there is no such key.
    async fn revoke(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Adds counted requests to each key and moves `last_used_at` forward, never back.
    ///
    /// Increments are relative (`request_count + n`), so instances flushing at once lose nothing.
    async fn record_usage(&self, batch: &[Usage]) -> Result<(), StoreError>;
}

/// Opens the configured storage: the backend named by `DATABASE_URL` (`sqlite://…`, `postgres://…`,
/// `redis://…` or `memory://`) behind an in-process cache, and the Redis cache too when `REDIS_URL`
/// is set.
pub async fn open(config: &Config) -> Result<Arc<dyn Backend>, StoreError> {
    let url = config.database_url.as_str();
    let primary: Arc<dyn Backend> = if url.starts_with("memory:") {
        Arc::new(MemoryBackend::default())
    } else if is_redis(url) {
        redis_backend(url)?
    } else {
        sql_backend(url).await?
    };
    let cached = CachedBackend::new(primary).with_local_ttl(config.key_cache_ttl());
    #[cfg(feature = "redis")]
    let cached = match &config.redis_url {
        Some(redis_url) => cached.with_redis(redis::RedisCache::connect(
            redis_url,
            config.redis_cache_ttl(),
        )?),
        None => cached,
    };
    Ok(Arc::new(cached))
}

/// Brings the database named by `DATABASE_URL` up to date. Returns how many migrations ran.
pub async fn migrate(database_url: &str) -> Result<usize, StoreError> {
    if database_url.starts_with("memory:") || is_redis(database_url) {
        return Ok(0);
    }
    sql_migrate(database_url).await
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn sql_backend(url: &str) -> Result<Arc<dyn Backend>, StoreError> {
    Ok(Arc::new(SqlBackend::connect(url).await?))
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn sql_migrate(url: &str) -> Result<usize, StoreError> {
    sql::migrate(url).await
}

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
async fn sql_backend(_: &str) -> Result<Arc<dyn Backend>, StoreError> {
    Err(no_sql())
}

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
async fn sql_migrate(_: &str) -> Result<usize, StoreError> {
    Err(no_sql())
}

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
fn no_sql() -> StoreError {
    StoreError::Unavailable(
        "DATABASE_URL names a SQL database, which this build does not include: rebuild with \
         `--features sqlite` or `--features postgres`"
            .into(),
    )
}

fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

#[cfg(feature = "redis")]
fn redis_backend(url: &str) -> Result<Arc<dyn Backend>, StoreError> {
    Ok(Arc::new(redis::RedisBackend::connect(url)?))
}

#[cfg(not(feature = "redis"))]
fn redis_backend(_: &str) -> Result<Arc<dyn Backend>, StoreError> {
    Err(StoreError::Unavailable(
        "DATABASE_URL names Redis, which this build does not include: rebuild with `--features redis`".into(),
    ))
}
