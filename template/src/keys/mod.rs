//! Key management: the service every caller goes through (create, update, rotate, revoke, and the
//! audit log), who may manage which keys, and the bounds every key's fields keep.

pub mod error;
pub mod manager;
pub mod service;
pub mod validation;

pub use error::ServiceError;
pub use manager::Manager;
pub use service::{ApiKeyService, CreatedKey, Rotation};
