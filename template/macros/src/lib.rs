//! `#[require_api_key]` and `#[require_scope(...)]`: guards for the service's actix handlers.
//!
//! Each attribute adds one extractor argument in front of the handler's own, so the request is
//! authenticated (and its scopes checked) before any other argument is read. The body and the return
//! type are left as written. Each also registers the route's requirement, which the OpenAPI document
//! reads, so what the docs show is what is enforced.
//!
//! The expansion refers to `crate::auth`, `crate::http` and `crate::scope`, so the attributes are
//! for handlers inside the service crate.
//! Put them closest to the function, below `#[utoipa::path]` and the route attribute:
//!
//! ```ignore
//! #[utoipa::path(responses((status = 204, description = "Deleted")))]
//! #[delete("/api/admin/users/{user_id}")]
//! #[require_scope("admin:delete")]
//! async fn delete_user(user_id: web::Path<String>) -> HttpResponse { ... }
//! ```

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{FnArg, Ident, ItemFn, LitStr, Token, parse_macro_input, parse_quote};

// The service's own scope grammar: a proc-macro crate cannot depend on the crate it expands into,
// so it compiles the file itself (and leaves the matching half unused).
#[allow(dead_code)]
#[path = "../../src/scope.rs"]
mod scope;

/// actix-web handlers take at most 16 extractor arguments; the guard needs one of them.
const MAX_OWN_ARGUMENTS: usize = 15;

/// Requires a valid API key, whatever its scopes.
///
/// Takes no arguments. The handler may also take `ApiKey` itself to learn who is calling.
#[proc_macro_attribute]
pub fn require_api_key(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut handler = parse_macro_input!(item as ItemFn);
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return with_error(
            &handler,
            syn::Error::new_spanned(
                attr,
                "#[require_api_key] takes no arguments; to require scopes use #[require_scope(\"...\")]",
            ),
        );
    }
    if let Err(err) = check_handler(&handler) {
        return with_error(&handler, err);
    }
    handler.sig.inputs.insert(0, parse_quote!(__api_key: crate::auth::ApiKey));
    let registration = register(&handler.sig.ident, &[], &format_ident!("All"));
    quote!(#registration #handler).into()
}

/// Requires a valid API key holding the given scopes: all of them, or with `any(...)` at least one.
///
/// ```ignore
/// #[require_scope("admin:delete")]
/// #[require_scope("reports:read", "reports:export")]
/// #[require_scope(any("billing:read", "billing:admin"))]
/// ```
///
/// A key's wildcards count: `admin:*` or `*` grants `admin:delete`.
#[proc_macro_attribute]
pub fn require_scope(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut handler = parse_macro_input!(item as ItemFn);
    let requirement = match syn::parse::<Requirement>(attr) {
        Ok(requirement) => requirement,
        Err(err) => return with_error(&handler, err),
    };
    if let Err(err) = check_handler(&handler) {
        return with_error(&handler, err);
    }
    let name = &handler.sig.ident;
    let marker = format_ident!("__RequireScope_{}", name, span = Span::mixed_site());
    let scopes: Vec<&LitStr> = requirement.scopes.iter().collect();
    let mode = &requirement.mode;
    let vis = &handler.vis;
    handler.sig.inputs.insert(0, parse_quote!(__scope: crate::http::guard::RequireScopes<#marker>));
    let registration = register(name, &scopes, mode);
    quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #marker;

        impl crate::http::guard::ScopeRequirement for #marker {
            const SCOPES: &'static [&'static str] = &[#(#scopes),*];
            const MATCH: crate::scope::Match = crate::scope::Match::#mode;
        }

        #registration
        #handler
    }
    .into()
}

/// `"a", "b"` (all of them) or `any("a", "b")`.
struct Requirement {
    scopes: Punctuated<LitStr, Token![,]>,
    mode: Ident,
}

impl Parse for Requirement {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let (scopes, mode) = if input.peek(Ident) {
            let mode: Ident = input.parse()?;
            if mode != "any" {
                return Err(syn::Error::new_spanned(
                    mode,
                    "expected scope strings, or any(\"...\", ...) for at least one of several scopes",
                ));
            }
            let content;
            syn::parenthesized!(content in input);
            let scopes = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
            if !input.is_empty() {
                return Err(input.error("nothing may follow any(...)"));
            }
            (scopes, format_ident!("Any"))
        } else {
            (Punctuated::parse_terminated(input)?, format_ident!("All"))
        };
        if scopes.is_empty() {
            return Err(syn::Error::new(
                Span::call_site(),
                "name at least one scope, e.g. #[require_scope(\"admin:delete\")]; for any valid key use #[require_api_key]",
            ));
        }
        for required in &scopes {
            if !scope::is_valid(&required.value()) {
                return Err(syn::Error::new_spanned(
                    required,
                    format!(
                        "a scope is one or more segments of a-z, 0-9, _ and - joined by ':', at most {} \
                         characters (wildcards are for keys to hold, not for routes to require)",
                        scope::MAX_SCOPE_LEN
                    ),
                ));
            }
        }
        Ok(Self { scopes, mode })
    }
}

fn check_handler(handler: &ItemFn) -> syn::Result<()> {
    let sig = &handler.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "guards apply to async handlers: add `async`",
        ));
    }
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        return Err(syn::Error::new_spanned(receiver, "a handler cannot take `self`"));
    }
    if sig.inputs.len() > MAX_OWN_ARGUMENTS {
        return Err(syn::Error::new_spanned(
            &sig.inputs,
            "a guarded handler can take at most 15 arguments (actix allows 16 and the guard needs one)",
        ));
    }
    Ok(())
}

fn register(name: &Ident, scopes: &[&LitStr], mode: &Ident) -> proc_macro2::TokenStream {
    let operation = name.to_string();
    quote! {
        ::inventory::submit! {
            crate::http::guard::GuardedRoute {
                operation: #operation,
                scopes: &[#(#scopes),*],
                mode: crate::scope::Match::#mode,
            }
        }
    }
}

/// The compile error, plus the handler unchanged so that the error is the only one reported.
fn with_error(handler: &ItemFn, err: syn::Error) -> TokenStream {
    let err = err.to_compile_error();
    quote!(#err #handler).into()
}
