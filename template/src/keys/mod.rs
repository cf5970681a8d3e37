//! Key management: the service every caller goes through, its HTTP routes, and usage tracking.

pub mod handlers;
pub mod service;
pub mod usage;

pub use service::{ApiKeyService, CreatedKey, KeyStatus, Manager, NewKey, ServiceError};
pub use usage::UsageTracker;
