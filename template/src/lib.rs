//! An actix-web service with API-key authentication: key management routes, scope guards for your own
//! handlers, and Swagger UI. `main.rs` is the command line; everything it runs lives here so that tests
//! can build the same application.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod observe;
pub mod openapi;
pub mod routes;
pub mod store;
