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
#[cfg(test)]
pub(crate) mod testing;

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
    /// A disabled key is refused until enabled again; unlike revocation, this can be undone.
    /// Records written before this field existed (in Redis) read back enabled.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub rate_limit: Option<RateLimit>,
    /// Uses left, when the key has a quota; taken one per admitted request by [`Backend::use_quota`].
    pub remaining: Option<u64>,
    /// How the quota fills up again, if it does.
    pub refill: Option<Refill>,
    /// When the quota was last filled by [`Refill`].
    pub refilled_at: Option<DateTime<Utc>>,
    /// The key this one replaced, when it was made by a rotation.
    pub rotated_from: Option<String>,
    /// The key that replaced this one, once rotated.
    pub replaced_by: Option<String>,
    /// When a rotated key stops working: the end of its grace period.
    pub retires_at: Option<DateTime<Utc>>,
}

fn enabled_by_default() -> bool {
    true
}

/// At most `requests` requests per `window` seconds, spread evenly: a key that has been idle may
/// send all of them at once, then one more every `window / requests` seconds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[schema(example = 100, minimum = 1)]
    pub requests: u32,
    /// Seconds.
    #[schema(example = 60, minimum = 1)]
    pub window: u32,
}

/// Fills a quota back up to `amount` at the start of every UTC day or month.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    pub interval: RefillInterval,
    #[schema(example = 1000, minimum = 1)]
    pub amount: u64,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RefillInterval {
    Daily,
    Monthly,
}

impl RefillInterval {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Monthly => "monthly",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "daily" => Some(Self::Daily),
            "monthly" => Some(Self::Monthly),
            _ => None,
        }
    }

    /// When the period holding `now` began: midnight UTC of the day, or of the month's first day.
    pub fn period_start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        use chrono::Datelike;
        let day = now.date_naive();
        let first = match self {
            Self::Daily => day,
            Self::Monthly => day.with_day(1).unwrap_or(day),
        };
        first.and_time(chrono::NaiveTime::MIN).and_utc()
    }

    /// When the period after the one holding `now` begins.
    pub fn next_start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let start = self.period_start(now);
        match self {
            Self::Daily => start + chrono::Days::new(1),
            Self::Monthly => start + chrono::Months::new(1),
        }
    }
}

/// Changes to a stored key; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub metadata: Option<Map<String, Value>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub enabled: Option<bool>,
    pub rate_limit: Option<Option<RateLimit>>,
    pub remaining: Option<Option<u64>>,
    /// Setting a refill also sets `refilled_at`, to the time given here.
    pub refill: Option<(Option<Refill>, DateTime<Utc>)>,
}

impl KeyChanges {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `record` with these changes made.
    pub fn apply(&self, record: &mut ApiKeyRecord) {
        if let Some(name) = &self.name {
            record.name.clone_from(name);
        }
        if let Some(scopes) = &self.scopes {
            record.scopes.clone_from(scopes);
        }
        if let Some(metadata) = &self.metadata {
            record.metadata.clone_from(metadata);
        }
        if let Some(expires_at) = self.expires_at {
            record.expires_at = expires_at;
        }
        if let Some(enabled) = self.enabled {
            record.enabled = enabled;
        }
        if let Some(rate_limit) = self.rate_limit {
            record.rate_limit = rate_limit;
        }
        if let Some(remaining) = self.remaining {
            record.remaining = remaining;
        }
        if let Some((refill, at)) = self.refill {
            record.refill = refill;
            record.refilled_at = refill.map(|_| at);
        }
    }

    /// The changed fields and their new values, for the audit log.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut changed = Map::new();
        let mut put = |field: &str, value: Value| {
            changed.insert(field.to_owned(), value);
        };
        if let Some(name) = &self.name {
            put("name", name.clone().into());
        }
        if let Some(scopes) = &self.scopes {
            put("scopes", scopes.clone().into());
        }
        if let Some(metadata) = &self.metadata {
            put("metadata", Value::Object(metadata.clone()));
        }
        if let Some(expires_at) = self.expires_at {
            put(
                "expires_at",
                serde_json::to_value(expires_at).unwrap_or_default(),
            );
        }
        if let Some(enabled) = self.enabled {
            put("enabled", enabled.into());
        }
        if let Some(rate_limit) = self.rate_limit {
            put(
                "rate_limit",
                serde_json::to_value(rate_limit).unwrap_or_default(),
            );
        }
        if let Some(remaining) = self.remaining {
            put(
                "remaining",
                serde_json::to_value(remaining).unwrap_or_default(),
            );
        }
        if let Some((refill, _)) = self.refill {
            put("refill", serde_json::to_value(refill).unwrap_or_default());
        }
        changed
    }
}

/// What [`Backend::use_quota`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaUse {
    /// One use taken; this many are left.
    Taken { remaining: u64 },
    /// None left: the request must be refused.
    Exhausted,
    /// The key has no quota (or no longer exists): nothing to take.
    Unlimited,
}

/// One change to a key, as the audit log keeps it. Never holds a key or its digest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyEvent {
    pub id: String,
    pub key_id: String,
    pub action: EventAction,
    /// The key that made the change; `None` for the operator (the command line, start-up, your code).
    pub actor_key_id: Option<String>,
    /// The address the change came from, over HTTP.
    pub client: Option<String>,
    /// Changed fields and their new values.
    pub changes: Map<String, Value>,
    pub at: DateTime<Utc>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    Created,
    Rotated,
    Updated,
    Revoked,
}

impl EventAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Rotated => "rotated",
            Self::Updated => "updated",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Created, Self::Rotated, Self::Updated, Self::Revoked]
            .into_iter()
            .find(|action| action.as_str() == text)
    }
}

/// Which events to list: newest first, optionally one key's.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub key_id: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

/// A fresh random id for a record that has no other: 16 hex digits.
pub fn random_id() -> String {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("the OS random number generator is available");
    hex::encode(random)
}

/// Which keys to list: newest first, optionally one owner's, optionally only those about to expire.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub owner_id: Option<String>,
    /// Only unrevoked keys whose expiry falls after the first time and no later than the second.
    pub expiring: Option<(DateTime<Utc>, DateTime<Utc>)>,
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
    fn cached(&self, _id: &str) -> Option<Arc<ApiKeyRecord>> {
        None
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

    /// Takes one use from a key's quota, atomically: concurrent callers never take more than there
    /// is. With `refill_before`, a quota last filled before that time is filled to its refill amount
    /// first (at `now`).
    async fn use_quota(
        &self,
        id: &str,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<QuotaUse, StoreError>;

    /// Recorded changes, newest first (by `at`, then `id`), with the total matching `query`.
    async fn events(&self, query: &EventQuery) -> Result<Page<KeyEvent>, StoreError>;

    /// Whether each thing this backend depends on answers, by name, for the readiness probe. The
    /// default reads one (absent) key.
    async fn health_checks(&self) -> Vec<(&'static str, Result<(), StoreError>)> {
        vec![("store", self.get("readiness-probe").await.map(drop))]
    }

    /// Adds counted requests to each key and moves `last_used_at` forward, never back.
    ///
    /// Increments are relative (`request_count + n`), so instances flushing at once lose nothing.
    async fn record_usage(&self, batch: &[Usage]) -> Result<(), StoreError>;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_the_lifecycle_fields_read_back_enabled_and_unlimited() {
        let mut json = serde_json::to_value(conformance::sample("owner", Utc::now())).unwrap();
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
