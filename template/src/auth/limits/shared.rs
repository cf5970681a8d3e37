//! Rate limits every instance shares through Redis (`REDIS_URL`, or Redis as the store): a GCRA
//! count per key, kept by a Lua script on Redis's clock and taken in blocks by busy keys.

use std::time::Duration;

use tokio::sync::Mutex;

use super::{CAPACITY, Held, LimitState, Refusal, held, interval};
use crate::metrics::metrics;
use crate::model::RateLimit;
use crate::store::StoreError;
use crate::store::quota::Pace;
use crate::store::redis::breaker::{Breaker, CacheError};

/// The most requests an instance takes from a key's shared rate limit at once. Smaller than a quota's
/// largest block: a block held may be used in the window after the one it was counted in, letting
/// a key past its limit by that much per instance.
const MAX_RATE_BLOCK: u64 = 1000;

/// The longest an instance holds requests taken from a shared rate limit before using them.
const HOLD: Duration = Duration::from_secs(1);

/// The rate limits every instance shares through Redis.
pub(super) struct Shared {
    connection: redis::aio::ConnectionManager,
    breaker: Breaker,
    blocks: Held<Mutex<Block>>,
}

/// The requests of one key taken from its shared rate limit and not used yet.
#[derive(Debug, Default)]
struct Block {
    left: u32,
    pace: Pace,
    /// What Redis answered when the block was taken: the standing the headers start from, or the
    /// standing and the wait of a refusal.
    answer: Option<Result<LimitState, (LimitState, Duration)>>,
}

impl Block {
    /// One request against the answer in hand while it stands: requests are left and the block is
    /// younger than [`HOLD`], or the wait of a refusal is not over. `None` when the next block
    /// must be taken.
    fn admit(&mut self, limit: RateLimit) -> Option<Result<LimitState, Refusal>> {
        let age = self.pace.age().unwrap_or(Duration::MAX);
        let answer = self.answer.filter(|answer| match answer {
            Ok(_) => self.left > 0 && age < HOLD,
            Err((_, wait)) => age < *wait,
        })?;
        Some(self.apply(answer, limit))
    }

    /// One request admitted from the block, or refused as Redis did.
    fn apply(
        &mut self,
        answer: Result<LimitState, (LimitState, Duration)>,
        limit: RateLimit,
    ) -> Result<LimitState, Refusal> {
        let since = self.pace.age().unwrap_or_default();
        match answer {
            Ok(state) => {
                self.left -= 1;
                Ok(LimitState {
                    limit,
                    remaining: state.remaining + self.left,
                    reset: state.reset.saturating_sub(since),
                })
            }
            Err((state, retry_after)) => Err(Refusal::RateLimited {
                state: LimitState { reset: state.reset.saturating_sub(since), ..state },
                retry_after: retry_after.saturating_sub(since),
            }),
        }
    }
}

/// GCRA on Redis's clock: one "theoretical arrival time" per key, in microseconds. Takes
/// `ARGV[3]` requests at once when they fit in the burst and are at most a sixteenth of it, else
/// one. Returns how many were taken (0: refused), the requests left, microseconds until a full burst
/// is allowed again, and microseconds until the next request is.
static GCRA: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window = interval * burst
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
if want * 16 > burst or tat + interval * want - now > window then want = 1 end
local next_tat = tat + interval * want
if next_tat - now > window then
  return {0, 0, tat - now, next_tat - now - window}
end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil((next_tat - now) / 1000))
return {want, math.floor((window - (next_tat - now)) / interval), next_tat - now, 0}
",
    )
});

impl Shared {
    pub(super) fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            connection: crate::store::redis::connect(url)?,
            breaker: Breaker::default(),
            blocks: quick_cache::sync::Cache::new(CAPACITY),
        })
    }

    /// Admits one request of `account` from the block in hand, taking the next block from Redis
    /// when it is used up or was held for [`HOLD`]. A refusal stands until the wait it names.
    pub(super) async fn admit(
        &self,
        account: &str,
        limit: RateLimit,
    ) -> Result<Result<LimitState, Refusal>, CacheError> {
        let block = held(&self.blocks, account, limit, Mutex::default);
        let mut block = block.lock().await;
        if let Some(verdict) = block.admit(limit) {
            return Ok(verdict);
        }
        let want = block.pace.next(u64::from(limit.requests / 16).min(MAX_RATE_BLOCK));
        let (taken, answer) = self.breaker.call(self.take(account, limit, want)).await?;
        block.left = taken;
        block.pace.took(u64::from(taken));
        block.answer = Some(answer);
        Ok(block.apply(answer, limit))
    }

    /// [`Shared::admit`] from the block in hand, when it stands and no request is taking the next.
    pub(super) fn admit_from_block(
        &self,
        account: &str,
        limit: RateLimit,
    ) -> Option<Result<LimitState, Refusal>> {
        let block = held(&self.blocks, account, limit, Mutex::default);
        let mut block = block.try_lock().ok()?;
        block.admit(limit)
    }

    /// Takes up to `want` requests of `account` from the shared count: how many it got, and the
    /// shared count's standing after them.
    async fn take(
        &self,
        account: &str,
        limit: RateLimit,
        want: u64,
    ) -> Result<(u32, Result<LimitState, (LimitState, Duration)>), redis::RedisError> {
        metrics().shared_rate_call();
        let interval = interval(limit);
        // EVALSHA: Redis keeps the script after its first use (it is sent again after a restart).
        let (taken, remaining, reset, retry): (u32, i64, i64, i64) = GCRA
            .key(format!("apikeys:rate:{account}"))
            .arg(u64::try_from(interval.as_micros()).unwrap_or(u64::MAX))
            .arg(limit.requests)
            .arg(want)
            .invoke_async(&mut self.connection.clone())
            .await?;
        let micros = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
        let state = LimitState {
            limit,
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset: micros(reset),
        };
        Ok(if taken > 0 { (taken, Ok(state)) } else { (0, Err((state, micros(retry)))) })
    }
}
