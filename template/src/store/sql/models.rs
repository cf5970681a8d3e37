//! Rows of `api_keys` as Diesel sees them, and their conversion to and from [`ApiKeyRecord`].
//!
//! Times are stored as UTC `TIMESTAMP`s and scopes as one space-separated string, so the same
//! columns work on SQLite and PostgreSQL.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::api_keys;
use crate::store::{ApiKeyRecord, StoreError};

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
    pub last_used_at: Option<NaiveDateTime>,
    pub request_count: i64,
}

impl From<&ApiKeyRecord> for ApiKeyRow {
    fn from(key: &ApiKeyRecord) -> Self {
        Self {
            id: key.id.clone(),
            key_hash: key.key_hash.to_string(),
            name: key.name.clone(),
            owner_id: key.owner_id.clone(),
            scopes: key.scopes.join(" "),
            metadata: serde_json::Value::Object(key.metadata.clone()).to_string(),
            created_at: key.created_at.naive_utc(),
            expires_at: key.expires_at.map(|t| t.naive_utc()),
            revoked_at: key.revoked_at.map(|t| t.naive_utc()),
            last_used_at: key.last_used_at.map(|t| t.naive_utc()),
            request_count: i64::try_from(key.request_count).unwrap_or(i64::MAX),
        }
    }
}

impl TryFrom<ApiKeyRow> for ApiKeyRecord {
    type Error = StoreError;

    fn try_from(row: ApiKeyRow) -> Result<Self, StoreError> {
        let metadata = match serde_json::from_str(&row.metadata) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "metadata of key {} is not a JSON object",
                    row.id
                )));
            }
        };
        let key_hash = row.key_hash.parse().map_err(|_| {
            StoreError::Corrupt(format!("digest of key {} is not 64 hex digits", row.id))
        })?;
        Ok(Self {
            key_hash,
            scopes: row.scopes.split_whitespace().map(str::to_owned).collect(),
            metadata,
            created_at: row.created_at.and_utc(),
            expires_at: row.expires_at.map(|t| t.and_utc()),
            revoked_at: row.revoked_at.map(|t| t.and_utc()),
            last_used_at: row.last_used_at.map(|t| t.and_utc()),
            request_count: u64::try_from(row.request_count).unwrap_or(0),
            id: row.id,
            name: row.name,
            owner_id: row.owner_id,
        })
    }
}
