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
use utoipa_actix_web::AppExt;

use crate::auth::key_format::KeyFormat;
use crate::auth::throttle::FailureLimits;
use crate::auth::{Allowance, Authenticator, ManagementScopes, UsageTracker};
use crate::config::Config;
use crate::http::openapi::{self, AllowedMethods};
use crate::http::problem::extractors;
use crate::http::proxies::TrustedProxies;
use crate::http::{self, ApiError, health, middleware, observe};
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
                ManagementScopes {
                    admin: config.api_keys_admin_scope.clone(),
                    manage: config.api_keys_manage_scope.clone(),
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
    let (app, registered) = App::new()
        .into_utoipa_app()
        .configure(http::routes(&state.config))
        .split_for_parts();
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

/// No route took the request: 405 naming the methods if the path exists with others, else 404.
async fn unmatched(
    req: HttpRequest,
    allowed: web::Data<AllowedMethods>,
) -> Result<HttpResponse, ApiError> {
    let pattern = req.resource_map().match_pattern(req.path());
    match pattern.as_deref().and_then(|pattern| allowed.get(pattern)) {
        Some(allow) => Err(ApiError::MethodNotAllowed {
            allow: allow.to_owned(),
        }),
        None => Err(ApiError::RouteNotFound),
    }
}

/// Migrates, then serves until SIGINT/SIGTERM, then writes the usage counted so far. With
/// `admin_key_file`, first mints an admin key into that file.
pub async fn serve(
    config: Config,
    admin_key_file: Option<&Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    let applied = store::migrate(&config.database_url).await?;
    if applied > 0 {
        tracing::info!(applied, "database migrated");
    }
    let store = store::open(&config).await?;
    let state = AppState::new(config, store)?;
    if let Some(path) = admin_key_file {
        write_admin_key(&state, path).await?;
    }
    let flusher = state
        .usage
        .clone()
        .spawn_flusher(state.store.clone(), state.config.usage_flush_interval());

    let address = (state.config.host.clone(), state.config.port);
    let docs_path = state.config.docs_path.clone();
    let server_state = state.clone();
    let server = HttpServer::new(move || app(server_state.clone())).bind(address)?;
    for addr in server.addrs() {
        tracing::info!("listening on http://{addr}; Swagger UI at http://{addr}{docs_path}/");
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
