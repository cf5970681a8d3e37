//! Per-key limits: a key's rate limit and quota, applied by the guards to every guarded request of a
//! key that has either. Keys without limits never reach this module.
//!
//! Rate limits are GCRA, like the failure limits: `requests` at once after a pause, then one every
//! `window / requests` seconds. With Redis configured (`REDIS_URL`, or Redis as the store), every
//! instance shares one count per key, kept by a Lua script on Redis's clock; otherwise, or while
//! Redis cannot be reached, each instance counts on its own (`governor`), asking Redis again after a
//! second. A busy key takes its requests from the shared count in blocks, sized as quota blocks are
//! ([`Pace`](crate::store::quota::Pace)) but at most 1,000 and a sixteenth of the burst, and held
//! for a second at most; a refusal is believed until the wait it names is over.
//!
//! Quotas are taken from the store, one use per admitted request ([`Backend::use_quota`]); the
//! store's cache takes them from the database in blocks and hands them out ([`crate::store::quota`]),
//! so instances never overspend a quota between them, and a busy metered key costs one write per
//! block.
//!
//! A rotated key in its grace period is charged to its replacement, or to the newest key when the
//! replacement was rotated too: rotating a key never multiplies what it may do.

#[cfg(feature = "redis")]
mod shared;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::{ApiKey, AuthError};
use crate::metrics::metrics;
use crate::model::{ApiKeyRecord, RateLimit, Refill, now};
use crate::store::quota::entry;
#[cfg(feature = "redis")]
use crate::store::redis::breaker::CacheError;
use crate::store::{Backend, QuotaUse};
#[cfg(feature = "redis")]
use shared::Shared;

/// How many keys' rate-limit states an instance keeps.
const CAPACITY: usize = 65_536;

/// How far a rotated key's charges follow later rotations; more would mean a key rotated that often
/// within one grace period.
pub(crate) const MAX_ROTATIONS_FOLLOWED: usize = 8;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Where a key stands against its rate limit after a request: what the `RateLimit` fields say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    pub limit: RateLimit,
    pub remaining: u32,
    /// Until the key may send `limit.requests` at once again.
    pub reset: Duration,
}

impl LimitState {
    /// `reset` in whole seconds, rounded up: 0 only when a full burst is already back.
    pub fn reset_seconds(&self) -> u64 {
        if self.reset.is_zero() { 0 } else { whole_seconds(self.reset) }
    }
}

/// Where an admitted request leaves its key: against its rate limit, and the uses left in its
/// quota (as far as this instance knows: uses it holds count as left), for keys that have them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Admitted {
    pub rate: Option<LimitState>,
    pub remaining: Option<u64>,
}

/// Why a key's request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this API key's rate limit is exhausted, try again later")]
    RateLimited { state: LimitState, retry_after: Duration },
    /// The quota is used up; with a refill, it fills again after `retry_after`. `state` is the
    /// key's standing against its rate limit, when it has one too.
    #[error("this API key has no uses left")]
    UsageExceeded { retry_after: Option<Duration>, state: Option<LimitState> },
    /// The store could not take a use from the quota.
    #[error("storage is unavailable, try again later")]
    Unavailable,
}

impl Refusal {
    /// The stable code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::UsageExceeded { .. } => "usage_exceeded",
            Self::Unavailable => AuthError::Unavailable.code(),
        }
    }

    /// Where the key stands against its rate limit, when it has one.
    pub fn limit_state(&self) -> Option<LimitState> {
        match self {
            Self::RateLimited { state, .. } => Some(*state),
            Self::UsageExceeded { state, .. } => *state,
            Self::Unavailable => None,
        }
    }

    /// How long the client should wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::UsageExceeded { retry_after, .. } => *retry_after,
            Self::Unavailable => None,
        }
    }
}

pub struct Allowance {
    store: Arc<dyn Backend>,
    local: Held<Option<Limiter>>,
    #[cfg(feature = "redis")]
    shared: Option<Shared>,
}

impl Allowance {
    /// Limits counted in this process, quotas taken from `store`.
    pub fn new(store: Arc<dyn Backend>) -> Self {
        Self {
            store,
            local: quick_cache::sync::Cache::new(CAPACITY),
            #[cfg(feature = "redis")]
            shared: None,
        }
    }

    /// Counts rate limits in the Redis at `url`, shared by every instance using it.
    #[cfg(feature = "redis")]
    pub fn shared_through(mut self, url: &str) -> Result<Self, crate::store::StoreError> {
        self.shared = Some(Shared::connect(url)?);
        Ok(self)
    }

    /// Admits one request of `key`, or says why not.
    pub async fn admit(&self, key: &ApiKey) -> Result<Admitted, Refusal> {
        counted(self.verdict(key).await)
    }

    /// [`Allowance::admit`] without waiting, for a key with one limit whose count is at hand: a
    /// rate limit kept in this process or taken from the shared count in a block still held, or
    /// a quota with uses held. `None` when the store or Redis must be asked; nothing is charged
    /// then. A key with both limits takes the long way, which charges the rate limit first and
    /// may then find the quota spent; so does a rotated key, whose limits are its successor's.
    pub fn admit_at_once(&self, key: &ApiKey) -> Option<Result<Admitted, Refusal>> {
        let record = key.record();
        if record.replaced_by.is_some() {
            return None;
        }
        let verdict = match (record.rate_limit, record.remaining) {
            (Some(limit), None) => self
                .rate_at_once(&record.id, limit)?
                .map(|rate| Admitted { rate: Some(rate), remaining: None }),
            (None, Some(_)) => {
                let refill_before = record.refill.map(|refill| refill.interval.period_start(now()));
                let remaining = self.store.use_held_quota(&record.id, refill_before)?;
                Ok(Admitted { rate: None, remaining: Some(remaining) })
            }
            _ => return None,
        };
        Some(counted(verdict))
    }

    fn rate_at_once(&self, account: &str, limit: RateLimit) -> Option<Result<LimitState, Refusal>> {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            return shared.admit_from_block(account, limit);
        }
        Some(self.local_rate(account, limit))
    }

    async fn verdict(&self, key: &ApiKey) -> Result<Admitted, Refusal> {
        let newest = self.account(key.record()).await?;
        let account = newest.as_deref().unwrap_or(key.record());
        let rate = match account.rate_limit {
            Some(limit) => Some(self.rate(&account.id, limit).await?),
            None => None,
        };
        let remaining = match account.remaining {
            Some(_) => self.take_quota(&account.id, account.refill, rate).await?,
            None => None,
        };
        Ok(Admitted { rate, remaining })
    }

    /// The key whose limits `record`'s requests use, with those limits: the newest key of its
    /// rotations, or `None` for `record` itself. Tightening the replacement's limits therefore binds
    /// the old key in its grace period too. A store that cannot say refuses the request: the old
    /// key's own limits are not the ones that apply.
    async fn account(&self, record: &ApiKeyRecord) -> Result<Option<Arc<ApiKeyRecord>>, Refusal> {
        let Some(mut next) = record.replaced_by.clone() else {
            return Ok(None);
        };
        let mut newest = None;
        for _ in 0..MAX_ROTATIONS_FOLLOWED {
            let replacement = match self.store.lookup(&next).await {
                Ok(Some(replacement)) => replacement,
                // A replacement deleted behind the store's back: charge the last key known.
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(error = %err, key_id = %next, "cannot find a rotated key's replacement");
                    return Err(Refusal::Unavailable);
                }
            };
            let further = replacement.replaced_by.clone();
            newest = Some(replacement);
            match further {
                Some(id) => next = id,
                None => break,
            }
        }
        Ok(newest)
    }

    async fn rate(&self, account: &str, limit: RateLimit) -> Result<LimitState, Refusal> {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            match shared.admit(account, limit).await {
                Ok(verdict) => return verdict,
                Err(CacheError::Resting) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "Redis unavailable for rate limits; counting in this instance");
                }
            }
        }
        self.local_rate(account, limit)
    }

    fn local_rate(&self, account: &str, limit: RateLimit) -> Result<LimitState, Refusal> {
        let limiter = held(&self.local, account, limit, || limiter(limit));
        let Some(limiter) = limiter.as_ref() else {
            // Validation keeps limits positive; a stored zero admits nothing.
            return Err(Refusal::UsageExceeded { retry_after: None, state: None });
        };
        let interval = interval(limit);
        match limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(LimitState { limit, remaining, reset: interval * (limit.requests - remaining) })
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(DefaultClock::default().now());
                Err(Refusal::RateLimited {
                    state: LimitState {
                        limit,
                        remaining: 0,
                        reset: retry_after + interval * (limit.requests - 1),
                    },
                    retry_after,
                })
            }
        }
    }

    async fn take_quota(
        &self,
        account: &str,
        refill: Option<Refill>,
        state: Option<LimitState>,
    ) -> Result<Option<u64>, Refusal> {
        let now = now();
        let refill_before = refill.map(|refill| refill.interval.period_start(now));
        match self.store.use_quota(account, 1, refill_before, now).await {
            Ok(QuotaUse::Taken { remaining, .. }) => Ok(Some(remaining)),
            Ok(QuotaUse::Unlimited) => Ok(None),
            Ok(QuotaUse::Exhausted) => Err(Refusal::UsageExceeded {
                retry_after: refill
                    .and_then(|refill| (refill.interval.next_start(now) - now).to_std().ok()),
                state,
            }),
            Err(err) => {
                tracing::warn!(error = %err, key_id = account, "cannot take a use from the quota");
                Err(Refusal::Unavailable)
            }
        }
    }
}

/// `verdict`, with a refusal counted in the metrics.
fn counted(verdict: Result<Admitted, Refusal>) -> Result<Admitted, Refusal> {
    if let Err(refusal @ (Refusal::RateLimited { .. } | Refusal::UsageExceeded { .. })) = verdict {
        metrics().limit_refusal(refusal.code());
    }
    verdict
}

/// Whole seconds, rounded up, and at least one (RFC 9110 §10.2.3): what `Retry-After` says.
pub fn whole_seconds(duration: Duration) -> u64 {
    (duration.as_secs() + u64::from(duration.subsec_nanos() > 0)).max(1)
}

/// Per key id, what counts its requests and the limit it counts them under.
type Held<T> = quick_cache::sync::Cache<String, (RateLimit, Arc<T>)>;

/// What `cache` holds for `account` under `limit`; made afresh by `make` when there is nothing, or
/// when the key's limit changed. Looked up by `&str`, so a request allocates nothing here.
fn held<T>(cache: &Held<T>, account: &str, limit: RateLimit, make: impl Fn() -> T) -> Arc<T> {
    let made = || (limit, Arc::new(make()));
    let (under, found) = entry(cache, account, made);
    if under == limit {
        return found;
    }
    let (_, fresh) = made();
    cache.insert(account.to_owned(), (limit, fresh.clone()));
    fresh
}

/// The time between two requests at a steady pace.
fn interval(limit: RateLimit) -> Duration {
    Duration::from_secs(u64::from(limit.window)) / limit.requests.max(1)
}

fn limiter(limit: RateLimit) -> Option<Limiter> {
    let quota = Quota::with_period(interval(limit))?.allow_burst(NonZeroU32::new(limit.requests)?);
    Some(RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryBackend;
    use crate::store::conformance::sample;
    use chrono::Utc;

    #[tokio::test]
    async fn a_burst_then_refusal_with_the_wait() {
        let allowance = Allowance::new(Arc::new(MemoryBackend::default()));
        let mut record = sample("owner", Utc::now());
        record.rate_limit = Some(RateLimit { requests: 3, window: 60 });
        let key = ApiKey::new(Arc::new(record), None);
        let remaining: Vec<u32> =
            futures_util::future::join_all((0..3).map(|_| allowance.admit(&key)))
                .await
                .into_iter()
                .map(|admitted| admitted.unwrap().rate.unwrap().remaining)
                .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let Err(Refusal::RateLimited { retry_after, state }) = allowance.admit(&key).await else {
            panic!("the fourth request is refused");
        };
        assert!(retry_after > Duration::from_secs(19) && retry_after <= Duration::from_secs(20));
        assert_eq!(state.remaining, 0);
    }

    #[tokio::test]
    async fn a_rate_limit_counted_here_is_decided_at_once() {
        let allowance = Allowance::new(Arc::new(MemoryBackend::default()));
        let mut record = sample("owner", Utc::now());
        record.rate_limit = Some(RateLimit { requests: 2, window: 60 });
        let key = ApiKey::new(Arc::new(record.clone()), None);
        assert!(matches!(allowance.admit_at_once(&key), Some(Ok(_))));
        assert!(matches!(allowance.admit_at_once(&key), Some(Ok(_))));
        let refused = allowance.admit_at_once(&key);
        assert!(matches!(refused, Some(Err(Refusal::RateLimited { .. }))));
        record.remaining = Some(10);
        let metered = ApiKey::new(Arc::new(record), None);
        assert!(allowance.admit_at_once(&metered).is_none(), "a quota too: the store decides");
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn without_redis_each_instance_counts_on_its_own() {
        let allowance = Allowance::new(Arc::new(MemoryBackend::default()))
            .shared_through("redis://127.0.0.1:1/")
            .unwrap();
        let mut record = sample("owner", Utc::now());
        record.rate_limit = Some(RateLimit { requests: 2, window: 60 });
        let key = ApiKey::new(Arc::new(record), None);
        assert!(allowance.admit_at_once(&key).is_none(), "no block of the shared count is held");
        assert!(allowance.admit(&key).await.is_ok());
        assert!(allowance.admit(&key).await.is_ok());
        assert!(matches!(allowance.admit(&key).await, Err(Refusal::RateLimited { .. })));
    }
}
