//! Brute-force limits: failed authentications counted per client address and per key id.
//!
//! Counting is GCRA (the `governor` crate): `AUTH_FAILURES_PER_MINUTE` failures in a burst, then one
//! every `60 / n` seconds. An address over its limit is refused with 429 before its key is even
//! read, whatever key it sends. A key id over its own limit answers 429 to wrong secrets only: its
//! holder keeps working, since refusing the right secret would let anyone who saw the id (it is
//! public, and in logs) lock the key, and a 256-bit secret cannot be guessed anyway.
//!
//! Memory is bounded: states live in capacity-bounded caches, so a flood of distinct addresses
//! evicts old entries instead of growing a map. IPv6 clients are counted per /64, the block one
//! host usually holds.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use crate::store::quota::entry;

/// How many addresses and key ids are tracked at most, each.
const CAPACITY: usize = 65_536;

/// The failure limits of one service.
pub struct FailureLimits {
    by_address: Option<Counter<IpAddr>>,
    by_key: Option<Counter<String>>,
}

impl FailureLimits {
    /// Limits of `per_address` and `per_key` failures a minute; zero turns a limit off.
    pub fn new(per_address: u32, per_key: u32) -> Self {
        Self {
            by_address: NonZeroU32::new(per_address).map(Counter::new),
            by_key: NonZeroU32::new(per_key).map(Counter::new),
        }
    }

    /// How long a refused client should wait, at most: one emission interval of the stricter limit.
    pub fn retry_after(&self) -> Duration {
        let by_address = self.by_address.as_ref().map(|c| c.interval);
        let by_key = self.by_key.as_ref().map(|c| c.interval);
        by_address.max(by_key).unwrap_or_default()
    }

    /// Whether requests from `address` are refused for now.
    pub fn address_blocked(&self, address: IpAddr) -> bool {
        self.by_address.as_ref().is_some_and(|c| c.blocked(&client(address)))
    }

    /// Whether two addresses are counted as one client (the same IPv4 address, or IPv6 /64).
    pub fn same_client(a: IpAddr, b: IpAddr) -> bool {
        client(a) == client(b)
    }

    /// Counts a failed authentication from `address`; `true` when it went over the limit.
    pub fn address_failed(&self, address: IpAddr) -> bool {
        let over = self.by_address.as_ref().is_some_and(|counter| counter.failed(&client(address)));
        if over {
            tracing::warn!(target: "audit", client = %address, "too many failed authentications: address refused for now");
        }
        over
    }

    /// Counts a wrong secret for the existing key `id`; `true` once the key's limit is exceeded.
    pub fn key_failed(&self, id: &str) -> bool {
        let Some(counter) = &self.by_key else {
            return false;
        };
        let key = id.to_owned();
        if counter.blocked(&key) {
            // Logged when the limit was crossed; the refusals since are in the failure audit's
            // tallies, so a flood of wrong secrets writes one line here, not one per request.
            return true;
        }
        let over = counter.failed(&key);
        if over {
            tracing::warn!(target: "audit", key_id = id, "too many wrong secrets for this key");
        }
        over
    }
}

/// Addresses as they are counted: IPv4 as is, IPv6 by its /64 network.
fn client(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// Failures per key, and who is refused until when.
struct Counter<K: Hash + Eq + Clone> {
    limiter: RateLimiter<
        K,
        BoundedStore<K>,
        DefaultClock,
        NoOpMiddleware<<DefaultClock as Clock>::Instant>,
    >,
    /// The limiter's states, also held by its store: the tests watch their number.
    #[cfg(test)]
    states: Arc<StateCache<K>>,
    refused_until: quick_cache::sync::Cache<K, Instant>,
    interval: Duration,
}

type StateCache<K> = quick_cache::sync::Cache<K, Arc<InMemoryState>>;

impl<K: Hash + Eq + Clone> Counter<K> {
    fn new(per_minute: NonZeroU32) -> Self {
        let quota = Quota::per_minute(per_minute);
        let store = BoundedStore(Arc::new(quick_cache::sync::Cache::new(CAPACITY)));
        Self {
            interval: quota.replenish_interval(),
            #[cfg(test)]
            states: store.0.clone(),
            limiter: RateLimiter::new(quota, store, DefaultClock::default()),
            refused_until: quick_cache::sync::Cache::new(CAPACITY),
        }
    }

    fn blocked(&self, key: &K) -> bool {
        self.refused_until.get(key).is_some_and(|until| Instant::now() < until)
    }

    /// Counts one failure; `true` when it went over the limit.
    fn failed(&self, key: &K) -> bool {
        match self.limiter.check_key(key) {
            Ok(()) => false,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                self.refused_until.insert(key.clone(), Instant::now() + wait);
                true
            }
        }
    }
}

/// A governor state store in a capacity-bounded cache: each key's state is governor's own
/// `InMemoryState`; an evicted key starts afresh.
struct BoundedStore<K: Hash + Eq + Clone>(Arc<StateCache<K>>);

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        entry(&self.0, key, Arc::default).measure_and_replace(&NotKeyed::NonKey, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_burst() {
        let limits = FailureLimits::new(3, 0);
        let attacker: IpAddr = "203.0.113.7".parse().unwrap();
        let neighbour: IpAddr = "203.0.113.8".parse().unwrap();
        for _ in 0..3 {
            assert!(!limits.address_blocked(attacker));
            assert!(!limits.address_failed(attacker));
        }
        assert!(limits.address_failed(attacker), "the fourth failure is one too many");
        assert!(limits.address_blocked(attacker));
        assert!(!limits.address_blocked(neighbour));
        assert_eq!(limits.retry_after(), Duration::from_secs(20));
    }

    #[test]
    fn ipv6_hosts_are_counted_per_64() {
        let limits = FailureLimits::new(1, 0);
        assert!(!limits.address_failed("2001:db8:1:2::1".parse().unwrap()));
        assert!(limits.address_failed("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert!(limits.address_blocked("2001:db8:1:2::abcd".parse().unwrap()));
        assert!(!limits.address_blocked("2001:db8:1:3::1".parse().unwrap()));
    }

    #[test]
    fn a_key_id_is_limited_on_its_own() {
        let limits = FailureLimits::new(0, 2);
        assert!(!limits.key_failed("abc"));
        assert!(!limits.key_failed("abc"));
        assert!(limits.key_failed("abc"));
        assert!(!limits.key_failed("def"));
        assert!(!limits.address_blocked("192.0.2.1".parse().unwrap()), "off");
    }

    #[test]
    fn a_flood_of_addresses_stays_bounded() {
        let limits = FailureLimits::new(5, 0);
        for n in 0..(4 * CAPACITY as u32) {
            let _ = limits.address_failed(IpAddr::V4(n.into()));
        }
        let counter = limits.by_address.as_ref().unwrap();
        assert!(counter.states.len() <= CAPACITY);
        assert!(counter.refused_until.len() <= CAPACITY);
    }
}
