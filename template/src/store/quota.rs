//! Quota uses taken from the store in blocks, so that a metered key costs one store write per
//! block, not one per request.
//!
//! Each instance keeps the uses it took in hand and admits requests from them; only when they run
//! out does it take the next block, atomically, like any other use. So instances together never
//! admit more than the quota. A block starts at one use, doubles while blocks last less than
//! [`BRISK`], halves when one lasts ten times that, and is never more than [`MAX_BLOCK`]; the store
//! hands out a block only while sixteen times as many are left (`block_fits`), one use otherwise.
//!
//! Blocks are taken only while the instance follows the change feed, which tells it of every change
//! to the key: a change, a lost feed or a new refill period drops the uses in hand, so that a cut
//! quota binds every instance as a revocation does. What this costs: the uses dropped, or held by
//! an instance that stops or crashes, are lost, at most [`MAX_BLOCK`] per key and instance.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use super::{Backend, QuotaUse, StoreError};
use crate::metrics::metrics;

/// The largest block: the most uses of one key an instance holds in hand.
pub const MAX_BLOCK: u64 = 1000;
/// A block used up within this makes the next one twice as large.
pub const BRISK: Duration = Duration::from_millis(100);
/// How many keys' blocks an instance keeps.
const CAPACITY: usize = 65_536;
/// How long an exhausted quota or a failing store is taken at its word.
const PAUSE: Duration = Duration::from_millis(250);

/// How large the next block of a key is: one use at first, twice the last while blocks last less
/// than [`BRISK`], half when one lasts ten times that.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    size: u64,
    taken_at: Option<Instant>,
}

impl Pace {
    /// The next block's size, at most `fits` (and [`MAX_BLOCK`]).
    pub(crate) fn next(&self, fits: u64) -> u64 {
        let size = match self.taken_at.map(|at| at.elapsed()) {
            None => 1,
            Some(lasted) if lasted < BRISK => self.size * 2,
            Some(lasted) if lasted > BRISK * 10 => self.size / 2,
            Some(_) => self.size,
        };
        size.clamp(1, fits.clamp(1, MAX_BLOCK))
    }

    /// A block of `size` was taken just now.
    pub(crate) fn took(&mut self, size: u64) {
        (self.size, self.taken_at) = (size, Some(Instant::now()));
    }
}

/// The uses of one key's quota in hand.
#[derive(Debug, Default)]
struct Lease {
    left: u64,
    /// When the store last said none are left, or failed: until [`PAUSE`] later, asking again would
    /// only queue the key's requests behind another store call.
    exhausted_at: Option<Instant>,
    failed_at: Option<Instant>,
    /// The refill period the uses belong to: a new period refills the store and drops them.
    period: Option<DateTime<Utc>>,
    pace: Pace,
    /// What the store had left after the last block, once known.
    store_left: Option<u64>,
}

impl Lease {
    fn next_size(&self) -> u64 {
        // Asking for more than the store would hand out only gets one use.
        self.pace.next(self.store_left.map_or(MAX_BLOCK, |left| left / 16))
    }
}

#[derive(Debug)]
pub(super) struct Leases {
    leases: quick_cache::sync::Cache<String, Arc<Mutex<Lease>>>,
}

impl Default for Leases {
    fn default() -> Self {
        Self { leases: quick_cache::sync::Cache::new(CAPACITY) }
    }
}

impl Leases {
    /// Takes `want` uses of `id`'s quota from those in hand, first taking a block from `primary`
    /// when there are too few. Without the change feed (`following` false) nothing is held: each
    /// use goes to the store.
    pub(super) async fn take(
        &self,
        primary: &dyn Backend,
        id: &str,
        want: u64,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        following: bool,
    ) -> Result<QuotaUse, StoreError> {
        if !following {
            self.forget(id);
            metrics().storage_operation("use_quota");
            return primary.use_quota(id, want, refill_before, now).await;
        }
        let lease = self.leases.get_or_insert_with(id, || Ok::<_, Infallible>(Arc::default()));
        let lease = lease.unwrap_or_else(|never| match never {});
        let mut lease = lease.lock().await;
        if lease.period != refill_before {
            // Around midnight, requests on either side may arrive in any order: a block belongs to
            // the newest period seen, and a request dated before it goes to the store alone.
            if refill_before < lease.period {
                drop(lease);
                metrics().storage_operation("use_quota");
                return primary.use_quota(id, want, refill_before, now).await;
            }
            *lease = Lease { period: refill_before, ..Lease::default() };
        }
        let recently = |at: Option<Instant>| at.is_some_and(|at| at.elapsed() < PAUSE);
        if lease.left < want && recently(lease.exhausted_at) {
            return Ok(QuotaUse::Exhausted);
        }
        if lease.left < want && recently(lease.failed_at) {
            return Err(StoreError::Unavailable("the quota store failed a moment ago".into()));
        }
        if lease.left < want {
            let size = lease.next_size().max(want);
            metrics().storage_operation("use_quota");
            match primary.use_quota(id, size, refill_before, now).await {
                Ok(QuotaUse::Taken { taken, remaining }) => {
                    lease.left += taken;
                    lease.store_left = Some(remaining);
                    lease.pace.took(size);
                }
                Ok(QuotaUse::Exhausted) => {
                    lease.exhausted_at = Some(Instant::now());
                    if lease.left == 0 {
                        return Ok(QuotaUse::Exhausted);
                    }
                }
                Ok(QuotaUse::Unlimited) => {
                    *lease = Lease::default();
                    return Ok(QuotaUse::Unlimited);
                }
                Err(err) => {
                    lease.failed_at = Some(Instant::now());
                    return Err(err);
                }
            }
        }
        let taken = want.min(lease.left);
        lease.left -= taken;
        let remaining = lease.left + lease.store_left.unwrap_or(0);
        Ok(QuotaUse::Taken { taken, remaining })
    }

    /// Uses of `id` in hand (none while a block is being taken).
    pub(super) fn in_hand(&self, id: &str) -> u64 {
        let lease = self.leases.get(id);
        lease.and_then(|lease| lease.try_lock().ok().map(|lease| lease.left)).unwrap_or(0)
    }

    /// Drops the uses of `id` in hand: the key changed, and its quota may have too.
    pub(super) fn forget(&self, id: &str) {
        self.leases.remove(id);
    }

    /// Drops every use in hand: the change feed was lost, or followed again after a loss.
    pub(super) fn clear(&self) {
        self.leases.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryBackend;
    use crate::store::conformance::{event, sample};

    #[tokio::test]
    async fn busy_keys_take_growing_blocks_and_never_more_than_there_is() {
        let store = MemoryBackend::default();
        let mut key = sample("owner", Utc::now());
        key.remaining = Some(1000);
        store.insert(&key, &event(&key.id)).await.unwrap();
        let leases = Leases::default();
        let mut admitted = 0;
        while let QuotaUse::Taken { .. } =
            leases.take(&store, &key.id, 1, None, Utc::now(), true).await.unwrap()
        {
            admitted += 1;
        }
        assert_eq!(admitted, 1000, "every use, and not one more");
        let stored = store.get(&key.id).await.unwrap().unwrap();
        assert_eq!(stored.remaining, Some(0));

        key = sample("owner", Utc::now());
        key.remaining = Some(1000);
        store.insert(&key, &event(&key.id)).await.unwrap();
        for _ in 0..100 {
            leases.take(&store, &key.id, 1, None, Utc::now(), true).await.unwrap();
        }
        let left = store.get(&key.id).await.unwrap().unwrap().remaining.unwrap();
        let in_hand = leases.in_hand(&key.id);
        assert_eq!(left + in_hand, 900, "what the store has and what is in hand");
        assert!(in_hand <= MAX_BLOCK && left < 900, "blocks grew: {left} left, {in_hand} in hand");
        leases.forget(&key.id);
        assert_eq!(leases.in_hand(&key.id), 0);
    }
}
