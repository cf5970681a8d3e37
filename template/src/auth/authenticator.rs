//! Turns the key a request presents into an [`ApiKey`], or says why it cannot.
//!
//! Order of work, cheapest first: read the header and check the key's shape and checksum (no I/O);
//! take the key from the in-process cache, or else look it up by its public id; then compare digests
//! in constant time.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use chrono::Utc;
use prometheus_client::metrics::counter::Counter;

use super::ApiKey;
use super::audit::FailureAudit;
use super::key_format::{KeyFormat, ParsedKey};
use super::throttle::FailureLimits;
use super::usage::UsageTracker;
use crate::metrics::metrics;
use crate::model::{ApiKeyRecord, KeyId, KeyStatus};
use crate::store::{Backend, StoreError};

/// Why a request is not authenticated. Clients see only [`AuthError::code`] and the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    #[error("this route needs an API key")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key has expired")]
    Expired,
    #[error("the API key has been revoked")]
    Revoked,
    #[error("the API key is disabled")]
    Disabled,
    #[error("the API key was rotated; use its replacement")]
    Rotated,
    #[error("too many failed authentications, try again later")]
    Throttled,
    #[error("the key store is unavailable, try again later")]
    Unavailable,
    #[error("the authentication middleware is not installed")]
    NotInstalled,
}

impl AuthError {
    /// Every variant, in declaration order, so that `err as usize` indexes per-variant tables.
    pub const ALL: [Self; 9] = [
        Self::Missing,
        Self::Invalid,
        Self::Expired,
        Self::Revoked,
        Self::Disabled,
        Self::Rotated,
        Self::Throttled,
        Self::Unavailable,
        Self::NotInstalled,
    ];

    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_api_key",
            Self::Invalid => "invalid_api_key",
            Self::Expired => "expired_api_key",
            Self::Revoked => "revoked_api_key",
            Self::Disabled => "disabled_api_key",
            Self::Rotated => "rotated_api_key",
            Self::Throttled => "too_many_failed_attempts",
            Self::Unavailable => "storage_unavailable",
            Self::NotInstalled => "internal_error",
        }
    }

    /// The `WWW-Authenticate` challenge for a 401 (RFC 6750 §3).
    pub fn challenge(&self) -> Option<&'static str> {
        match self {
            Self::Missing => Some(r#"Bearer realm="api""#),
            Self::Invalid | Self::Expired | Self::Revoked | Self::Disabled | Self::Rotated => {
                Some(r#"Bearer realm="api", error="invalid_token""#)
            }
            Self::Throttled | Self::Unavailable | Self::NotInstalled => None,
        }
    }
}

/// The scopes that open the key-management and verify routes.
#[derive(Debug, Clone)]
pub struct RouteScopes {
    /// Every key, any scope (`API_KEYS_ADMIN_SCOPE`).
    pub admin: String,
    /// The keys of the caller's own owner (`API_KEYS_MANAGE_SCOPE`).
    pub manage: String,
    /// Verifying other keys, for another service (`API_KEYS_VERIFY_SCOPE`).
    pub verify: String,
}

pub struct Authenticator {
    format: KeyFormat,
    header: HeaderName,
    scopes: RouteScopes,
    store: Arc<dyn Backend>,
    usage: Arc<UsageTracker>,
    limits: FailureLimits,
    audit: FailureAudit,
    /// `authenticated`, then one per [`AuthError`] by `err as usize`; none for a missing key, which
    /// is not an attempt.
    attempts: [Option<Counter>; AuthError::ALL.len() + 1],
}

impl Authenticator {
    pub fn new(
        format: KeyFormat,
        header: HeaderName,
        scopes: RouteScopes,
        store: Arc<dyn Backend>,
        usage: Arc<UsageTracker>,
        limits: FailureLimits,
    ) -> Self {
        Self {
            format,
            header,
            scopes,
            store,
            usage,
            limits,
            audit: FailureAudit::default(),
            attempts: std::array::from_fn(|i| match i.checked_sub(1) {
                None => Some(metrics().auth_attempts("authenticated")),
                Some(err) if AuthError::ALL[err] == AuthError::Missing => None,
                Some(err) => Some(metrics().auth_attempts(AuthError::ALL[err].code())),
            }),
        }
    }

    pub fn route_scopes(&self) -> &RouteScopes {
        &self.scopes
    }

    /// The audit trail of failed authentications, whose tallies [`crate::app::serve`] closes.
    pub fn failure_audit(&self) -> &FailureAudit {
        &self.audit
    }

    /// How long a client refused for too many failures should wait.
    pub fn retry_after(&self) -> Duration {
        self.limits.retry_after()
    }

    /// Authenticates the key in `headers`, counting a use of it on success. `client` gives the
    /// sender's address; it is asked only when a key is presented.
    ///
    /// Every failure but a missing key is audited (outcome, key id if the key had the right shape,
    /// client address: never the key; see [`super::audit`] for how a flood is summed up). Only a
    /// key that is not valid (a wrong secret, or one refused for too many of them) counts against
    /// the client's failure limit: a revoked, expired, disabled or rotated key proves its holder had
    /// the secret, and counting it would let one stale key behind a shared address lock out the
    /// rest.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client: impl FnOnce() -> Option<IpAddr>,
    ) -> Result<ApiKey, AuthError> {
        let presented = match presented_key(headers, &self.header) {
            Err(AuthError::Missing) => return Err(AuthError::Missing),
            presented => presented,
        };
        let client = client();
        if client.is_some_and(|address| self.limits.address_blocked(address)) {
            return Err(AuthError::Throttled);
        }
        self.examine(presented, client, client).await
    }

    /// Authenticates `key` for another service, the `caller` at its address, as
    /// [`Authenticator::authenticate`] does a request's key: counted, audited, limited per key id,
    /// and per address when the caller names its `client` (the caller holds the verify scope, so
    /// its word is taken). The caller's own address is never counted: it speaks for many clients,
    /// and one of them sending bad keys must not lock out the rest.
    pub async fn authenticate_for(
        &self,
        key: &[u8],
        client: Option<IpAddr>,
        caller: Option<IpAddr>,
    ) -> Result<ApiKey, AuthError> {
        // Naming itself would let a caller's users lock the caller out of every route.
        let client = client.filter(|client| {
            caller.is_none_or(|caller| !FailureLimits::same_client(*client, caller))
        });
        if client.is_some_and(|address| self.limits.address_blocked(address)) {
            return Err(AuthError::Throttled);
        }
        self.examine(Ok(key), client.or(caller), client).await
    }

    /// Authenticates a presented key; a failure is audited as from `client` and counted against
    /// the failure limit of `count_against`.
    async fn examine(
        &self,
        presented: Result<&[u8], AuthError>,
        client: Option<IpAddr>,
        count_against: Option<IpAddr>,
    ) -> Result<ApiKey, AuthError> {
        let parsed =
            presented.and_then(|key| self.format.parse_shape(key).map_err(|_| AuthError::Invalid));
        let key_id = parsed.as_ref().ok().map(ParsedKey::id);
        let mut outcome = match parsed {
            Ok(parsed) => self.verify(parsed, client).await,
            Err(err) => Err(err),
        };
        if let Err(err) = outcome {
            if let Some(address) = count_against
                && matches!(err, AuthError::Invalid | AuthError::Throttled)
                && self.limits.address_failed(address)
            {
                outcome = Err(AuthError::Throttled);
            }
            self.audit.failed(client, err, key_id.as_ref().map(KeyId::as_str));
        }
        let attempt = outcome.as_ref().map_or_else(|err| *err as usize + 1, |_| 0);
        if let Some(counter) = &self.attempts[attempt] {
            counter.inc();
        }
        outcome
    }

    async fn verify(
        &self,
        parsed: ParsedKey<'_>,
        client: Option<IpAddr>,
    ) -> Result<ApiKey, AuthError> {
        // The checksum first, cached key or not: a made-up key then costs neither the store nor a
        // digest, for a few nanoseconds on every good one.
        parsed.check_checksum().map_err(|_| AuthError::Invalid)?;
        let id = parsed.id();
        let record = match self.store.cached(id) {
            Some(record) => record,
            None => self.stored(id.as_str()).await?,
        };
        if !self.format.verify(parsed, &record.key_hash) {
            return Err(if self.limits.key_failed(&record.id) {
                AuthError::Throttled
            } else {
                AuthError::Invalid
            });
        }
        let now = Utc::now();
        match KeyStatus::at(&record, now) {
            KeyStatus::Active => {}
            KeyStatus::Revoked => return Err(AuthError::Revoked),
            KeyStatus::Expired => return Err(AuthError::Expired),
            KeyStatus::Rotated => return Err(AuthError::Rotated),
            KeyStatus::Disabled => return Err(AuthError::Disabled),
        }
        // The id as presented, held inline, rather than the record's string, which would be one
        // more memory access that many keys in use turn into a cache miss.
        self.usage.record(id, now);
        Ok(ApiKey::new(record, client))
    }

    /// The key from the store (through Redis when configured); a missing key is `Invalid`.
    async fn stored(&self, id: &str) -> Result<Arc<ApiKeyRecord>, AuthError> {
        match self.store.lookup(id).await {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(AuthError::Invalid),
            Err(StoreError::Unavailable(reason)) => {
                tracing::warn!(%reason, "cannot authenticate: storage is unavailable");
                Err(AuthError::Unavailable)
            }
            Err(err) => {
                tracing::error!(error = %err, key_id = id, "cannot authenticate: stored key is unreadable");
                Err(AuthError::Unavailable)
            }
        }
    }
}

/// The key a request presents: the configured header, else `Authorization: Bearer`. A repeated
/// header is an error. The value stays bytes: the key parser checks every byte anyway.
pub fn presented_key<'h>(
    headers: &'h HeaderMap,
    header: &HeaderName,
) -> Result<&'h [u8], AuthError> {
    if let Some(value) = single(headers, header)? {
        return Ok(value.as_bytes());
    }
    let value = single(headers, &header::AUTHORIZATION)?.ok_or(AuthError::Missing)?;
    match value.as_bytes().split_at_checked(BEARER.len()) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case(BEARER) => Ok(token.trim_ascii()),
        _ => Err(AuthError::Invalid),
    }
}

const BEARER: &[u8] = b"bearer ";

/// The value of a header that must appear at most once.
fn single<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h HeaderValue>, AuthError> {
    let mut values = headers.get_all(name);
    match (values.next(), values.next()) {
        (value, None) => Ok(value),
        _ => Err(AuthError::Invalid),
    }
}
