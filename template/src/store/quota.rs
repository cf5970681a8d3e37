//! Quota uses taken from the store in blocks, so that a busy metered key costs one store write per
//! block, not one per request.
//!
//! An instance admits requests from the uses it holds, and takes the next block (atomically, like a
//! single use) when half of the last one is gone, so instances together never admit more than the
//! quota and a busy key's requests do not wait for the store. It
//! holds uses only while it follows the change feed, which tells it of every change to the key: a
//! change, a lost feed or a new refill period drops them, so a cut quota binds every instance as a
//! revocation does. The price, uses lost when dropped or held by an instance that stops, is set out
//! in the Quotas section of docs/src/lifecycle.md.

use std::convert::Infallible;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use quick_cache::Equivalent;
use tokio::sync::Mutex;

use super::{Backend, QuotaUse, StoreError};
use crate::metrics::metrics;

/// The largest block of a key's quota: about a tenth of a second of a very busy key's requests. An
/// instance holds at most two (the one in use and the next).
pub const MAX_BLOCK: u64 = 10_000;
/// A block used up within this makes the next one twice as large.
pub const BRISK: Duration = Duration::from_millis(100);
/// How many keys' blocks an instance keeps.
const CAPACITY: usize = 65_536;
/// How long an exhausted quota or a failing store is taken at its word.
const PAUSE: Duration = Duration::from_millis(250);

/// How large a key's next block is: one use at first, twice the last while blocks last less than
/// [`BRISK`], half when one lasts ten times that.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    size: u64,
    taken_at: Option<Instant>,
}

impl Pace {
    /// The next block's size, at most `fits`.
    pub(crate) fn next(&self, fits: u64) -> u64 {
        let size = match self.age() {
            None => 1,
            Some(lasted) if lasted < BRISK => self.size * 2,
            Some(lasted) if lasted > BRISK * 10 => self.size / 2,
            Some(_) => self.size,
        };
        size.clamp(1, fits.max(1))
    }

    /// A block of `size` was taken just now.
    pub(crate) fn took(&mut self, size: u64) {
        (self.size, self.taken_at) = (size, Some(Instant::now()));
    }

    /// How long ago the last block was taken.
    pub(crate) fn age(&self) -> Option<Duration> {
        self.taken_at.map(|at| at.elapsed())
    }
}

/// `cache`'s entry for `key`, made by `make` if there is none.
pub(crate) fn entry<K, Q, V>(
    cache: &quick_cache::sync::Cache<K, V>,
    key: &Q,
    make: impl FnOnce() -> V,
) -> V
where
    K: Eq + Hash + Clone,
    Q: Hash + Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    V: Clone,
{
    let made = cache.get_or_insert_with(key, || Ok::<_, Infallible>(make()));
    made.unwrap_or_else(|never| match never {})
}

/// The uses of one key's quota an instance holds.
#[derive(Debug)]
struct Slot {
    /// Set when the key changed: these uses may belong to a quota that no longer stands.
    dropped: AtomicBool,
    /// [`Leases::epoch`] when the slot was made.
    epoch: u64,
    /// `lease.left`, readable without waiting for a block being taken.
    in_hand: AtomicU64,
    /// Set while a request takes the next block ahead, without the lease's lock.
    fetching: AtomicBool,
    lease: Mutex<Lease>,
}

#[derive(Debug, Default)]
struct Lease {
    left: u64,
    /// The refill period the uses belong to: a new period refills the store and drops them.
    period: Option<DateTime<Utc>>,
    pace: Pace,
    /// What the store had left after the last block, once known.
    store_left: Option<u64>,
    /// When the store last said none are left (`true`), or failed (`false`): until [`PAUSE`]
    /// later, asking again would only queue the key's requests behind another store call.
    paused: Option<(Instant, bool)>,
}

impl Lease {
    /// Uses one of the uses held (there is one), and answers how many are left.
    fn use_one(&mut self, slot: &Slot) -> u64 {
        self.left -= 1;
        slot.in_hand.store(self.left, Ordering::Relaxed);
        self.left + self.store_left.unwrap_or(0)
    }

    /// The size of the next block to ask the store for.
    fn next_block(&self) -> u64 {
        self.pace.next(self.store_left.map_or(MAX_BLOCK, |left| (left / 16).min(MAX_BLOCK)))
    }

    /// Whether the next block should be taken now, ahead: less than half of the last is left, the
    /// store may have more, and no request is taking it already.
    fn running_low(&self, slot: &Slot) -> bool {
        self.left < self.pace.size / 2
            && self.store_left != Some(0)
            && self.paused.is_none_or(|(at, _)| at.elapsed() >= PAUSE)
            && !slot.fetching.load(Ordering::SeqCst)
    }

    /// Keeps what the store answered to a request for a block: the uses taken, unless the key
    /// changed meanwhile (`stale`), or a pause after a refusal or a failure.
    fn receive(&mut self, slot: &Slot, answer: &Result<QuotaUse, StoreError>, stale: bool) {
        match *answer {
            Ok(QuotaUse::Taken { taken, remaining }) if !stale => {
                (self.left, self.store_left, self.paused) =
                    (self.left + taken, Some(remaining), None);
                self.pace.took(taken);
                slot.in_hand.store(self.left, Ordering::Relaxed);
            }
            Ok(QuotaUse::Exhausted) => self.paused = Some((Instant::now(), true)),
            Err(_) => self.paused = Some((Instant::now(), false)),
            Ok(_) => {}
        }
    }
}

/// Clears [`Slot::fetching`] however the request taking the next block ends.
struct Fetching<'a>(&'a AtomicBool);

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[derive(Debug)]
pub(super) struct Leases {
    slots: quick_cache::sync::Cache<String, Arc<Slot>>,
    /// Bumped by [`Leases::clear`]: slots made before it hold nothing.
    epoch: AtomicU64,
}

impl Default for Leases {
    fn default() -> Self {
        Self { slots: quick_cache::sync::Cache::new(CAPACITY), epoch: AtomicU64::new(0) }
    }
}

impl Leases {
    /// Takes one use of `id`'s quota from those held, first taking a block from `primary` when none
    /// are left, and the next block after it when those held run low. Without the change feed
    /// (`following` false) nothing is held: the use comes from the store.
    pub(super) async fn take(
        &self,
        primary: &dyn Backend,
        id: &str,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        following: bool,
    ) -> Result<QuotaUse, StoreError> {
        let store = |want| {
            metrics().storage_operation("use_quota");
            primary.use_quota(id, want, refill_before, now)
        };
        if !following {
            return store(1).await;
        }
        let epoch = self.epoch();
        let slot = entry(&self.slots, id, || {
            Arc::new(Slot {
                dropped: AtomicBool::new(false),
                epoch,
                in_hand: AtomicU64::new(0),
                fetching: AtomicBool::new(false),
                lease: Mutex::default(),
            })
        });
        let dropped = || slot.dropped.load(Ordering::SeqCst) || slot.epoch != self.epoch();
        let mut lease = slot.lease.lock().await;
        // Around midnight, requests on either side may arrive in any order: a block belongs to the
        // newest period seen, and a request dated before it goes to the store alone.
        if dropped() || refill_before < lease.period {
            return store(1).await;
        }
        if refill_before != lease.period {
            *lease = Lease { period: refill_before, ..Lease::default() };
        }
        if lease.left == 0 {
            if let Some((at, exhausted)) = lease.paused
                && at.elapsed() < PAUSE
            {
                return if exhausted {
                    Ok(QuotaUse::Exhausted)
                } else {
                    Err(StoreError::Unavailable("the quota store failed a moment ago".into()))
                };
            }
            let answer = store(lease.next_block()).await;
            let stale = dropped();
            lease.receive(&slot, &answer, stale);
            match answer {
                // The key changed while the block was taken: this request is as one in flight
                // during the change, but the rest of the block is not kept.
                Ok(QuotaUse::Taken { remaining, .. }) if stale => {
                    return Ok(QuotaUse::Taken { taken: 1, remaining });
                }
                Ok(QuotaUse::Taken { .. }) => {}
                other => return other,
            }
        }
        let remaining = lease.use_one(&slot);
        if !lease.running_low(&slot) || slot.fetching.swap(true, Ordering::SeqCst) {
            return Ok(QuotaUse::Taken { taken: 1, remaining });
        }
        // This request takes the next block while the key's others go on with the uses still held:
        // holding the lock across the store's round trip would make them all wait for it.
        let _fetching = Fetching(&slot.fetching);
        let want = lease.next_block();
        drop(lease);
        let answer = store(want).await;
        let mut lease = slot.lease.lock().await;
        let stale = dropped() || lease.period != refill_before;
        lease.receive(&slot, &answer, stale);
        Ok(QuotaUse::Taken { taken: 1, remaining })
    }

    /// Takes one use of `id`'s quota from those held for the refill period `refill_before`, without
    /// waiting, and answers how many are left: `None` when none are held, a request is taking the
    /// first block, or the next block is due (for [`Leases::take`] to take).
    pub(super) fn take_held(&self, id: &str, refill_before: Option<DateTime<Utc>>) -> Option<u64> {
        let slot = self.slots.get(id)?;
        let mut lease = slot.lease.try_lock().ok()?;
        let dropped = slot.dropped.load(Ordering::SeqCst) || slot.epoch != self.epoch();
        let ready = !dropped && lease.period == refill_before && lease.left > 0;
        (ready && !lease.running_low(&slot)).then(|| lease.use_one(&slot))
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Uses of `id` this instance holds.
    pub(super) fn in_hand(&self, id: &str) -> u64 {
        self.slots.get(id).map_or(0, |slot| slot.in_hand.load(Ordering::Relaxed))
    }

    /// Drops the uses of `id` held: the key changed, and its quota may have too. A request already
    /// waiting for them sees the mark and asks the store.
    pub(super) fn forget(&self, id: &str) {
        if let Some(slot) = self.slots.get(id) {
            slot.dropped.store(true, Ordering::SeqCst);
        }
        self.slots.remove(id);
    }

    /// Drops every use held: the change feed was lost, or followed again after a loss.
    pub(super) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.slots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ApiKeyRecord;
    use crate::store::MemoryBackend;
    use crate::store::conformance::{event, sample};
    use crate::store::testing::FlakyStore;
    use tokio::sync::Notify;

    /// A new key in `store` with a quota of 1,000 uses.
    async fn metered(store: &MemoryBackend) -> ApiKeyRecord {
        let mut key = sample("owner", Utc::now());
        key.remaining = Some(1000);
        store.insert(&key, &event(&key.id)).await.unwrap();
        key
    }

    #[tokio::test]
    async fn busy_keys_take_growing_blocks_and_never_more_than_there_is() {
        let store = MemoryBackend::default();
        let key = metered(&store).await;
        let leases = Leases::default();
        let mut admitted = 0;
        while let QuotaUse::Taken { .. } =
            leases.take(&store, &key.id, None, Utc::now(), true).await.unwrap()
        {
            admitted += 1;
        }
        assert_eq!(admitted, 1000, "every use, and not one more");
        let stored = store.get(&key.id).await.unwrap().unwrap();
        assert_eq!(stored.remaining, Some(0));

        let key = metered(&store).await;
        for _ in 0..100 {
            leases.take(&store, &key.id, None, Utc::now(), true).await.unwrap();
        }
        let left = store.get(&key.id).await.unwrap().unwrap().remaining.unwrap();
        let in_hand = leases.in_hand(&key.id);
        assert_eq!(left + in_hand, 900, "what the store has and what is in hand");
        assert!(in_hand <= MAX_BLOCK && left < 900, "blocks grew: {left} left, {in_hand} in hand");
        leases.forget(&key.id);
        assert_eq!(leases.in_hand(&key.id), 0);
    }

    #[tokio::test]
    async fn held_uses_are_taken_at_once_until_they_run_out() {
        let store = MemoryBackend::default();
        let key = metered(&store).await;
        let leases = Leases::default();
        assert_eq!(leases.take_held(&key.id, None), None, "nothing is held before a block");
        // Blocks of 1, 2 and 4: three uses of the last are held, 993 are left in the store.
        for _ in 0..4 {
            leases.take(&store, &key.id, None, Utc::now(), true).await.unwrap();
        }
        assert_eq!(leases.in_hand(&key.id), 3);
        assert_eq!(leases.take_held(&key.id, Some(Utc::now())), None, "another refill period");
        for left in [995, 994] {
            assert_eq!(leases.take_held(&key.id, None), Some(left));
        }
        assert_eq!(leases.take_held(&key.id, None), None, "one of four is left: the next is due");
        let taken = leases.take(&store, &key.id, None, Utc::now(), true).await.unwrap();
        assert_eq!(taken, QuotaUse::Taken { taken: 1, remaining: 993 });
        let stored = store.get(&key.id).await.unwrap().unwrap();
        assert_eq!(stored.remaining, Some(985), "a block of eight was taken ahead");
        assert_eq!(leases.in_hand(&key.id), 8);
        assert_eq!(leases.take_held(&key.id, None), Some(992));
    }

    #[tokio::test]
    async fn the_next_block_is_taken_while_the_key_goes_on_with_the_last() {
        let store = Arc::new(FlakyStore { held_quotas: Some(Notify::new()), ..Default::default() });
        let key = metered(&store.inner).await;
        let leases = Arc::new(Leases::default());
        // Blocks of 1, 2, 4 and 8 from a store that answers at once: nine uses are held.
        while leases.in_hand(&key.id) < 6 {
            leases.take(&store.inner, &key.id, None, Utc::now(), true).await.unwrap();
        }
        assert_eq!(leases.in_hand(&key.id), 9);
        while leases.take_held(&key.id, None).is_some() {}
        assert_eq!(leases.in_hand(&key.id), 3, "less than half of eight: the next block is due");

        let fetch = tokio::spawn({
            let (store, leases, id) = (store.clone(), leases.clone(), key.id.clone());
            async move { leases.take(store.as_ref(), &id, None, Utc::now(), true).await }
        });
        while leases.in_hand(&key.id) != 2 {
            tokio::task::yield_now().await;
        }
        assert!(leases.take_held(&key.id, None).is_some(), "not kept waiting for the store");
        assert!(leases.take_held(&key.id, None).is_some());
        assert_eq!(leases.take_held(&key.id, None), None, "all held uses are gone");

        store.held_quotas.as_ref().unwrap().notify_one();
        assert!(matches!(fetch.await.unwrap(), Ok(QuotaUse::Taken { taken: 1, .. })));
        assert_eq!(leases.in_hand(&key.id), 16, "the block taken ahead is held");
        let stored = store.inner.get(&key.id).await.unwrap().unwrap();
        assert_eq!(stored.remaining, Some(1000 - 1 - 2 - 4 - 8 - 16));
    }
}
