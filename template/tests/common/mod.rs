//! What the HTTP tests share: an app over a store with an admin key, the stores to run it on
//! (SQLite, and PostgreSQL and Redis where `TEST_POSTGRES_URL` and `TEST_REDIS_URL` name a server),
//! and request helpers.
// Each test file is its own crate and uses a part of this module.
#![allow(dead_code)]

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::test::{self, TestRequest};
use serde_json::Value;
use tracing_subscriber::EnvFilter;

use {{crate_name}}::app::{AppState, app};
use {{crate_name}}::config::Config;
use {{crate_name}}::keys::{CreatedKey, Manager};
use {{crate_name}}::model::NewKey;
use {{crate_name}}::store::{Backend, CachedBackend, MemoryBackend};

pub const KEYS: &str = "/api/v1/api-keys";

/// A running app with an admin key, over the given store.
pub struct Harness<S> {
    pub app: S,
    pub state: AppState,
    pub admin: String,
}

impl<S> Harness<S> {
    /// Creates a key through the service, as the operator, bypassing HTTP.
    pub async fn mint(&self, new: NewKey) -> CreatedKey {
        mint(&self.state, new).await
    }
}

async fn mint(state: &AppState, new: NewKey) -> CreatedKey {
    state.service.create_key(&Manager::Operator, new).await.unwrap()
}

/// Sends the service's logs to the test output, filtered by `RUST_LOG` (nothing when it is unset), so
/// `RUST_LOG=trace cargo test -- --nocapture` shows what each test made the service log.
pub fn init_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

pub async fn harness_with(
    store: Arc<dyn Backend>,
    vars: &[(&str, &str)],
) -> Harness<
    impl Service<
        actix_http::Request,
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
    >,
> {
    init_logs();
    // Pin what the assertions below rely on, whatever defaults this project was generated with;
    // later entries win, so a test can still override them.
    let mut all =
        vec![("API_KEYS_ROUTE_PREFIX", KEYS), ("API_KEY_PREFIX", "sk_"), ("DOCS_PATH", "/docs")];
    all.extend_from_slice(vars);
    let config = Config::from_vars(all).unwrap();
    // The same stack as `store::open` builds: the in-process cache in front of the backend.
    let state = AppState::new(config.clone(), Arc::new(CachedBackend::new(store))).unwrap();
    let admin = mint(
        &state,
        NewKey {
            name: "admin".into(),
            scopes: vec![config.api_keys_admin_scope.clone()],
            ..NewKey::default()
        },
    )
    .await;
    Harness {
        app: test::init_service(app(state.clone())).await,
        state,
        admin: admin.key.to_string(),
    }
}

/// A migrated SQLite database in a temporary directory, which must live as long as the store.
#[cfg(feature = "sqlite")]
pub async fn sqlite_store() -> (tempfile::TempDir, Arc<dyn Backend>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    {{crate_name}}::store::migrate(&url).await.unwrap();
    (dir, Arc::new({{crate_name}}::store::SqlBackend::connect(&url).await.unwrap()))
}

/// The migrated database at `TEST_POSTGRES_URL`, or `None` after a `SKIPPED` line naming `test`.
#[cfg(feature = "postgres")]
pub async fn postgres_store(test: &str) -> Option<Arc<dyn Backend>> {
    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        eprintln!("SKIPPED {test}: set TEST_POSTGRES_URL=postgres://... to run it");
        return None;
    };
    {{crate_name}}::store::migrate(&url).await.unwrap();
    Some(Arc::new({{crate_name}}::store::SqlBackend::connect(&url).await.unwrap()))
}

/// The Redis server at `TEST_REDIS_URL`, or `None` after a `SKIPPED` line naming `test`.
#[cfg(feature = "redis")]
pub fn redis_store(test: &str) -> Option<Arc<dyn Backend>> {
    let Ok(url) = std::env::var("TEST_REDIS_URL") else {
        eprintln!("SKIPPED {test}: set TEST_REDIS_URL=redis://... to run it");
        return None;
    };
    Some(Arc::new({{crate_name}}::store::redis::RedisBackend::connect(&url).unwrap()))
}

pub async fn memory_harness() -> Harness<
    impl Service<
        actix_http::Request,
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
    >,
> {
    harness_with(Arc::new(MemoryBackend::default()), &[]).await
}

pub async fn call<S, B>(app: &S, req: TestRequest) -> (StatusCode, header::HeaderMap, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let response = test::call_service(app, req.to_request()).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = test::read_body(response).await;
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    (status, headers, json)
}

pub fn with_key(req: TestRequest, key: &str) -> TestRequest {
    req.insert_header(("X-API-Key", key))
}

/// `key` with one character of its secret changed and a checksum that fits: right id, wrong
/// secret, as a forger who knows the key format would send it.
pub fn wrong_secret(key: &str) -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut body = key[..key.len() - 6].to_owned();
    let at = body.len() - 4;
    body.replace_range(at..=at, if &body[at..=at] == "a" { "b" } else { "a" });
    let mut n = crc32fast::hash(body.as_bytes());
    let mut sum = [b'0'; 6];
    for slot in sum.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    body + std::str::from_utf8(&sum).unwrap()
}

pub async fn create<S, B>(app: &S, admin: &str, body: Value) -> (StatusCode, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, _, json) =
        call(app, with_key(TestRequest::post().uri(KEYS), admin).set_json(body)).await;
    (status, json)
}
