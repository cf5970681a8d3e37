//! Caching in front of the key store for the authentication path: an in-process cache, and optionally
//! a Redis cache shared by every instance.
//!
//! Only [`Backend::lookup`] is served from the caches, and quota uses from blocks taken ahead
//! ([`super::quota`]); every other call reads or writes the primary backend. A cached key lives
//! until it changes: the store announces every change on its change feed ([`super::feed`]), and
//! each instance, following the feed, drops what it cached of that key (fencing its Redis entry off
//! too). How stale a lookup can be:
//! - on the instance that made the change, not at all (its entry is dropped at once);
//! - on other instances, as long as the feed takes to bring the announcement (milliseconds);
//! - while an instance cannot follow the feed, its copies are trusted only for `KEY_CACHE_TTL_MS`
//!   ([`DEFAULT_KEY_CACHE_TTL`] unless configured) after they were read, from [`SILENCE`] after
//!   the feed was last heard, and it drops everything cached once it follows again: a change is
//!   then seen within `KEY_CACHE_TTL_MS` plus [`SILENCE`]. A store without a feed is treated so
//!   always;
//! - however well the feed goes, no copy is kept longer than `KEY_CACHE_LIFETIME_SECONDS`;
//! - if Redis cannot be reached when a key changes, the change is saved, this instance stops reading
//!   that key from Redis, and it retries the fence twice a second: other instances that can reach
//!   Redis may read the old entry until that retry lands, or, should this instance stop first (it
//!   waits five seconds, see [`Backend::settle`]), until the entry expires
//!   (`REDIS_CACHE_TTL_SECONDS`). Instances that hear of the change fence the entry off as well.
//!
//! A Redis error is a cache miss, never an answer: the primary decides, so an outage makes lookups
//! slower, not wrong.
//!
//! Every call that reaches the primary is counted in the `storage_operations` metric, and every cache
//! lookup in `key_cache_lookups`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::feed::{ChangeFeed, Heard, SILENCE, plausible_id};
use super::quota::Leases;
use super::{Backend, EventQuery, ListQuery, Page, Purged, QuotaUse, Retention, StoreError, Usage};
use crate::config::{DEFAULT_KEY_CACHE_LIFETIME, DEFAULT_KEY_CACHE_TTL};
use crate::metrics::metrics;
use crate::model::{ApiKeyRecord, KeyChanges, KeyEvent, KeyId};

/// quick_cache allocates as entries come, so only keys in use take memory.
const LOCAL_CAPACITY: usize = 1_000_000;

/// The in-process cache: each record with when it was read. quick_cache evicts by capacity; how long
/// an entry is trusted depends on the feed, and is checked here, on read. A record whose id no key
/// can present (see [`KeyId::new`]) is not kept.
struct LocalCache {
    entries: quick_cache::sync::Cache<KeyId, (Instant, Arc<ApiKeyRecord>)>,
    /// How long an entry is trusted while the feed is followed.
    lifetime: Duration,
    /// How long an entry is trusted while the feed is not followed.
    ttl: Duration,
    /// When the feed was last heard from, in milliseconds after `started`, plus one; 0 while it is
    /// not followed.
    heard: AtomicU64,
    started: Instant,
    /// Bumped by every invalidation; see [`LocalCache::insert`].
    invalidations: AtomicU64,
}

impl LocalCache {
    fn new(lifetime: Duration, ttl: Duration) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(LOCAL_CAPACITY),
            lifetime,
            ttl,
            heard: AtomicU64::new(0),
            started: Instant::now(),
            invalidations: AtomicU64::new(0),
        }
    }

    fn get(&self, id: KeyId) -> Option<Arc<ApiKeyRecord>> {
        let (read_at, record) = self.entries.get(&id)?;
        let now = Instant::now();
        let trusted = if self.following(now) { self.lifetime } else { self.ttl };
        (now.duration_since(read_at) < trusted).then_some(record)
    }

    fn following(&self, now: Instant) -> bool {
        let heard = self.heard.load(Ordering::Relaxed);
        let since_start = now.duration_since(self.started).as_millis() as u64;
        heard != 0 && (since_start + 1).saturating_sub(heard) < SILENCE.as_millis() as u64
    }

    /// The feed has brought every change announced before `sent`.
    fn heard(&self, sent: Instant) {
        let since_start = sent.saturating_duration_since(self.started).as_millis() as u64;
        self.heard.fetch_max(since_start + 1, Ordering::Relaxed);
    }

    /// The feed was lost: trust copies only for the short TTL from now on.
    fn lost(&self) {
        self.heard.store(0, Ordering::Relaxed);
    }

    /// Drops every entry, and any lookup still on its way in (see [`LocalCache::insert`]).
    fn clear(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
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
        let Some(id) = KeyId::new(&record.id) else {
            tracing::debug!(key_id = ?record.id, "not cached: no presented key can have this id");
            return;
        };
        self.entries.insert(id, (Instant::now(), record.clone()));
        if self.generation() != generation {
            self.entries.remove(&id);
        }
    }

    fn invalidate(&self, id: &str) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        if let Some(id) = KeyId::new(id) {
            self.entries.remove(&id);
        }
    }
}

pub struct CachedBackend {
    primary: Arc<dyn Backend>,
    caches: Arc<Caches>,
    /// The task following the primary's change feed, started by the first lookup.
    follower: OnceLock<Option<AbortHandle>>,
}

/// The caches, shared with the task that follows the change feed.
struct Caches {
    /// The runtime the backend was made on, where its own tasks run: not a server worker's, which
    /// ends when the worker does.
    runtime: Option<Handle>,
    local: Option<LocalCache>,
    /// Quota uses taken from the primary ahead of requests.
    leases: Leases,
    #[cfg(feature = "redis")]
    shared: Option<super::redis::RedisCache>,
    /// Keys changed while Redis could not fence their entries: read from the primary until it can.
    #[cfg(feature = "redis")]
    unfenced: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl CachedBackend {
    /// An in-process cache in front of `primary`, with entries trusted as
    /// [`DEFAULT_KEY_CACHE_LIFETIME`] and [`DEFAULT_KEY_CACHE_TTL`] say.
    pub fn new(primary: Arc<dyn Backend>) -> Self {
        let local = LocalCache::new(DEFAULT_KEY_CACHE_LIFETIME, DEFAULT_KEY_CACHE_TTL);
        let caches = Caches::new(Handle::try_current().ok(), Some(local));
        Self { primary, caches: Arc::new(caches), follower: OnceLock::new() }
    }

    /// Sets how long in-process entries are trusted: for `lifetime` at most, and for `ttl` only while
    /// the change feed cannot be followed. A zero `ttl` turns the in-process cache off.
    pub fn with_local_cache(mut self, lifetime: Duration, ttl: Duration) -> Self {
        self.configure().local = (!ttl.is_zero()).then(|| LocalCache::new(lifetime.max(ttl), ttl));
        self
    }

    /// Adds a Redis cache shared between instances, between the in-process cache and `primary`.
    #[cfg(feature = "redis")]
    pub fn with_redis(mut self, redis: super::redis::RedisCache) -> Self {
        self.configure().shared = Some(redis);
        self
    }

    fn configure(&mut self) -> &mut Caches {
        Arc::get_mut(&mut self.caches).expect("caches are configured before the first lookup")
    }

    /// Whether this instance follows the primary's change feed right now, so that its copies of
    /// keys live until they change.
    pub fn following(&self) -> bool {
        self.caches.local.as_ref().is_some_and(|local| local.following(Instant::now()))
    }

    /// Starts following the primary's change feed, once, if it has one.
    fn follow_changes(&self) {
        self.follower.get_or_init(|| {
            let feed = self.primary.feed()?;
            self.caches.local.as_ref()?;
            let runtime = self.caches.runtime.clone().or_else(|| Handle::try_current().ok())?;
            Some(runtime.spawn(follow(feed, self.caches.clone())).abort_handle())
        });
    }
}

impl Caches {
    fn new(runtime: Option<Handle>, local: Option<LocalCache>) -> Self {
        Self {
            leases: Leases::on(runtime.clone()),
            runtime,
            local,
            #[cfg(feature = "redis")]
            shared: None,
            #[cfg(feature = "redis")]
            unfenced: Arc::default(),
        }
    }

    fn remember(&self, record: &Arc<ApiKeyRecord>, generation: Option<u64>) {
        if let (Some(local), Some(generation)) = (&self.local, generation) {
            local.insert(record, generation);
        }
    }

    /// Brings the caches in line with the primary after a change to `id`: what this instance holds
    /// of it goes at once, then the Redis entry is fenced off, and the in-process copy goes again,
    /// in case a lookup read the old Redis entry before the fence (see [`LocalCache::insert`]).
    async fn refresh(&self, id: &str) {
        self.forget(id);
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            self.fence(shared, id).await;
            self.forget(id);
        }
    }

    /// Drops the in-process copy of `id` and the quota uses held for it.
    fn forget(&self, id: &str) {
        if let Some(local) = &self.local {
            local.invalidate(id);
        }
        self.leases.forget(id);
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
        super::spawn_on(self.runtime.as_ref(), async move {
            // Past the entry's own lifetime there is nothing left to fence.
            let give_up = Instant::now() + shared.ttl() + super::redis::FENCE;
            while Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if shared.fence(&id).await.is_ok() {
                    tracing::info!(key_id = ?id, "Redis cache entry fenced off after the outage");
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

    /// Acts on what the change feed says.
    fn hear(self: &Arc<Self>, heard: Heard) {
        let Some(local) = &self.local else { return };
        match heard {
            // What was cached before may have missed changes while the feed was not followed.
            Heard::Listening => {
                local.clear();
                self.leases.clear();
            }
            Heard::Alive(sent) => {
                local.heard(sent);
                metrics().change_feed_heard(sent + SILENCE);
            }
            Heard::Changed(id) if plausible_id(&id) => {
                self.forget(&id);
                // Not awaited: a slow Redis must not hold up the announcements behind this one.
                #[cfg(feature = "redis")]
                if self.shared.is_some() {
                    let caches = self.clone();
                    let refresh = async move { caches.refresh(&id).await };
                    super::spawn_on(self.runtime.as_ref(), refresh);
                }
            }
            Heard::Changed(_) => {}
        }
    }
}

impl Drop for CachedBackend {
    fn drop(&mut self) {
        if let Some(Some(follower)) = self.follower.get() {
            follower.abort();
        }
    }
}

/// Follows `feed` for as long as the caches exist, following it again whenever it fails: at once
/// after a feed that worked a while, then backing off to every two seconds.
async fn follow(feed: Arc<dyn ChangeFeed>, caches: Arc<Caches>) {
    let mut pause = Duration::from_millis(50);
    loop {
        let (heard, mut hearing) = mpsc::channel(256);
        let started = Instant::now();
        let following = feed.follow(heard);
        tokio::pin!(following);
        let ended = loop {
            tokio::select! {
                ended = &mut following => break ended,
                Some(heard) = hearing.recv() => caches.hear(heard),
            }
        };
        if let Some(local) = &caches.local {
            local.lost();
        }
        metrics().change_feed_lost();
        if let Err(err) = ended {
            tracing::warn!(error = %err, "lost the change feed; trusting cached keys briefly until it is back");
        }
        if started.elapsed() > SILENCE {
            pause = Duration::from_millis(50);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
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

    fn quota_in_hand(&self, id: &str) -> u64 {
        self.caches.leases.in_hand(id)
    }

    fn cached(&self, id: KeyId) -> Option<Arc<ApiKeyRecord>> {
        // Only hits are counted here: a miss is counted by the `lookup` that follows it.
        let cached = self.caches.local.as_ref()?.get(id)?;
        metrics().key_cache("local", true);
        Some(cached)
    }

    async fn lookup(&self, id: &str) -> Result<Option<Arc<ApiKeyRecord>>, StoreError> {
        self.follow_changes();
        let generation = self.caches.local.as_ref().map(LocalCache::generation);
        if let Some(cached) = KeyId::new(id).and_then(|id| self.cached(id)) {
            return Ok(Some(cached));
        }
        if self.caches.local.is_some() {
            metrics().key_cache("local", false);
        }
        #[cfg(feature = "redis")]
        if let Some(shared) = self.caches.shared_for(id) {
            let found = shared.get(id).await;
            metrics().key_cache("redis", matches!(found, Ok(Some(_))));
            match found {
                Ok(Some(record)) => {
                    let record = Arc::new(record);
                    self.caches.remember(&record, generation);
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
        if let Some(shared) = self.caches.shared_for(id)
            && let Err(err) = shared.fill(&record, read_at).await
        {
            tracing::debug!(error = %err, "could not fill the Redis cache");
        }
        self.caches.remember(&record, generation);
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
            self.caches.refresh(id).await;
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
            self.caches.refresh(id).await;
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
            self.caches.refresh(old_id).await;
        }
        Ok(rotated)
    }

    async fn use_quota(
        &self,
        id: &str,
        want: u64,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<QuotaUse, StoreError> {
        // Cached entries keep an old `remaining`; blocks taken from the primary decide. Requests
        // take one use each; a caller asking for a block of its own gets it from the primary.
        if want != 1 {
            metrics().storage_operation("use_quota");
            return self.primary.use_quota(id, want, refill_before, now).await;
        }
        let following = self.following();
        self.caches.leases.take(&self.primary, id, refill_before, now, following).await
    }

    fn use_held_quota(&self, id: &str, refill_before: Option<DateTime<Utc>>) -> Option<u64> {
        if !self.following() {
            return None;
        }
        self.caches.leases.take_held(id, refill_before)
    }

    async fn events(&self, query: &EventQuery) -> Result<Page<KeyEvent>, StoreError> {
        metrics().storage_operation("events");
        self.primary.events(query).await
    }

    async fn purge(
        &self,
        retention: &Retention,
        event: Option<&KeyEvent>,
    ) -> Result<Purged, StoreError> {
        // Nothing to drop from the caches: a purged key had stopped working, and a cached copy of
        // it is refused as it stands.
        metrics().storage_operation("purge");
        self.primary.purge(retention, event).await
    }

    async fn health_checks(&self) -> Vec<(&'static str, Result<(), StoreError>)> {
        let checks = self.primary.health_checks().await;
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.caches.shared {
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
                let pending = lock(&self.caches.unfenced).len();
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
    async fn copies_live_until_they_change_while_the_feed_is_heard_and_briefly_without_it() {
        let local = LocalCache::new(Duration::from_secs(60), Duration::from_millis(40));
        let caches = Arc::new(Caches::new(None, Some(local)));
        let local = caches.local.as_ref().unwrap();
        let record = Arc::new(sample("owner", Utc::now()));
        let cache = |record: &Arc<ApiKeyRecord>| local.insert(record, local.generation());
        let id = record.id.clone();
        let key_id = KeyId::new(&id).unwrap();

        caches.hear(Heard::Listening);
        assert!(!local.following(Instant::now()), "not before a heartbeat came back");
        caches.hear(Heard::Alive(Instant::now()));
        cache(&record);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(local.get(key_id).is_some(), "kept past the short TTL while the feed is heard");
        caches.hear(Heard::Changed(id.clone()));
        assert!(local.get(key_id).is_none(), "dropped when the feed says it changed");
        cache(&record);
        caches.hear(Heard::Changed("~not an id\n".into()));
        assert!(local.get(key_id).is_some(), "payloads that are no key id are ignored");
        let long_ago = Instant::now() - 2 * SILENCE;
        caches.hear(Heard::Alive(long_ago));
        assert!(local.following(Instant::now()), "a late heartbeat never moves the stamp back");

        cache(&record);
        tokio::time::sleep(Duration::from_millis(80)).await;
        local.lost();
        assert!(local.get(key_id).is_none(), "without the feed, trusted only for the short TTL");
        cache(&record);
        assert!(local.get(key_id).is_some(), "fresh copies are still served without the feed");
        caches.hear(Heard::Listening);
        assert!(local.get(key_id).is_none(), "following again drops what was cached meanwhile");
    }

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

        assert!(
            cache.cached(KeyId::new(&key.id).unwrap()).is_none(),
            "but did not cache what it read"
        );
        slow.held_lookups.as_ref().unwrap().notify_one();
        let now = cache.lookup(&key.id).await.unwrap().unwrap();
        assert!(now.revoked_at.is_some());
        assert!(
            cache.cached(KeyId::new(&key.id).unwrap()).is_some(),
            "a lookup after the revocation caches the key"
        );
    }
}
