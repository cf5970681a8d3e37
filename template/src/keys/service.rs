//! [`ApiKeyService`]: creating, reading, listing and revoking keys. The HTTP routes, the CLI and your
//! own code all go through it, so the rules below hold whichever way a key is managed.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::UsageTracker;
use crate::auth::key::KeyFormat;
use crate::auth::scope;
use crate::store::{ApiKeyRecord, Backend, ListQuery, Page, StoreError};

pub const MAX_NAME_LEN: usize = 100;
pub const MAX_OWNER_LEN: usize = 128;
pub const MAX_SCOPES: usize = 32;
pub const MAX_METADATA_BYTES: usize = 4096;
pub const MAX_PAGE_SIZE: u32 = 100;
/// Keys cannot be made to last longer than this (ten years).
pub const MAX_LIFETIME_SECONDS: i64 = 10 * 366 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("no API key with this id")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        field,
        message: message.into(),
    }
}

/// What a new key should be.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub owner_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: Map<String, Value>,
}

/// A created key: the stored record and the key itself, which exists nowhere else.
pub struct CreatedKey {
    pub key: Zeroizing<String>,
    pub record: ApiKeyRecord,
}

#[derive(Clone)]
pub struct ApiKeyService {
    store: Arc<dyn Backend>,
    format: KeyFormat,
    usage: Arc<UsageTracker>,
}

impl ApiKeyService {
    pub fn new(store: Arc<dyn Backend>, format: KeyFormat, usage: Arc<UsageTracker>) -> Self {
        Self {
            store,
            format,
            usage,
        }
    }

    pub async fn create_key(&self, new: NewKey) -> Result<CreatedKey, ServiceError> {
        let now = now();
        validate(&new, now)?;
        let scopes = normalized(new.scopes);
        loop {
            let minted = self.format.generate();
            let record = ApiKeyRecord {
                id: minted.id,
                key_hash: minted.hash,
                name: new.name.clone(),
                owner_id: new.owner_id.clone(),
                scopes: scopes.clone(),
                metadata: new.metadata.clone(),
                created_at: now,
                expires_at: new.expires_at.map(|t| t.trunc_subsecs(6)),
                revoked_at: None,
                last_used_at: None,
                request_count: 0,
            };
            match self.store.insert(&record).await {
                Ok(()) => {
                    tracing::info!(key_id = %record.id, owner_id = ?record.owner_id, "API key created");
                    return Ok(CreatedKey {
                        key: minted.key,
                        record,
                    });
                }
                // 71 random bits make a clash all but impossible; if one happens, mint another key.
                Err(StoreError::Duplicate) => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// A key's details, including uses counted since the last flush.
    pub async fn get_key(&self, id: &str) -> Result<ApiKeyRecord, ServiceError> {
        let record = self.store.get(id).await?.ok_or(ServiceError::NotFound)?;
        Ok(self.with_unflushed_usage(record))
    }

    pub async fn list_keys(&self, query: &ListQuery) -> Result<Page<ApiKeyRecord>, ServiceError> {
        if !(1..=MAX_PAGE_SIZE).contains(&query.limit) {
            return Err(invalid(
                "limit",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        let mut page = self.store.list(query).await?;
        page.items = page
            .items
            .into_iter()
            .map(|record| self.with_unflushed_usage(record))
            .collect();
        Ok(page)
    }

    /// Revokes a key. Revoking a revoked key succeeds and keeps the first revocation time.
    pub async fn revoke_key(&self, id: &str) -> Result<(), ServiceError> {
        if self.store.revoke(id, now()).await? {
            tracing::info!(key_id = %id, "API key revoked");
            Ok(())
        } else {
            Err(ServiceError::NotFound)
        }
    }
}

impl ApiKeyService {
    fn with_unflushed_usage(&self, mut record: ApiKeyRecord) -> ApiKeyRecord {
        if let Some((requests, last_used_at)) = self.usage.unflushed(&record.id) {
            record.request_count += requests;
            record.last_used_at = record.last_used_at.max(Some(last_used_at.trunc_subsecs(6)));
        }
        record
    }
}

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

impl KeyStatus {
    pub fn of(record: &ApiKeyRecord) -> Self {
        if record.revoked_at.is_some() {
            Self::Revoked
        } else if record.expires_at.is_some_and(|at| at <= Utc::now()) {
            Self::Expired
        } else {
            Self::Active
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// The current time at the precision every backend stores.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn normalized(mut scopes: Vec<String>) -> Vec<String> {
    scopes.sort();
    scopes.dedup();
    scopes
}

fn validate(new: &NewKey, now: DateTime<Utc>) -> Result<(), ServiceError> {
    let name_len = new.name.chars().count();
    if new.name.trim().is_empty() || name_len > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("must be 1 to {MAX_NAME_LEN} characters, not blank"),
        ));
    }
    if new.name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    if let Some(owner) = &new.owner_id
        && (owner.is_empty()
            || owner.len() > MAX_OWNER_LEN
            || owner.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(invalid(
            "owner_id",
            format!("must be 1 to {MAX_OWNER_LEN} bytes with no spaces or control characters"),
        ));
    }
    if new.scopes.len() > MAX_SCOPES {
        return Err(invalid("scopes", format!("at most {MAX_SCOPES} scopes")));
    }
    if let Some(bad) = new.scopes.iter().find(|s| !scope::is_valid_grant(s)) {
        return Err(invalid(
            "scopes",
            format!(
                "{bad:?} is not a scope: use segments of a-z, 0-9, _ and - joined by ':', or a trailing ':*', or '*'"
            ),
        ));
    }
    if Value::Object(new.metadata.clone()).to_string().len() > MAX_METADATA_BYTES {
        return Err(invalid(
            "metadata",
            format!("must serialize to at most {MAX_METADATA_BYTES} bytes"),
        ));
    }
    if let Some(expires_at) = new.expires_at {
        if expires_at <= now {
            return Err(invalid("expires_at", "must be in the future"));
        }
        if (expires_at - now).num_seconds() > MAX_LIFETIME_SECONDS {
            return Err(invalid("expires_at", "must be at most ten years away"));
        }
    }
    Ok(())
}
