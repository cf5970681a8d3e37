//! Defaults chosen when this project was generated; each can be overridden from the environment.

pub const DATABASE_URL: &str = "{{database_url}}";
pub const API_KEY_PREFIX: &str = "{{key_prefix}}";
pub const API_KEYS_ROUTE_PREFIX: &str = "{{route_prefix}}";
pub const DOCS_PATH: &str = "{{docs_path}}";
