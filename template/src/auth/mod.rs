//! API-key authentication, in the order a request meets it:
//! [`middleware`] authenticates the key once per request (with [`Authenticator`], which parses it with
//! [`key`], looks it up, and counts failures per client address and key id in [`limits`]; the
//! client's address comes from the peer or your [`proxies`]), then the guards in [`guard`] decide:
//! the [`ApiKey`] extractor, and the `#[require_api_key]` / `#[require_scope(...)]` attributes that
//! inject it, which also charge a key's rate limit and quota ([`allowance`]).

pub mod allowance;
pub mod authenticator;
pub mod guard;
pub mod key;
pub mod limits;
pub mod middleware;
pub mod proxies;
pub mod scope;

pub use allowance::Allowance;
pub use auth_macros::{require_api_key, require_scope};
pub use authenticator::{AuthError, Authenticator, ManagementScopes};
pub use guard::{ApiKey, GuardedRoute, RequireScopes, ScopeRequirement};
pub use scope::Match;
