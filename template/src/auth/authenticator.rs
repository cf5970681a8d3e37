//! Turns the key a request presents into an [`ApiKey`], or says why it cannot.
//!
//! Order of work, cheapest first: read the header, check the format and checksum (no I/O), then one
//! lookup by the key's public id and a constant-time comparison of digests.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap, HeaderName};
use chrono::Utc;

use super::guard::ApiKey;
use super::key::KeyFormat;
use crate::keys::UsageTracker;
use crate::store::{Backend, StoreError};

/// Why a request is not authenticated. Clients see only [`AuthError::code`] and the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this route needs an API key")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key has expired")]
    Expired,
    #[error("the API key has been revoked")]
    Revoked,
    #[error("the key store is unavailable, try again later")]
    Unavailable,
    #[error("the authentication middleware is not installed")]
    NotInstalled,
}

impl AuthError {
    /// Every variant, in declaration order, so that `err as usize` indexes per-variant tables.
    pub const ALL: [Self; 6] = [
        Self::Missing,
        Self::Invalid,
        Self::Expired,
        Self::Revoked,
        Self::Unavailable,
        Self::NotInstalled,
    ];

    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_api_key",
            Self::Invalid => "invalid_api_key",
            Self::Expired => "expired_api_key",
            Self::Revoked => "revoked_api_key",
            Self::Unavailable => "storage_unavailable",
            Self::NotInstalled => "internal_error",
        }
    }

    /// The `WWW-Authenticate` challenge for a 401 (RFC 6750 §3).
    pub fn challenge(&self) -> Option<&'static str> {
        match self {
            Self::Missing => Some(r#"Bearer realm="api""#),
            Self::Invalid | Self::Expired | Self::Revoked => {
                Some(r#"Bearer realm="api", error="invalid_token""#)
            }
            Self::Unavailable | Self::NotInstalled => None,
        }
    }
}

pub struct Authenticator {
    format: KeyFormat,
    header: HeaderName,
    admin_scope: String,
    store: Arc<dyn Backend>,
    usage: Arc<UsageTracker>,
}

impl Authenticator {
    pub fn new(
        format: KeyFormat,
        header: HeaderName,
        admin_scope: String,
        store: Arc<dyn Backend>,
        usage: Arc<UsageTracker>,
    ) -> Self {
        Self {
            format,
            header,
            admin_scope,
            store,
            usage,
        }
    }

    pub fn admin_scope(&self) -> &str {
        &self.admin_scope
    }

    /// Authenticates the key in `headers`, counting a use of it on success.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<ApiKey, AuthError> {
        let presented = self.presented_key(headers)?;
        let parsed = self
            .format
            .parse(presented)
            .map_err(|_| AuthError::Invalid)?;
        let record = match self.store.lookup(parsed.id()).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(AuthError::Invalid),
            Err(StoreError::Unavailable(reason)) => {
                tracing::warn!(%reason, "cannot authenticate: storage is unavailable");
                return Err(AuthError::Unavailable);
            }
            Err(err) => {
                tracing::error!(error = %err, key_id = parsed.id(), "cannot authenticate: stored key is unreadable");
                return Err(AuthError::Unavailable);
            }
        };
        if !self.format.verify(parsed, &record.key_hash) {
            return Err(AuthError::Invalid);
        }
        if record.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        let now = Utc::now();
        if record.expires_at.is_some_and(|at| at <= now) {
            return Err(AuthError::Expired);
        }
        self.usage.record(&record.id, now);
        Ok(ApiKey::from(record))
    }

    /// The key from the configured header, else from `Authorization: Bearer`. A repeated header is an error.
    fn presented_key<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, AuthError> {
        let mut values = headers.get_all(&self.header);
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(AuthError::Invalid);
            }
            return value.to_str().map_err(|_| AuthError::Invalid);
        }
        let mut values = headers.get_all(header::AUTHORIZATION);
        let Some(value) = values.next() else {
            return Err(AuthError::Missing);
        };
        if values.next().is_some() {
            return Err(AuthError::Invalid);
        }
        let value = value.to_str().map_err(|_| AuthError::Invalid)?;
        match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
            _ => Err(AuthError::Invalid),
        }
    }
}
