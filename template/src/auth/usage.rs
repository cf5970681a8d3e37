//! Usage tracking without a database write per request: uses are counted in memory and flushed every
//! interval (and at shutdown) in batches, as relative increments.

use std::mem;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use foldhash::HashMap;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::metrics::metrics;
use crate::model::KeyId;
use crate::store::{Backend, StoreError, Usage};

/// Keys per store call of a flush. Each call applies all of its keys or none, and on Redis it is a
/// `MULTI`/`EXEC` that every other client of Redis waits for.
const FLUSH_CHUNK: usize = 500;

#[derive(Debug, Default)]
pub struct UsageTracker {
    /// By key id. Only authenticated keys get here, so a fast hash is safe from crafted ids.
    pending: Mutex<HashMap<KeyId, Pending>>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    requests: u64,
    last_used_at: DateTime<Utc>,
}

impl UsageTracker {
    fn pending(&self) -> MutexGuard<'_, HashMap<KeyId, Pending>> {
        // Counters stay consistent even if a holder panicked, so a poisoned lock is still usable.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one use of a key at `now`.
    pub fn record(&self, id: KeyId, now: DateTime<Utc>) {
        add(&mut self.pending(), id, Pending { requests: 1, last_used_at: now });
    }

    /// Uses of `id` counted but not yet flushed.
    pub fn unflushed(&self, id: &str) -> Option<(u64, DateTime<Utc>)> {
        let id = KeyId::new(id)?;
        self.pending().get(&id).map(|p| (p.requests, p.last_used_at))
    }

    /// Writes everything counted so far, [`FLUSH_CHUNK`] keys per store call. On failure the counts
    /// not yet written are kept for the next flush; those written are not written again.
    pub async fn flush(&self, store: &dyn Backend) -> Result<usize, StoreError> {
        let mut taken: Vec<(KeyId, Pending)> =
            mem::take(&mut *self.pending()).into_iter().collect();
        // In id order: on SQLite the counts are stored in id order, so a flush meets each page once.
        taken.sort_unstable_by_key(|&(id, _)| id);
        let mut written = 0;
        for chunk in taken.chunks(FLUSH_CHUNK) {
            let batch: Vec<Usage> = chunk
                .iter()
                .map(|(id, p)| Usage {
                    id: id.as_str().to_owned(),
                    requests: p.requests,
                    last_used_at: p.last_used_at,
                })
                .collect();
            if let Err(err) = store.record_usage(&batch).await {
                metrics().usage_flush(written, false);
                self.keep(&taken[written..]);
                return Err(err);
            }
            written += chunk.len();
        }
        if written > 0 {
            metrics().usage_flush(written, true);
        }
        Ok(written)
    }

    /// Puts counts that could not be written back, beside those counted meanwhile.
    fn keep(&self, unwritten: &[(KeyId, Pending)]) {
        let mut pending = self.pending();
        for &(id, uses) in unwritten {
            add(&mut pending, id, uses);
        }
    }

    /// Flushes every `interval` until [`Flusher::finish`], which flushes once more.
    pub fn spawn_flusher(self: Arc<Self>, store: Arc<dyn Backend>, interval: Duration) -> Flusher {
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.notified() => break,
                }
                if let Err(err) = self.flush(store.as_ref()).await {
                    tracing::warn!(error = %err, "could not flush key usage; will retry");
                }
            }
            // Connections made while serving can die with the server's workers, and a Redis
            // connection only reconnects on its next call: try again before giving up.
            let mut last = self.flush(store.as_ref()).await;
            for _ in 0..3 {
                if last.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                last = self.flush(store.as_ref()).await;
            }
            match last {
                Ok(keys) => tracing::info!(keys, "usage flushed at shutdown"),
                Err(err) => {
                    tracing::error!(error = %err, "usage counted since the last flush was lost")
                }
            }
        });
        Flusher { stop, task }
    }
}

/// Adds `uses` to what is pending for `id`, keeping the later of the two last uses.
fn add(pending: &mut HashMap<KeyId, Pending>, id: KeyId, uses: Pending) {
    pending
        .entry(id)
        .and_modify(|p| {
            p.requests += uses.requests;
            p.last_used_at = p.last_used_at.max(uses.last_used_at);
        })
        .or_insert(uses);
}

/// The background flush of a [`UsageTracker`].
pub struct Flusher {
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Flusher {
    /// Lets a flush in progress complete, then writes what was counted since. Aborting the task
    /// instead could cancel a flush between taking the counts and writing them, losing them.
    pub async fn finish(self) {
        self.stop.notify_one();
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "the usage flusher failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::FlakyStore;
    use crate::store::{MemoryBackend, conformance};

    #[tokio::test]
    async fn finishing_the_flusher_during_a_flush_loses_no_counts() {
        let store = Arc::new(FlakyStore {
            usage_delay: Duration::from_millis(100),
            ..FlakyStore::default()
        });
        let key = conformance::sample("owner", Utc::now());
        store.insert(&key, &conformance::event(&key.id)).await.unwrap();
        let tracker = Arc::new(UsageTracker::default());
        let id = KeyId::new(&key.id).unwrap();
        for _ in 0..3 {
            tracker.record(id, Utc::now());
        }
        // The first tick is immediate: that flush is still writing when we finish.
        let flusher = tracker.clone().spawn_flusher(store.clone(), Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(20)).await;
        tracker.record(id, Utc::now());
        flusher.finish().await;
        let stored = store.get(&key.id).await.unwrap().unwrap();
        assert_eq!(stored.request_count, 4);
    }

    const A: &str = "aaaaaaaaaaaa";

    fn id(id: &str) -> KeyId {
        KeyId::new(id).unwrap()
    }

    #[tokio::test]
    async fn a_flush_clears_what_it_wrote() {
        let tracker = UsageTracker::default();
        for _ in 0..5 {
            tracker.record(id(A), Utc::now());
        }
        tracker.record(id("bbbbbbbbbbbb"), Utc::now());
        assert_eq!(tracker.unflushed(A).map(|(n, _)| n), Some(5));
        assert_eq!(tracker.flush(&MemoryBackend::default()).await.unwrap(), 2);
        assert_eq!(tracker.unflushed(A), None);
        assert_eq!(tracker.flush(&MemoryBackend::default()).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_every_count() {
        let tracker = UsageTracker::default();
        for _ in 0..3 {
            tracker.record(id(A), Utc::now());
        }
        let down = FlakyStore { usage_writes_before_failing: Some(0), ..FlakyStore::default() };
        assert!(tracker.flush(&down).await.is_err());
        tracker.record(id(A), Utc::now());
        assert_eq!(tracker.unflushed(A).map(|(n, _)| n), Some(4));
    }

    #[tokio::test]
    async fn a_flush_writes_in_chunks_and_keeps_only_what_it_could_not_write() {
        // 1,200 keys: chunks of 500, 500 and 200, and the store goes down after the first.
        let store = FlakyStore { usage_writes_before_failing: Some(1), ..FlakyStore::default() };
        let tracker = UsageTracker::default();
        let flushed_keys = || {
            let text = metrics().render();
            let line = text.lines().find(|l| l.starts_with("usage_flushed_keys_total "));
            line.and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).unwrap_or(0)
        };
        let mut ids = Vec::new();
        for _ in 0..2 * FLUSH_CHUNK + 200 {
            let key = conformance::sample("owner", Utc::now());
            store.insert(&key, &conformance::event(&key.id)).await.unwrap();
            for _ in 0..2 {
                tracker.record(id(&key.id), Utc::now());
            }
            ids.push(key.id);
        }
        let before = flushed_keys();
        assert!(tracker.flush(&store).await.is_err());
        assert_eq!(*store.usage_writes.lock().unwrap(), [FLUSH_CHUNK]);
        // Other tests flush a key or two at the same time.
        assert!(
            flushed_keys() - before >= FLUSH_CHUNK as u64,
            "a failed flush counts what it wrote"
        );
        let written = ids.iter().filter(|id| tracker.unflushed(id).is_none()).count();
        assert_eq!(written, FLUSH_CHUNK, "only the chunk written left the tracker");

        assert_eq!(tracker.flush(&store.inner).await.unwrap(), FLUSH_CHUNK + 200);
        for id in &ids {
            let stored = store.get(id).await.unwrap().unwrap();
            assert_eq!(stored.request_count, 2, "every use written once");
        }
    }
}
