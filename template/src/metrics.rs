//! Prometheus metrics of the authentication path and the key store, served at `GET /metrics` in the
//! OpenMetrics text format.
//!
//! The registry is process-wide, like the process it describes. Counters on the request path are
//! looked up once and kept, so counting a request is one atomic add.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::http::Method;
use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

type Labels<const N: usize> = [(&'static str, &'static str); N];
type Durations = Family<RequestLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: Cow<'static, str>,
    status: u16,
}

pub struct Metrics {
    registry: Registry,
    auth_attempts: Family<Labels<1>, Counter>,
    key_cache: Family<Labels<2>, Counter>,
    local_hits: Counter,
    storage_operations: Family<Labels<1>, Counter>,
    usage_flushes: Family<Labels<1>, Counter>,
    usage_flushed_keys: Counter,
    limit_refusals: Family<Labels<1>, Counter>,
    shared_rate_calls: Counter,
    request_durations: Durations,
    flush_lag: Gauge<f64, AtomicU64>,
    change_feed_up: Gauge,
    /// Until when, in milliseconds after `started`, the change feed counts as followed.
    change_feed_until_ms: AtomicU64,
    /// Milliseconds after `started` of the last successful usage flush.
    last_flush_ms: AtomicU64,
    started: Instant,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let auth_attempts: Family<Labels<1>, Counter> = register(
            &mut registry,
            "auth_attempts",
            "Requests that presented an API key, by outcome (authenticated or the error code)",
        );
        let key_cache: Family<Labels<2>, Counter> = register(
            &mut registry,
            "key_cache_lookups",
            "Key lookups answered by a cache (hit) or passed on (miss), by cache",
        );
        let storage_operations = register(
            &mut registry,
            "storage_operations",
            "Round trips to the key store (the database, or Redis when it is the store), by operation",
        );
        let usage_flushes = register(
            &mut registry,
            "usage_flushes",
            "Batched writes of counted key usage, by result",
        );
        let usage_flushed_keys = register(
            &mut registry,
            "usage_flushed_keys",
            "Keys whose usage was written by a flush",
        );
        let limit_refusals = register(
            &mut registry,
            "key_limit_refusals",
            "Requests of valid keys refused by the key's own rate limit or quota, by code",
        );
        let shared_rate_calls = register(
            &mut registry,
            "shared_rate_limit_calls",
            "Round trips to Redis for rate limits shared by every instance",
        );
        let request_durations: Durations = Family::new_with_constructor(|| {
            // 0.1 ms to about 3 s, doubling.
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request, by method, route pattern and status",
            request_durations.clone(),
        );
        let flush_lag = register(
            &mut registry,
            "usage_flush_lag_seconds",
            "Seconds since counted key usage was last written to the store",
        );
        let change_feed_up = register(
            &mut registry,
            "key_change_feed_up",
            "1 while this instance follows its store's change feed (cached keys live until they \
             change), 0 while it does not (they live KEY_CACHE_TTL_MS)",
        );
        Self {
            auth_attempts,
            local_hits: key_cache.get_or_create_owned(&[("cache", "local"), ("result", "hit")]),
            registry,
            key_cache,
            storage_operations,
            usage_flushes,
            usage_flushed_keys,
            limit_refusals,
            shared_rate_calls,
            request_durations,
            flush_lag,
            change_feed_up,
            change_feed_until_ms: AtomicU64::new(0),
            last_flush_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The counter of authentication attempts with this outcome (`authenticated`, or the code of
    /// the failure), for the authenticator to keep at hand rather than look up per request.
    pub fn auth_attempts(&self, outcome: &'static str) -> Counter {
        self.auth_attempts.get_or_create_owned(&[("outcome", outcome)])
    }

    /// Counts a lookup in the cache called `cache` (`local` or `redis`).
    pub fn key_cache(&self, cache: &'static str, hit: bool) {
        if cache == "local" && hit {
            self.local_hits.inc();
            return;
        }
        let result = if hit { "hit" } else { "miss" };
        self.key_cache.get_or_create(&[("cache", cache), ("result", result)]).inc();
    }

    /// Counts one round trip to the key store.
    pub fn storage_operation(&self, operation: &'static str) {
        self.storage_operations.get_or_create(&[("operation", operation)]).inc();
    }

    /// Counts a usage flush that wrote `keys` keys, all it had (`ok`) or some.
    pub fn usage_flush(&self, keys: usize, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.usage_flushes.get_or_create(&[("result", result)]).inc();
        self.usage_flushed_keys.inc_by(keys as u64);
        if ok {
            let since_start = self.started.elapsed().as_millis();
            self.last_flush_ms
                .store(u64::try_from(since_start).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    /// Records how long a request took. `route` is the matched pattern (`/api/v1/api-keys/{id}`),
    /// never the path, and methods outside HTTP's own are `other`: what a caller sends cannot grow
    /// the number of series.
    pub fn request_duration(
        &self,
        method: &Method,
        route: Option<String>,
        status: u16,
        took: Duration,
    ) {
        let labels = RequestLabels {
            method: method_label(method),
            route: route.map_or(Cow::Borrowed("unmatched"), Cow::Owned),
            status,
        };
        self.request_durations.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The change feed is followed until `until`, unless heard from again.
    pub fn change_feed_heard(&self, until: Instant) {
        let until = until.saturating_duration_since(self.started).as_millis();
        self.change_feed_until_ms
            .store(u64::try_from(until).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The change feed is lost.
    pub fn change_feed_lost(&self) {
        self.change_feed_until_ms.store(0, Ordering::Relaxed);
    }

    /// Counts a request refused by its key's rate limit or quota, by problem `code`.
    pub fn limit_refusal(&self, code: &'static str) {
        self.limit_refusals.get_or_create(&[("code", code)]).inc();
    }

    /// Counts a round trip to Redis for a shared rate limit.
    pub fn shared_rate_call(&self) {
        self.shared_rate_calls.inc();
    }

    /// Every metric, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let last_flush = Duration::from_millis(self.last_flush_ms.load(Ordering::Relaxed));
        let lag = self.started.elapsed().saturating_sub(last_flush);
        self.flush_lag.set(lag.as_secs_f64());
        let until = Duration::from_millis(self.change_feed_until_ms.load(Ordering::Relaxed));
        self.change_feed_up.set(i64::from(self.started.elapsed() < until));
        let mut out = String::new();
        text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

fn method_label(method: &Method) -> &'static str {
    const METHODS: [&str; 9] =
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];
    METHODS.into_iter().find(|known| *known == method.as_str()).unwrap_or("other")
}

/// A new metric, registered under `name`; the registry keeps a handle to the same values.
fn register<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_cannot_invent_method_labels() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let invented = Method::from_bytes(b"FROBNICATE").unwrap();
        assert_eq!(method_label(&invented), "other");
    }
}
