//! Caching in front of the database for the authentication path: an in-process cache, and optionally
//! a Redis cache shared by every instance.
//!
//! Only [`Backend::lookup`] is served from the caches; every other call reads or writes the primary
//! backend. How stale a lookup can be:
//! - on the instance that revoked a key, not at all (its entry is dropped at once);
//! - on other instances, at most [`LOCAL_TTL`]: the revocation rewrites the Redis entry before it
//!   returns, and an in-process entry lives no longer than that.
//!
//! A Redis error is a cache miss, never an answer: the primary decides, so an outage makes lookups
//! slower, not wrong. Entries are filled with `SET NX`, and mutations overwrite them, so a fill that
//! read the database just before a revocation cannot overwrite the revoked entry.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{ApiKeyRecord, Backend, ListQuery, Page, StoreError, Usage};

/// How long an instance trusts its in-process copy of a key: the revocation bound across instances.
pub const LOCAL_TTL: Duration = Duration::from_millis(500);
const LOCAL_CAPACITY: u64 = 100_000;

pub struct CachedBackend {
    primary: Arc<dyn Backend>,
    local: moka::sync::Cache<String, Arc<ApiKeyRecord>>,
    #[cfg(feature = "redis")]
    shared: Option<super::redis::RedisCache>,
}

impl CachedBackend {
    /// An in-process cache in front of `primary`.
    pub fn new(primary: Arc<dyn Backend>) -> Self {
        Self {
            primary,
            local: moka::sync::Cache::builder()
                .max_capacity(LOCAL_CAPACITY)
                .time_to_live(LOCAL_TTL)
                .build(),
            #[cfg(feature = "redis")]
            shared: None,
        }
    }

    /// Adds a Redis cache shared between instances, between the in-process cache and `primary`.
    #[cfg(feature = "redis")]
    pub fn with_redis(mut self, redis: super::redis::RedisCache) -> Self {
        self.shared = Some(redis);
        self
    }

    /// Brings the shared cache in line with the primary after a mutation of `id`.
    async fn refresh(&self, id: &str) -> Result<(), StoreError> {
        self.local.invalidate(id);
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            let current = self.primary.get(id).await?;
            shared.overwrite(id, current.as_ref()).await.map_err(|err| {
                StoreError::Unavailable(format!(
                    "the change is saved, but the shared cache could not be updated ({err}); other \
                     instances may use the old entry until it expires"
                ))
            })?;
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for CachedBackend {
    async fn insert(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.primary.insert(key).await
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.primary.get(id).await
    }

    async fn lookup(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        if let Some(record) = self.local.get(id) {
            return Ok(Some(ApiKeyRecord::clone(&record)));
        }
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            match shared.get(id).await {
                Ok(Some(record)) => {
                    self.local.insert(id.to_owned(), Arc::new(record.clone()));
                    return Ok(Some(record));
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "Redis cache unavailable; reading the database")
                }
            }
        }
        let Some(record) = self.primary.lookup(id).await? else {
            // Unknown ids are not cached: a key must pass its checksum to get here, and a later
            // insert would otherwise be hidden.
            return Ok(None);
        };
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared
            && let Err(err) = shared.fill(&record).await
        {
            tracing::debug!(error = %err, "could not fill the Redis cache");
        }
        self.local.insert(id.to_owned(), Arc::new(record.clone()));
        Ok(Some(record))
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<ApiKeyRecord>, StoreError> {
        self.primary.list(query).await
    }

    async fn revoke(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let found = self.primary.revoke(id, at).await?;
        if found {
            self.refresh(id).await?;
        }
        Ok(found)
    }

    async fn record_usage(&self, batch: &[Usage]) -> Result<(), StoreError> {
        // Usage does not change whether a key authenticates, so cached entries stay valid.
        self.primary.record_usage(batch).await
    }
}
