//! Quota uses taken from the store in blocks, so that a busy metered key costs one store write per
//! block, not one per request.
//!
//! An instance admits requests from the uses it holds. Each block leaves the store atomically, like
//! a single use, so instances together never admit more than the quota. A task takes the next
//! block once less than half of the last is left, so a busy key's requests rarely wait for the
//! store.
//!
//! An instance holds uses only while it follows the change feed, which tells it of every change to
//! the key: a change, a lost feed or a new refill period drops them, so a cut quota binds every
//! instance as a revocation does. The price, uses lost when dropped or held by an instance that
//! stops, is set out in the Quotas section of the template's book (`docs/src/lifecycle.md` in the
//! template's repository).

use std::convert::Infallible;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use quick_cache::Equivalent;
use tokio::runtime::Handle;
use tokio::sync::Mutex;

use super::{Backend, QuotaUse, StoreError, spawn_on};
use crate::metrics::metrics;

/// The largest block of a key's quota: about a tenth of a second of a very busy key's requests. An
/// instance holds at most two: one taken ahead, and one taken when the uses ran out before it came.
/// Smaller blocks cost more than their store writes suggest: on PostgreSQL, a busy key ran 8 points
/// of the open route's throughput slower with blocks of 1,000 than with blocks of 10,000.
const MAX_BLOCK: u64 = 10_000;
/// A block's worth of uses taken within this makes the next block twice as large. The tests count
/// on blocks doubling, and a slow machine must not change the sizes they expect.
const BRISK: Duration = Duration::from_millis(if cfg!(test) { 60_000 } else { 100 });
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
    /// The next block's size: at least one, at most `fits`.
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
    /// Set while a task takes the next block ahead.
    fetching: AtomicBool,
    lease: Mutex<Lease>,
}

impl Slot {
    /// Whether the uses of this slot may belong to a quota that no longer stands: the key changed,
    /// or the feed was lost since the slot was made (`epoch` is [`Leases::epoch`] now).
    fn dropped(&self, epoch: u64) -> bool {
        self.dropped.load(Ordering::SeqCst) || self.epoch != epoch
    }
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

    /// Whether to take the next block now: less than half of the last is left, the store may have
    /// more and did not just refuse or fail, and no task is taking one already.
    fn next_block_due(&self, slot: &Slot) -> bool {
        self.left < self.pace.size / 2
            && self.store_left != Some(0)
            && self.paused.is_none_or(|(at, _)| at.elapsed() >= PAUSE)
            && !slot.fetching.load(Ordering::SeqCst)
    }

    /// Keeps what the store answered when asked for a block: the uses taken, or a pause after a
    /// refusal or a failure. The caller drops an answer given for a key or period that has changed
    /// since: it says nothing of the quota that stands now.
    fn keep(&mut self, slot: &Slot, answer: &Result<QuotaUse, StoreError>) {
        match *answer {
            Ok(QuotaUse::Taken { taken, remaining }) => {
                self.left += taken;
                // A block taken ahead may answer after a later one: the smaller count is newer.
                self.store_left =
                    Some(self.store_left.map_or(remaining, |left| left.min(remaining)));
                self.paused = None;
                self.pace.took(taken);
                slot.in_hand.store(self.left, Ordering::Relaxed);
            }
            Ok(QuotaUse::Exhausted) => self.paused = Some((Instant::now(), true)),
            Err(_) => self.paused = Some((Instant::now(), false)),
            // The quota was lifted: use up what is held, then the store says so.
            Ok(QuotaUse::Unlimited) => self.store_left = Some(0),
        }
    }
}

/// The slot whose next block a task takes: clears [`Slot::fetching`] however the task ends, even
/// dropped before it ran.
struct Fetching(Arc<Slot>);

impl Drop for Fetching {
    fn drop(&mut self) {
        self.0.fetching.store(false, Ordering::SeqCst);
    }
}

#[derive(Debug)]
pub(super) struct Leases {
    slots: quick_cache::sync::Cache<String, Arc<Slot>>,
    /// Bumped by [`Leases::clear`]: slots made before it hold nothing. Shared with the tasks taking
    /// blocks ahead.
    epoch: Arc<AtomicU64>,
    /// Where blocks are taken ahead: not a server worker's runtime, which ends when the worker
    /// does. The caller's when `None`.
    runtime: Option<Handle>,
}

impl Leases {
    /// Leases whose blocks are taken ahead on `runtime`.
    pub(super) fn on(runtime: Option<Handle>) -> Self {
        let slots = quick_cache::sync::Cache::new(CAPACITY);
        Self { slots, epoch: Arc::default(), runtime }
    }

    /// Takes one use of `id`'s quota from those held, first taking a block from `primary` when none
    /// are left, and starting a task to take the next when those held run low. Without the change
    /// feed (`following` false) nothing is held: the use comes from the store.
    pub(super) async fn take(
        &self,
        primary: &Arc<dyn Backend>,
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
        let dropped = || slot.dropped(self.epoch());
        let mut lease = slot.lease.lock().await;
        if dropped() {
            // Made just as the feed was lost, or the key changed: the next request makes a new one.
            self.slots.remove_if(id, |cached| Arc::ptr_eq(cached, &slot));
            drop(lease);
            return store(1).await;
        }
        // Around midnight, requests on either side may arrive in any order: a block belongs to the
        // newest period seen, and a request dated before it goes to the store alone.
        if refill_before < lease.period {
            drop(lease);
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
            match answer {
                // The key changed while the block was taken: this request is as one in flight
                // during the change, but the rest of the block is not kept.
                Ok(QuotaUse::Taken { remaining, .. }) if dropped() => {
                    return Ok(QuotaUse::Taken { taken: 1, remaining });
                }
                Ok(QuotaUse::Taken { .. }) => lease.keep(&slot, &answer),
                other => {
                    lease.keep(&slot, &other);
                    return other;
                }
            }
        }
        let remaining = lease.use_one(&slot);
        if lease.next_block_due(&slot) {
            slot.fetching.store(true, Ordering::SeqCst);
            let want = lease.next_block();
            let task = self.take_ahead(primary.clone(), slot.clone(), id, want, refill_before, now);
            spawn_on(self.runtime.as_ref(), task);
        }
        Ok(QuotaUse::Taken { taken: 1, remaining })
    }

    /// Takes the next block of `slot`'s key while its requests go on with the uses still held: a
    /// task of its own, so that no request waits for the store's answer, and a client that goes
    /// away cannot drop a block the store has handed out.
    fn take_ahead(
        &self,
        primary: Arc<dyn Backend>,
        slot: Arc<Slot>,
        id: &str,
        want: u64,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (epoch, id, fetching) = (self.epoch.clone(), id.to_owned(), Fetching(slot));
        async move {
            let slot = &fetching.0;
            metrics().storage_operation("use_quota");
            let answer = primary.use_quota(&id, want, refill_before, now).await;
            let mut lease = slot.lease.lock().await;
            if !slot.dropped(epoch.load(Ordering::SeqCst)) && lease.period == refill_before {
                lease.keep(slot, &answer);
            }
        }
    }

    /// Takes one use of `id`'s quota from those held for the refill period `refill_before`, without
    /// waiting, and answers how many are left: `None` when none are held for this key and period,
    /// the lease is busy (a block is being taken or kept), or the next block is due (for
    /// [`Leases::take`]).
    pub(super) fn take_held(&self, id: &str, refill_before: Option<DateTime<Utc>>) -> Option<u64> {
        let slot = self.slots.get(id)?;
        let mut lease = slot.lease.try_lock().ok()?;
        let ready = !slot.dropped(self.epoch()) && lease.period == refill_before && lease.left > 0;
        (ready && !lease.next_block_due(&slot)).then(|| lease.use_one(&slot))
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
            // Only this slot: one made since then holds uses taken after the change.
            self.slots.remove_if(id, |cached| Arc::ptr_eq(cached, &slot));
        }
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
    use crate::model::{ApiKeyRecord, KeyChanges, Refill, RefillInterval};
    use crate::store::MemoryBackend;
    use crate::store::conformance::{event, sample};
    use crate::store::testing::FlakyStore;

    type Period = Option<DateTime<Utc>>;

    /// A new key in `store` with a quota of 1,000 uses, refilled daily, last an hour ago.
    async fn metered(store: &dyn Backend) -> ApiKeyRecord {
        let mut key = sample("owner", Utc::now());
        key.remaining = Some(1000);
        key.refill = Some(Refill { interval: RefillInterval::Daily, amount: 1000 });
        key.refilled_at = Some(Utc::now() - chrono::Duration::hours(1));
        store.insert(&key, &event(&key.id)).await.unwrap();
        key
    }

    /// Lets the tasks taking blocks ahead finish, where the store answers at once.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Takes `n` uses of `id` in the refill period `period`, letting blocks taken ahead arrive
    /// after each.
    async fn take(leases: &Leases, store: &Arc<dyn Backend>, id: &str, period: Period, n: usize) {
        for _ in 0..n {
            leases.take(store, id, period, Utc::now(), true).await.unwrap();
            settle().await;
        }
    }

    #[tokio::test]
    async fn busy_keys_take_growing_blocks_and_never_more_than_there_is() {
        let store: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        let key = metered(store.as_ref()).await;
        let leases = Leases::on(None);
        let mut admitted = 0;
        while let QuotaUse::Taken { .. } =
            leases.take(&store, &key.id, None, Utc::now(), true).await.unwrap()
        {
            admitted += 1;
            settle().await;
        }
        assert_eq!(admitted, 1000, "every use, and not one more");
        let stored = store.get(&key.id).await.unwrap().unwrap();
        assert_eq!(stored.remaining, Some(0));

        let key = metered(store.as_ref()).await;
        take(&leases, &store, &key.id, None, 100).await;
        let left = store.get(&key.id).await.unwrap().unwrap().remaining.unwrap();
        let in_hand = leases.in_hand(&key.id);
        assert_eq!(left + in_hand, 900, "what the store has and what is in hand");
        assert!(in_hand <= 2 * MAX_BLOCK && left < 900, "blocks grew: {left} left, {in_hand} held");
        leases.forget(&key.id);
        assert_eq!(leases.in_hand(&key.id), 0);
    }

    #[tokio::test]
    async fn held_uses_are_taken_at_once_until_they_run_low() {
        let store: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        let key = metered(store.as_ref()).await;
        let leases = Leases::on(None);
        assert_eq!(leases.take_held(&key.id, None), None, "nothing is held before a block");
        // Blocks of 1, 2 and 4: three uses of the last are held, 993 are left in the store.
        take(&leases, &store, &key.id, None, 4).await;
        assert_eq!(leases.in_hand(&key.id), 3);
        assert_eq!(leases.take_held(&key.id, Some(Utc::now())), None, "another refill period");
        for left in [995, 994] {
            assert_eq!(leases.take_held(&key.id, None), Some(left));
        }
        assert_eq!(leases.take_held(&key.id, None), None, "one of four is left: the next is due");
        let taken = leases.take(&store, &key.id, None, Utc::now(), true).await.unwrap();
        assert_eq!(taken, QuotaUse::Taken { taken: 1, remaining: 993 });
        settle().await;
        let stored = store.get(&key.id).await.unwrap().unwrap();
        assert_eq!(stored.remaining, Some(985), "a block of eight was taken ahead");
        assert_eq!(leases.in_hand(&key.id), 8);
        assert_eq!(leases.take_held(&key.id, None), Some(992));
    }

    /// What `taken` answers, which must come without waiting for the store.
    async fn at_once(taken: impl Future<Output = Result<QuotaUse, StoreError>>) -> QuotaUse {
        let answered = tokio::time::timeout(Duration::from_secs(5), taken).await;
        answered.expect("not kept waiting").unwrap()
    }

    /// A metered key in a [`FlakyStore`] (also given as the primary), taken in blocks of 1, 2, 4
    /// and 8 (the last two taken ahead) and used down to the three left when the next is due.
    async fn due(period: Period) -> (Leases, Arc<FlakyStore>, Arc<dyn Backend>, String) {
        let store = Arc::new(FlakyStore::default());
        let id = metered(&store.inner).await.id;
        let (leases, primary): (_, Arc<dyn Backend>) = (Leases::on(None), store.clone());
        take(&leases, &primary, &id, period, 6).await;
        assert_eq!(leases.in_hand(&id), 9);
        while leases.take_held(&id, period).is_some() {}
        assert_eq!(leases.in_hand(&id), 3, "less than half of eight: the next block is due");
        (leases, store, primary, id)
    }

    #[tokio::test]
    async fn the_next_block_is_taken_while_the_key_goes_on_with_the_last() {
        let (leases, store, primary, id) = due(None).await;

        store.hold_quotas.store(true, Ordering::SeqCst);
        let taken = at_once(leases.take(&primary, &id, None, Utc::now(), true)).await;
        assert_eq!(taken, QuotaUse::Taken { taken: 1, remaining: 2 + 985 });
        settle().await;
        assert!(leases.take_held(&id, None).is_some(), "the lock is free meanwhile");
        assert!(leases.take_held(&id, None).is_some());
        assert_eq!(leases.take_held(&id, None), None, "all held uses are gone");

        store.quotas_released.notify_one();
        settle().await;
        assert_eq!(leases.in_hand(&id), 16, "the block taken ahead is held");
        let stored = store.inner.get(&id).await.unwrap().unwrap();
        assert_eq!(stored.remaining, Some(1000 - 1 - 2 - 4 - 8 - 16));
    }

    #[tokio::test]
    async fn uses_run_out_before_the_block_taken_ahead_comes() {
        let (leases, store, primary, id) = due(None).await;
        store.hold_quotas.store(true, Ordering::SeqCst);
        leases.take(&primary, &id, None, Utc::now(), true).await.unwrap();
        settle().await;
        while leases.take_held(&id, None).is_some() {}

        // The store answers the next request at once, and the block taken ahead later.
        store.hold_quotas.store(false, Ordering::SeqCst);
        let taken = at_once(leases.take(&primary, &id, None, Utc::now(), true)).await;
        let left = 1000 - 1 - 2 - 4 - 8 - 16 - 16;
        assert_eq!(taken, QuotaUse::Taken { taken: 1, remaining: 15 + left });
        store.quotas_released.notify_one();
        settle().await;
        assert_eq!(leases.in_hand(&id), 15 + 16, "both blocks are kept");
        assert_eq!(store.inner.get(&id).await.unwrap().unwrap().remaining, Some(left));
    }

    #[tokio::test]
    async fn a_failed_block_is_asked_for_again_after_a_pause() {
        let (leases, store, primary, id) = due(None).await;
        store.quotas_fail.store(true, Ordering::SeqCst);
        leases.take(&primary, &id, None, Utc::now(), true).await.unwrap();
        settle().await;
        assert!(leases.take_held(&id, None).is_some(), "the held uses go on");
        assert!(leases.take_held(&id, None).is_some());
        let failed = leases.take(&primary, &id, None, Utc::now(), true).await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");

        store.quotas_fail.store(false, Ordering::SeqCst);
        let failed = leases.take(&primary, &id, None, Utc::now(), true).await;
        assert!(failed.is_err(), "the store is not asked again at once");
        tokio::time::sleep(PAUSE).await;
        let taken = leases.take(&primary, &id, None, Utc::now(), true).await.unwrap();
        assert!(matches!(taken, QuotaUse::Taken { .. }), "{taken:?}");
    }

    #[tokio::test]
    async fn a_block_taken_ahead_is_not_kept_for_a_later_period() {
        let (leases, store, primary, id) = due(None).await;
        // Another instance takes what is left: the block taken ahead will be refused.
        while let Ok(QuotaUse::Taken { .. }) = store.inner.use_quota(&id, 1, None, Utc::now()).await
        {
        }

        store.hold_quotas.store(true, Ordering::SeqCst);
        at_once(leases.take(&primary, &id, None, Utc::now(), true)).await;
        settle().await;
        // Midnight passes while the store's refusal is on its way: the next period is refilled.
        store.hold_quotas.store(false, Ordering::SeqCst);
        let midnight = Some(Utc::now());
        let taken = leases.take(&primary, &id, midnight, Utc::now(), true).await.unwrap();
        assert_eq!(taken, QuotaUse::Taken { taken: 1, remaining: 999 });
        store.quotas_released.notify_one();
        settle().await;

        let taken = leases.take(&primary, &id, midnight, Utc::now(), true).await.unwrap();
        assert_eq!(taken, QuotaUse::Taken { taken: 1, remaining: 998 }, "the refusal was stale");
    }

    #[tokio::test]
    async fn a_block_asked_for_before_midnight_takes_one_use_of_the_next_day() {
        let day = Some(RefillInterval::Daily.period_start(Utc::now()));
        let (leases, store, primary, id) = due(day).await;

        // The next block is asked for before midnight and reaches the store after the refill.
        store.hold_quota_asks.store(true, Ordering::SeqCst);
        at_once(leases.take(&primary, &id, day, Utc::now(), true)).await;
        settle().await;
        let tomorrow = Utc::now() + chrono::Duration::days(1);
        let next_day = Some(RefillInterval::Daily.period_start(tomorrow));
        let refilled = store.inner.use_quota(&id, 1, next_day, tomorrow).await.unwrap();
        assert_eq!(refilled, QuotaUse::Taken { taken: 1, remaining: 999 });
        store.hold_quota_asks.store(false, Ordering::SeqCst);
        store.quotas_released.notify_one();
        settle().await;
        let stored = store.inner.get(&id).await.unwrap().unwrap();
        assert_eq!(stored.remaining, Some(998), "one use of the next day, not a block");
    }

    #[tokio::test]
    async fn a_lifted_quota_stops_taking_ahead() {
        let (leases, store, primary, id) = due(None).await;
        // The quota is lifted; the change has not reached this instance yet.
        let lifted = KeyChanges { remaining: Some(None), refill: Some(None), ..Default::default() };
        store.inner.update(&id, &lifted, &event(&id)).await.unwrap();

        leases.take(&primary, &id, None, Utc::now(), true).await.unwrap();
        settle().await;
        assert_eq!(leases.take_held(&id, None), Some(1), "the held uses go on, none ahead");
        assert_eq!(leases.take_held(&id, None), Some(0));
        let taken = leases.take(&primary, &id, None, Utc::now(), true).await.unwrap();
        assert_eq!(taken, QuotaUse::Unlimited, "then the store says so");
    }
}
