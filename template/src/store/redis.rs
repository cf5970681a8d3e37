//! Redis, two ways: [`RedisCache`], shared by every instance in front of the database, and
//! [`RedisBackend`], which keeps the keys themselves (`DATABASE_URL=redis://…`).
//!
//! Both go through one multiplexed [`ConnectionManager`] that reconnects by itself and connects
//! lazily, so the service starts while Redis is down.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{ApiKeyRecord, Backend, ListQuery, Page, StoreError, Usage};

fn connect(url: &str) -> Result<ConnectionManager, StoreError> {
    let client =
        redis::Client::open(url).map_err(|e| StoreError::Unavailable(format!("Redis URL: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(250)))
        .set_number_of_retries(1);
    client
        .get_connection_manager_lazy(config)
        .map_err(|e| StoreError::Unavailable(format!("Redis URL: {e}")))
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("a cached entry is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The shared cache: one JSON entry per key, `apikey:v1:{id}`, with a TTL.
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    ttl: Duration,
}

impl RedisCache {
    pub fn connect(url: &str, ttl: Duration) -> Result<Self, StoreError> {
        Ok(Self {
            connection: connect(url)?,
            ttl,
        })
    }

    fn key(id: &str) -> String {
        format!("apikey:v1:{id}")
    }

    pub async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, CacheError> {
        let json: Option<String> = self.connection.clone().get(Self::key(id)).await?;
        Ok(json.map(|json| serde_json::from_str(&json)).transpose()?)
    }

    /// Caches `record` unless an entry exists: a fill never overwrites a mutation's entry.
    pub async fn fill(&self, record: &ApiKeyRecord) -> Result<(), CacheError> {
        redis::cmd("SET")
            .arg(Self::key(&record.id))
            .arg(serde_json::to_string(record)?)
            .arg("NX")
            .arg("EX")
            .arg(self.ttl.as_secs().max(1))
            .exec_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    /// Replaces the entry for `id` with the current record, or removes it when there is none.
    pub async fn overwrite(
        &self,
        id: &str,
        record: Option<&ApiKeyRecord>,
    ) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        match record {
            Some(record) => {
                let json = serde_json::to_string(record)?;
                let () = connection
                    .set_ex(Self::key(id), json, self.ttl.as_secs().max(1))
                    .await?;
            }
            None => {
                let () = connection.del(Self::key(id)).await?;
            }
        }
        Ok(())
    }
}

/// Keys stored in Redis.
///
/// - `apikeys:key:{id}`: a hash with the record as JSON (`record`) and the fields that change on
///   their own: `request_count`, `last_used_at` and `revoked_at` (microseconds since the epoch);
/// - `apikeys:created` and `apikeys:owner:{owner}`: sorted sets of ids scored by creation time, for
///   listing newest first with a real total.
pub struct RedisBackend {
    connection: ConnectionManager,
}

/// Adds to the count and moves `last_used_at` forward, in one step, for a key that still exists.
const RECORD_USAGE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'request_count', ARGV[1])
local last = redis.call('HGET', KEYS[1], 'last_used_at')
if not last or tonumber(last) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'last_used_at', ARGV[2])
end
return 1
";

const ALL: &str = "apikeys:created";

fn key_of(id: &str) -> String {
    format!("apikeys:key:{id}")
}

fn owner_index(owner: &str) -> String {
    format!("apikeys:owner:{owner}")
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(value: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    value
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_micros)
                .ok_or_else(|| StoreError::Corrupt(format!("bad timestamp {v:?}")))
        })
        .transpose()
}

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("Redis: {err}"))
}

impl RedisBackend {
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            connection: connect(url)?,
        })
    }

    fn decode(
        id: &str,
        mut fields: std::collections::HashMap<String, String>,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let Some(json) = fields.remove("record") else {
            return Ok(None);
        };
        let mut record: ApiKeyRecord = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("key {id}: {e}")))?;
        record.request_count = fields
            .remove("request_count")
            .map(|n| {
                n.parse()
                    .map_err(|_| StoreError::Corrupt(format!("key {id}: bad request_count")))
            })
            .transpose()?
            .unwrap_or(0);
        record.last_used_at = from_micros(fields.remove("last_used_at"))?;
        record.revoked_at = from_micros(fields.remove("revoked_at"))?;
        Ok(Some(record))
    }
}

#[async_trait]
impl Backend for RedisBackend {
    async fn insert(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut conn = self.connection.clone();
        let mut stored = key.clone();
        // These live in their own hash fields, so that they can change atomically.
        stored.request_count = 0;
        stored.last_used_at = None;
        stored.revoked_at = None;
        let json =
            serde_json::to_string(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let created: bool = conn
            .hset_nx(key_of(&key.id), "record", json)
            .await
            .map_err(unavailable)?;
        if !created {
            return Err(StoreError::Duplicate);
        }
        let score = micros(key.created_at);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(key_of(&key.id), "request_count", key.request_count)
            .ignore()
            .zadd(ALL, &key.id, score)
            .ignore();
        if let Some(at) = key.last_used_at {
            pipe.hset(key_of(&key.id), "last_used_at", micros(at))
                .ignore();
        }
        if let Some(at) = key.revoked_at {
            pipe.hset(key_of(&key.id), "revoked_at", micros(at))
                .ignore();
        }
        if let Some(owner) = &key.owner_id {
            pipe.zadd(owner_index(owner), &key.id, score).ignore();
        }
        pipe.exec_async(&mut conn).await.map_err(unavailable)
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let fields = self
            .connection
            .clone()
            .hgetall(key_of(id))
            .await
            .map_err(unavailable)?;
        Self::decode(id, fields)
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<ApiKeyRecord>, StoreError> {
        let mut conn = self.connection.clone();
        let index = query
            .owner_id
            .as_deref()
            .map_or_else(|| ALL.to_owned(), owner_index);
        let total: u64 = conn.zcard(&index).await.map_err(unavailable)?;
        let start = isize::try_from(query.offset).unwrap_or(isize::MAX);
        let stop = start.saturating_add(query.limit as isize).saturating_sub(1);
        let ids: Vec<String> = if query.limit == 0 || query.offset >= total {
            Vec::new()
        } else {
            conn.zrevrange(&index, start, stop)
                .await
                .map_err(unavailable)?
        };
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(key_of(id));
        }
        let rows: Vec<std::collections::HashMap<String, String>> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await.map_err(unavailable)?
        };
        let mut items = Vec::with_capacity(ids.len());
        for (id, fields) in ids.iter().zip(rows) {
            items.extend(Self::decode(id, fields)?);
        }
        Ok(Page { items, total })
    }

    async fn revoke(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut conn = self.connection.clone();
        let exists: bool = conn
            .hexists(key_of(id), "record")
            .await
            .map_err(unavailable)?;
        if exists {
            // HSETNX keeps the first revocation time.
            let _: bool = conn
                .hset_nx(key_of(id), "revoked_at", micros(at))
                .await
                .map_err(unavailable)?;
        }
        Ok(exists)
    }

    async fn record_usage(&self, batch: &[Usage]) -> Result<(), StoreError> {
        // MULTI/EXEC: a batch that fails to reach Redis applies nothing.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for usage in batch {
            pipe.cmd("EVAL")
                .arg(RECORD_USAGE)
                .arg(1)
                .arg(key_of(&usage.id))
                .arg(usage.requests)
                .arg(micros(usage.last_used_at))
                .ignore();
        }
        pipe.exec_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)
    }
}
