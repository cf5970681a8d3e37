//! Everything HTTP: the middleware that authenticates each request ([`middleware`], with the client
//! address from [`proxies`]) and labels it ([`observe`]), the guards your handlers use ([`guard`]),
//! the key-management routes ([`keys`]) and their bodies ([`bodies`]), the probes and metrics
//! ([`health`]), keys verified for other services and their proxies ([`other_services`]), the OpenAPI
//! document ([`openapi`]), and the one place where failures become problem+json responses
//! ([`problem`]).

pub mod bodies;
pub mod guard;
pub mod health;
pub mod keys;
pub mod middleware;
pub mod observe;
pub mod openapi;
pub mod other_services;
pub mod problem;
pub mod proxies;

pub use auth_macros::{require_api_key, require_scope};
pub use problem::{ApiError, Problem};
