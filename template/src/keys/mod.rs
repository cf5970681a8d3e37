//! Key management: the service every caller goes through (create, update, rotate, revoke, and the
//! audit log), its HTTP routes, and usage tracking.

pub mod handlers;
pub mod service;
pub mod usage;
pub mod validation;

pub use service::{
    ApiKeyService, CreatedKey, KeyStatus, KeyUpdate, Manager, NewKey, Rotation, ServiceError,
};
pub use usage::UsageTracker;
