//! [`ApiKeyService`]: creating, reading, listing, updating, rotating and revoking keys, and reading
//! their audit log. The HTTP routes, the CLI and your own code all go through it, so the rules below
//! hold whichever way a key is managed, and every change is recorded with who made it.
//!
//! Every call names its [`Manager`]: the operator (the command line, your own code) and keys holding
//! the admin scope reach every key; a key holding the manage scope reaches only keys of its own
//! owner. Self-service never loosens what an admin set: a manager key changes only keys whose scopes
//! it holds, mints no key with more scopes, a longer life or looser limits than its own, only
//! tightens the keys it changes (fewer scopes, an earlier expiry, stricter limits), and leaves
//! re-enabling a disabled key to an admin.

use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::UsageTracker;
use super::validation::{
    DEFAULT_GRACE_SECONDS, MAX_GRACE_SECONDS, invalid, page_bounds, validate, validate_update,
};
use crate::auth::allowance::MAX_ROTATIONS_FOLLOWED;
use crate::auth::key::KeyFormat;
use crate::auth::{ApiKey, scope};
use crate::store::{
    ApiKeyRecord, Backend, EventAction, EventQuery, KeyChanges, KeyEvent, ListQuery, Page,
    RateLimit, Refill, StoreError, random_id,
};

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
    /// The key is not in a state that allows the change (rotating a revoked key, say).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
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
        self.key().map(ApiKey::id)
    }

    fn key(&self) -> Option<&ApiKey> {
        match self {
            Self::Operator => None,
            Self::Admin(key) | Self::Owner(key) => Some(key),
        }
    }

    /// An audit event of this manager's change to `key_id`, made now.
    fn event(&self, key_id: &str, action: EventAction, changes: Map<String, Value>) -> KeyEvent {
        KeyEvent {
            id: random_id(),
            key_id: key_id.to_owned(),
            action,
            actor_key_id: self.key_id().map(str::to_owned),
            client: self
                .key()
                .and_then(ApiKey::client)
                .map(|address| address.to_string()),
            changes,
            at: now(),
        }
    }

    /// Whether `record` is within reach for reading. Out of reach reads as "no such key", so a
    /// manager cannot learn which ids other owners use.
    fn reaches(&self, record: &ApiKeyRecord) -> bool {
        match self {
            Self::Operator | Self::Admin(_) => true,
            Self::Owner(key) => {
                key.owner_id().is_some() && record.owner_id.as_deref() == key.owner_id()
            }
        }
    }

    /// Whether this manager may change `record`, which it reaches: a manager key only changes keys
    /// whose scopes it holds itself.
    fn may_change(&self, record: &ApiKeyRecord) -> Result<(), ServiceError> {
        match self {
            Self::Owner(key) => granted(key.scopes(), &record.scopes),
            Self::Operator | Self::Admin(_) => Ok(()),
        }
    }

    /// Fits a new key to what an owner-bound manager may grant: its own owner, scopes it holds, an
    /// expiry no later than its own, and limits no looser than `own`, the manager's current limits
    /// (which it inherits when it names none).
    fn bound(&self, new: &mut NewKey, own: Option<Limits>) -> Result<(), ServiceError> {
        self.bound_grant(new)?;
        let Some(own) = own else {
            return Ok(());
        };
        if new.rate_limit.is_none() {
            new.rate_limit = own.rate_limit;
        }
        if new.remaining.is_none() && new.refill.is_none() {
            (new.remaining, new.refill) = (own.remaining, own.refill);
        }
        own.admits(&Limits {
            rate_limit: new.rate_limit,
            remaining: new.remaining,
            refill: new.refill,
        })
    }

    /// [`Manager::bound`] without the limits: what a rotation, which keeps the key's limits, checks.
    fn bound_grant(&self, new: &mut NewKey) -> Result<(), ServiceError> {
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
        granted(key.scopes(), &new.scopes)?;
        no_later(grants_end(key), new.expires_at)
    }

    /// Checks an update of `current` into `after` the way [`Manager::bound`] checks a new key, for
    /// the fields it changes: scopes may only narrow, the expiry only come earlier, limits only
    /// tighten, and a disabled key stays disabled.
    fn bound_changes(
        &self,
        current: &ApiKeyRecord,
        changes: &KeyChanges,
        after: &ApiKeyRecord,
    ) -> Result<(), ServiceError> {
        let Self::Owner(key) = self else {
            return Ok(());
        };
        if let Some(scopes) = &changes.scopes {
            granted(key.scopes(), scopes)?;
            granted(&current.scopes, scopes)?;
        }
        if let Some(expires_at) = changes.expires_at {
            no_later(grants_end(key), expires_at)?;
            no_later(current.expires_at, expires_at)?;
        }
        if !current.enabled && after.enabled {
            return Err(forbidden(
                "admin_required",
                "only an admin key or the operator re-enables a disabled key",
            ));
        }
        Limits::of(current).admits(&Limits::of(after))
    }
}

/// A key's rate limit and quota, to compare what a manager asks for with what it may grant.
#[derive(Debug, Clone, Copy)]
struct Limits {
    rate_limit: Option<RateLimit>,
    remaining: Option<u64>,
    refill: Option<Refill>,
}

impl Limits {
    fn of(record: &ApiKeyRecord) -> Self {
        Self {
            rate_limit: record.rate_limit,
            remaining: record.remaining,
            refill: record.refill,
        }
    }

    /// Refuses `wanted` where it is looser than `self`: a faster rate or a larger burst, a larger
    /// quota, or no limit where there is one; refills larger, more frequent, or added to a finite
    /// quota. Where `self` has no limit, any is tighter.
    fn admits(&self, wanted: &Limits) -> Result<(), ServiceError> {
        let rate_ok = match (self.rate_limit, wanted.rate_limit) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(bound), Some(w)) => {
                w.requests <= bound.requests
                    && u64::from(w.requests) * u64::from(bound.window)
                        <= u64::from(bound.requests) * u64::from(w.window)
            }
        };
        let quota_ok = match (self.remaining, wanted.remaining) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(bound), Some(w)) => w <= bound,
        };
        let refill_ok = match (self.refill, wanted.refill) {
            (_, None) => true,
            (None, Some(_)) => self.remaining.is_none(),
            (Some(bound), Some(w)) => w.interval == bound.interval && w.amount <= bound.amount,
        };
        if rate_ok && quota_ok && refill_ok {
            return Ok(());
        }
        let field = if !rate_ok {
            "rate_limit"
        } else if !quota_ok {
            "remaining"
        } else {
            "refill"
        };
        Err(forbidden(
            "limit_escalation",
            format!("{field}: a manager key cannot raise or remove a limit an admin set"),
        ))
    }
}

/// Refuses `wanted` scopes that none of `held` grants.
fn granted(held: &[String], wanted: &[String]) -> Result<(), ServiceError> {
    let beyond: Vec<&str> = wanted
        .iter()
        .filter(|wanted| !held.iter().any(|held| scope::grants(held, wanted)))
        .map(String::as_str)
        .collect();
    if beyond.is_empty() {
        return Ok(());
    }
    Err(forbidden(
        "scope_escalation",
        format!(
            "scopes beyond what the manager may grant: {}",
            beyond.join(", ")
        ),
    ))
}

/// Refuses an expiry later than `limit`, or none at all where there is a limit.
fn no_later(
    limit: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), ServiceError> {
    match limit {
        Some(limit) if expires_at.is_none_or(|at| at > limit) => Err(forbidden(
            "expiry_escalation",
            format!("the key must expire by {limit}"),
        )),
        _ => Ok(()),
    }
}

/// When a manager key's grants end: at its expiry, or when a rotation retires it.
fn grants_end(key: &ApiKey) -> Option<DateTime<Utc>> {
    match (key.expires_at(), key.record().retires_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn conflict(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Conflict {
        code,
        message: message.into(),
    }
}

fn forbidden(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Forbidden {
        code,
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
    pub rate_limit: Option<RateLimit>,
    /// Uses the key may make; with a `refill` and no `remaining`, it starts full.
    pub remaining: Option<u64>,
    pub refill: Option<Refill>,
}

/// Changes to a key: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub metadata: Option<Map<String, Value>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub enabled: Option<bool>,
    pub rate_limit: Option<Option<RateLimit>>,
    pub remaining: Option<Option<u64>>,
    pub refill: Option<Option<Refill>>,
}

/// How to rotate a key.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// How long the old key keeps working.
    pub grace_period: Duration,
    /// The new key's expiry; `None` keeps the old key's.
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            grace_period: Duration::seconds(DEFAULT_GRACE_SECONDS as i64),
            expires_at: None,
        }
    }
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
        if new.remaining.is_none() {
            new.remaining = new.refill.map(|refill| refill.amount);
        }
        by.bound(&mut new, self.own_limits(by).await?)?;
        loop {
            let (key, record) = self.mint(&new, now, None);
            let event = by.event(&record.id, EventAction::Created, described(&record));
            match self.store.insert(&record, &event).await {
                Ok(()) => {
                    tracing::info!(
                        target: "audit",
                        action = "create",
                        key_id = %record.id,
                        owner_id = record.owner_id.as_deref(),
                        by = by.key_id(),
                        "API key created"
                    );
                    return Ok(CreatedKey { key, record });
                }
                // 71 random bits make a clash all but impossible; if one happens, mint another key.
                Err(StoreError::Duplicate) => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// A new key and its record, made to `new`'s description.
    fn mint(
        &self,
        new: &NewKey,
        now: DateTime<Utc>,
        rotated_from: Option<&str>,
    ) -> (Zeroizing<String>, ApiKeyRecord) {
        let minted = self.format.generate();
        let record = ApiKeyRecord {
            id: minted.id,
            key_hash: minted.hash,
            name: new.name.clone(),
            owner_id: new.owner_id.clone(),
            scopes: normalized(new.scopes.clone()),
            metadata: new.metadata.clone(),
            created_at: now,
            expires_at: new.expires_at.map(|t| t.trunc_subsecs(6)),
            revoked_at: None,
            last_used_at: None,
            request_count: 0,
            enabled: true,
            rate_limit: new.rate_limit,
            remaining: new.remaining,
            refill: new.refill,
            refilled_at: new.refill.map(|_| now),
            rotated_from: rotated_from.map(str::to_owned),
            replaced_by: None,
            retires_at: None,
        };
        (minted.key, record)
    }

    /// Replaces a key by a new one with the same name, owner, scopes, metadata and limits. The old
    /// key keeps working for the grace period, then fails with `rotated_api_key`; until then, its
    /// requests count against the new key's rate limit and quota.
    pub async fn rotate_key(
        &self,
        by: &Manager,
        id: &str,
        rotation: Rotation,
    ) -> Result<CreatedKey, ServiceError> {
        let grace = rotation.grace_period.num_seconds();
        if !(0..=MAX_GRACE_SECONDS as i64).contains(&grace) {
            return Err(invalid(
                "grace_period",
                format!("must be between 0 and {MAX_GRACE_SECONDS} seconds"),
            ));
        }
        let old = self.reachable(by, id).await?;
        by.may_change(&old)?;
        if old.revoked_at.is_some() {
            return Err(conflict("key_revoked", "a revoked key cannot be rotated"));
        }
        if let Some(replacement) = &old.replaced_by {
            return Err(conflict(
                "already_rotated",
                format!("this key was already rotated; rotate its replacement, {replacement}"),
            ));
        }
        let now = now();
        if old.expires_at.is_some_and(|at| at <= now) {
            return Err(conflict(
                "key_expired",
                "an expired key cannot be rotated; create a new key",
            ));
        }
        let mut new = NewKey {
            name: old.name.clone(),
            scopes: old.scopes.clone(),
            owner_id: old.owner_id.clone(),
            expires_at: rotation.expires_at.unwrap_or(old.expires_at),
            metadata: old.metadata.clone(),
            rate_limit: old.rate_limit,
            remaining: old.remaining,
            refill: old.refill,
        };
        validate(&new, now, &self.format)?;
        by.bound_grant(&mut new)?;
        if let Some(own) = self.own_limits(by).await? {
            // A rotation hands out a key with the old key's limits, and a life no longer than it had.
            own.admits(&Limits::of(&old))?;
            no_later(old.expires_at, new.expires_at)?;
        }
        let retires_at = now + rotation.grace_period;
        loop {
            let (key, mut record) = self.mint(&new, now, Some(&old.id));
            record.refilled_at = old.refilled_at;
            record.enabled = old.enabled;
            let events = [
                by.event(
                    &old.id,
                    EventAction::Rotated,
                    json_object(json!({"replaced_by": record.id, "retires_at": retires_at})),
                ),
                by.event(&record.id, EventAction::Created, described(&record)),
            ];
            match self
                .store
                .rotate(&old.id, &record, retires_at, &events)
                .await
            {
                Ok(true) => {
                    tracing::info!(
                        target: "audit",
                        action = "rotate",
                        key_id = %old.id,
                        replaced_by = %record.id,
                        by = by.key_id(),
                        "API key rotated"
                    );
                    return Ok(CreatedKey { key, record });
                }
                Ok(false) => {
                    return Err(conflict(
                        "already_rotated",
                        "the key was rotated or revoked meanwhile",
                    ));
                }
                Err(StoreError::Duplicate) => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Changes a key. Changes reach every instance within the revocation bound.
    pub async fn update_key(
        &self,
        by: &Manager,
        id: &str,
        update: KeyUpdate,
    ) -> Result<ApiKeyRecord, ServiceError> {
        let current = self.reachable(by, id).await?;
        by.may_change(&current)?;
        let now = now();
        validate_update(&update, now, &self.format)?;
        let mut changes = KeyChanges {
            name: update.name,
            scopes: update.scopes.map(normalized),
            metadata: update.metadata,
            expires_at: update.expires_at.map(|at| at.map(|t| t.trunc_subsecs(6))),
            enabled: update.enabled,
            rate_limit: update.rate_limit,
            remaining: update.remaining,
            refill: update.refill.map(|refill| (refill, now)),
        };
        let mut after = current.clone();
        changes.apply(&mut after);
        if after.refill.is_some() && after.remaining.is_none() {
            if changes.remaining.is_some() {
                return Err(invalid(
                    "remaining",
                    "a key with a refill needs a quota; clear refill too",
                ));
            }
            changes.remaining = Some(after.refill.map(|refill| refill.amount));
            after.remaining = after.refill.map(|refill| refill.amount);
        }
        by.bound_changes(&current, &changes, &after)?;
        if changes.is_empty() {
            return Ok(self.with_unflushed_usage(current));
        }
        let event = by.event(id, EventAction::Updated, changes.to_json());
        let updated = self
            .store
            .update(id, &changes, &event)
            .await?
            .ok_or(ServiceError::NotFound)?;
        tracing::info!(
            target: "audit",
            action = "update",
            key_id = %id,
            fields = ?changes.to_json().keys().collect::<Vec<_>>(),
            by = by.key_id(),
            "API key updated"
        );
        Ok(self.with_unflushed_usage(updated))
    }

    /// One key's audit log, newest first.
    pub async fn key_events(
        &self,
        by: &Manager,
        id: &str,
        limit: u32,
        offset: u64,
    ) -> Result<Page<KeyEvent>, ServiceError> {
        page_bounds(limit, offset)?;
        self.reachable(by, id).await?;
        let query = EventQuery {
            key_id: Some(id.to_owned()),
            limit,
            offset,
        };
        let mut page = self.store.events(&query).await?;
        if let Manager::Owner(_) = by {
            self.redact_outside_actors(by, &mut page.items).await;
        }
        Ok(page)
    }

    /// A manager key does not learn which keys outside its owner acted (an admin's, say), nor from
    /// where: those events lose their actor and client address.
    async fn redact_outside_actors(&self, by: &Manager, events: &mut [KeyEvent]) {
        let mut own_actors = std::collections::HashMap::new();
        for event in events {
            let Some(actor) = event.actor_key_id.clone() else {
                continue;
            };
            let own = match own_actors.get(&actor) {
                Some(own) => *own,
                None => {
                    let record = self.store.get(&actor).await;
                    let own = matches!(record, Ok(Some(record)) if by.reaches(&record));
                    own_actors.insert(actor, own);
                    own
                }
            };
            if !own {
                event.actor_key_id = None;
                event.client = None;
            }
        }
    }

    /// Every key's audit log, newest first: for the operator and admin keys only.
    pub async fn all_events(
        &self,
        by: &Manager,
        limit: u32,
        offset: u64,
    ) -> Result<Page<KeyEvent>, ServiceError> {
        if let Manager::Owner(_) = by {
            return Err(forbidden(
                "admin_required",
                "only keys holding the admin scope read every key's events",
            ));
        }
        page_bounds(limit, offset)?;
        let query = EventQuery {
            key_id: None,
            limit,
            offset,
        };
        Ok(self.store.events(&query).await?)
    }

    /// The limits an owner-bound manager grants within: its own as stored now (the authenticated
    /// copy may be a cached one), or, once rotated, its replacement's.
    async fn own_limits(&self, by: &Manager) -> Result<Option<Limits>, ServiceError> {
        let Manager::Owner(key) = by else {
            return Ok(None);
        };
        let mut own = self.store.get(key.id()).await?;
        for _ in 0..MAX_ROTATIONS_FOLLOWED {
            let Some(next) = own.as_ref().and_then(|record| record.replaced_by.clone()) else {
                break;
            };
            match self.store.get(&next).await? {
                Some(replacement) => own = Some(replacement),
                None => break,
            }
        }
        Ok(Some(
            own.as_ref()
                .map_or_else(|| Limits::of(key.record()), Limits::of),
        ))
    }

    /// The key, if `by` reaches it.
    async fn reachable(&self, by: &Manager, id: &str) -> Result<ApiKeyRecord, ServiceError> {
        self.store
            .get(id)
            .await?
            .filter(|record| by.reaches(record))
            .ok_or(ServiceError::NotFound)
    }

    /// A key's details, including uses counted since the last flush.
    pub async fn get_key(&self, by: &Manager, id: &str) -> Result<ApiKeyRecord, ServiceError> {
        let record = self.reachable(by, id).await?;
        Ok(self.with_unflushed_usage(record))
    }

    /// Keys matching `query`; for an owner-bound manager, only its owner's keys.
    pub async fn list_keys(
        &self,
        by: &Manager,
        query: &ListQuery,
    ) -> Result<Page<ApiKeyRecord>, ServiceError> {
        page_bounds(query.limit, query.offset)?;
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
        // Checked first, revoked second: a key's owner never changes, and at worst a scope change
        // racing this lets a manager revoke a key of its own owner, which loosens nothing.
        if let Manager::Owner(_) = by {
            let record = self.reachable(by, id).await?;
            by.may_change(&record)?;
        }
        let event = by.event(id, EventAction::Revoked, Map::new());
        if self.store.revoke(id, event.at, &event).await? {
            tracing::info!(
                target: "audit",
                action = "revoke",
                key_id = %id,
                by = by.key_id(),
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
    /// Switched off with `enabled: false`; can be switched on again.
    Disabled,
    Expired,
    /// Replaced by a rotation, and past its grace period.
    Rotated,
    Revoked,
}

impl KeyStatus {
    pub fn of(record: &ApiKeyRecord) -> Self {
        let now = Utc::now();
        if record.revoked_at.is_some() {
            Self::Revoked
        } else if record.expires_at.is_some_and(|at| at <= now) {
            Self::Expired
        } else if record.retires_at.is_some_and(|at| at <= now) {
            Self::Rotated
        } else if !record.enabled {
            Self::Disabled
        } else {
            Self::Active
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Expired => "expired",
            Self::Rotated => "rotated",
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

/// What the audit log records about a new key: everything but the key and its digest.
fn described(record: &ApiKeyRecord) -> Map<String, Value> {
    json_object(json!({
        "name": record.name,
        "owner_id": record.owner_id,
        "scopes": record.scopes,
        "metadata": record.metadata,
        "expires_at": record.expires_at,
        "rate_limit": record.rate_limit,
        "remaining": record.remaining,
        "refill": record.refill,
        "rotated_from": record.rotated_from,
    }))
}

fn json_object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
