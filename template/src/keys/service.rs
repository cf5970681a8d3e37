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
use serde_json::{Map, json};
use zeroize::Zeroizing;

use super::error::{ServiceError, admin_required, already_rotated, conflict, invalid};
use super::manager::{Limits, Manager, no_later};
use super::validation::{
    DEFAULT_GRACE_SECONDS, MAX_GRACE_SECONDS, MAX_LIFETIME_SECONDS, page_bounds, validate,
    validate_update,
};
use crate::auth::UsageTracker;
use crate::auth::key_format::KeyFormat;
use crate::auth::limits::MAX_ROTATIONS_FOLLOWED;
use crate::model::{ApiKeyRecord, EventAction, KeyChanges, KeyEvent, NewKey, now, to_object};
use crate::store::{Backend, EventQuery, ListQuery, Page, Purged, Retention, StoreError};

/// How to rotate a key. Send `{}` for the defaults.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RotateKeyRequest)]
pub struct Rotation {
    /// Seconds the old key keeps working, 0 to 2592000 (30 days); 86400 unless given.
    #[schema(example = 3600, minimum = 0, maximum = 2592000)]
    pub grace_period: Option<u64>,
    /// The new key's lifetime in seconds from now; the old key's expiry unless given.
    #[schema(minimum = 1)]
    pub expires_in: Option<u64>,
    pub expires_at: Option<DateTime<Utc>>,
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
        Self { store, format, usage }
    }

    pub async fn create_key(
        &self,
        by: &Manager,
        mut new: NewKey,
    ) -> Result<CreatedKey, ServiceError> {
        let now = now();
        new.expires_at = expiry(new.expires_in.take(), new.expires_at, now)?;
        validate(&new, now, &self.format)?;
        new.scopes = normalized(new.scopes);
        new.expires_at = new.expires_at.map(|t| t.trunc_subsecs(6));
        if new.remaining.is_none() {
            new.remaining = new.refill.map(|refill| refill.amount);
        }
        by.bound(&mut new, self.own_limits(by).await?)?;
        loop {
            let (key, record) = self.mint(&new, now, None);
            let event = by.event(&record.id, EventAction::Created, described(&new, None));
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
        let record =
            new.clone().into_record(minted.id, minted.hash, now, rotated_from.map(str::to_owned));
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
        let now = now();
        let expires_at = expiry(rotation.expires_in, rotation.expires_at, now)?;
        let grace = rotation.grace_period.unwrap_or(DEFAULT_GRACE_SECONDS);
        let Some(grace) = (grace <= MAX_GRACE_SECONDS).then(|| Duration::seconds(grace as i64))
        else {
            return Err(invalid(
                "grace_period",
                format!("must be between 0 and {MAX_GRACE_SECONDS} seconds"),
            ));
        };
        let old = self.reachable(by, id).await?;
        by.may_change(&old)?;
        if old.revoked_at.is_some() {
            return Err(conflict("key_revoked", "a revoked key cannot be rotated"));
        }
        if let Some(replacement) = &old.replaced_by {
            return Err(already_rotated(format!(
                "this key was already rotated; rotate its replacement, {replacement}"
            )));
        }
        if old.expires_at.is_some_and(|at| at <= now) {
            return Err(conflict(
                "key_expired",
                "an expired key cannot be rotated; create a new key",
            ));
        }
        let mut new = old.successor();
        new.expires_at = expires_at.or(old.expires_at);
        validate(&new, now, &self.format)?;
        by.bound_grant(&mut new)?;
        if let Some(own) = self.own_limits(by).await? {
            // A rotation hands out a key with the old key's limits, and a life no longer than it had.
            own.admits(&Limits::of(&old))?;
            no_later(old.expires_at, new.expires_at)?;
        }
        let retires_at = now + grace;
        loop {
            let (key, mut record) = self.mint(&new, now, Some(&old.id));
            record.refilled_at = old.refilled_at;
            record.enabled = old.enabled;
            let events = [
                by.event(
                    &old.id,
                    EventAction::Rotated,
                    to_object(&json!({"replaced_by": record.id, "retires_at": retires_at})),
                ),
                by.event(&record.id, EventAction::Created, described(&new, Some(&old.id))),
            ];
            match self.store.rotate(&old.id, &record, retires_at, &events).await {
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
                    return Err(already_rotated("the key was rotated or revoked meanwhile"));
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
        mut changes: KeyChanges,
    ) -> Result<ApiKeyRecord, ServiceError> {
        let current = self.reachable(by, id).await?;
        by.may_change(&current)?;
        let now = now();
        validate_update(&changes, now, &self.format)?;
        changes.scopes = changes.scopes.map(normalized);
        changes.expires_at = changes.expires_at.map(|at| at.map(|t| t.trunc_subsecs(6)));
        changes.refilled_at = changes.refill.map(|_| now);
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
        let changed = to_object(&changes);
        let fields: Vec<_> = changed.keys().cloned().collect();
        let event = by.event(id, EventAction::Updated, changed);
        let updated =
            self.store.update(id, &changes, &event).await?.ok_or(ServiceError::NotFound)?;
        tracing::info!(
            target: "audit",
            action = "update",
            key_id = %id,
            ?fields,
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
        let query = EventQuery { key_id: Some(id.to_owned()), limit, offset };
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
            return Err(admin_required(
                "only keys holding the admin scope read every key's events",
            ));
        }
        page_bounds(limit, offset)?;
        let query = EventQuery { key_id: None, limit, offset };
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
        // Quota uses this instance holds are not spent yet: they count as the manager's own.
        let own = own.map(|record| self.with_unflushed_usage(record));
        Ok(Some(own.as_ref().map_or_else(|| Limits::of(key.record()), Limits::of)))
    }

    /// The key, if `by` reaches it.
    async fn reachable(&self, by: &Manager, id: &str) -> Result<ApiKeyRecord, ServiceError> {
        self.store.get(id).await?.filter(|record| by.reaches(record)).ok_or(ServiceError::NotFound)
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
                return Ok(Page { items: Vec::new(), total: 0 });
            }
            query.owner_id = own;
        }
        let mut page = self.store.list(&query).await?;
        page.items =
            page.items.into_iter().map(|record| self.with_unflushed_usage(record)).collect();
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

    /// Deletes the keys that stopped working and the audit events that `retention` names, and
    /// records the purge in the audit log (keyed `*`); with `dry_run`, only counts them. For the
    /// operator: nothing over HTTP calls it.
    pub async fn purge(
        &self,
        retention: &Retention,
        dry_run: bool,
    ) -> Result<Purged, ServiceError> {
        // A key that ended less than the longest grace period ago may still be the link that
        // charges an older key, in its grace period, to its successor's limits.
        let latest = now() - Duration::seconds(MAX_GRACE_SECONDS as i64);
        if retention.keys_before.is_some_and(|before| before > latest) {
            return Err(invalid(
                "revoked_keys",
                format!("must be at least {} days", MAX_GRACE_SECONDS / 86_400),
            ));
        }
        let cut_offs =
            json!({"keys_before": retention.keys_before, "events_before": retention.events_before});
        let event = Manager::Operator.event("*", EventAction::Purged, to_object(&cut_offs));
        let purged = self.store.purge(retention, (!dry_run).then_some(&event)).await?;
        if !dry_run {
            tracing::info!(
                target: "audit",
                action = "purge",
                keys = purged.keys,
                events = purged.events,
                "purged keys that stopped working and old audit events"
            );
        }
        Ok(purged)
    }

    /// `record` as this instance knows it: with the uses counted since the last flush, and the
    /// quota uses it holds in hand (taken from the store, not used yet).
    fn with_unflushed_usage(&self, mut record: ApiKeyRecord) -> ApiKeyRecord {
        if let Some((requests, last_used_at)) = self.usage.unflushed(&record.id) {
            record.request_count += requests;
            record.last_used_at = record.last_used_at.max(Some(last_used_at.trunc_subsecs(6)));
        }
        if let Some(remaining) = &mut record.remaining {
            *remaining += self.store.quota_in_hand(&record.id);
        }
        record
    }
}

fn normalized(mut scopes: Vec<String>) -> Vec<String> {
    scopes.sort();
    scopes.dedup();
    scopes
}

/// What the audit log records about a new key: everything but the key and its digest.
fn described(new: &NewKey, rotated_from: Option<&str>) -> Map<String, serde_json::Value> {
    let mut described = to_object(new);
    described.insert("rotated_from".into(), rotated_from.into());
    described
}

/// An expiry given as `expires_in` seconds from `now` or as `expires_at`, not both.
fn expiry(
    expires_in: Option<u64>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, ServiceError> {
    match (expires_in, expires_at) {
        (Some(_), Some(_)) => Err(invalid("expires_in", "give expires_in or expires_at, not both")),
        (Some(seconds), None) => i64::try_from(seconds)
            .ok()
            .filter(|s| (1..=MAX_LIFETIME_SECONDS).contains(s))
            .map(|s| Some(now + Duration::seconds(s)))
            .ok_or_else(|| {
                invalid(
                    "expires_in",
                    format!("must be between 1 and {MAX_LIFETIME_SECONDS} seconds"),
                )
            }),
        (None, at) => Ok(at),
    }
}
