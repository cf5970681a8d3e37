//! A store for the service's own unit tests: the memory store, with the delays and failures of a
//! real database where a test needs them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{
    Backend, EventQuery, ListQuery, MemoryBackend, Page, Purged, QuotaUse, Retention, StoreError,
    Usage,
};
use crate::model::{ApiKeyRecord, KeyChanges, KeyEvent};

#[derive(Default)]
pub struct FlakyStore {
    pub inner: MemoryBackend,
    /// When set, a lookup reads at once but answers only once this is notified: a slow query.
    pub held_lookups: Option<Notify>,
    /// While set, a quota use is taken at once but answered only once `quotas_released` is
    /// notified.
    pub hold_quotas: AtomicBool,
    /// Each `notify_one` lets one held quota use go on: to the store, or back with its answer.
    pub quotas_released: Notify,
    /// While set, a quota use waits for `quotas_released` before it reaches the store.
    pub hold_quota_asks: AtomicBool,
    /// While set, quota uses fail, as when the database is down.
    pub quotas_fail: AtomicBool,
    /// How long each usage write takes, as over a network.
    pub usage_delay: Duration,
    /// Usage writes that succeed before the rest fail, as when the database goes down; `Some(0)`:
    /// every one fails.
    pub usage_writes_before_failing: Option<usize>,
    /// The keys in each usage write that succeeded, in order.
    pub usage_writes: Mutex<Vec<usize>>,
}

#[async_trait]
impl Backend for FlakyStore {
    async fn insert(&self, key: &ApiKeyRecord, event: &KeyEvent) -> Result<(), StoreError> {
        self.inner.insert(key, event).await
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.get(id).await
    }

    async fn lookup(&self, id: &str) -> Result<Option<Arc<ApiKeyRecord>>, StoreError> {
        let read = self.inner.lookup(id).await;
        if let Some(held) = &self.held_lookups {
            held.notified().await;
        }
        read
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<ApiKeyRecord>, StoreError> {
        self.inner.list(query).await
    }

    async fn revoke(
        &self,
        id: &str,
        at: DateTime<Utc>,
        event: &KeyEvent,
    ) -> Result<bool, StoreError> {
        self.inner.revoke(id, at, event).await
    }

    async fn update(
        &self,
        id: &str,
        changes: &KeyChanges,
        event: &KeyEvent,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.update(id, changes, event).await
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        retires_at: DateTime<Utc>,
        events: &[KeyEvent],
    ) -> Result<bool, StoreError> {
        self.inner.rotate(old_id, new, retires_at, events).await
    }

    async fn use_quota(
        &self,
        id: &str,
        want: u64,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<QuotaUse, StoreError> {
        if self.hold_quota_asks.load(Ordering::SeqCst) {
            self.quotas_released.notified().await;
        }
        if self.quotas_fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        let taken = self.inner.use_quota(id, want, refill_before, now).await;
        if self.hold_quotas.load(Ordering::SeqCst) {
            self.quotas_released.notified().await;
        }
        taken
    }

    async fn events(&self, query: &EventQuery) -> Result<Page<KeyEvent>, StoreError> {
        self.inner.events(query).await
    }

    async fn purge(
        &self,
        retention: &Retention,
        event: Option<&KeyEvent>,
    ) -> Result<Purged, StoreError> {
        self.inner.purge(retention, event).await
    }

    async fn record_usage(&self, batch: &[Usage]) -> Result<(), StoreError> {
        tokio::time::sleep(self.usage_delay).await;
        {
            let mut writes = self.usage_writes.lock().unwrap();
            if self.usage_writes_before_failing.is_some_and(|before| writes.len() >= before) {
                return Err(StoreError::Unavailable("down".into()));
            }
            writes.push(batch.len());
        }
        self.inner.record_usage(batch).await
    }
}
