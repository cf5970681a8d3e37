//! [`Manager`]: who manages keys in a call to the key service, and the rules that keep self-service
//! from loosening what an admin set.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::error::{ServiceError, admin_required, forbidden};
use crate::auth::ApiKey;
use crate::model::{
    ApiKeyRecord, EventAction, KeyChanges, KeyEvent, NewKey, RateLimit, Refill, now, random_id,
};
use crate::scope;

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
    pub(super) fn event(
        &self,
        key_id: &str,
        action: EventAction,
        changes: Map<String, Value>,
    ) -> KeyEvent {
        KeyEvent {
            id: random_id(),
            key_id: key_id.to_owned(),
            action,
            actor_key_id: self.key_id().map(str::to_owned),
            client: self.key().and_then(ApiKey::client).map(|address| address.to_string()),
            changes,
            at: now(),
        }
    }

    /// Whether `record` is within reach for reading. Out of reach reads as "no such key", so a
    /// manager cannot learn which ids other owners use.
    pub(super) fn reaches(&self, record: &ApiKeyRecord) -> bool {
        match self {
            Self::Operator | Self::Admin(_) => true,
            Self::Owner(key) => {
                key.owner_id().is_some() && record.owner_id.as_deref() == key.owner_id()
            }
        }
    }

    /// Whether this manager may change `record`, which it reaches: a manager key only changes keys
    /// whose scopes it holds itself.
    pub(super) fn may_change(&self, record: &ApiKeyRecord) -> Result<(), ServiceError> {
        match self {
            Self::Owner(key) => granted(key.scopes(), &record.scopes),
            Self::Operator | Self::Admin(_) => Ok(()),
        }
    }

    /// Fits a new key to what an owner-bound manager may grant: its own owner, scopes it holds, an
    /// expiry no later than its own, and limits no looser than `own`, the manager's current limits
    /// (which it inherits when it names none).
    pub(super) fn bound(&self, new: &mut NewKey, own: Option<Limits>) -> Result<(), ServiceError> {
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
    pub(super) fn bound_grant(&self, new: &mut NewKey) -> Result<(), ServiceError> {
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
    pub(super) fn bound_changes(
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
            return Err(admin_required(
                "only an admin key or the operator re-enables a disabled key",
            ));
        }
        Limits::of(current).admits(&Limits::of(after))
    }
}

/// A key's rate limit and quota, to compare what a manager asks for with what it may grant.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    rate_limit: Option<RateLimit>,
    remaining: Option<u64>,
    refill: Option<Refill>,
}

impl Limits {
    pub(super) fn of(record: &ApiKeyRecord) -> Self {
        Self { rate_limit: record.rate_limit, remaining: record.remaining, refill: record.refill }
    }

    /// Refuses `wanted` where it is looser than `self`: a faster rate or a larger burst, a larger
    /// quota, or no limit where there is one; refills larger, more frequent, or added to a finite
    /// quota. Where `self` has no limit, any is tighter.
    pub(super) fn admits(&self, wanted: &Limits) -> Result<(), ServiceError> {
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
        format!("scopes beyond what the manager may grant: {}", beyond.join(", ")),
    ))
}

/// Refuses an expiry later than `limit`, or none at all where there is a limit.
pub(super) fn no_later(
    limit: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), ServiceError> {
    match limit {
        Some(limit) if expires_at.is_none_or(|at| at > limit) => {
            Err(forbidden("expiry_escalation", format!("the key must expire by {limit}")))
        }
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
