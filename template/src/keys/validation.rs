//! The bounds of every field a key has, and the checks that hold new keys and updates to them.
//!
//! Checks run before anything is stored, so a refused request leaves no trace.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

use super::error::{ServiceError, invalid};
use crate::auth::key_format::KeyFormat;
use crate::model::{KeyChanges, NewKey, RateLimit, Refill, now};
use crate::scope;
use crate::store::Window;

pub const MAX_NAME_LEN: usize = 100;
pub const MAX_OWNER_LEN: usize = 128;
pub const MAX_SCOPES: usize = 32;
pub const MAX_METADATA_BYTES: usize = 4096;
pub const MAX_PAGE_SIZE: u32 = 100;
/// The page size of a list that names none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Keys cannot be made to last longer than this (ten years).
pub const MAX_LIFETIME_SECONDS: i64 = 10 * 366 * 24 * 3600;
/// Largest rate limit: requests per window, and the window in seconds (a day).
pub const MAX_RATE_LIMIT_REQUESTS: u32 = 1_000_000;
pub const MAX_RATE_LIMIT_WINDOW: u32 = 86_400;
/// Largest quota or refill amount.
pub const MAX_QUOTA: u64 = 1_000_000_000_000;
/// How long a rotated key keeps working unless told otherwise (a day), and at most (30 days).
pub const DEFAULT_GRACE_SECONDS: u64 = 86_400;
pub const MAX_GRACE_SECONDS: u64 = 30 * 86_400;

/// How far ahead `expiring_within_days` looks, at most (ten years).
pub const MAX_EXPIRING_DAYS: u32 = 3660;

/// The window a listing of keys about to expire covers: from now to `days` days ahead.
pub fn expiring_within(days: Option<u32>) -> Result<Option<Window>, ServiceError> {
    let Some(days) = days else {
        return Ok(None);
    };
    if !(1..=MAX_EXPIRING_DAYS).contains(&days) {
        return Err(invalid(
            "expiring_within_days",
            format!("must be between 1 and {MAX_EXPIRING_DAYS}"),
        ));
    }
    let now = now();
    Ok(Some((now, now + Duration::days(i64::from(days)))))
}

/// Page sizes and offsets every listing accepts.
pub(super) fn page_bounds(limit: u32, offset: u64) -> Result<(), ServiceError> {
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(invalid("limit", format!("must be between 1 and {MAX_PAGE_SIZE}")));
    }
    // The databases count in signed 64-bit integers, and so does the documented schema.
    if i64::try_from(offset).is_err() {
        return Err(invalid("offset", format!("must be at most {}", i64::MAX)));
    }
    Ok(())
}

pub(super) fn validate(
    new: &NewKey,
    now: DateTime<Utc>,
    format: &KeyFormat,
) -> Result<(), ServiceError> {
    validate_name(&new.name, format)?;
    if let Some(owner) = &new.owner_id {
        if owner.is_empty()
            || owner.len() > MAX_OWNER_LEN
            || owner.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(invalid(
                "owner_id",
                format!("must be 1 to {MAX_OWNER_LEN} bytes with no spaces or control characters"),
            ));
        }
        refuse_pasted_key("owner_id", owner, format)?;
    }
    validate_scopes(&new.scopes)?;
    validate_metadata(&new.metadata, format)?;
    validate_expiry(new.expires_at, now)?;
    validate_limits(new.rate_limit, new.remaining, new.refill)
}

/// Checks the fields an update sets, as [`validate`] checks a new key's.
pub(super) fn validate_update(
    update: &KeyChanges,
    now: DateTime<Utc>,
    format: &KeyFormat,
) -> Result<(), ServiceError> {
    if let Some(name) = &update.name {
        validate_name(name, format)?;
    }
    if let Some(scopes) = &update.scopes {
        validate_scopes(scopes)?;
    }
    if let Some(metadata) = &update.metadata {
        validate_metadata(metadata, format)?;
    }
    if let Some(expires_at) = update.expires_at {
        validate_expiry(expires_at, now)?;
    }
    validate_limits(
        update.rate_limit.flatten(),
        update.remaining.flatten(),
        update.refill.flatten(),
    )
}

fn validate_name(name: &str, format: &KeyFormat) -> Result<(), ServiceError> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(invalid("name", format!("must be 1 to {MAX_NAME_LEN} characters, not blank")));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    refuse_pasted_key("name", name, format)
}

fn validate_scopes(scopes: &[String]) -> Result<(), ServiceError> {
    if scopes.len() > MAX_SCOPES {
        return Err(invalid("scopes", format!("at most {MAX_SCOPES} scopes")));
    }
    if let Some(bad) = scopes.iter().find(|s| !scope::is_valid_grant(s)) {
        return Err(invalid(
            "scopes",
            format!(
                "{bad:?} is not a scope: use segments of a-z, 0-9, _ and - joined by ':', or a trailing ':*', or '*'"
            ),
        ));
    }
    Ok(())
}

fn validate_metadata(
    metadata: &Map<String, Value>,
    format: &KeyFormat,
) -> Result<(), ServiceError> {
    let text = Value::Object(metadata.clone()).to_string();
    if text.len() > MAX_METADATA_BYTES {
        return Err(invalid(
            "metadata",
            format!("must serialize to at most {MAX_METADATA_BYTES} bytes"),
        ));
    }
    refuse_pasted_key("metadata", &text, format)
}

/// A key pasted into a field would be stored in clear and shown to every reader of the key list.
fn refuse_pasted_key(
    field: &'static str,
    text: &str,
    format: &KeyFormat,
) -> Result<(), ServiceError> {
    if format.appears_in(text) {
        return Err(invalid(
            field,
            "holds an API key; keys are secrets and are never stored in clear",
        ));
    }
    Ok(())
}

fn validate_expiry(
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), ServiceError> {
    if let Some(expires_at) = expires_at {
        if expires_at <= now {
            return Err(invalid("expires_at", "must be in the future"));
        }
        if (expires_at - now).num_seconds() > MAX_LIFETIME_SECONDS {
            return Err(invalid("expires_at", "must be at most ten years away"));
        }
    }
    Ok(())
}

fn validate_limits(
    rate_limit: Option<RateLimit>,
    remaining: Option<u64>,
    refill: Option<Refill>,
) -> Result<(), ServiceError> {
    if let Some(limit) = rate_limit {
        if !(1..=MAX_RATE_LIMIT_REQUESTS).contains(&limit.requests) {
            return Err(invalid(
                "rate_limit",
                format!("requests must be between 1 and {MAX_RATE_LIMIT_REQUESTS}"),
            ));
        }
        if !(1..=MAX_RATE_LIMIT_WINDOW).contains(&limit.window) {
            return Err(invalid(
                "rate_limit",
                format!("window must be between 1 and {MAX_RATE_LIMIT_WINDOW} seconds"),
            ));
        }
    }
    if remaining.is_some_and(|n| n > MAX_QUOTA) {
        return Err(invalid("remaining", format!("must be at most {MAX_QUOTA}")));
    }
    if let Some(refill) = refill
        && !(1..=MAX_QUOTA).contains(&refill.amount)
    {
        return Err(invalid("refill", format!("amount must be between 1 and {MAX_QUOTA}")));
    }
    Ok(())
}
