//! Guards: extractors that admit a request or answer 401/403 before the handler runs.
//!
//! Take [`ApiKey`] as a handler argument to require a valid key and learn who is calling, or put
//! `#[require_api_key]` / `#[require_scope("...")]` on the handler, which inject these extractors for you.
//! actix runs extractors in argument order and stops at the first error, so a guard rejects before a
//! JSON body is even read.
//!
//! A key with a rate limit or a quota is also charged here, once per request however many guards a
//! handler has ([`crate::auth::limits`]); a refused request gets 429.

use std::cell::Cell;
use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::mem;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::future::{Either, LocalBoxFuture};
use tokio::sync::OnceCell;

use super::ApiError;
use crate::auth::limits::{Admitted, LimitState, Refusal};
use crate::auth::{Allowance, ApiKey, AuthError, Authenticator, RouteScopes};
use crate::keys::{Manager, ServiceError};
use crate::scope::{self, Match};

/// What the middleware concluded about a request, kept in its extensions.
#[derive(Debug, Clone)]
pub(crate) struct Authentication(pub(crate) Result<ApiKey, AuthError>);

/// The per-key limits' verdict on a request, kept in its extensions: reached once, however many
/// guards ask, and read again by the middleware for the `RateLimit` fields.
#[derive(Clone, Default)]
pub(crate) struct Admission(Rc<Charging>);

/// A request's charge to its key's limits: asked for once, settled once.
#[derive(Default)]
struct Charging {
    reached: OnceCell<Result<Admitted, Refusal>>,
    /// Set by the first guard to ask: the others wait for its verdict rather than charge the key
    /// again.
    asked: Cell<bool>,
}

impl Admission {
    /// The rate-limit state to report, once the verdict is in.
    pub(crate) fn limit_state(&self) -> Option<LimitState> {
        match self.0.reached.get()? {
            Ok(admitted) => admitted.rate,
            Err(refusal) => refusal.limit_state(),
        }
    }

    /// Charges `key` unless another guard of the request did: at once when the key's counts are
    /// at hand ([`Allowance::admit_at_once`]), else by the returned future, which settles once the
    /// store or Redis has answered (or once the guard that asked first has its verdict). `None`:
    /// the verdict is already in.
    fn charge(
        &self,
        allowance: web::Data<Allowance>,
        key: ApiKey,
    ) -> Option<LocalBoxFuture<'static, ()>> {
        let charging = &self.0;
        if !charging.asked.replace(true)
            && let Some(at_once) = allowance.admit_at_once(&key)
        {
            // Cannot fail: nobody asked before, so nobody is filling the cell.
            let _ = charging.reached.set(at_once);
        }
        if charging.reached.initialized() {
            return None;
        }
        let admission = self.clone();
        Some(Box::pin(async move {
            admission.0.reached.get_or_init(|| allowance.admit(&key)).await;
        }))
    }
}

/// A guard's answer: at once for keys without limits and for refusals, after charging the key
/// otherwise.
pub type Guarded<T> = Either<Ready<Result<T, ApiError>>, Admit<T>>;

/// A limited key's admission, charged when first polled rather than when the guard is made: actix
/// makes every argument's future before polling the first, and stops at the first that fails, so a
/// request that an earlier argument refuses at once (a path, a query, another guard) costs the key
/// nothing. An earlier argument still waiting (a JSON body) does not stop a later guard being
/// polled: the attributes put their guards first for that reason. Written by hand rather than as an
/// `async` block so that a key whose counts are at hand is admitted without a boxed future.
pub struct Admit<T> {
    admitted: Option<T>,
    admission: Admission,
    step: Step,
}

enum Step {
    /// Nothing charged yet.
    Unpolled(web::Data<Allowance>, ApiKey),
    /// Waiting for the store or Redis, or for the guard of the request that asked first.
    Waiting(LocalBoxFuture<'static, ()>),
    /// The verdict is in.
    Settled,
}

// As for std's `Ready<T>`: `admitted` is moved out, never pinned in place, and the one future held
// is boxed.
impl<T> Unpin for Admit<T> {}

impl<T> Future for Admit<T> {
    type Output = Result<T, ApiError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let waiting = match mem::replace(&mut this.step, Step::Settled) {
            Step::Unpolled(allowance, key) => this.admission.charge(allowance, key),
            Step::Waiting(waiting) => Some(waiting),
            Step::Settled => None,
        };
        if let Some(mut waiting) = waiting
            && waiting.as_mut().poll(cx).is_pending()
        {
            this.step = Step::Waiting(waiting);
            return Poll::Pending;
        }
        Poll::Ready(match (this.admission.0.reached.get(), this.admitted.take()) {
            (Some(Ok(_)), Some(admitted)) => Ok(admitted),
            (Some(Err(refusal)), _) => Err((*refusal).into()),
            _ => {
                tracing::error!("a guard was polled again after it answered");
                Err(AuthError::NotInstalled.into())
            }
        })
    }
}

/// Admits `key`'s request against its rate limit and quota, then answers `admitted`.
fn admit<T: 'static>(req: &HttpRequest, key: ApiKey, admitted: T) -> Guarded<T> {
    if !key.is_limited() {
        return Either::Left(ready(Ok(admitted)));
    }
    let Some(allowance) = req.app_data::<web::Data<Allowance>>().cloned() else {
        tracing::error!("a key has limits, and the service has no Allowance to apply them");
        return Either::Left(ready(Err(AuthError::NotInstalled.into())));
    };
    let admission = {
        let mut extensions = req.extensions_mut();
        match extensions.get::<Admission>() {
            Some(admission) => admission.clone(),
            None => {
                let admission = Admission::default();
                extensions.insert(admission.clone());
                admission
            }
        }
    };
    Either::Right(Admit {
        admitted: Some(admitted),
        admission,
        step: Step::Unpolled(allowance, key),
    })
}

/// Answers at once with `outcome` when it is an error, else admits the key as [`admit`] does.
fn guard<T: 'static>(req: &HttpRequest, outcome: Result<(ApiKey, T), ApiError>) -> Guarded<T> {
    match outcome {
        Ok((key, admitted)) => admit(req, key, admitted),
        Err(err) => Either::Left(ready(Err(err))),
    }
}

impl FromRequest for ApiKey {
    type Error = ApiError;
    type Future = Guarded<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        guard(req, authenticated(req).map(|key| (key.clone(), key)))
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

/// Admits a request whose key holds `required` under `mode`, as `#[require_scope]` does, for a
/// route that learns its scopes per request.
pub(crate) fn with_scopes(
    req: &HttpRequest,
    required: Vec<String>,
    mode: Match,
) -> Guarded<ApiKey> {
    guard(req, key_holding(req, &required, mode).map(|key| (key.clone(), key)))
}

/// The request's key if it holds `required` under `mode`; otherwise 401, or 403 naming them.
fn key_holding<S: AsRef<str>>(
    req: &HttpRequest,
    required: &[S],
    mode: Match,
) -> Result<ApiKey, ApiError> {
    let key = authenticated(req)?;
    if scope::satisfies(key.scopes(), required, mode) {
        Ok(key)
    } else {
        let required = required.iter().map(|s| s.as_ref().to_owned()).collect();
        Err(ApiError::InsufficientScope { required })
    }
}

/// A caller allowed to ask whether other keys are good: its key holds the verify scope
/// (`API_KEYS_VERIFY_SCOPE`).
#[derive(Debug, Clone)]
pub struct Verifier {
    pub key: ApiKey,
}

impl FromRequest for Verifier {
    type Error = ApiError;
    type Future = Guarded<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let verify = configured_scopes(req).map(|scopes| std::slice::from_ref(&scopes.verify));
        let key = verify.and_then(|scope| key_holding(req, scope, Match::All));
        guard(req, key.map(|key| (key.clone(), Self { key })))
    }
}

/// The scopes that open the key-management and verify routes, as this service is configured.
fn configured_scopes(req: &HttpRequest) -> Result<&RouteScopes, ApiError> {
    let authenticator = req.app_data::<web::Data<Authenticator>>();
    let scopes = authenticator.map(|authenticator| authenticator.route_scopes());
    scopes.ok_or(ApiError::Auth(AuthError::NotInstalled))
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

impl<S: ScopeRequirement + 'static> FromRequest for RequireScopes<S> {
    type Error = ApiError;
    type Future = Guarded<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let key = key_holding(req, S::SCOPES, S::MATCH);
        guard(req, key.map(|key| (key.clone(), Self { key, requirement: PhantomData })))
    }
}

/// Admits a request to the key-management routes: a key holding the admin scope
/// (`API_KEYS_ADMIN_SCOPE`) manages every key; one holding the manage scope (`API_KEYS_MANAGE_SCOPE`)
/// and an owner manages that owner's keys. Anything else is 403, naming both scopes.
impl FromRequest for Manager {
    type Error = ApiError;
    type Future = Guarded<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        guard(
            req,
            authenticated(req).and_then(|key| {
                let scopes = configured_scopes(req)?;
                if key.has_scope(&scopes.admin) {
                    Ok((key.clone(), Self::Admin(key)))
                } else if !key.has_scope(&scopes.manage) {
                    Err(ApiError::InsufficientScope {
                        required: vec![scopes.admin.clone(), scopes.manage.clone()],
                    })
                } else if key.owner_id().is_none() {
                    Err(ApiError::Service(ServiceError::Forbidden {
                        code: "owner_required",
                        message: format!(
                            "a key holding {} manages its owner's keys, and this key has no owner",
                            scopes.manage
                        ),
                    }))
                } else {
                    Ok((key.clone(), Self::Owner(key)))
                }
            }),
        )
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
