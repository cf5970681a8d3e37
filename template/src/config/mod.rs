//! Typed configuration, read once at start-up from the environment and an optional `.env` file.
//!
//! Every setting has a default, so `cargo run` needs none. A bad value stops start-up with one line
//! naming the variable.

mod defaults;

use std::str::FromStr;
use std::time::Duration;

use actix_web::http::header::HeaderName;
use serde::Deserialize;

use ipnet::IpNet;

use crate::scope;

/// Connections each instance opens to an SQL database at most, unless `DATABASE_POOL_SIZE` says
/// otherwise.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// How long an instance trusts its in-process copy of a key while it cannot follow the change
/// feed, unless `KEY_CACHE_TTL_MS` says otherwise.
pub const DEFAULT_KEY_CACHE_TTL: Duration = Duration::from_millis(500);
/// The longest an in-process copy of a key is kept, feed or not, unless
/// `KEY_CACHE_LIFETIME_SECONDS` says otherwise.
pub const DEFAULT_KEY_CACHE_LIFETIME: Duration = Duration::from_secs(300);

/// Settings of the service. Field `foo_bar` is read from the variable `FOO_BAR`.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub database_url: String,
    /// Connections each instance opens to an SQL database at most, besides its change feed's own.
    pub database_pool_size: usize,
    /// Optional Redis, shared by every instance, caching keys in front of the database.
    pub redis_url: Option<String>,
    /// How long a key stays in the Redis cache, in seconds.
    pub redis_cache_ttl_seconds: u64,
    /// How long each instance keeps its in-process copy of a key at most, in seconds. Copies are
    /// dropped as soon as the key changes anywhere (the store's change feed says so); this bounds
    /// only what no feed could tell.
    pub key_cache_lifetime_seconds: u64,
    /// How long each instance trusts its in-process copy of a key while it cannot follow the change
    /// feed, in milliseconds; 0 turns the in-process cache off.
    pub key_cache_ttl_ms: u64,
    pub host: String,
    pub port: u16,
    /// Where `/metrics` is served instead of the main listener (`127.0.0.1:9100`, say); empty
    /// serves it beside the API.
    pub metrics_addr: String,
    /// Prefix of every issued key, e.g. `acme_`.
    pub api_key_prefix: String,
    /// Header that carries the key; `Authorization: Bearer <key>` is accepted too.
    pub api_key_header: String,
    /// Optional server-side secret: keys are then stored as HMAC-SHA256 digests under it.
    pub api_key_pepper: Option<Secret>,
    pub api_keys_route_prefix: String,
    /// Scope that grants the key-management routes over every key.
    pub api_keys_admin_scope: String,
    /// Scope that grants the key-management routes over the keys of the caller's own owner.
    pub api_keys_manage_scope: String,
    /// Scope a service's key needs to verify other keys at `{API_KEYS_ROUTE_PREFIX}/verify`.
    pub api_keys_verify_scope: String,
    /// Whether the key-management routes (and the verify route beside them) are mounted at all.
    pub api_keys_routes: bool,
    /// Where a proxy's forward-auth asks whether to let a request through; empty turns it off.
    pub forward_auth_path: String,
    pub docs_path: String,
    /// How often counted key usage is written to the database, in seconds.
    pub usage_flush_seconds: u64,
    /// Failed authentications a client address may make per minute (then 429); 0 turns it off.
    pub auth_failures_per_minute: u32,
    /// Wrong secrets an existing key id may see per minute (then 429 to wrong secrets); 0 = off.
    pub auth_failures_per_key_per_minute: u32,
    /// Your proxies' addresses or networks, comma-separated: only a request from one of them has its
    /// client address taken from `PROXY_HEADER`. Empty: the peer is the client.
    pub trusted_proxies: String,
    /// Where trusted proxies report the client: `x-forwarded-for`, `forwarded` or `x-real-ip`.
    pub proxy_header: String,
    /// `text` (for people) or `json` (one object per line, for log collectors).
    pub log_format: String,
}

/// The header the proxies report the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    XForwardedFor,
    /// RFC 7239's `Forwarded`, its `for=` parameters.
    Forwarded,
    /// One address, set (not appended) by the proxy in front.
    XRealIp,
}

impl FromStr for ProxyHeader {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            "x-real-ip" => Ok(Self::XRealIp),
            _ => Err(format!("must be x-forwarded-for, forwarded or x-real-ip, got {name:?}")),
        }
    }
}

/// Parses a comma-separated list of addresses and networks (`10.0.0.1, 10.1.0.0/16, fd00::/8`).
pub fn networks(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(canonical)
                .map_err(|_| format!("{entry:?} is not an IP address or network"))
        })
        .collect()
}

/// An IPv4-mapped IPv6 network as the IPv4 network it is, so that it matches IPv4 peers.
fn canonical(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else { return net };
    v6.addr()
        .to_ipv4_mapped()
        .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len().checked_sub(96)?).ok())
        .map_or(net, IpNet::V4)
}

/// What a `DATABASE_URL` must look like, for error messages.
pub const DATABASE_URL_FORMS: &str =
    "must start with sqlite://, postgres://, postgresql://, redis://, rediss:// or memory://";

/// The kinds of store a `DATABASE_URL` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Sqlite,
    Postgres,
    Redis,
}

impl StoreKind {
    /// The kind of store a `DATABASE_URL` names, by its scheme.
    pub fn of(url: &str) -> Option<Self> {
        [
            ("memory:", Self::Memory),
            ("sqlite:", Self::Sqlite),
            ("postgres://", Self::Postgres),
            ("postgresql://", Self::Postgres),
            ("redis://", Self::Redis),
            ("rediss://", Self::Redis),
        ]
        .into_iter()
        .find_map(|(scheme, kind)| url.starts_with(scheme).then_some(kind))
    }

    /// Its name, which is also the Cargo feature that builds it in (but for `memory`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Redis => "redis",
        }
    }

    /// Whether this build includes it.
    pub fn is_built(self) -> bool {
        match self {
            Self::Memory => true,
            Self::Sqlite => cfg!(feature = "sqlite"),
            Self::Postgres => cfg!(feature = "postgres"),
            Self::Redis => cfg!(feature = "redis"),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: defaults::DATABASE_URL.into(),
            database_pool_size: DEFAULT_POOL_SIZE,
            redis_url: None,
            redis_cache_ttl_seconds: 300,
            key_cache_lifetime_seconds: DEFAULT_KEY_CACHE_LIFETIME.as_secs(),
            key_cache_ttl_ms: DEFAULT_KEY_CACHE_TTL.as_millis() as u64,
            host: "127.0.0.1".into(),
            port: 8080,
            metrics_addr: String::new(),
            api_key_prefix: defaults::API_KEY_PREFIX.into(),
            api_key_header: "X-API-Key".into(),
            api_key_pepper: None,
            api_keys_route_prefix: defaults::API_KEYS_ROUTE_PREFIX.into(),
            api_keys_admin_scope: "api_keys:admin".into(),
            api_keys_manage_scope: "api_keys:manage".into(),
            api_keys_verify_scope: "api_keys:verify".into(),
            api_keys_routes: true,
            forward_auth_path: "/auth/check".into(),
            docs_path: defaults::DOCS_PATH.into(),
            usage_flush_seconds: 5,
            auth_failures_per_minute: 30,
            auth_failures_per_key_per_minute: 10,
            trusted_proxies: String::new(),
            proxy_header: "x-forwarded-for".into(),
            log_format: "text".into(),
        }
    }
}

/// A configuration value that must never be printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A setting that could not be used; its `Display` is the one line printed at start-up.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

impl ConfigError {
    fn new(variable: &str, problem: impl Into<String>) -> Self {
        Self { variable: variable.into(), problem: problem.into() }
    }
}

/// Fails with `problem` for `variable` unless `ok`.
macro_rules! ensure {
    ($ok:expr, $variable:expr, $problem:expr) => {
        if !$ok {
            return Err(ConfigError::new($variable, $problem));
        }
    };
}

impl Config {
    /// Reads `.env` (if present) and the environment.
    pub fn load() -> Result<Self, ConfigError> {
        if let Err(err) = dotenvy::dotenv()
            && !err.not_found()
        {
            return Err(ConfigError::new(".env", err.to_string()));
        }
        Self::from_source(config::Environment::default())
    }

    /// Reads settings from the given variables only (for tests and tools).
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let map = vars.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Self::from_source(config::Environment::default().source(Some(map)))
    }

    fn from_source(env: config::Environment) -> Result<Self, ConfigError> {
        let config: Self = config::Config::builder()
            .add_source(env)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(describe)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        ensure!(StoreKind::of(&self.database_url).is_some(), "DATABASE_URL", DATABASE_URL_FORMS);
        if let Some(url) = &self.redis_url {
            ensure!(
                StoreKind::of(url) == Some(StoreKind::Redis),
                "REDIS_URL",
                "must start with redis:// or rediss://"
            );
            ensure!(
                cfg!(feature = "redis"),
                "REDIS_URL",
                "this build has no Redis support: rebuild with `--features redis`, or unset it"
            );
        }
        ensure!(
            (1..=86_400).contains(&self.redis_cache_ttl_seconds),
            "REDIS_CACHE_TTL_SECONDS",
            "must be between 1 and 86400"
        );
        ensure!(
            (1..=86_400).contains(&self.key_cache_lifetime_seconds),
            "KEY_CACHE_LIFETIME_SECONDS",
            "must be between 1 and 86400"
        );
        ensure!(
            self.key_cache_ttl_ms <= 60_000,
            "KEY_CACHE_TTL_MS",
            "must be between 0 (no in-process cache) and 60000"
        );
        ensure!(!self.host.is_empty(), "HOST", "must not be empty");
        let metrics_addr = &self.metrics_addr;
        ensure!(
            metrics_addr.is_empty() || metrics_addr.parse::<std::net::SocketAddr>().is_ok(),
            "METRICS_ADDR",
            format!("must be an address and port like 127.0.0.1:9100, got {metrics_addr:?}")
        );
        let prefix = &self.api_key_prefix;
        let body = prefix.strip_suffix('_').unwrap_or_default();
        ensure!(
            (1..=15).contains(&body.len())
                && body.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "API_KEY_PREFIX",
            format!("must be 2-16 lowercase letters or digits ending in '_', got {prefix:?}")
        );
        let header = &self.api_key_header;
        ensure!(
            HeaderName::try_from(header.as_str()).is_ok(),
            "API_KEY_HEADER",
            format!("{header:?} is not a valid HTTP header name")
        );
        ensure!(
            self.api_key_pepper.as_ref().is_none_or(|p| p.0.len() >= 32),
            "API_KEY_PEPPER",
            "must be at least 32 characters long"
        );
        check_path("API_KEYS_ROUTE_PREFIX", &self.api_keys_route_prefix)?;
        if !self.docs_path.is_empty() {
            check_path("DOCS_PATH", &self.docs_path)?;
        }
        if !self.forward_auth_path.is_empty() {
            self.check_forward_auth_path()?;
        }
        for (variable, value) in [
            ("API_KEYS_ADMIN_SCOPE", &self.api_keys_admin_scope),
            ("API_KEYS_MANAGE_SCOPE", &self.api_keys_manage_scope),
            ("API_KEYS_VERIFY_SCOPE", &self.api_keys_verify_scope),
        ] {
            ensure!(
                scope::is_valid(value),
                variable,
                format!(
                    "{value:?} is not a valid scope (segments of a-z, 0-9, _ and - joined by ':')"
                )
            );
        }
        ensure!(
            self.api_keys_manage_scope != self.api_keys_admin_scope,
            "API_KEYS_MANAGE_SCOPE",
            "must differ from API_KEYS_ADMIN_SCOPE"
        );
        ensure!(
            (2..=1000).contains(&self.database_pool_size),
            "DATABASE_POOL_SIZE",
            "must be between 2 and 1000"
        );
        ensure!(
            (1..=3600).contains(&self.usage_flush_seconds),
            "USAGE_FLUSH_SECONDS",
            "must be between 1 and 3600"
        );
        self.trusted_proxies()?;
        let log_format = &self.log_format;
        ensure!(
            ["text", "json"].contains(&log_format.as_str()),
            "LOG_FORMAT",
            format!("must be text or json, got {log_format:?}")
        );
        Ok(())
    }

    /// The forward-auth path is a path of its own: neither it nor the probes, the key routes or the
    /// docs lie under another (the check answers every path below its own).
    fn check_forward_auth_path(&self) -> Result<(), ConfigError> {
        let path = self.forward_auth_path.as_str();
        check_path("FORWARD_AUTH_PATH", path)?;
        let below = |inner: &str, outer: &str| {
            inner.strip_prefix(outer).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        let taken = ["/health", "/ready", "/metrics", &self.api_keys_route_prefix, &self.docs_path];
        ensure!(
            !taken
                .into_iter()
                .any(|other| !other.is_empty() && (below(path, other) || below(other, path))),
            "FORWARD_AUTH_PATH",
            format!("{path:?} overlaps the probes, the key routes or the docs")
        );
        Ok(())
    }

    /// The proxies whose reports of the client address are believed.
    pub fn trusted_proxies(&self) -> Result<(Vec<IpNet>, ProxyHeader), ConfigError> {
        let header = self
            .proxy_header
            .parse()
            .map_err(|problem| ConfigError::new("PROXY_HEADER", problem))?;
        let networks = networks(&self.trusted_proxies)
            .map_err(|problem| ConfigError::new("TRUSTED_PROXIES", problem))?;
        Ok((networks, header))
    }

    pub fn redis_cache_ttl(&self) -> Duration {
        Duration::from_secs(self.redis_cache_ttl_seconds)
    }

    pub fn key_cache_lifetime(&self) -> Duration {
        Duration::from_secs(self.key_cache_lifetime_seconds)
    }

    pub fn key_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.key_cache_ttl_ms)
    }

    /// The Redis that instances share rate-limit counts through: the cache's, else the store's.
    pub fn shared_redis_url(&self) -> Option<&str> {
        let url = self.database_url.as_str();
        (self.redis_url.as_deref()).or((StoreKind::of(url) == Some(StoreKind::Redis)).then_some(url))
    }

    pub fn log_format(&self) -> LogFormat {
        match self.log_format.as_str() {
            "json" => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }

    pub fn usage_flush_interval(&self) -> Duration {
        Duration::from_secs(self.usage_flush_seconds)
    }
}

fn check_path(variable: &str, path: &str) -> Result<(), ConfigError> {
    let segment_ok = |segment: &str| {
        !segment.is_empty()
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    };
    ensure!(
        path.strip_prefix('/').is_some_and(|rest| rest.split('/').all(segment_ok)),
        variable,
        format!("must be a path like /api/v1/keys (no trailing slash), got {path:?}")
    );
    Ok(())
}

fn describe(err: config::ConfigError) -> ConfigError {
    match err {
        config::ConfigError::Type { key: Some(key), unexpected, expected, .. } => {
            ConfigError::new(&key.to_uppercase(), format!("expected {expected}, got {unexpected}"))
        }
        other => ConfigError::new("environment", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(vars: &[(&str, &str)]) -> String {
        Config::from_vars(vars.iter().copied()).err().expect("the value is rejected").to_string()
    }

    #[test]
    fn defaults_need_no_variables() {
        let config = Config::from_vars([]).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.api_key_header, "X-API-Key");
        assert_eq!(config.api_keys_admin_scope, "api_keys:admin");
        assert!(config.api_keys_routes);
    }

    #[test]
    fn variables_override_defaults() {
        let config = Config::from_vars([
            ("PORT", "9000"),
            ("API_KEY_PREFIX", "acme_"),
            ("API_KEYS_ROUTES", "false"),
        ])
        .unwrap();
        assert_eq!(config.port, 9000);
        assert_eq!(config.api_key_prefix, "acme_");
        assert!(!config.api_keys_routes);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("PORT", "eighty"),
            ("PORT", "70000"),
            ("API_KEY_PREFIX", "Acme_"),
            ("API_KEY_PREFIX", "acme"),
            ("API_KEY_HEADER", "X API Key"),
            ("API_KEY_PEPPER", "short"),
            ("API_KEYS_ROUTE_PREFIX", "keys"),
            ("API_KEYS_ROUTE_PREFIX", "/keys/"),
            ("API_KEYS_ADMIN_SCOPE", "Admin"),
            ("DOCS_PATH", "/docs?x"),
            ("DATABASE_URL", "mysql://db"),
            ("DATABASE_POOL_SIZE", "1"),
            ("REDIS_URL", "http://cache"),
            ("REDIS_CACHE_TTL_SECONDS", "0"),
            ("KEY_CACHE_TTL_MS", "60001"),
            ("KEY_CACHE_LIFETIME_SECONDS", "0"),
            ("KEY_CACHE_TTL_MS", "-1"),
            ("USAGE_FLUSH_SECONDS", "0"),
            ("LOG_FORMAT", "xml"),
            ("TRUSTED_PROXIES", "10.0.0.0/33"),
            ("TRUSTED_PROXIES", "nginx"),
            ("PROXY_HEADER", "via"),
            ("METRICS_ADDR", "localhost"),
            ("API_KEYS_ROUTES", "maybe"),
            ("API_KEYS_VERIFY_SCOPE", "verify keys"),
            ("FORWARD_AUTH_PATH", "auth/check"),
            ("FORWARD_AUTH_PATH", "/health"),
        ] {
            let message = error(&[(var, value)]);
            assert!(message.starts_with(&format!("{var}: ")), "{var}={value} gave {message:?}");
            assert!(!message.contains('\n'), "{message:?}");
        }
    }

    #[test]
    fn forward_auth_can_be_moved_or_turned_off() {
        assert_eq!(Config::from_vars([]).unwrap().forward_auth_path, "/auth/check");
        let moved = Config::from_vars([("FORWARD_AUTH_PATH", "/gateway/check")]).unwrap();
        assert_eq!(moved.forward_auth_path, "/gateway/check");
        assert!(
            Config::from_vars([("FORWARD_AUTH_PATH", "")]).unwrap().forward_auth_path.is_empty()
        );
        for (other, path) in [("/keys", "/keys/check"), ("/keys/v1", "/keys")] {
            let overlap = error(&[("API_KEYS_ROUTE_PREFIX", other), ("FORWARD_AUTH_PATH", path)]);
            assert!(overlap.starts_with("FORWARD_AUTH_PATH: "), "{overlap}");
        }
    }

    #[test]
    fn the_pepper_is_never_printed() {
        let pepper = "a-very-long-server-side-secret-value-123";
        let config = Config::from_vars([("API_KEY_PEPPER", pepper)]).unwrap();
        assert!(!format!("{:?}", config.api_key_pepper).contains(pepper));
    }
}
