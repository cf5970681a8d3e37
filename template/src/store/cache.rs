//! Caching in front of the key store for the authentication path: an in-process cache, and optionally
//! a Redis cache shared by every instance.
//!
//! Only [`Backend::lookup`] is served from the caches; every other call reads or writes the primary
//! backend. How stale a lookup can be:
//! - on the instance that revoked a key, not at all (its entry is dropped at once);
//! - on other instances, at most the in-process TTL (`KEY_CACHE_TTL_MS`, [`DEFAULT_LOCAL_TTL`] unless
//!   configured): the revocation fences the Redis entry off before it returns (see
//!   [`super::redis::FENCE`]), and an in-process entry lives no longer than that;
//! - if Redis cannot be reached when a key changes, the change is saved, this instance stops reading
//!   that key from Redis, and it retries the fence twice a second: other instances that can reach
//!   Redis may read the old entry until that retry lands, or, should this instance stop first (it
//!   waits five seconds, see [`Backend::settle`]), until the entry expires
//!   (`REDIS_CACHE_TTL_SECONDS`).
//!
//! A Redis error is a cache miss, never an answer: the primary decides, so an outage makes lookups
//! slower, not wrong.
//!
//! Every call that reaches the primary is counted in the `storage_operations` metric, and every cache
//! lookup in `key_cache_lookups`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Backend, EventQuery, ListQuery, Page, QuotaUse, StoreError, Usage};
use crate::metrics::metrics;
use crate::model::{ApiKeyRecord, KeyChanges, KeyEvent};

/// How long an instance trusts its in-process copy of a key unless configured otherwise: the
/// revocation bound across instances.
pub const DEFAULT_LOCAL_TTL: Duration = Duration::from_millis(500);
const LOCAL_CAPACITY: usize = 100_000;

/// The in-process cache: a record and when it stops being trusted. quick_cache evicts by capacity;
/// the expiry is checked here, on read.
struct LocalCache {
    entries: quick_cache::sync::Cache<String, (Instant, Arc<ApiKeyRecord>)>,
    ttl: Duration,
    /// Bumped by every invalidation; see [`LocalCache::insert`].
    invalidations: AtomicU64,
}

impl LocalCache {
    fn new(ttl: Duration) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(LOCAL_CAPACITY),
            ttl,
            invalidations: AtomicU64::new(0),
        }
    }

    fn get(&self, id: &str) -> Option<Arc<ApiKeyRecord>> {
        let (expires, record) = self.entries.get(id)?;
        (Instant::now() < expires).then_some(record)
    }

    /// Where invalidations stand; read it before reading the store for [`LocalCache::insert`].
    fn generation(&self) -> u64 {
        self.invalidations.load(Ordering::SeqCst)
    }

    /// Caches `record`, read from the store when invalidations stood at `generation`. A lookup that
    /// read a key just before it was revoked must not put the old record back after the revocation
    /// dropped it, so if any invalidation happened since, the entry is dropped again: either that
    /// invalidation's removal comes after this insert, or this check sees its bump.
    fn insert(&self, record: &Arc<ApiKeyRecord>, generation: u64) {
        let expires = Instant::now() + self.ttl;
        self.entries.insert(record.id.clone(), (expires, record.clone()));
        if self.generation() != generation {
            self.entries.remove(&record.id);
        }
    }

    fn invalidate(&self, id: &str) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.entries.remove(id);
    }
}

pub struct CachedBackend {
    primary: Arc<dyn Backend>,
    local: Option<LocalCache>,
    #[cfg(feature = "redis")]
    shared: Option<super::redis::RedisCache>,
    /// Keys changed while Redis could not fence their entries: read from the primary until it can.
    #[cfg(feature = "redis")]
    unfenced: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl CachedBackend {
    /// An in-process cache, with entries living [`DEFAULT_LOCAL_TTL`], in front of `primary`.
    pub fn new(primary: Arc<dyn Backend>) -> Self {
        Self {
            primary,
            local: Some(LocalCache::new(DEFAULT_LOCAL_TTL)),
            #[cfg(feature = "redis")]
            shared: None,
            #[cfg(feature = "redis")]
            unfenced: Arc::default(),
        }
    }

    /// Sets how long in-process entries live; zero turns the in-process cache off.
    pub fn with_local_ttl(mut self, ttl: Duration) -> Self {
        self.local = (!ttl.is_zero()).then(|| LocalCache::new(ttl));
        self
    }

    /// Adds a Redis cache shared between instances, between the in-process cache and `primary`.
    #[cfg(feature = "redis")]
    pub fn with_redis(mut self, redis: super::redis::RedisCache) -> Self {
        self.shared = Some(redis);
        self
    }

    fn remember(&self, record: &Arc<ApiKeyRecord>, generation: Option<u64>) {
        if let (Some(local), Some(generation)) = (&self.local, generation) {
            local.insert(record, generation);
        }
    }

    /// Brings the caches in line with the primary after a mutation of `id`: Redis first, then the
    /// in-process cache, so a lookup that read the old entry from Redis before the fence is still
    /// caught by the invalidation (see [`LocalCache::insert`]).
    async fn refresh(&self, id: &str) {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            self.fence(shared, id).await;
        }
        if let Some(local) = &self.local {
            local.invalidate(id);
        }
    }

    /// Fences off the Redis entry of `id`; if Redis cannot be reached, keeps trying in the
    /// background, and meanwhile reads `id` from the primary only.
    #[cfg(feature = "redis")]
    async fn fence(&self, shared: &super::redis::RedisCache, id: &str) {
        let Err(err) = shared.fence(id).await else {
            return;
        };
        tracing::warn!(
            error = %err,
            key_id = id,
            "change saved; fencing its Redis cache entry off is retried until Redis answers"
        );
        if !lock(&self.unfenced).insert(id.to_owned()) {
            return; // a retry for this key is running already
        }
        let (shared, unfenced, id) = (shared.clone(), self.unfenced.clone(), id.to_owned());
        tokio::spawn(async move {
            // Past the entry's own lifetime there is nothing left to fence.
            let give_up = Instant::now() + shared.ttl() + super::redis::FENCE;
            while Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if shared.fence(&id).await.is_ok() {
                    tracing::info!(key_id = %id, "Redis cache entry fenced off after the outage");
                    break;
                }
            }
            lock(&unfenced).remove(&id);
        });
    }

    /// Whether lookups of `id` may read the Redis cache.
    #[cfg(feature = "redis")]
    fn shared_for(&self, id: &str) -> Option<&super::redis::RedisCache> {
        let shared = self.shared.as_ref()?;
        (!lock(&self.unfenced).contains(id)).then_some(shared)
    }
}

#[cfg(feature = "redis")]
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl Backend for CachedBackend {
    async fn insert(&self, key: &ApiKeyRecord, event: &KeyEvent) -> Result<(), StoreError> {
        metrics().storage_operation("insert");
        self.primary.insert(key, event).await
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        metrics().storage_operation("get");
        self.primary.get(id).await
    }

    fn cached(&self, id: &str) -> Option<Arc<ApiKeyRecord>> {
        // Only hits are counted here: a miss is counted by the `lookup` that follows it.
        let cached = self.local.as_ref()?.get(id)?;
        metrics().key_cache("local", true);
        Some(cached)
    }

    async fn lookup(&self, id: &str) -> Result<Option<Arc<ApiKeyRecord>>, StoreError> {
        let generation = self.local.as_ref().map(LocalCache::generation);
        if let Some(cached) = self.cached(id) {
            return Ok(Some(cached));
        }
        if self.local.is_some() {
            metrics().key_cache("local", false);
        }
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared_for(id) {
            let found = shared.get(id).await;
            metrics().key_cache("redis", matches!(found, Ok(Some(_))));
            match found {
                Ok(Some(record)) => {
                    let record = Arc::new(record);
                    self.remember(&record, generation);
                    return Ok(Some(record));
                }
                // A resting Redis was skipped, not asked; the failure that started the rest was
                // logged.
                Ok(None) | Err(super::redis::breaker::CacheError::Resting) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "Redis cache unavailable; reading the database");
                }
            }
        }
        metrics().storage_operation("lookup");
        #[cfg(feature = "redis")]
        let read_at = Instant::now();
        let Some(record) = self.primary.lookup(id).await? else {
            // Unknown ids are not cached: a key must pass its checksum to get here, and a later
            // insert would otherwise be hidden.
            return Ok(None);
        };
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared_for(id)
            && let Err(err) = shared.fill(&record, read_at).await
        {
            tracing::debug!(error = %err, "could not fill the Redis cache");
        }
        self.remember(&record, generation);
        Ok(Some(record))
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<ApiKeyRecord>, StoreError> {
        metrics().storage_operation("list");
        self.primary.list(query).await
    }

    async fn revoke(
        &self,
        id: &str,
        at: DateTime<Utc>,
        event: &KeyEvent,
    ) -> Result<bool, StoreError> {
        metrics().storage_operation("revoke");
        let found = self.primary.revoke(id, at, event).await?;
        if found {
            self.refresh(id).await;
        }
        Ok(found)
    }

    async fn update(
        &self,
        id: &str,
        changes: &KeyChanges,
        event: &KeyEvent,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        metrics().storage_operation("update");
        let updated = self.primary.update(id, changes, event).await?;
        if updated.is_some() {
            self.refresh(id).await;
        }
        Ok(updated)
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        retires_at: DateTime<Utc>,
        events: &[KeyEvent],
    ) -> Result<bool, StoreError> {
        metrics().storage_operation("rotate");
        let rotated = self.primary.rotate(old_id, new, retires_at, events).await?;
        if rotated {
            self.refresh(old_id).await;
        }
        Ok(rotated)
    }

    async fn use_quota(
        &self,
        id: &str,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<QuotaUse, StoreError> {
        // Cached entries keep an old `remaining`; the primary's count is the one that decides.
        metrics().storage_operation("use_quota");
        self.primary.use_quota(id, refill_before, now).await
    }

    async fn events(&self, query: &EventQuery) -> Result<Page<KeyEvent>, StoreError> {
        metrics().storage_operation("events");
        self.primary.events(query).await
    }

    async fn health_checks(&self) -> Vec<(&'static str, Result<(), StoreError>)> {
        let checks = self.primary.health_checks().await;
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            let ping = shared.ping().await;
            let ping = ping.map_err(|err| StoreError::Unavailable(err.to_string()));
            return checks.into_iter().chain([("redis_cache", ping)]).collect();
        }
        checks
    }

    async fn record_usage(&self, batch: &[Usage]) -> Result<(), StoreError> {
        // Usage does not change whether a key authenticates, so cached entries stay valid.
        metrics().storage_operation("record_usage");
        self.primary.record_usage(batch).await
    }

    async fn settle(&self, patience: Duration) -> Result<(), StoreError> {
        #[cfg(feature = "redis")]
        {
            let deadline = Instant::now() + patience;
            loop {
                let pending = lock(&self.unfenced).len();
                if pending == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(StoreError::Unavailable(format!(
                        "{pending} change(s) are saved, but Redis could not be told: other \
                         instances may accept the old keys until REDIS_CACHE_TTL_SECONDS passes"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        #[cfg(not(feature = "redis"))]
        let _ = patience;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::Notify;

    use super::*;
    use crate::store::conformance::{event, sample};
    use crate::store::testing::FlakyStore;

    #[tokio::test]
    async fn a_lookup_overtaken_by_a_revocation_does_not_cache_the_old_key() {
        // A slow database: lookups read at once but answer only when told to.
        let slow =
            Arc::new(FlakyStore { held_lookups: Some(Notify::new()), ..FlakyStore::default() });
        let cache = Arc::new(CachedBackend::new(slow.clone()));
        let key = sample("owner", Utc::now());
        cache.insert(&key, &event(&key.id)).await.unwrap();

        // A lookup reads the key while it is valid, then the key is revoked before it answers.
        let lookup = tokio::spawn({
            let (cache, id) = (cache.clone(), key.id.clone());
            async move { cache.lookup(&id).await }
        });
        tokio::task::yield_now().await;
        let revoked = event(&key.id);
        assert!(cache.revoke(&key.id, Utc::now(), &revoked).await.unwrap());
        slow.held_lookups.as_ref().unwrap().notify_one();
        let answered = lookup.await.unwrap().unwrap().unwrap();
        assert!(answered.revoked_at.is_none(), "the slow lookup read before the revocation");

        assert!(cache.cached(&key.id).is_none(), "but did not cache what it read");
        slow.held_lookups.as_ref().unwrap().notify_one();
        let now = cache.lookup(&key.id).await.unwrap().unwrap();
        assert!(now.revoked_at.is_some());
    }
}
