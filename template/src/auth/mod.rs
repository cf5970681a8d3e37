//! API-key authentication, in the order a request meets it: the [`Authenticator`] parses the
//! presented key ([`key_format`]), looks it up, checks its digest, counts failures per client
//! address and key id ([`throttle`]) and audits them ([`audit`]); an authenticated [`ApiKey`] is
//! counted in [`usage`] and, when a route admits it, charged against its rate limit and quota
//! ([`limits`]).
//!
//! The HTTP side (the middleware and the guards) lives in [`crate::http`].

pub mod api_key;
pub mod audit;
pub mod authenticator;
pub mod key_format;
pub mod limits;
pub mod throttle;
pub mod usage;

pub use api_key::ApiKey;
pub use authenticator::{AuthError, Authenticator, RouteScopes};
pub use limits::Allowance;
pub use usage::UsageTracker;
