//! [`ServiceError`]: why the key service refuses a call, with the stable code clients see.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
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

/// A field of the request is out of bounds; `message` says how.
pub fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid { field, message: message.into() }
}

pub(super) fn forbidden(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Forbidden { code, message: message.into() }
}

pub(super) fn conflict(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Conflict { code, message: message.into() }
}

/// Only an admin key or the operator may do this.
pub(super) fn admin_required(message: impl Into<String>) -> ServiceError {
    forbidden("admin_required", message)
}

/// The key has a replacement already (or is gone); rotate that one.
pub(super) fn already_rotated(message: impl Into<String>) -> ServiceError {
    conflict("already_rotated", message)
}
