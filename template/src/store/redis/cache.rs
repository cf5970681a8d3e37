//! [`RedisCache`]: the cache every instance shares in front of the database (`REDIS_URL`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use super::breaker::{Breaker, CacheError};
use super::connect;
use crate::model::ApiKeyRecord;
use crate::store::StoreError;

/// How long a changed key's entry stays fenced off: no fill lands in that time, and a fill that read
/// the database longer than half of it ago is dropped, so no fill can bring back what a change
/// replaced, however the two interleave.
pub const FENCE: Duration = Duration::from_secs(10);

/// The entry of a key changed less than [`FENCE`] ago: a miss that is not filled.
const FENCED: &str = "fenced";

/// The shared cache: one JSON entry per key, `apikey:v1:{id}`, with a TTL. Fills only add entries;
/// a change fences the key's entry off instead of writing its new state, so two changes racing
/// each other cannot leave the older one cached.
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    ttl: Duration,
    breaker: Arc<Breaker>,
}

impl RedisCache {
    pub fn connect(url: &str, ttl: Duration) -> Result<Self, StoreError> {
        Ok(Self { connection: connect(url)?, ttl, breaker: Arc::default() })
    }

    fn key(id: &str) -> String {
        format!("apikey:v1:{id}")
    }

    /// How long an entry lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, CacheError> {
        let mut connection = self.connection.clone();
        let json: Option<String> = self.breaker.call(connection.get(Self::key(id))).await?;
        Ok(json
            .filter(|json| json != FENCED)
            .map(|json| serde_json::from_str(&json))
            .transpose()?)
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let _: String = redis::cmd("PING").query_async(&mut self.connection.clone()).await?;
        Ok(())
    }

    /// Caches `record`, read from the database at `read_at`, unless an entry (or a fence) exists.
    pub async fn fill(&self, record: &ApiKeyRecord, read_at: Instant) -> Result<(), CacheError> {
        if read_at.elapsed() > FENCE / 2 {
            return Ok(());
        }
        let mut set = redis::cmd("SET");
        set.arg(Self::key(&record.id))
            .arg(serde_json::to_string(&record.stored())?)
            .arg("NX")
            .arg("EX")
            .arg(self.ttl.as_secs().max(1));
        let mut connection = self.connection.clone();
        self.breaker.call(set.exec_async(&mut connection)).await
    }

    /// Fences off the entry of `id`, which just changed (see [`FENCE`]). Never skipped while Redis
    /// rests: a change must reach the cache.
    pub async fn fence(&self, id: &str) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        let () = connection.set_ex(Self::key(id), FENCED, FENCE.as_secs()).await?;
        Ok(())
    }
}
