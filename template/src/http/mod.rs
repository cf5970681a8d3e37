//! Everything HTTP: the middleware that authenticates each request ([`middleware`], with the client
//! address from [`proxies`]) and labels it ([`observe`]), the guards your handlers use ([`guard`]),
//! the key-management routes ([`keys`]) and their bodies ([`bodies`]), the probes and metrics
//! ([`health`]), the OpenAPI document ([`openapi`]), and the one place where failures become
//! problem+json responses ([`problem`]).

pub mod bodies;
pub mod guard;
pub mod health;
pub mod keys;
pub mod middleware;
pub mod observe;
pub mod openapi;
pub mod problem;
pub mod proxies;

use utoipa_actix_web::scope;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::config::Config;

pub use auth_macros::{require_api_key, require_scope};
pub use guard::{GuardedRoute, RequireScopes, ScopeRequirement};
pub use problem::{ApiError, Problem};

/// Every documented route, registered once: each `.service(...)` call also puts its route in the
/// OpenAPI document ([`openapi::document`]).
pub fn routes(config: &Config) -> impl FnOnce(&mut ServiceConfig) + '_ {
    move |cfg| {
        cfg.service(health::health)
            .service(health::ready)
            .configure(crate::routes::routes);
        if config.metrics_addr.is_empty() {
            cfg.service(health::serve_metrics);
        }
        if config.api_keys_routes {
            cfg.service(scope(config.api_keys_route_prefix.as_str()).configure(keys::routes));
        }
    }
}
