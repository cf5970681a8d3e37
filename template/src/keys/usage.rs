//! Usage tracking without a database write per request: uses are counted in memory and flushed in one
//! batch per interval (and at shutdown), as relative increments.

use std::collections::HashMap;
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::metrics::metrics;
use crate::store::{Backend, StoreError, Usage};

#[derive(Debug, Default)]
pub struct UsageTracker {
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    requests: u64,
    last_used_at: DateTime<Utc>,
}

impl UsageTracker {
    fn pending(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        // Counters stay consistent even if a holder panicked, so a poisoned lock is still usable.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one use of a key at `now`.
    pub fn record(&self, id: &str, now: DateTime<Utc>) {
        let mut pending = self.pending();
        match pending.get_mut(id) {
            Some(entry) => {
                entry.requests += 1;
                entry.last_used_at = entry.last_used_at.max(now);
            }
            None => {
                pending.insert(
                    id.to_owned(),
                    Pending {
                        requests: 1,
                        last_used_at: now,
                    },
                );
            }
        }
    }

    /// Uses of `id` counted but not yet flushed.
    pub fn unflushed(&self, id: &str) -> Option<(u64, DateTime<Utc>)> {
        self.pending().get(id).map(|p| (p.requests, p.last_used_at))
    }

    /// Writes everything counted so far. On failure the counts are kept for the next flush.
    pub async fn flush(&self, store: &dyn Backend) -> Result<usize, StoreError> {
        let taken = mem::take(&mut *self.pending());
        if taken.is_empty() {
            return Ok(0);
        }
        let batch: Vec<Usage> = taken
            .iter()
            .map(|(id, p)| Usage {
                id: id.clone(),
                requests: p.requests,
                last_used_at: p.last_used_at,
            })
            .collect();
        let written = store.record_usage(&batch).await;
        metrics().usage_flush(batch.len(), written.is_ok());
        match written {
            Ok(()) => Ok(batch.len()),
            Err(err) => {
                let mut pending = self.pending();
                for (id, p) in taken {
                    let entry = pending.entry(id).or_insert(Pending {
                        requests: 0,
                        last_used_at: p.last_used_at,
                    });
                    entry.requests += p.requests;
                    entry.last_used_at = entry.last_used_at.max(p.last_used_at);
                }
                Err(err)
            }
        }
    }

    /// Flushes every `interval` until the returned task is aborted.
    pub fn spawn_flusher(
        self: Arc<Self>,
        store: Arc<dyn Backend>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(err) = self.flush(store.as_ref()).await {
                    tracing::warn!(error = %err, "could not flush key usage; will retry");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use chrono::DateTime;

    use super::*;
    use crate::store::{ApiKeyRecord, ListQuery, MemoryBackend, Page};

    /// A store whose every call fails, as when the database is down.
    struct Down;

    #[async_trait]
    impl Backend for Down {
        async fn insert(&self, _: &ApiKeyRecord) -> Result<(), StoreError> {
            Err(StoreError::Unavailable("down".into()))
        }
        async fn get(&self, _: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
            Err(StoreError::Unavailable("down".into()))
        }
        async fn list(&self, _: &ListQuery) -> Result<Page<ApiKeyRecord>, StoreError> {
            Err(StoreError::Unavailable("down".into()))
        }
        async fn revoke(&self, _: &str, _: DateTime<Utc>) -> Result<bool, StoreError> {
            Err(StoreError::Unavailable("down".into()))
        }
        async fn record_usage(&self, _: &[Usage]) -> Result<(), StoreError> {
            Err(StoreError::Unavailable("down".into()))
        }
    }

    #[tokio::test]
    async fn a_flush_clears_what_it_wrote() {
        let tracker = UsageTracker::default();
        for _ in 0..5 {
            tracker.record("a", Utc::now());
        }
        tracker.record("b", Utc::now());
        assert_eq!(tracker.unflushed("a").map(|(n, _)| n), Some(5));
        assert_eq!(tracker.flush(&MemoryBackend::default()).await.unwrap(), 2);
        assert_eq!(tracker.unflushed("a"), None);
        assert_eq!(tracker.flush(&MemoryBackend::default()).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_every_count() {
        let tracker = UsageTracker::default();
        for _ in 0..3 {
            tracker.record("a", Utc::now());
        }
        assert!(tracker.flush(&Down).await.is_err());
        tracker.record("a", Utc::now());
        assert_eq!(tracker.unflushed("a").map(|(n, _)| n), Some(4));
    }
}
