//! The OpenAPI document and the Swagger UI that serves it.
//!
//! Paths are not listed by hand: registering a route (`crate::app::routes`) documents it. Nor are
//! security requirements: every handler guarded by `#[require_api_key]` or `#[require_scope]`
//! registers what it enforces, and [`complete`] copies that onto its operation, together with the
//! 401/403 answers. The key-management routes get the configured admin and manage scopes.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};

use utoipa::OpenApi;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa_swagger_ui::SwaggerUi;

use super::Problem;
use super::guard::guarded_routes;
use super::keys::MANAGEMENT_TAG;
use super::problem::management_problems;
use crate::config::Config;
use crate::scope::Match;

#[derive(OpenApi)]
#[openapi(
    info(description = "API-key authenticated service. Send your key in the `X-API-Key` header \
                        (or the configured one), or as `Authorization: Bearer <key>`."),
    components(schemas(Problem))
)]
struct ApiDoc;

/// The document of the routes `registered`, with what they enforce and answer.
pub fn complete(registered: Document, config: &Config) -> Document {
    let mut doc = ApiDoc::openapi();
    // utoipa copies the license from Cargo.toml; this service has not chosen one.
    doc.info.license = None;
    doc.merge(registered);
    for (path, item) in doc.paths.paths.iter_mut() {
        let has_id = path.ends_with("{id}") || path.contains("{id}/");
        let management = operations_of(item).filter(|op| {
            let tags = op.tags.iter().flatten();
            tags.into_iter().any(|tag| tag == MANAGEMENT_TAG)
        });
        for operation in management {
            add_problems(operation, has_id);
            let scopes =
                [config.api_keys_admin_scope.as_str(), config.api_keys_manage_scope.as_str()];
            protect(operation, &scopes, Match::Any);
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(&config.api_key_header))),
    );
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    for operation in operations(&mut doc) {
        match operation.operation_id.as_deref() {
            Some("verify_key") => {
                protect(operation, &[config.api_keys_verify_scope.as_str()], Match::All);
                add_answers(
                    operation,
                    &[
                        ("400", "Malformed JSON or an unknown field (`bad_request`)"),
                        ("413", "Body too large (`payload_too_large`)"),
                        (
                            "422",
                            "Both `scopes` and `any_scopes`, or a bad scope (`validation_failed`)",
                        ),
                    ],
                );
            }
            Some("check_key") => {
                protect(operation, &[], Match::All);
                add_answers(
                    operation,
                    &[
                        ("400", "A required scope is not a scope (`bad_request`)"),
                        ("403", "The key lacks a required scope (`insufficient_scope`)"),
                    ],
                );
            }
            _ => {}
        }
    }
    for route in guarded_routes() {
        for operation in operations(&mut doc) {
            if operation.operation_id.as_deref() == Some(route.operation) {
                protect(operation, route.scopes, route.mode);
            }
        }
    }
    doc
}

/// Swagger UI at `DOCS_PATH/`, the document at `DOCS_PATH/openapi.json`, and `DOCS_PATH` redirecting to the UI;
/// nothing when `DOCS_PATH` is empty.
pub fn docs(config: &Config, doc: Document) -> impl FnOnce(&mut web::ServiceConfig) {
    let docs_path = config.docs_path.clone();
    move |cfg| {
        if docs_path.is_empty() {
            return;
        }
        // Relative, so the redirect also works behind a proxy that mounts the service under a sub-path.
        let location = format!("{}/", docs_path.rsplit('/').next().unwrap_or_default());
        cfg.service(
            SwaggerUi::new(format!("{docs_path}/{}", "{_:.*}"))
                .url(format!("{docs_path}/openapi.json"), doc),
        )
        .service(web::resource(docs_path).to(move || {
            let location = location.clone();
            async move {
                HttpResponse::PermanentRedirect().insert_header(("Location", location)).finish()
            }
        }));
    }
}

/// The methods each documented route answers, as an `Allow` header value, by route pattern: what a
/// 405 names.
pub struct AllowedMethods(HashMap<String, String>);

impl AllowedMethods {
    pub fn of(doc: &Document) -> Self {
        let allowed = doc.paths.paths.iter().map(|(path, item)| {
            let methods = [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
            ];
            let allow: Vec<&str> = methods
                .into_iter()
                .filter_map(|(method, present)| present.then_some(method))
                .collect();
            (path.clone(), allow.join(", "))
        });
        Self(allowed.collect())
    }

    pub fn get(&self, pattern: &str) -> Option<&str> {
        self.0.get(pattern).map(String::as_str)
    }
}

pub(crate) fn operations(doc: &mut Document) -> impl Iterator<Item = &mut Operation> {
    doc.paths.paths.values_mut().flat_map(operations_of)
}

fn operations_of(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The problem answers a key-management operation can give, read from its shape: a body can be
/// malformed, too large or out of bounds, a query string malformed or out of bounds, an `{id}`
/// unknown, and a manager key can ask beyond its reach.
fn add_problems(operation: &mut Operation, has_id: bool) {
    let has_body = operation.request_body.is_some();
    let has_query = (operation.parameters.iter().flatten())
        .any(|parameter| parameter.parameter_in == ParameterIn::Query);
    let responses = &mut operation.responses.responses;
    for (status, description) in management_problems() {
        let applies = match status {
            400 | 422 => has_body || has_query,
            404 => has_id,
            413 => has_body,
            _ => true,
        };
        if applies {
            responses.entry(status.to_string()).or_insert(problem(&description).into());
        }
    }
}

/// Problem answers with these statuses and descriptions, unless the operation describes its own.
fn add_answers(operation: &mut Operation, answers: &[(&str, &str)]) {
    for (status, description) in answers {
        let responses = &mut operation.responses.responses;
        responses.entry((*status).into()).or_insert(problem(description).into());
    }
}

fn protect(operation: &mut Operation, scopes: &[&str], mode: Match) {
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
    operation.security = Some(vec![
        SecurityRequirement::new("api_key", scopes.clone()),
        SecurityRequirement::new("bearer", scopes.clone()),
    ]);
    let note = match (scopes.as_slice(), mode) {
        ([], _) => "Requires a valid API key.".to_owned(),
        ([one], _) => format!("Requires scope `{one}`."),
        (many, Match::All) => format!("Requires all of the scopes `{}`.", many.join("`, `")),
        (many, Match::Any) => format!("Requires any one of the scopes `{}`.", many.join("`, `")),
    };
    operation.description = Some(match operation.description.take() {
        Some(text) if !text.is_empty() => format!("{text}\n\n{note}"),
        _ => note,
    });
    let responses = &mut operation.responses.responses;
    let mut answer = |status: &str, response: utoipa::openapi::Response| {
        // A route's own description of the same status wins: it knows more.
        responses.entry(status.into()).or_insert(response.into());
    };
    answer("401", problem("Missing, invalid, expired, revoked, disabled or rotated API key"));
    if !scopes.is_empty() {
        answer("403", problem("The API key lacks a required scope"));
    }
    let mut throttled = problem(
        "Too many failed authentications from this client or wrong secrets for this key \
         (`too_many_failed_attempts`), the key's rate limit is spent (`rate_limit_exceeded`, with \
         `RateLimit` and `RateLimit-Policy`), or its quota is (`usage_exceeded`); retry after `Retry-After` seconds",
    );
    let headers = [
        ("Retry-After", Type::Integer, "Whole seconds to wait"),
        ("RateLimit-Policy", Type::String, r#"The key's rate limit: `"key";q=100;w=60`"#),
        ("RateLimit", Type::String, r#"What is left of it: `"key";r=0;t=12`"#),
    ];
    for (name, kind, description) in headers {
        let schema = ObjectBuilder::new().schema_type(kind).build();
        throttled.headers.insert(
            name.into(),
            HeaderBuilder::new().schema(schema).description(Some(description)).build(),
        );
    }
    answer("429", throttled);
    answer("503", problem("The key store is unavailable"));
}

fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
        )
        .build()
}
