//! Rows of `api_keys`, `api_key_usage` and `api_key_events` as Diesel sees them, and their
//! conversion to and from the store's records.
//!
//! Times are stored as UTC `TIMESTAMP`s, scopes as one space-separated string and JSON as text, so
//! the same columns work on SQLite and PostgreSQL.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use hex::FromHex;
use serde_json::{Map, Value};

use super::schema::{api_key_events, api_key_usage, api_keys};
use crate::model::{
    ApiKeyRecord, KeyChanges, KeyEvent, KeyHash, RateLimit, Refill, from_name, name_of, now,
};
use crate::store::StoreError;

/// A key as `api_keys` holds it, but for its uses (in [`UsageRow`] since 0.4.0). The table's own
/// `request_count` and `last_used_at` columns stay, unread, for instances of 0.3.0 during a rolling
/// upgrade.
#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyRow {
    pub id: String,
    pub key_hash: String,
    pub name: String,
    pub owner_id: Option<String>,
    pub scopes: String,
    pub metadata: String,
    pub created_at: NaiveDateTime,
    pub expires_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
    pub enabled: bool,
    pub rate_limit_requests: Option<i32>,
    pub rate_limit_window: Option<i32>,
    pub remaining: Option<i64>,
    pub refill_interval: Option<String>,
    pub refill_amount: Option<i64>,
    pub refilled_at: Option<NaiveDateTime>,
    pub rotated_from: Option<String>,
    pub replaced_by: Option<String>,
    pub retires_at: Option<NaiveDateTime>,
}

/// A key's uses as flushed so far; a key never used has no row.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = api_key_usage)]
pub struct UsageRow {
    pub request_count: i64,
    pub last_used_at: NaiveDateTime,
}

/// The columns a [`KeyChanges`] sets; `None` leaves a column alone.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = api_keys)]
pub struct ChangesRow {
    pub name: Option<String>,
    pub scopes: Option<String>,
    pub metadata: Option<String>,
    pub expires_at: Option<Option<NaiveDateTime>>,
    pub enabled: Option<bool>,
    pub rate_limit_requests: Option<Option<i32>>,
    pub rate_limit_window: Option<Option<i32>>,
    pub remaining: Option<Option<i64>>,
    pub refill_interval: Option<Option<String>>,
    pub refill_amount: Option<Option<i64>>,
    pub refilled_at: Option<Option<NaiveDateTime>>,
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_key_events)]
pub struct EventRow {
    pub id: String,
    pub key_id: String,
    pub action: String,
    pub actor_key_id: Option<String>,
    pub client: Option<String>,
    pub changes: String,
    pub at: NaiveDateTime,
}

fn naive(at: DateTime<Utc>) -> NaiveDateTime {
    at.naive_utc()
}

/// Counts are unsigned in Rust and signed in SQL; nothing valid comes near the edge.
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn limit_columns(limit: Option<RateLimit>) -> (Option<i32>, Option<i32>) {
    let column = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    limit.map(|l| (column(l.requests), column(l.window))).unzip()
}

fn refill_columns(refill: Option<Refill>) -> (Option<String>, Option<i64>) {
    refill.map(|r| (name_of(r.interval), signed(r.amount))).unzip()
}

fn json_object(
    text: &str,
    what: impl FnOnce() -> String,
) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(text)
        .map_err(|_| StoreError::Corrupt(format!("{} is not a JSON object", what())))
}

impl From<&ApiKeyRecord> for ApiKeyRow {
    fn from(key: &ApiKeyRecord) -> Self {
        let (rate_limit_requests, rate_limit_window) = limit_columns(key.rate_limit);
        let (refill_interval, refill_amount) = refill_columns(key.refill);
        Self {
            id: key.id.clone(),
            key_hash: hex::encode(key.key_hash.0),
            name: key.name.clone(),
            owner_id: key.owner_id.clone(),
            scopes: key.scopes.join(" "),
            metadata: Value::Object(key.metadata.clone()).to_string(),
            created_at: naive(key.created_at),
            expires_at: key.expires_at.map(naive),
            revoked_at: key.revoked_at.map(naive),
            enabled: key.enabled,
            rate_limit_requests,
            rate_limit_window,
            remaining: key.remaining.map(signed),
            refill_interval,
            refill_amount,
            refilled_at: key.refilled_at.map(naive),
            rotated_from: key.rotated_from.clone(),
            replaced_by: key.replaced_by.clone(),
            retires_at: key.retires_at.map(naive),
        }
    }
}

impl TryFrom<(ApiKeyRow, Option<UsageRow>)> for ApiKeyRecord {
    type Error = StoreError;

    fn try_from((row, usage): (ApiKeyRow, Option<UsageRow>)) -> Result<Self, StoreError> {
        let metadata = json_object(&row.metadata, || format!("metadata of key {}", row.id))?;
        let key_hash = <[u8; 32]>::from_hex(&row.key_hash).map(KeyHash).map_err(|_| {
            StoreError::Corrupt(format!("digest of key {} is not 64 hex digits", row.id))
        })?;
        let rate_limit = match (row.rate_limit_requests, row.rate_limit_window) {
            (Some(requests), Some(window)) => Some(RateLimit {
                requests: u32::try_from(requests).unwrap_or(0),
                window: u32::try_from(window).unwrap_or(0),
            }),
            _ => None,
        };
        let refill = match (&row.refill_interval, row.refill_amount) {
            (Some(interval), Some(amount)) => Some(Refill {
                interval: from_name(interval).ok_or_else(|| {
                    StoreError::Corrupt(format!("refill interval of key {}: {interval:?}", row.id))
                })?,
                amount: unsigned(amount),
            }),
            _ => None,
        };
        Ok(Self {
            key_hash,
            scopes: row.scopes.split_whitespace().map(str::to_owned).collect(),
            metadata,
            created_at: row.created_at.and_utc(),
            expires_at: row.expires_at.map(|t| t.and_utc()),
            revoked_at: row.revoked_at.map(|t| t.and_utc()),
            last_used_at: usage.as_ref().map(|u| u.last_used_at.and_utc()),
            request_count: usage.map_or(0, |u| unsigned(u.request_count)),
            enabled: row.enabled,
            rate_limit,
            remaining: row.remaining.map(unsigned),
            refill,
            refilled_at: row.refilled_at.map(|t| t.and_utc()),
            rotated_from: row.rotated_from,
            replaced_by: row.replaced_by,
            retires_at: row.retires_at.map(|t| t.and_utc()),
            id: row.id,
            name: row.name,
            owner_id: row.owner_id,
        })
    }
}

impl From<&KeyChanges> for ChangesRow {
    fn from(changes: &KeyChanges) -> Self {
        let KeyChanges {
            name,
            scopes,
            metadata,
            expires_at,
            enabled,
            rate_limit,
            remaining,
            refill,
            refilled_at,
        } = changes.clone();
        let (rate_limit_requests, rate_limit_window) = rate_limit.map(limit_columns).unzip();
        let (refill_interval, refill_amount) = refill.map(refill_columns).unzip();
        Self {
            name,
            scopes: scopes.map(|scopes| scopes.join(" ")),
            metadata: metadata.map(|m| Value::Object(m).to_string()),
            expires_at: expires_at.map(|at| at.map(naive)),
            enabled,
            rate_limit_requests,
            rate_limit_window,
            remaining: remaining.map(|n| n.map(signed)),
            refill_interval,
            refill_amount,
            refilled_at: refill
                .map(|refill| refill.map(|_| naive(refilled_at.unwrap_or_else(now)))),
        }
    }
}

impl From<&KeyEvent> for EventRow {
    fn from(event: &KeyEvent) -> Self {
        Self {
            id: event.id.clone(),
            key_id: event.key_id.clone(),
            action: name_of(event.action),
            actor_key_id: event.actor_key_id.clone(),
            client: event.client.clone(),
            changes: Value::Object(event.changes.clone()).to_string(),
            at: naive(event.at),
        }
    }
}

impl TryFrom<EventRow> for KeyEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(Self {
            action: from_name(&row.action).ok_or_else(|| {
                StoreError::Corrupt(format!("event {}: unknown action {:?}", row.id, row.action))
            })?,
            changes: json_object(&row.changes, || format!("changes of event {}", row.id))?,
            at: row.at.and_utc(),
            id: row.id,
            key_id: row.key_id,
            actor_key_id: row.actor_key_id,
            client: row.client,
        })
    }
}
