//! The bodies of the key-management routes that are not the model itself: a key's details as
//! returned, a created key with its secret, pages of keys and events, and the query strings.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use zeroize::Zeroizing;

use crate::keys::CreatedKey;
use crate::keys::validation::DEFAULT_PAGE_SIZE;
use crate::model::{ApiKeyRecord, KeyEvent, KeyStatus};
use crate::store::Page;

/// A key's details. The key itself and its digest are never returned.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyDetails {
    #[serde(flatten)]
    pub record: ApiKeyRecord,
    pub status: KeyStatus,
    /// Seconds until the key expires (0 once expired), for expiry warnings.
    #[schema(example = 604800)]
    pub expires_in_seconds: Option<i64>,
}

impl From<ApiKeyRecord> for KeyDetails {
    fn from(record: ApiKeyRecord) -> Self {
        Self {
            status: KeyStatus::of(&record),
            expires_in_seconds: record.expires_at.map(|at| (at - Utc::now()).num_seconds().max(0)),
            record,
        }
    }
}

/// A key just created. `key` is shown here once and cannot be retrieved again; this type has no
/// `Debug`, so it cannot be logged by accident.
#[derive(Serialize, ToSchema)]
pub struct KeyCreated {
    /// The API key itself. Store it now: only its digest is kept.
    #[schema(value_type = String, example = "sk_4fTq9ZbX2mKp_…")]
    pub key: Zeroizing<String>,
    #[serde(flatten)]
    pub details: KeyDetails,
}

impl From<CreatedKey> for KeyCreated {
    fn from(created: CreatedKey) -> Self {
        Self { key: created.key, details: created.record.into() }
    }
}

/// One page of keys, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyDetails>,
    /// How many keys match, over all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// One page of events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub items: Vec<KeyEvent>,
    /// How many events match, over all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

impl KeyList {
    pub fn of(page: Page<ApiKeyRecord>, limit: u32, offset: u64) -> Self {
        let items = page.items.into_iter().map(KeyDetails::from).collect();
        let total = page.total;
        Self { items, total, limit, offset }
    }
}

impl EventList {
    pub fn of(page: Page<KeyEvent>, limit: u32, offset: u64) -> Self {
        let (items, total) = (page.items, page.total);
        Self { items, total, limit, offset }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = json!(DEFAULT_PAGE_SIZE))]
    pub limit: Option<u32>,
    #[param(minimum = 0, default = 0)]
    pub offset: Option<u64>,
}

impl PageParams {
    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_PAGE_SIZE)
    }

    pub fn offset(&self) -> u64 {
        self.offset.unwrap_or(0)
    }
}

// `limit` and `offset` repeat `PageParams` rather than flatten it: serde cannot flatten into a
// struct that denies unknown fields, and flattened query numbers arrive as strings.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only keys of this owner.
    pub owner_id: Option<String>,
    /// Only unrevoked keys that expire within this many days (1 to 3660).
    #[param(minimum = 1, maximum = 3660, example = 7)]
    pub expiring_within_days: Option<u32>,
    /// Page size, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = json!(DEFAULT_PAGE_SIZE))]
    pub limit: Option<u32>,
    #[param(minimum = 0, default = 0)]
    pub offset: Option<u64>,
}
