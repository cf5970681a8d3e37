//! [`ApiKey`]: the key that authenticated a request, as handlers and the key service see it.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::model::ApiKeyRecord;
use crate::scope::{self, Match};

/// The key that authenticated the request, and where the request came from. Cloning it copies a
/// pointer, not the key's fields.
#[derive(Clone)]
pub struct ApiKey {
    record: Arc<ApiKeyRecord>,
    client: Option<IpAddr>,
}

impl ApiKey {
    pub fn new(record: Arc<ApiKeyRecord>, client: Option<IpAddr>) -> Self {
        Self { record, client }
    }

    /// The key's public id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn owner_id(&self) -> Option<&str> {
        self.record.owner_id.as_deref()
    }

    pub fn scopes(&self) -> &[String] {
        &self.record.scopes
    }

    /// The free-form metadata stored with the key.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.record.metadata
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.record.expires_at
    }

    /// The address the request came from, when known.
    pub fn client(&self) -> Option<IpAddr> {
        self.client
    }

    /// Whether this key holds `scope`, directly or through a wildcard.
    pub fn has_scope(&self, scope: &str) -> bool {
        scope::satisfies(&self.record.scopes, &[scope], Match::All)
    }

    pub(crate) fn record(&self) -> &ApiKeyRecord {
        &self.record
    }

    /// Whether requests with this key may be charged to a rate limit or a quota: its own, or, in
    /// its grace period after a rotation, its replacement's.
    pub(crate) fn is_limited(&self) -> bool {
        self.record.rate_limit.is_some()
            || self.record.remaining.is_some()
            || self.record.replaced_by.is_some()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("owner_id", &self.owner_id())
            .field("scopes", &self.scopes())
            .finish_non_exhaustive()
    }
}
