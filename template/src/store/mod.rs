//! Where keys live: the [`Backend`] trait, and opening a backend from `DATABASE_URL`.
//!
//! Implement [`Backend`] to keep keys somewhere else; [`conformance`] checks an implementation
//! against the behaviour the rest of the service relies on.

pub mod cache;
pub mod conformance;
pub mod feed;
pub mod memory;
pub mod quota;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;

use crate::config::{Config, DATABASE_URL_FORMS, StoreKind};
use crate::model::{ApiKeyRecord, KeyChanges, KeyEvent, KeyId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::runtime::Handle;

pub use cache::CachedBackend;
pub use memory::MemoryBackend;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::SqlBackend;

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "redis")))]
compile_error!("enable at least one of the `sqlite`, `postgres` and `redis` features");

/// Whether `left` uses are enough to hand out a block of `want` at once (see
/// [`Backend::use_quota`]).
pub fn block_fits(want: u64, left: u64) -> bool {
    want == 1 || left >= want.saturating_mul(16)
}

/// Runs `task` on `runtime`, else on the caller's: the caches' own tasks run on the runtime they
/// were made on, not on a server worker's, which ends first.
fn spawn_on(runtime: Option<&Handle>, task: impl Future<Output = ()> + Send + 'static) {
    drop(match runtime {
        Some(runtime) => runtime.spawn(task),
        None => tokio::spawn(task),
    });
}

/// What [`Backend::use_quota`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaUse {
    /// `taken` uses taken (the number asked for, or one); this many are left.
    Taken { taken: u64, remaining: u64 },
    /// None left: the request must be refused.
    Exhausted,
    /// The key has no quota (or no longer exists): nothing to take.
    Unlimited,
}

/// Which events to list: newest first, optionally one key's.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub key_id: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

/// A span of time: after the first instant, up to and including the second.
pub type Window = (DateTime<Utc>, DateTime<Utc>);

/// Which keys to list: newest first, optionally one owner's, optionally only those about to expire.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub owner_id: Option<String>,
    /// Only unrevoked keys whose expiry falls in this window.
    pub expiring: Option<Window>,
    pub limit: u32,
    pub offset: u64,
}

/// One page of a listing, with the size of the whole result.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// What [`Backend::purge`] deletes: keys that stopped working (revoked, expired, or retired after a
/// rotation) before `keys_before`, and audit events recorded before `events_before`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub keys_before: Option<DateTime<Utc>>,
    pub events_before: Option<DateTime<Utc>>,
}

impl Retention {
    /// Whether `key` stopped working before `keys_before`.
    pub fn expels(&self, key: &ApiKeyRecord) -> bool {
        let ended = [key.revoked_at, key.expires_at, key.retires_at].into_iter().flatten().min();
        self.keys_before.zip(ended).is_some_and(|(before, ended)| ended < before)
    }

    /// Whether `event` was recorded before `events_before`.
    pub fn expels_event(&self, event: &KeyEvent) -> bool {
        self.events_before.is_some_and(|before| event.at < before)
    }
}

/// How many keys and events [`Backend::purge`] deleted (or would delete).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub keys: u64,
    pub events: u64,
}

impl Purged {
    /// `event` with the counts added to its changes, as the audit log keeps a purge.
    pub fn recorded_in(self, event: &KeyEvent) -> KeyEvent {
        let mut event = event.clone();
        event.changes.insert("keys".into(), self.keys.into());
        event.changes.insert("events".into(), self.events.into());
        event
    }
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
    /// Stores a new key and the event recording it; [`StoreError::Duplicate`] if its id is taken.
    async fn insert(&self, key: &ApiKeyRecord, event: &KeyEvent) -> Result<(), StoreError>;

    /// The key with this id, revoked and expired ones included, as currently stored.
    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// The key with this id, for authenticating a request. A caching backend answers from its cache,
    /// within its documented staleness bound; usage counts in the answer may lag.
    async fn lookup(&self, id: &str) -> Result<Option<Arc<ApiKeyRecord>>, StoreError> {
        Ok(self.get(id).await?.map(Arc::new))
    }

    /// The key with this id if a copy is held in memory, fresh within the staleness bound, without
    /// any I/O. Only caches answer; the authenticator asks here first and skips work for a hit.
    fn cached(&self, _id: KeyId) -> Option<Arc<ApiKeyRecord>> {
        None
    }

    /// Takes one use of a key's quota from the uses held in memory, as [`Backend::use_quota`] would
    /// for a request but without any I/O, and answers how many are left; `None` when no use is at
    /// hand. Only caches answer.
    fn use_held_quota(&self, _id: &str, _refill_before: Option<DateTime<Utc>>) -> Option<u64> {
        None
    }

    /// Uses of the key's quota this instance holds in hand, taken from the store but not used yet
    /// (see [`quota`]); what the store's `remaining` leaves out for this instance.
    fn quota_in_hand(&self, _id: &str) -> u64 {
        0
    }

    /// Keys newest first (by `created_at`, then `id`), with the total matching `query`.
    async fn list(&self, query: &ListQuery) -> Result<Page<ApiKeyRecord>, StoreError>;

    /// Marks a key revoked at `at`, keeping an earlier revocation time, and records `event` if the key
    /// was not revoked before. `false` if there is no such key.
    async fn revoke(
        &self,
        id: &str,
        at: DateTime<Utc>,
        event: &KeyEvent,
    ) -> Result<bool, StoreError>;

    /// Makes `changes` to a key and records `event`, in one step. The key as changed, or `None` (and
    /// nothing stored) if there is no such key.
    async fn update(
        &self,
        id: &str,
        changes: &KeyChanges,
        event: &KeyEvent,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Stores `new`, marks `old_id` replaced by it until `retires_at`, and records `events`, in one
    /// step. `false` (and nothing stored) if `old_id` is gone, revoked or already replaced.
    async fn rotate(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        retires_at: DateTime<Utc>,
        events: &[KeyEvent],
    ) -> Result<bool, StoreError>;

    /// Takes uses from a key's quota, atomically: `want` of them when at least sixteen times as many
    /// are left, else one, so that concurrent callers never take more than there is and no caller
    /// holds more than a sixteenth of what was left. With `refill_before`, a quota last filled
    /// before that time is filled to its refill amount first (at `now`), and a caller dated before
    /// the last refill gets one use, not a block: it may still be in the period before, whose block
    /// would be dropped unused.
    async fn use_quota(
        &self,
        id: &str,
        want: u64,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<QuotaUse, StoreError>;

    /// Recorded changes, newest first (by `at`, then `id`), with the total matching `query`.
    async fn events(&self, query: &EventQuery) -> Result<Page<KeyEvent>, StoreError>;

    /// Deletes what `retention` names and then records `event` with the counts
    /// ([`Purged::recorded_in`]); with no `event` (a dry run), only counts. Deleting is idempotent,
    /// so a backend may delete in batches: a purge cut short is finished by running it again.
    async fn purge(
        &self,
        retention: &Retention,
        event: Option<&KeyEvent>,
    ) -> Result<Purged, StoreError>;

    /// Whether each thing this backend depends on answers, by name, for the readiness probe. The
    /// default reads one (absent) key.
    async fn health_checks(&self) -> Vec<(&'static str, Result<(), StoreError>)> {
        vec![("store", self.get("readiness-probe").await.map(drop))]
    }

    /// Adds counted requests to each key and moves `last_used_at` forward, never back. A batch
    /// names each key at most once (PostgreSQL refuses a statement that updates a row twice).
    ///
    /// Increments are relative (`request_count + n`), so instances flushing at once lose nothing.
    async fn record_usage(&self, batch: &[Usage]) -> Result<(), StoreError>;

    /// The feed announcing this store's changes to every instance; `None` if it has none, and
    /// caches then trust their copies only for the short `KEY_CACHE_TTL_MS`. See [`feed`].
    fn feed(&self) -> Option<Arc<dyn feed::ChangeFeed>> {
        None
    }

    /// Waits up to `patience` for changes that have not yet reached a shared cache (see
    /// [`CachedBackend`]) to reach it; an error if some still have not. Called before the process
    /// exits, which would drop them.
    async fn settle(&self, _patience: std::time::Duration) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Opens the configured storage: the backend named by `DATABASE_URL` (`sqlite://…`, `postgres://…`,
/// `redis://…` or `memory://`) behind an in-process cache, and the Redis cache too when `REDIS_URL`
/// is set.
pub async fn open(config: &Config) -> Result<Arc<dyn Backend>, StoreError> {
    let url = config.database_url.as_str();
    let primary: Arc<dyn Backend> = match StoreKind::of(url).filter(|kind| kind.is_built()) {
        Some(StoreKind::Memory) => Arc::new(MemoryBackend::default()),
        #[cfg(feature = "redis")]
        Some(StoreKind::Redis) => Arc::new(redis::RedisBackend::connect(url)?),
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        Some(StoreKind::Sqlite | StoreKind::Postgres) => {
            Arc::new(SqlBackend::connect_with_pool(url, config.database_pool_size).await?)
        }
        _ => return Err(not_built(url)),
    };
    let cached = CachedBackend::new(primary)
        .with_local_cache(config.key_cache_lifetime(), config.key_cache_ttl());
    #[cfg(feature = "redis")]
    let cached = match &config.redis_url {
        Some(redis_url) => {
            cached.with_redis(redis::RedisCache::connect(redis_url, config.redis_cache_ttl())?)
        }
        None => cached,
    };
    Ok(Arc::new(cached))
}

/// Brings the database named by `DATABASE_URL` up to date. Returns how many migrations ran.
pub async fn migrate(database_url: &str) -> Result<usize, StoreError> {
    match StoreKind::of(database_url).filter(|kind| kind.is_built()) {
        Some(StoreKind::Memory | StoreKind::Redis) => Ok(0),
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        Some(StoreKind::Sqlite | StoreKind::Postgres) => sql::migrate(database_url).await,
        _ => Err(not_built(database_url)),
    }
}

/// Why `url` names no store this build can open.
fn not_built(url: &str) -> StoreError {
    StoreError::Unavailable(match StoreKind::of(url) {
        Some(kind) => {
            let name = kind.name();
            format!(
                "DATABASE_URL names {name}, which this build does not include: rebuild with `--features {name}`"
            )
        }
        None => format!("DATABASE_URL {DATABASE_URL_FORMS}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_the_lifecycle_fields_read_back_enabled_and_unlimited() {
        let record = conformance::sample("owner", Utc::now());
        let mut json = serde_json::to_value(record.stored()).unwrap();
        let fields = json.as_object_mut().unwrap();
        for added in [
            "enabled",
            "rate_limit",
            "remaining",
            "refill",
            "refilled_at",
            "rotated_from",
            "replaced_by",
            "retires_at",
        ] {
            fields.remove(added);
        }
        let record: ApiKeyRecord = serde_json::from_value(json).unwrap();
        assert!(record.enabled);
        assert_eq!((record.rate_limit, record.remaining), (None, None));
        assert_eq!(record.replaced_by, None);
    }
}
