//! Guards: extractors that admit a request or answer 401/403 before the handler runs.
//!
//! Take [`ApiKey`] as a handler argument to require a valid key and learn who is calling, or put
//! `#[require_api_key]` / `#[require_scope("...")]` on the handler, which inject these extractors for you.
//! actix runs extractors in argument order and stops at the first error, so a guard rejects before a
//! JSON body is even read.

use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::authenticator::{AuthError, Authenticator};
use super::scope::{self, Match};
use crate::error::ApiError;
use crate::keys::Manager;
use crate::store::ApiKeyRecord;

/// The key that authenticated the request. Cloning it copies a pointer, not the key's fields.
#[derive(Clone)]
pub struct ApiKey(Arc<ApiKeyRecord>);

impl ApiKey {
    /// The key's public id.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn owner_id(&self) -> Option<&str> {
        self.0.owner_id.as_deref()
    }

    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// The free-form metadata stored with the key.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.0.metadata
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at
    }

    /// Whether this key holds `scope`, directly or through a wildcard.
    pub fn has_scope(&self, scope: &str) -> bool {
        scope::satisfies(&self.0.scopes, &[scope], Match::All)
    }
}

impl From<Arc<ApiKeyRecord>> for ApiKey {
    fn from(record: Arc<ApiKeyRecord>) -> Self {
        Self(record)
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("owner_id", &self.owner_id())
            .field("scopes", &self.scopes())
            .finish_non_exhaustive()
    }
}

/// What the middleware concluded about a request, kept in its extensions.
#[derive(Debug, Clone)]
pub(crate) struct Authentication(pub(crate) Result<ApiKey, AuthError>);

impl FromRequest for ApiKey {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticated(req))
    }
}

fn authenticated(req: &HttpRequest) -> Result<ApiKey, ApiError> {
    let extensions = req.extensions();
    let Some(Authentication(outcome)) = extensions.get::<Authentication>() else {
        tracing::error!("a guarded route is not behind the authentication middleware");
        return Err(AuthError::NotInstalled.into());
    };
    match outcome {
        Ok(key) => Ok(key.clone()),
        Err(AuthError::Throttled) => Err(ApiError::Throttled {
            retry_after: req
                .app_data::<web::Data<Authenticator>>()
                .map(|authenticator| authenticator.retry_after())
                .unwrap_or_default(),
        }),
        Err(err) => Err((*err).into()),
    }
}

/// The scopes a route demands. `#[require_scope]` implements this on a marker type per handler.
pub trait ScopeRequirement {
    const SCOPES: &'static [&'static str];
    const MATCH: Match;
}

/// Admits a request whose key holds the scopes of `S`; otherwise 401, or 403 naming the required scopes.
#[derive(Debug, Clone)]
pub struct RequireScopes<S> {
    pub key: ApiKey,
    requirement: PhantomData<S>,
}

impl<S: ScopeRequirement> FromRequest for RequireScopes<S> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticated(req).and_then(|key| {
            if scope::satisfies(key.scopes(), S::SCOPES, S::MATCH) {
                Ok(Self {
                    key,
                    requirement: PhantomData,
                })
            } else {
                Err(ApiError::InsufficientScope {
                    required: S::SCOPES.iter().map(|s| (*s).to_owned()).collect(),
                })
            }
        }))
    }
}

/// Admits a request to the key-management routes: a key holding the admin scope
/// (`API_KEYS_ADMIN_SCOPE`) manages every key; one holding the manage scope (`API_KEYS_MANAGE_SCOPE`)
/// and an owner manages that owner's keys. Anything else is 403, naming both scopes.
impl FromRequest for Manager {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticated(req).and_then(|key| {
            let scopes = req
                .app_data::<web::Data<Authenticator>>()
                .ok_or(ApiError::Auth(AuthError::NotInstalled))?
                .management_scopes();
            if key.has_scope(&scopes.admin) {
                Ok(Self::Admin(key))
            } else if !key.has_scope(&scopes.manage) {
                Err(ApiError::InsufficientScope {
                    required: vec![scopes.admin.clone(), scopes.manage.clone()],
                })
            } else if key.owner_id().is_none() {
                Err(ApiError::Forbidden {
                    code: "owner_required",
                    message: format!(
                        "a key holding {} manages its owner's keys, and this key has no owner",
                        scopes.manage
                    ),
                })
            } else {
                Ok(Self::Owner(key))
            }
        }))
    }
}

/// A handler guarded by `#[require_api_key]` or `#[require_scope]`, registered by the attribute so the
/// OpenAPI document can show exactly what is enforced.
#[derive(Debug)]
pub struct GuardedRoute {
    /// The handler's function name, which utoipa uses as the operation id.
    pub operation: &'static str,
    pub scopes: &'static [&'static str],
    pub mode: Match,
}

inventory::collect!(GuardedRoute);

/// Every guarded handler compiled into this service.
pub fn guarded_routes() -> impl Iterator<Item = &'static GuardedRoute> {
    inventory::iter::<GuardedRoute>.into_iter()
}
