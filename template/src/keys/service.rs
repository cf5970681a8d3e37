//! [`ApiKeyService`]: creating, reading, listing and revoking keys. The HTTP routes, the CLI and your
//! own code all go through it, so the rules below hold whichever way a key is managed.
//!
//! Every call names its [`Manager`]: the operator (the command line, your own code) and keys holding
//! the admin scope reach every key; a key holding the manage scope reaches only keys of its own
//! owner, and cannot mint a key with more scopes or a longer life than it has itself.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::UsageTracker;
use crate::auth::key::KeyFormat;
use crate::auth::{ApiKey, scope};
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
    /// A manager key asked for more than it holds; `code` is the problem code clients see.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who manages keys in a call to [`ApiKeyService`], and so which keys the call may reach.
#[derive(Debug, Clone)]
pub enum Manager {
    /// The command line or the service's own code: every key.
    Operator,
    /// A key holding the admin scope: every key, any scope, any owner.
    Admin(ApiKey),
    /// A key holding the manage scope and an owner: keys of that owner only.
    Owner(ApiKey),
}

impl Manager {
    /// The key acting, if a key acts; for logs.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Self::Operator => None,
            Self::Admin(key) | Self::Owner(key) => Some(key.id()),
        }
    }

    /// Whether `record` is within reach. Out of reach reads as "no such key", so a manager cannot
    /// learn which ids other owners use.
    fn reaches(&self, record: &ApiKeyRecord) -> bool {
        match self {
            Self::Operator | Self::Admin(_) => true,
            Self::Owner(key) => {
                key.owner_id().is_some() && record.owner_id.as_deref() == key.owner_id()
            }
        }
    }

    /// Fits a new key to what an owner-bound manager may grant: its own owner, scopes it holds,
    /// an expiry no later than its own.
    fn bound(&self, new: &mut NewKey) -> Result<(), ServiceError> {
        let Self::Owner(key) = self else {
            return Ok(());
        };
        let own = key.owner_id().map(str::to_owned);
        match &new.owner_id {
            None => new.owner_id = own,
            Some(owner) if Some(owner) == own.as_ref() => {}
            Some(_) => {
                return Err(forbidden(
                    "owner_mismatch",
                    "a manager key creates keys for its own owner only",
                ));
            }
        }
        let beyond: Vec<&str> = new
            .scopes
            .iter()
            .filter(|wanted| !key.scopes().iter().any(|held| scope::grants(held, wanted)))
            .map(String::as_str)
            .collect();
        if !beyond.is_empty() {
            return Err(forbidden(
                "scope_escalation",
                format!(
                    "cannot grant scopes this key does not hold: {}",
                    beyond.join(", ")
                ),
            ));
        }
        if let Some(limit) = key.expires_at()
            && new.expires_at.is_none_or(|at| at > limit)
        {
            return Err(forbidden(
                "expiry_escalation",
                format!("the new key must expire by {limit}, as this key does"),
            ));
        }
        Ok(())
    }
}

fn forbidden(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Forbidden {
        code,
        message: message.into(),
    }
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

    pub async fn create_key(
        &self,
        by: &Manager,
        mut new: NewKey,
    ) -> Result<CreatedKey, ServiceError> {
        let now = now();
        validate(&new, now, &self.format)?;
        by.bound(&mut new)?;
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
                    tracing::info!(
                        target: "audit",
                        action = "create",
                        key_id = %record.id,
                        owner_id = ?record.owner_id,
                        by = ?by.key_id(),
                        "API key created"
                    );
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
    pub async fn get_key(&self, by: &Manager, id: &str) -> Result<ApiKeyRecord, ServiceError> {
        let record = self
            .store
            .get(id)
            .await?
            .filter(|record| by.reaches(record))
            .ok_or(ServiceError::NotFound)?;
        Ok(self.with_unflushed_usage(record))
    }

    /// Keys matching `query`; for an owner-bound manager, only its owner's keys.
    pub async fn list_keys(
        &self,
        by: &Manager,
        query: &ListQuery,
    ) -> Result<Page<ApiKeyRecord>, ServiceError> {
        if !(1..=MAX_PAGE_SIZE).contains(&query.limit) {
            return Err(invalid(
                "limit",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        // The databases count in signed 64-bit integers, and so does the documented schema.
        if i64::try_from(query.offset).is_err() {
            return Err(invalid("offset", format!("must be at most {}", i64::MAX)));
        }
        let mut query = query.clone();
        if let Manager::Owner(key) = by {
            let own = key.owner_id().map(str::to_owned);
            if query.owner_id.is_some() && query.owner_id != own {
                return Ok(Page {
                    items: Vec::new(),
                    total: 0,
                });
            }
            query.owner_id = own;
        }
        let mut page = self.store.list(&query).await?;
        page.items = page
            .items
            .into_iter()
            .map(|record| self.with_unflushed_usage(record))
            .collect();
        Ok(page)
    }

    /// Revokes a key. Revoking a revoked key succeeds and keeps the first revocation time.
    pub async fn revoke_key(&self, by: &Manager, id: &str) -> Result<(), ServiceError> {
        // Owners never change, so checking reach first and revoking second cannot race.
        if let Manager::Owner(_) = by
            && !self
                .store
                .get(id)
                .await?
                .is_some_and(|record| by.reaches(&record))
        {
            return Err(ServiceError::NotFound);
        }
        if self.store.revoke(id, now()).await? {
            tracing::info!(
                target: "audit",
                action = "revoke",
                key_id = %id,
                by = ?by.key_id(),
                "API key revoked"
            );
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

fn validate(new: &NewKey, now: DateTime<Utc>, format: &KeyFormat) -> Result<(), ServiceError> {
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
    let metadata = Value::Object(new.metadata.clone()).to_string();
    if metadata.len() > MAX_METADATA_BYTES {
        return Err(invalid(
            "metadata",
            format!("must serialize to at most {MAX_METADATA_BYTES} bytes"),
        ));
    }
    // A key pasted here would be stored in clear and shown to every reader of the key list.
    let owner = new.owner_id.as_deref().unwrap_or_default();
    for (field, text) in [
        ("name", new.name.as_str()),
        ("owner_id", owner),
        ("metadata", &metadata),
    ] {
        if format.appears_in(text) {
            return Err(invalid(
                field,
                "holds an API key; keys are secrets and are never stored in clear",
            ));
        }
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
