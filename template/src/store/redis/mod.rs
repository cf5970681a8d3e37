//! Redis, two ways: [`RedisBackend`] (this file), which keeps the keys themselves
//! (`DATABASE_URL=redis://…`), and [`RedisCache`], shared by every instance in front of the
//! database.
//!
//! Both go through one multiplexed [`ConnectionManager`] that reconnects by itself and connects
//! lazily, so the service starts while Redis is down.

pub mod breaker;
pub mod cache;
pub mod feed;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script, ScriptInvocation};

use super::feed::ChangeFeed;
use super::{Backend, EventQuery, ListQuery, Page, Purged, QuotaUse, Retention, StoreError, Usage};
use crate::model::{ApiKeyRecord, KeyChanges, KeyEvent};

pub use cache::{FENCE, RedisCache};

pub(crate) fn connect(url: &str) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(250)))
        .set_number_of_retries(1);
    redis::Client::open(url)
        .and_then(|client| client.get_connection_manager_lazy(config))
        .map_err(|e| StoreError::Unavailable(format!("Redis URL: {e}")))
}

/// Keys stored in Redis.
///
/// - `apikeys:key:{id}`: a hash with the record as JSON (`record`) and, in fields of their own, what
///   changes on its own: `request_count`, `last_used_at`, `revoked_at`, `remaining`, `refilled_at`,
///   `replaced_by`, `retires_at` (times in microseconds since the epoch);
/// - `apikeys:created` and `apikeys:owner:{owner}`: sorted sets of ids scored by creation time, for
///   listing newest first with a real total; `apikeys:expires`: ids scored by expiry;
/// - `apikeys:event:{id}`: an audit event as JSON, indexed by time in `apikeys:events` and
///   `apikeys:events:key:{key_id}`;
/// - `apikeys:changed`: the channel every change publishes its key id on ([`feed`]).
///
/// Every mutation is one Lua script, so a key and its audit event are stored together or not at all;
/// only a purge runs as many short scripts (see [`PURGE_BATCH`]).
pub struct RedisBackend {
    connection: ConnectionManager,
    feed: Arc<feed::RedisFeed>,
}

/// A script of `$body` after the functions the scripts share. `put_key` reads its arguments from
/// `ARGV[from]` on: id, creation score, owner, expiry score, then a count of field/value pairs and
/// the pairs; it returns the index after them, or `nil` if the id is taken. `add_events` reads (id,
/// key id, score, JSON, announce) quintuples, and announces the key ids so marked on the change
/// feed.
macro_rules! script {
    ($body:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                r"
local function put_key(hash, from)
  local id, created, owner, expires, n = ARGV[from], ARGV[from + 1], ARGV[from + 2], ARGV[from + 3], tonumber(ARGV[from + 4])
  if redis.call('HSETNX', hash, 'record', ARGV[from + 5]) == 0 then return nil end
  for i = from + 6, from + 5 + 2 * n, 2 do redis.call('HSET', hash, ARGV[i], ARGV[i + 1]) end
  redis.call('ZADD', 'apikeys:created', created, id)
  if owner ~= '' then redis.call('ZADD', 'apikeys:owner:' .. owner, created, id) end
  if expires ~= '' then redis.call('ZADD', 'apikeys:expires', expires, id) end
  return from + 6 + 2 * n
end
local function add_events(from)
  for i = from, #ARGV, 5 do
    redis.call('SET', 'apikeys:event:' .. ARGV[i], ARGV[i + 3])
    redis.call('ZADD', 'apikeys:events', ARGV[i + 2], ARGV[i])
    redis.call('ZADD', 'apikeys:events:key:' .. ARGV[i + 1], ARGV[i + 2], ARGV[i])
    if ARGV[i + 4] ~= '' then redis.call('PUBLISH', 'apikeys:changed', ARGV[i + 1]) end
  end
end
local function set_or_clear(hash, field, value)
  if value == 'keep' then return end
  if value == '' then redis.call('HDEL', hash, field) else redis.call('HSET', hash, field, value) end
end
",
                $body
            ))
        })
    };
}

static INSERT: LazyLock<Script> = script!(
    r"
local after = put_key(KEYS[1], 1)
if not after then return 0 end
add_events(after)
return 1
"
);

static REVOKE: LazyLock<Script> = script!(
    r"
if redis.call('HEXISTS', KEYS[1], 'record') == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1]) == 1 then add_events(2) end
return 1
"
);

/// Compare-and-set on the record JSON: `-1` when another update came first (the caller retries).
static UPDATE: LazyLock<Script> = script!(
    r"
local current = redis.call('HGET', KEYS[1], 'record')
if not current then return 0 end
if current ~= ARGV[2] then return -1 end
redis.call('HSET', KEYS[1], 'record', ARGV[3])
if ARGV[4] == '' then redis.call('ZREM', 'apikeys:expires', ARGV[1])
else redis.call('ZADD', 'apikeys:expires', ARGV[4], ARGV[1]) end
set_or_clear(KEYS[1], 'remaining', ARGV[5])
set_or_clear(KEYS[1], 'refilled_at', ARGV[6])
add_events(7)
return 1
"
);

/// `0` when the old key cannot be rotated, `-1` when the new id is taken.
static ROTATE: LazyLock<Script> = script!(
    r"
local old = KEYS[1]
if redis.call('HEXISTS', old, 'record') == 0 or redis.call('HEXISTS', old, 'revoked_at') == 1
  or redis.call('HEXISTS', old, 'replaced_by') == 1 then return 0 end
local after = put_key(KEYS[2], 2)
if not after then return -1 end
-- The quota as it stands now: uses taken since the new key was made from the old one are spent.
for _, field in ipairs({'remaining', 'refilled_at'}) do
  local value = redis.call('HGET', old, field)
  if value then redis.call('HSET', KEYS[2], field, value) end
end
redis.call('HSET', old, 'replaced_by', ARGV[2], 'retires_at', ARGV[1])
add_events(after)
return 1
"
);

/// Of the keys `ARGV[3..]`, counts those that stopped working (revoked, expired or retired) before
/// `ARGV[1]`, and deletes them with their index entries when `ARGV[2]` is `1`.
static PURGE_KEYS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local before, n = tonumber(ARGV[1]), 0
local function ended(at) return at and tonumber(at) < before end
for i = 3, #ARGV do
  local id = ARGV[i]
  local hash = 'apikeys:key:' .. id
  local key = redis.call('HMGET', hash, 'record', 'revoked_at', 'retires_at')
  if key[1] and (ended(key[2]) or ended(key[3]) or ended(redis.call('ZSCORE', 'apikeys:expires', id))) then
    n = n + 1
    if ARGV[2] == '1' then
      local owner = cjson.decode(key[1]).owner_id
      if type(owner) == 'string' then redis.call('ZREM', 'apikeys:owner:' .. owner, id) end
      redis.call('ZREM', 'apikeys:created', id)
      redis.call('ZREM', 'apikeys:expires', id)
      redis.call('DEL', hash)
    end
  end
end
return n
",
    )
});

/// Deletes up to `PURGE_BATCH` events recorded before `ARGV[1]`, oldest first: how many it deleted.
static PURGE_EVENTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = redis.call('ZRANGEBYSCORE', 'apikeys:events', '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  local event = redis.call('GET', 'apikeys:event:' .. id)
  if event then redis.call('ZREM', 'apikeys:events:key:' .. cjson.decode(event).key_id, id) end
  redis.call('DEL', 'apikeys:event:' .. id)
  redis.call('ZREM', 'apikeys:events', id)
end
return #ids
",
    )
});

static RECORD_EVENTS: LazyLock<Script> = script!(
    r"
add_events(1)
return 1
"
);

/// Keys or events one purge script handles: a purge runs as many short scripts, so Redis keeps
/// serving requests in between.
const PURGE_BATCH: usize = 1000;

/// Takes `ARGV[3]` uses if sixteen times as many are left and the caller is dated no earlier than
/// the last refill, else one (as [`Backend::use_quota`]): the uses taken and those left; `-1` taken
/// for no quota, `0` for none left.
static USE_QUOTA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local left = redis.call('HGET', KEYS[1], 'remaining')
if not left then return {-1, 0} end
left = tonumber(left)
local since_refill = true
if ARGV[1] ~= '' then
  local at = redis.call('HGET', KEYS[1], 'refilled_at')
  if not at or tonumber(at) < tonumber(ARGV[1]) then
    local refill = cjson.decode(redis.call('HGET', KEYS[1], 'record')).refill
    if type(refill) == 'table' then
      left = tonumber(refill.amount)
      redis.call('HSET', KEYS[1], 'refilled_at', ARGV[2])
    end
  else
    since_refill = tonumber(at) <= tonumber(ARGV[2])
  end
end
if left <= 0 then
  redis.call('HSET', KEYS[1], 'remaining', 0)
  return {0, 0}
end
local want = tonumber(ARGV[3])
local taken = 1
if want > 1 and since_refill and left >= 16 * want then taken = want end
redis.call('HSET', KEYS[1], 'remaining', left - taken)
return {taken, left - taken}
",
    )
});

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
const EXPIRES: &str = "apikeys:expires";
const EVENTS: &str = "apikeys:events";

fn key_of(id: &str) -> String {
    format!("apikeys:key:{id}")
}

fn owner_index(owner: &str) -> String {
    format!("apikeys:owner:{owner}")
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// A script argument for an optional time: empty when there is none.
fn micros_or_empty(at: Option<DateTime<Utc>>) -> String {
    at.map(|at| micros(at).to_string()).unwrap_or_default()
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

fn corrupt(err: serde_json::Error) -> StoreError {
    StoreError::Corrupt(err.to_string())
}

/// The `record` field: the key without what lives in fields of its own.
fn record_json(key: &ApiKeyRecord) -> Result<String, StoreError> {
    let mut stored = key.clone();
    stored.request_count = 0;
    stored.last_used_at = None;
    stored.revoked_at = None;
    stored.remaining = None;
    stored.refilled_at = None;
    stored.replaced_by = None;
    stored.retires_at = None;
    serde_json::to_string(&stored.stored()).map_err(corrupt)
}

/// The arguments `put_key` reads for `key`.
fn put_key_args(
    invocation: &mut ScriptInvocation<'_>,
    key: &ApiKeyRecord,
) -> Result<(), StoreError> {
    let mut fields: Vec<(&str, String)> = vec![("request_count", key.request_count.to_string())];
    let times = [
        ("last_used_at", key.last_used_at),
        ("revoked_at", key.revoked_at),
        ("refilled_at", key.refilled_at),
        ("retires_at", key.retires_at),
    ];
    fields.extend(times.into_iter().filter_map(|(f, at)| Some((f, micros(at?).to_string()))));
    fields.extend(key.remaining.map(|n| ("remaining", n.to_string())));
    fields.extend(key.replaced_by.clone().map(|id| ("replaced_by", id)));
    invocation
        .arg(&key.id)
        .arg(micros(key.created_at))
        .arg(key.owner_id.as_deref().unwrap_or_default())
        .arg(micros_or_empty(key.expires_at))
        .arg(fields.len())
        .arg(record_json(key)?);
    for (field, value) in fields {
        invocation.arg(field).arg(value);
    }
    Ok(())
}

/// The arguments `add_events` reads for `events`; those of key `changed` are announced on the
/// change feed (a new key is not: nothing can have cached it).
fn event_args(
    invocation: &mut ScriptInvocation<'_>,
    events: &[KeyEvent],
    changed: Option<&str>,
) -> Result<(), StoreError> {
    for event in events {
        invocation
            .arg(&event.id)
            .arg(&event.key_id)
            .arg(micros(event.at))
            .arg(serde_json::to_string(event).map_err(corrupt)?)
            .arg(if changed == Some(event.key_id.as_str()) { "1" } else { "" });
    }
    Ok(())
}

impl RedisBackend {
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let feed = Arc::new(feed::RedisFeed::new(url)?);
        connect(url).map(|connection| Self { connection, feed })
    }

    /// Runs a script that answers with a number.
    async fn invoke(&self, script: &ScriptInvocation<'_>) -> Result<i64, StoreError> {
        script.invoke_async(&mut self.connection.clone()).await.map_err(unavailable)
    }

    /// The key as stored, and its `record` field as it reads now (for compare-and-set).
    async fn read(&self, id: &str) -> Result<Option<(ApiKeyRecord, String)>, StoreError> {
        let fields: HashMap<String, String> =
            self.connection.clone().hgetall(key_of(id)).await.map_err(unavailable)?;
        let json = fields.get("record").cloned();
        Ok(Self::decode(id, fields)?.zip(json))
    }

    fn decode(
        id: &str,
        mut fields: HashMap<String, String>,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let Some(json) = fields.remove("record") else {
            return Ok(None);
        };
        let mut record: ApiKeyRecord = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("key {id}: {e}")))?;
        let mut count = |field: &str| {
            let bad = || StoreError::Corrupt(format!("key {id}: bad {field}"));
            fields.remove(field).map(|n| n.parse().map_err(|_| bad())).transpose()
        };
        record.request_count = count("request_count")?.unwrap_or(0);
        record.remaining = count("remaining")?;
        record.last_used_at = from_micros(fields.remove("last_used_at"))?;
        record.revoked_at = from_micros(fields.remove("revoked_at"))?;
        record.refilled_at = from_micros(fields.remove("refilled_at"))?;
        record.retires_at = from_micros(fields.remove("retires_at"))?;
        record.replaced_by = fields.remove("replaced_by");
        Ok(Some(record))
    }

    async fn records(&self, ids: &[String]) -> Result<Vec<ApiKeyRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(key_of(id));
        }
        let rows: Vec<HashMap<String, String>> =
            pipe.query_async(&mut self.connection.clone()).await.map_err(unavailable)?;
        ids.iter()
            .zip(rows)
            .filter_map(|(id, fields)| Self::decode(id, fields).transpose())
            .collect()
    }

    /// Ids of a sorted set, highest score first, one page of them, and the set's size.
    async fn page_of(
        &self,
        index: &str,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<String>, u64), StoreError> {
        let mut conn = self.connection.clone();
        let total: u64 = conn.zcard(index).await.map_err(unavailable)?;
        if limit == 0 || offset >= total {
            return Ok((Vec::new(), total));
        }
        let start = isize::try_from(offset).unwrap_or(isize::MAX);
        let stop = start.saturating_add(limit as isize).saturating_sub(1);
        let ids = conn.zrevrange(index, start, stop).await.map_err(unavailable)?;
        Ok((ids, total))
    }

    /// Keys expiring in the window, filtered and ordered here. One owner's keys are found by
    /// intersecting the expiry index with that owner's index in Redis, so an owner's listing costs
    /// what that owner has, never what every owner has.
    async fn list_expiring(
        &self,
        query: &ListQuery,
        after: DateTime<Utc>,
        by: DateTime<Utc>,
    ) -> Result<Page<ApiKeyRecord>, StoreError> {
        let mut conn = self.connection.clone();
        let (after, by) = (micros(after), micros(by));
        let ids: Vec<String> = match &query.owner_id {
            None => {
                conn.zrangebyscore(EXPIRES, format!("({after}"), by).await.map_err(unavailable)?
            }
            Some(owner) => {
                // Weights 1 and 0 keep the expiry as the score (microseconds fit an f64 exactly).
                let scored: Vec<(String, f64)> = redis::cmd("ZINTER")
                    .arg(2)
                    .arg(EXPIRES)
                    .arg(owner_index(owner))
                    .arg(&["WEIGHTS", "1", "0", "WITHSCORES"])
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                scored
                    .into_iter()
                    .filter(|(_, at)| (after as f64) < *at && *at <= by as f64)
                    .map(|(id, _)| id)
                    .collect()
            }
        };
        let mut matching: Vec<ApiKeyRecord> = self
            .records(&ids)
            .await?
            .into_iter()
            .filter(|k| k.revoked_at.is_none())
            .filter(|k| query.owner_id.is_none() || k.owner_id == query.owner_id)
            .collect();
        matching.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        let total = matching.len() as u64;
        let offset = usize::try_from(query.offset).unwrap_or(usize::MAX);
        Ok(Page {
            items: matching.into_iter().skip(offset).take(query.limit as usize).collect(),
            total,
        })
    }
}

#[async_trait]
impl Backend for RedisBackend {
    async fn insert(&self, key: &ApiKeyRecord, event: &KeyEvent) -> Result<(), StoreError> {
        let mut invocation = INSERT.key(key_of(&key.id));
        put_key_args(&mut invocation, key)?;
        event_args(&mut invocation, std::slice::from_ref(event), None)?;
        if self.invoke(&invocation).await? == 0 {
            return Err(StoreError::Duplicate);
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.read(id).await?.map(|(record, _)| record))
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<ApiKeyRecord>, StoreError> {
        if let Some((after, by)) = query.expiring {
            return self.list_expiring(query, after, by).await;
        }
        let index = query.owner_id.as_deref().map_or_else(|| ALL.to_owned(), owner_index);
        let (ids, total) = self.page_of(&index, query.limit, query.offset).await?;
        Ok(Page { items: self.records(&ids).await?, total })
    }

    async fn revoke(
        &self,
        id: &str,
        at: DateTime<Utc>,
        event: &KeyEvent,
    ) -> Result<bool, StoreError> {
        let mut invocation = REVOKE.key(key_of(id));
        invocation.arg(micros(at));
        event_args(&mut invocation, std::slice::from_ref(event), Some(id))?;
        Ok(self.invoke(&invocation).await? == 1)
    }

    async fn update(
        &self,
        id: &str,
        changes: &KeyChanges,
        event: &KeyEvent,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        // Another update between reading and writing makes the script refuse; read again and retry.
        for _ in 0..16 {
            let Some((mut record, current)) = self.read(id).await? else {
                return Ok(None);
            };
            changes.apply(&mut record);
            let keep = || "keep".to_owned();
            let mut invocation = UPDATE.key(key_of(id));
            invocation
                .arg(id)
                .arg(&current)
                .arg(record_json(&record)?)
                .arg(micros_or_empty(record.expires_at))
                .arg(
                    changes
                        .remaining
                        .map_or_else(keep, |n| n.map(|n| n.to_string()).unwrap_or_default()),
                )
                .arg(changes.refill.map_or_else(keep, |_| micros_or_empty(record.refilled_at)));
            event_args(&mut invocation, std::slice::from_ref(event), Some(id))?;
            match self.invoke(&invocation).await? {
                1 => return self.get(id).await,
                0 => return Ok(None),
                _ => continue,
            }
        }
        Err(StoreError::Unavailable(format!("key {id} is being changed by others; try again")))
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        retires_at: DateTime<Utc>,
        events: &[KeyEvent],
    ) -> Result<bool, StoreError> {
        let mut invocation = ROTATE.key(key_of(old_id));
        invocation.key(key_of(&new.id)).arg(micros(retires_at));
        put_key_args(&mut invocation, new)?;
        event_args(&mut invocation, events, Some(old_id))?;
        match self.invoke(&invocation).await? {
            -1 => Err(StoreError::Duplicate),
            rotated => Ok(rotated == 1),
        }
    }

    async fn use_quota(
        &self,
        id: &str,
        want: u64,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<QuotaUse, StoreError> {
        let mut invocation = USE_QUOTA.key(key_of(id));
        invocation.arg(micros_or_empty(refill_before)).arg(micros(now)).arg(want);
        let (taken, left): (i64, i64) =
            invocation.invoke_async(&mut self.connection.clone()).await.map_err(unavailable)?;
        Ok(match u64::try_from(taken) {
            Err(_) => QuotaUse::Unlimited,
            Ok(0) => QuotaUse::Exhausted,
            Ok(taken) => QuotaUse::Taken { taken, remaining: u64::try_from(left).unwrap_or(0) },
        })
    }

    async fn events(&self, query: &EventQuery) -> Result<Page<KeyEvent>, StoreError> {
        let index = query
            .key_id
            .as_deref()
            .map_or_else(|| EVENTS.to_owned(), |id| format!("apikeys:events:key:{id}"));
        let (ids, total) = self.page_of(&index, query.limit, query.offset).await?;
        if ids.is_empty() {
            return Ok(Page { items: Vec::new(), total });
        }
        let names: Vec<String> = ids.iter().map(|id| format!("apikeys:event:{id}")).collect();
        let found: Vec<Option<String>> =
            self.connection.clone().mget(names).await.map_err(unavailable)?;
        let items = found
            .into_iter()
            .flatten()
            .map(|json| serde_json::from_str(&json).map_err(corrupt))
            .collect::<Result<_, _>>()?;
        Ok(Page { items, total })
    }

    async fn purge(
        &self,
        retention: &Retention,
        event: Option<&KeyEvent>,
    ) -> Result<Purged, StoreError> {
        let mut purged = Purged::default();
        let batches = async {
            let mut conn = self.connection.clone();
            let delete = if event.is_some() { "1" } else { "" };
            if let Some(before) = retention.keys_before {
                // Scanned, about a batch at a time: reading every id in one reply stalled Redis for
                // every client (83 ms for a million keys). A scan returns every key there from its
                // start to its end, whatever is deleted or added meanwhile.
                let mut cursor = 0u64;
                loop {
                    let (next, scanned): (u64, Vec<(String, f64)>) = redis::cmd("ZSCAN")
                        .arg(ALL)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(PURGE_BATCH)
                        .query_async(&mut conn)
                        .await
                        .map_err(unavailable)?;
                    if !scanned.is_empty() {
                        let ids = scanned.into_iter().map(|(id, _created)| id);
                        let mut invocation = PURGE_KEYS.prepare_invoke();
                        invocation.arg(micros(before)).arg(delete).arg(ids.collect::<Vec<_>>());
                        purged.keys += self.invoke(&invocation).await?.unsigned_abs();
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            if let Some(before) = retention.events_before {
                let before = micros(before);
                if event.is_none() {
                    purged.events = conn
                        .zcount(EVENTS, "-inf", format!("({before}"))
                        .await
                        .map_err(unavailable)?;
                } else {
                    loop {
                        let deleted = self
                            .invoke(PURGE_EVENTS.arg(before).arg(PURGE_BATCH))
                            .await?
                            .unsigned_abs();
                        purged.events += deleted;
                        if deleted < PURGE_BATCH as u64 {
                            break;
                        }
                    }
                }
            }
            Ok::<_, StoreError>(())
        }
        .await;
        if let (Err(err), Some(_)) = (&batches, event) {
            // The batches run stay deleted: say how far the purge got, as no event will.
            tracing::warn!(target: "audit", keys = purged.keys, events = purged.events, "purge cut short: {err}");
        }
        batches?;
        if let Some(event) = event {
            let mut invocation = RECORD_EVENTS.prepare_invoke();
            event_args(&mut invocation, &[purged.recorded_in(event)], None)?;
            self.invoke(&invocation).await?;
        }
        Ok(purged)
    }

    async fn health_checks(&self) -> Vec<(&'static str, Result<(), StoreError>)> {
        let ping: Result<String, _> =
            redis::cmd("PING").query_async(&mut self.connection.clone()).await;
        vec![("store", ping.map(drop).map_err(unavailable))]
    }

    fn feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        Some(self.feed.clone())
    }

    async fn record_usage(&self, batch: &[Usage]) -> Result<(), StoreError> {
        // MULTI/EXEC: a batch that fails to reach Redis applies nothing, and no other client's
        // command runs in the middle of it.
        let mut pipe = redis::pipe();
        pipe.atomic();
        // EVAL with the source: a NOSCRIPT answer inside MULTI could not be retried with EVALSHA,
        // and this runs a few times per flush interval, not per request.
        for usage in batch {
            pipe.cmd("EVAL")
                .arg(RECORD_USAGE)
                .arg(1)
                .arg(key_of(&usage.id))
                .arg(usage.requests)
                .arg(micros(usage.last_used_at))
                .ignore();
        }
        pipe.exec_async(&mut self.connection.clone()).await.map_err(unavailable)
    }
}
