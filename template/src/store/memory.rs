//! An in-process backend for tests and local experiments. Keys are gone when the process exits.
//!
//! Its change feed is an in-process channel: it serves caches in the same process, which is all a
//! memory store ever has.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use tokio::sync::mpsc::Sender;

use super::feed::{ChangeFeed, Heard, follow_with_heartbeats};
use super::{
    Backend, EventQuery, ListQuery, Page, Purged, QuotaUse, Retention, StoreError, Usage,
    block_fits,
};
use crate::model::{ApiKeyRecord, KeyChanges, KeyEvent};

#[derive(Debug)]
pub struct MemoryBackend {
    state: RwLock<State>,
    changes: broadcast::Sender<String>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self { state: RwLock::default(), changes: broadcast::channel(1024).0 }
    }
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, ApiKeyRecord>,
    events: Vec<KeyEvent>,
}

impl MemoryBackend {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave a record half-written, so a poisoned lock is still usable.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells followers of the feed that `id` changed; nobody following is fine.
    fn announce(&self, id: &str) {
        let _ = self.changes.send(id.to_owned());
    }
}

struct MemoryFeed(broadcast::Sender<String>);

#[async_trait]
impl ChangeFeed for MemoryFeed {
    async fn follow(&self, heard: Sender<Heard>) -> Result<(), StoreError> {
        let mut changes = (self.0.clone(), self.0.subscribe());
        follow_with_heartbeats(
            &mut changes,
            &heard,
            async |(sender, _), beat| {
                let _ = sender.send(beat);
                Ok(())
            },
            async |(_, receiver), wait| match tokio::time::timeout(wait, receiver.recv()).await {
                Err(_) => Ok(None),
                Ok(Ok(payload)) => Ok(Some(payload)),
                // Lagged behind: changes were missed, so follow afresh.
                Ok(Err(err)) => Err(StoreError::Unavailable(format!("change feed: {err}"))),
            },
        )
        .await
    }
}

/// Newest first, by `at` then id, as every backend orders.
fn page<T: Clone>(
    mut matching: Vec<&T>,
    order: impl Fn(&T) -> (DateTime<Utc>, &str),
    limit: u32,
    offset: u64,
) -> Page<T> {
    matching.sort_by(|a, b| order(b).cmp(&order(a)));
    let offset = usize::try_from(offset).unwrap_or(usize::MAX);
    Page {
        total: matching.len() as u64,
        items: matching.into_iter().skip(offset).take(limit as usize).cloned().collect(),
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn insert(&self, key: &ApiKeyRecord, event: &KeyEvent) -> Result<(), StoreError> {
        let mut state = self.write();
        if state.keys.contains_key(&key.id) {
            return Err(StoreError::Duplicate);
        }
        state.keys.insert(key.id.clone(), key.clone());
        state.events.push(event.clone());
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.read().keys.get(id).cloned())
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<ApiKeyRecord>, StoreError> {
        let state = self.read();
        let matching = state
            .keys
            .values()
            .filter(|k| query.owner_id.is_none() || k.owner_id == query.owner_id)
            .filter(|k| {
                query.expiring.is_none_or(|(after, by)| {
                    k.revoked_at.is_none() && k.expires_at.is_some_and(|at| after < at && at <= by)
                })
            })
            .collect();
        Ok(page(matching, |k| (k.created_at, &k.id), query.limit, query.offset))
    }

    async fn revoke(
        &self,
        id: &str,
        at: DateTime<Utc>,
        event: &KeyEvent,
    ) -> Result<bool, StoreError> {
        let mut state = self.write();
        let Some(key) = state.keys.get_mut(id) else {
            return Ok(false);
        };
        if key.revoked_at.is_none() {
            key.revoked_at = Some(at);
            state.events.push(event.clone());
            self.announce(id);
        }
        Ok(true)
    }

    async fn update(
        &self,
        id: &str,
        changes: &KeyChanges,
        event: &KeyEvent,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut state = self.write();
        let Some(key) = state.keys.get_mut(id) else {
            return Ok(None);
        };
        changes.apply(key);
        let updated = key.clone();
        state.events.push(event.clone());
        self.announce(id);
        Ok(Some(updated))
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        retires_at: DateTime<Utc>,
        events: &[KeyEvent],
    ) -> Result<bool, StoreError> {
        let mut state = self.write();
        if state.keys.contains_key(&new.id) {
            return Err(StoreError::Duplicate);
        }
        let Some(old) = state
            .keys
            .get_mut(old_id)
            .filter(|old| old.revoked_at.is_none() && old.replaced_by.is_none())
        else {
            return Ok(false);
        };
        old.replaced_by = Some(new.id.clone());
        old.retires_at = Some(retires_at);
        // The quota as it stands now: uses taken since `new` was made from the old key are spent.
        let new =
            ApiKeyRecord { remaining: old.remaining, refilled_at: old.refilled_at, ..new.clone() };
        state.keys.insert(new.id.clone(), new);
        state.events.extend_from_slice(events);
        self.announce(old_id);
        Ok(true)
    }

    async fn use_quota(
        &self,
        id: &str,
        want: u64,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<QuotaUse, StoreError> {
        let mut state = self.write();
        let Some(key) = state.keys.get_mut(id) else {
            return Ok(QuotaUse::Unlimited);
        };
        let Some(mut remaining) = key.remaining else {
            return Ok(QuotaUse::Unlimited);
        };
        if let (Some(before), Some(refill)) = (refill_before, key.refill)
            && key.refilled_at.is_none_or(|at| at < before)
        {
            remaining = refill.amount;
            key.refilled_at = Some(now);
        }
        if remaining == 0 {
            key.remaining = Some(0);
            return Ok(QuotaUse::Exhausted);
        }
        // A block goes only to a caller dated no earlier than the last refill: one dated before it
        // may still be in the period before, whose block would be dropped unused.
        let since_refill = refill_before.is_none() || key.refilled_at.is_none_or(|at| at <= now);
        let taken = if since_refill && block_fits(want, remaining) { want.max(1) } else { 1 };
        key.remaining = Some(remaining - taken);
        Ok(QuotaUse::Taken { taken, remaining: remaining - taken })
    }

    async fn events(&self, query: &EventQuery) -> Result<Page<KeyEvent>, StoreError> {
        let state = self.read();
        let matching = state
            .events
            .iter()
            .filter(|e| query.key_id.is_none() || Some(&e.key_id) == query.key_id.as_ref())
            .collect();
        Ok(page(matching, |e| (e.at, &e.id), query.limit, query.offset))
    }

    async fn purge(
        &self,
        retention: &Retention,
        event: Option<&KeyEvent>,
    ) -> Result<Purged, StoreError> {
        let mut state = self.write();
        let keys = state.keys.values().filter(|k| retention.expels(k)).count() as u64;
        let events = state.events.iter().filter(|e| retention.expels_event(e)).count() as u64;
        let purged = Purged { keys, events };
        if let Some(event) = event {
            state.keys.retain(|_, k| !retention.expels(k));
            state.events.retain(|e| !retention.expels_event(e));
            state.events.push(purged.recorded_in(event));
        }
        Ok(purged)
    }

    fn feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        Some(Arc::new(MemoryFeed(self.changes.clone())))
    }

    async fn record_usage(&self, batch: &[Usage]) -> Result<(), StoreError> {
        let mut state = self.write();
        for usage in batch {
            if let Some(key) = state.keys.get_mut(&usage.id) {
                key.request_count += usage.requests;
                key.last_used_at = key.last_used_at.max(Some(usage.last_used_at));
            }
        }
        Ok(())
    }
}
