//! An in-process backend for tests and local experiments. Keys are gone when the process exits.

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{ApiKeyRecord, Backend, ListQuery, Page, StoreError, Usage};

#[derive(Debug, Default)]
pub struct MemoryBackend {
    keys: RwLock<HashMap<String, ApiKeyRecord>>,
}

impl MemoryBackend {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, ApiKeyRecord>> {
        // A panic while holding the lock cannot leave a record half-written, so a poisoned lock is still usable.
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, ApiKeyRecord>> {
        self.keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn insert(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut keys = self.write();
        if keys.contains_key(&key.id) {
            return Err(StoreError::Duplicate);
        }
        keys.insert(key.id.clone(), key.clone());
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.read().get(id).cloned())
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<ApiKeyRecord>, StoreError> {
        let keys = self.read();
        let mut matching: Vec<&ApiKeyRecord> = keys
            .values()
            .filter(|k| query.owner_id.is_none() || k.owner_id == query.owner_id)
            .collect();
        matching.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        let offset = usize::try_from(query.offset).unwrap_or(usize::MAX);
        Ok(Page {
            total: matching.len() as u64,
            items: matching
                .into_iter()
                .skip(offset)
                .take(query.limit as usize)
                .cloned()
                .collect(),
        })
    }

    async fn revoke(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        match self.write().get_mut(id) {
            Some(key) => {
                key.revoked_at.get_or_insert(at);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn record_usage(&self, batch: &[Usage]) -> Result<(), StoreError> {
        let mut keys = self.write();
        for usage in batch {
            if let Some(key) = keys.get_mut(&usage.id) {
                key.request_count += usage.requests;
                key.last_used_at = key.last_used_at.max(Some(usage.last_used_at));
            }
        }
        Ok(())
    }
}
