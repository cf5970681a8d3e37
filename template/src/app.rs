//! Assembles the service: shared state, the actix `App` (middleware, routes, docs) and the server loop.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderName;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use utoipa::openapi::OpenApi as Document;
use utoipa_actix_web::service_config::ServiceConfig;
use utoipa_actix_web::{AppExt, scope};

use crate::auth::audit;
use crate::auth::key_format::KeyFormat;
use crate::auth::throttle::FailureLimits;
use crate::auth::{Allowance, Authenticator, RouteScopes, UsageTracker};
use crate::config::Config;
use crate::http::openapi::{self, AllowedMethods};
use crate::http::problem::extractors;
use crate::http::proxies::TrustedProxies;
use crate::http::{ApiError, health, keys, middleware, observe, other_services};
use crate::keys::{ApiKeyService, Manager};
use crate::model::NewKey;
use crate::store::{self, Backend};

/// Everything the workers share, built once at start-up.
#[derive(Clone)]
pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Backend>,
    pub usage: Arc<UsageTracker>,
    pub service: web::Data<ApiKeyService>,
    pub authenticator: web::Data<Authenticator>,
    pub allowance: web::Data<Allowance>,
    pub proxies: web::Data<TrustedProxies>,
}

impl AppState {
    /// Builds the state. Fails only when the Redis for shared rate limits is misconfigured.
    pub fn new(config: Config, store: Arc<dyn Backend>) -> Result<Self, store::StoreError> {
        let format = KeyFormat::from_config(&config);
        let header =
            HeaderName::try_from(config.api_key_header.as_str()).expect("validated by Config");
        let usage = Arc::new(UsageTracker::default());
        let allowance = Allowance::new(store.clone());
        #[cfg(feature = "redis")]
        let allowance = match config.shared_redis_url() {
            Some(url) => allowance.shared_through(url)?,
            None => allowance,
        };
        Ok(Self {
            service: web::Data::new(ApiKeyService::new(
                store.clone(),
                format.clone(),
                usage.clone(),
            )),
            authenticator: web::Data::new(Authenticator::new(
                format,
                header,
                RouteScopes {
                    admin: config.api_keys_admin_scope.clone(),
                    manage: config.api_keys_manage_scope.clone(),
                    verify: config.api_keys_verify_scope.clone(),
                },
                store.clone(),
                usage.clone(),
                FailureLimits::new(
                    config.auth_failures_per_minute,
                    config.auth_failures_per_key_per_minute,
                ),
            )),
            allowance: web::Data::new(allowance),
            proxies: web::Data::new(
                TrustedProxies::from_config(&config).expect("validated by Config"),
            ),
            store,
            usage,
            config,
        })
    }
}

/// The application, as each server worker (and each test) runs it.
pub fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let (app, registered) =
        App::new().into_utoipa_app().configure(routes(&state.config)).split_for_parts();
    let document = openapi::complete(registered, &state.config);
    app.app_data(state.authenticator)
        .app_data(state.allowance)
        .app_data(state.proxies)
        .app_data(state.service)
        .app_data(extractors::json_config())
        .app_data(extractors::query_config())
        .app_data(extractors::path_config())
        .app_data(web::Data::from(state.store))
        .app_data(web::Data::new(AllowedMethods::of(&document)))
        .wrap(from_fn(middleware::authenticate))
        .wrap(from_fn(observe::observe))
        .configure(openapi::docs(&state.config, document))
        .default_service(web::to(unmatched))
}

/// Every documented route, registered once: each `.service(...)` call also puts its route in the
/// OpenAPI document.
pub fn routes(config: &Config) -> impl FnOnce(&mut ServiceConfig) + '_ {
    move |cfg| {
        cfg.service(health::health).service(health::ready);
        // Before routes with path parameters: the router tries routes in order, and a proxy asks
        // the check on every request it passes on.
        if !config.forward_auth_path.is_empty() {
            let path = config.forward_auth_path.as_str();
            cfg.service(scope(path).configure(other_services::check_route));
        }
        cfg.configure(crate::routes::routes);
        if config.metrics_addr.is_empty() {
            cfg.service(health::serve_metrics);
        }
        if config.api_keys_routes {
            let prefix = config.api_keys_route_prefix.as_str();
            cfg.service(
                scope(prefix).configure(other_services::verify_route).configure(keys::routes),
            );
        }
    }
}

/// The complete OpenAPI document for this configuration, as the service serves it.
pub fn document(config: &Config) -> Document {
    let (_, registered) = App::new().into_utoipa_app().configure(routes(config)).split_for_parts();
    openapi::complete(registered, config)
}

/// A route of this service the forward-auth check would answer instead, because it lies below
/// `FORWARD_AUTH_PATH` (the check answers every path below its own). Refused at start-up.
pub fn shadowed_by_check(config: &Config) -> Option<String> {
    let check = config.forward_auth_path.as_str();
    if check.is_empty() {
        return None;
    }
    let below = format!("{check}/");
    document(config).paths.paths.into_keys().find(|path| path.starts_with(&below))
}

/// No route took the request: 405 naming the methods if the path exists with others, else 404.
async fn unmatched(
    req: HttpRequest,
    allowed: web::Data<AllowedMethods>,
) -> Result<HttpResponse, ApiError> {
    let pattern = req.resource_map().match_pattern(req.path());
    match pattern.as_deref().and_then(|pattern| allowed.get(pattern)) {
        Some(allow) => Err(ApiError::MethodNotAllowed { allow: allow.to_owned() }),
        None => Err(ApiError::RouteNotFound),
    }
}

/// Migrates, then serves until SIGINT/SIGTERM, then writes the usage counted so far. With
/// `admin_key_file`, first mints an admin key into that file.
pub async fn serve(
    config: Config,
    admin_key_file: Option<&Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(path) = shadowed_by_check(&config) {
        let check = &config.forward_auth_path;
        return Err(
            format!("FORWARD_AUTH_PATH: {path} lies below {check}, which would answer it").into()
        );
    }
    let applied = store::migrate(&config.database_url).await?;
    if applied > 0 {
        tracing::info!(applied, "database migrated");
    }
    let store = store::open(&config).await?;
    let state = AppState::new(config, store)?;
    if let Some(path) = admin_key_file {
        write_admin_key(&state, path).await?;
    }
    let flusher =
        state.usage.clone().spawn_flusher(state.store.clone(), state.config.usage_flush_interval());
    let authenticator = state.authenticator.clone();
    let audit_closer = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(audit::WINDOW);
        loop {
            ticks.tick().await;
            authenticator.failure_audit().close_ended(false);
        }
    });

    let address = (state.config.host.clone(), state.config.port);
    let docs_path = state.config.docs_path.clone();
    let server_state = state.clone();
    let server = HttpServer::new(move || app(server_state.clone())).bind(address)?;
    for addr in server.addrs() {
        if docs_path.is_empty() {
            tracing::info!("listening on http://{addr}");
        } else {
            tracing::info!("listening on http://{addr}; Swagger UI at http://{addr}{docs_path}/");
        }
    }
    if state.config.metrics_addr.is_empty() {
        server.run().await?;
    } else {
        let metrics_server = HttpServer::new(|| App::new().service(health::serve_metrics))
            .workers(1)
            .bind(state.config.metrics_addr.as_str())?;
        tracing::info!("metrics at http://{}/metrics", state.config.metrics_addr);
        futures_util::future::try_join(server.run(), metrics_server.run()).await?;
    }

    flusher.finish().await;
    audit_closer.abort();
    state.authenticator.failure_audit().close_ended(true);
    if let Err(err) = state.store.settle(Duration::from_secs(5)).await {
        tracing::error!(error = %err, "stopping with changes Redis was not told of");
    }
    Ok(())
}

/// Mints a key with the admin scope and writes it, with a newline, to `path`: a new file that only
/// this user can read. The key appears nowhere else.
async fn write_admin_key(state: &AppState, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| format!("--admin-key-file {}: {err}", path.display()))?;
    let created = state
        .service
        .create_key(
            &Manager::Operator,
            NewKey {
                name: "admin (start-up)".into(),
                scopes: vec![state.config.api_keys_admin_scope.clone()],
                ..NewKey::default()
            },
        )
        .await?;
    writeln!(file, "{}", created.key.as_str())?;
    tracing::info!(key_id = %created.record.id, path = %path.display(), "admin key written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::http::guard::guarded_routes;
    use crate::http::openapi::operations;

    fn security_of(doc: &mut Document, operation_id: &str) -> Option<Vec<String>> {
        let operation =
            operations(doc).find(|op| op.operation_id.as_deref() == Some(operation_id))?;
        let requirements = serde_json::to_value(operation.security.as_ref()?).unwrap();
        let scopes = requirements[0]["api_key"].as_array().expect("an api_key requirement");
        assert_eq!(requirements[0]["api_key"], requirements[1]["bearer"]);
        Some(scopes.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
    }

    #[test]
    fn documented_scopes_are_the_enforced_ones() {
        let config = Config::default();
        let mut doc = document(&config);
        let guarded: Vec<_> = guarded_routes().collect();
        assert!(guarded.len() >= 3, "the example routes register their guards");

        let mut seen = HashSet::new();
        for route in &guarded {
            assert!(
                seen.insert(route.operation),
                "two guarded handlers are named {}",
                route.operation
            );
            let documented = security_of(&mut doc, route.operation).unwrap_or_else(|| {
                panic!("guarded handler {} is missing from the OpenAPI document", route.operation)
            });
            assert_eq!(documented, route.scopes, "scopes of {}", route.operation);
        }
        for id in ["create_key", "list_keys", "get_key", "revoke_key"] {
            assert_eq!(
                security_of(&mut doc, id),
                Some(vec![
                    config.api_keys_admin_scope.clone(),
                    config.api_keys_manage_scope.clone()
                ]),
                "{id}"
            );
        }
        let verify = security_of(&mut doc, "verify_key");
        assert_eq!(verify, Some(vec![config.api_keys_verify_scope.clone()]));
        assert_eq!(security_of(&mut doc, "check_key"), Some(vec![]), "any valid key, per request");
        let unguarded: Vec<_> = operations(&mut doc)
            .filter(|op| op.security.is_none())
            .filter_map(|op| op.operation_id.clone())
            .collect();
        assert_eq!(
            unguarded,
            ["health", "metrics", "ready"],
            "only the probes and the metrics are open"
        );
    }

    #[test]
    fn no_route_may_lie_below_the_forward_auth_check() {
        assert_eq!(shadowed_by_check(&Config::default()), None);
        let over_examples = Config::from_vars([
            ("API_KEYS_ROUTE_PREFIX", "/keys"),
            ("DOCS_PATH", "/docs"),
            ("FORWARD_AUTH_PATH", "/api"),
        ])
        .unwrap();
        let shadowed =
            shadowed_by_check(&over_examples).expect("the example routes lie below /api");
        assert!(shadowed.starts_with("/api/"), "{shadowed}");
    }

    #[test]
    fn key_routes_follow_the_configured_prefix() {
        let config = Config::from_vars([("API_KEYS_ROUTE_PREFIX", "/admin/keys")]).unwrap();
        let doc = document(&config);
        assert!(doc.paths.paths.contains_key("/admin/keys"));
        assert!(doc.paths.paths.contains_key("/admin/keys/{id}"));

        let without = Config::from_vars([("API_KEYS_ROUTES", "false")]).unwrap();
        let doc = document(&without);
        assert!(!doc.paths.paths.keys().any(|p| p.starts_with(&without.api_keys_route_prefix)));
    }
}
