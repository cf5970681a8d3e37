//! An actix-web service with API-key authentication: key management routes, scope guards for your own
//! handlers, and Swagger UI. `main.rs` is the command line; everything it runs lives here so that tests
//! can build the same application.
//!
//! The modules form layers, each using only those below it:
//! [`app`] and [`cli`] assemble; [`http`] and your [`routes`] speak HTTP; [`keys`] manages keys,
//! above [`auth`], which authenticates requests; [`store`] keeps keys; [`model`], [`scope`],
//! [`config`] and [`metrics`] are the ground everything stands on.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod scope;
pub mod store;
