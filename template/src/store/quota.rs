//! Quota uses taken from the store in blocks, so that a metered key costs one store write per
//! block, not one per request.
//!
//! Each instance keeps the uses it took in hand and admits requests from them; only when they run
//! out does it take the next block, atomically, like any other use. So instances together never
//! admit more than the quota, and when demand exceeds it they admit all of it. A block starts at one
//! use, doubles while blocks last less than [`BRISK`], halves when one lasts ten times that, and is
//! never more than [`MAX_BLOCK`] nor more than a sixteenth of what the store had left. What this
//! costs: an instance that stops (or crashes) loses the uses it held, at most [`MAX_BLOCK`] per key;
//! a change to a key drops them too, so that a lowered quota binds at once; and the `remaining` the
//! routes show leaves out what other instances hold.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use super::{Backend, QuotaUse, StoreError};
use crate::metrics::metrics;

/// The most uses of one key an instance holds in hand.
pub const MAX_BLOCK: u64 = 100;
/// A block used up within this makes the next one twice as large.
pub const BRISK: Duration = Duration::from_millis(100);
/// How many keys' blocks an instance keeps.
const CAPACITY: usize = 65_536;

/// The uses of one key's quota in hand.
#[derive(Debug, Default)]
struct Lease {
    left: u64,
    /// The refill period the uses belong to: a new period refills the store and drops them.
    period: Option<DateTime<Utc>>,
    size: u64,
    taken_at: Option<Instant>,
    /// What the store had left after the last block, once known.
    store_left: Option<u64>,
}

impl Lease {
    fn next_size(&self) -> u64 {
        let size = match self.taken_at.map(|at| at.elapsed()) {
            None => 1,
            Some(lasted) if lasted < BRISK => self.size * 2,
            Some(lasted) if lasted > BRISK * 10 => self.size / 2,
            Some(_) => self.size,
        };
        let cap = self.store_left.map_or(MAX_BLOCK, |left| (left / 16).clamp(1, MAX_BLOCK));
        size.clamp(1, cap)
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
    /// when there are too few.
    pub(super) async fn take(
        &self,
        primary: &dyn Backend,
        id: &str,
        want: u64,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<QuotaUse, StoreError> {
        let lease = self.leases.get_or_insert_with(id, || Ok::<_, Infallible>(Arc::default()));
        let lease = lease.unwrap_or_else(|never| match never {});
        let mut lease = lease.lock().await;
        if lease.period != refill_before {
            *lease = Lease { period: refill_before, ..Lease::default() };
        }
        if lease.left < want {
            let size = lease.next_size().max(want);
            metrics().storage_operation("use_quota");
            match primary.use_quota(id, size, refill_before, now).await? {
                QuotaUse::Taken { taken, remaining } => {
                    lease.left += taken;
                    (lease.size, lease.store_left) = (size, Some(remaining));
                    lease.taken_at = Some(Instant::now());
                }
                QuotaUse::Exhausted if lease.left == 0 => return Ok(QuotaUse::Exhausted),
                QuotaUse::Exhausted => {}
                QuotaUse::Unlimited => {
                    *lease = Lease::default();
                    return Ok(QuotaUse::Unlimited);
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
            leases.take(&store, &key.id, 1, None, Utc::now()).await.unwrap()
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
            leases.take(&store, &key.id, 1, None, Utc::now()).await.unwrap();
        }
        let left = store.get(&key.id).await.unwrap().unwrap().remaining.unwrap();
        let in_hand = leases.in_hand(&key.id);
        assert_eq!(left + in_hand, 900, "what the store has and what is in hand");
        assert!(in_hand <= MAX_BLOCK && left < 900, "blocks grew: {left} left, {in_hand} in hand");
        leases.forget(&key.id);
        assert_eq!(leases.in_hand(&key.id), 0);
    }
}
