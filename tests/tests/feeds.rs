//! Changes reach every instance through the store's change feed. Two processes of a generated
//! service share PostgreSQL, PostgreSQL with the Redis cache, Redis alone, and one SQLite file. Each
//! trusts a cached key for a whole minute when it cannot follow the feed (`KEY_CACHE_TTL_MS=60000`),
//! so within the seconds allowed here only the feed can bring a revocation. Keys are revoked
//! through the first instance while the second keeps using them; then, under load, the second's
//! feed is cut and a key revoked during the outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_api_auth_tests::servers::{Postgres, Redis};
use actix_api_auth_tests::{Client, Service, binary, free_port, generate, mint_admin_key};
use serde_json::json;

const KEYS: &str = "/api/v1/api-keys";
/// Far below the one-minute trust without a feed, far above what a working feed takes.
const PATIENCE: Duration = Duration::from_secs(5);

fn create(client: &Client, admin: &str) -> (String, String) {
    let (status, created) = client.send("POST", KEYS, Some(admin), Some(json!({"name": "fed"})));
    assert_eq!(status, 201, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    )
}

/// Waits until `client`'s instance follows its change feed, as its metrics say.
fn following(client: &Client) {
    let start = Instant::now();
    while !client.text("/metrics").contains("key_change_feed_up 1") {
        assert!(
            start.elapsed() < PATIENCE,
            "the instance never followed its change feed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Revokes a key through `a` that `b` has cached; how long until `b` refuses it.
fn revocation(a: &Client, b: &Client, admin: &str, before: impl FnOnce()) -> Duration {
    let (id, key) = create(a, admin);
    assert_eq!(
        b.send("GET", "/protected", Some(&key), None).0,
        200,
        "cached by the other"
    );
    before();
    assert_eq!(
        a.send("DELETE", &format!("{KEYS}/{id}"), Some(admin), None)
            .0,
        204
    );
    let revoked = Instant::now();
    loop {
        match b.send("GET", "/protected", Some(&key), None).0 {
            401 => return revoked.elapsed(),
            200 => assert!(revoked.elapsed() < PATIENCE, "the revocation never arrived"),
            other => panic!("the other instance answered {other}"),
        }
    }
}

/// Two instances on `env`: revocations measured, then one made while `cut` breaks the second's feed
/// under load.
fn pair(name: &str, bin: &std::path::Path, env: &[(&str, &str)], cut: impl Fn()) {
    let env: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([
            ("KEY_CACHE_TTL_MS", "60000"),
            ("AUTH_FAILURES_PER_MINUTE", "0"),
            ("RUST_LOG", "error"),
        ])
        .collect();
    let admin = mint_admin_key(bin, &env);
    let (first, second) = (
        Service::start(bin, &env, free_port()),
        Service::start(bin, &env, free_port()),
    );
    let (a, b) = (Client::new(&first.base_url), Client::new(&second.base_url));
    let (_, warm) = create(&a, &admin);
    assert_eq!(b.send("GET", "/protected", Some(&warm), None).0, 200);
    following(&b);

    let mut took: Vec<Duration> = (0..30).map(|_| revocation(&a, &b, &admin, || {})).collect();
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name}: a revocation reached the other instance in {:?} (median), {:?} (p99)",
        at(0.5),
        at(0.99)
    );

    let (_, busy) = create(&a, &admin);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let client = Client::new(&second.base_url);
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(client.send("GET", "/protected", Some(&busy), None).0, 200);
                served += 1;
            }
            served
        });
        let outage = revocation(&a, &b, &admin, &cut);
        stop.store(true, Ordering::Relaxed);
        let served = load.join().unwrap();
        println!(
            "{name}: with its feed cut under load ({served} requests), the other instance refused the revoked key after {outage:?}"
        );
    });
    following(&b);
}

#[test]
fn changes_reach_every_instance_through_the_change_feed() {
    let postgres = Postgres::start();
    let redis = Redis::start();
    let project = generate("feeds-svc", &["database=postgres", "redis_cache=true"]);
    let bin = binary(&project, "feeds-svc");
    let redis_url = redis.url();
    let cut_postgres = |database: &str| {
        let query = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = 'api-keys-change-feed'";
        assert_ne!(
            postgres.sql(database, query).trim(),
            "0",
            "a listening connection was cut"
        );
    };

    let database = postgres.database("feeds");
    pair("PostgreSQL", &bin, &[("DATABASE_URL", &database)], || {
        cut_postgres("feeds")
    });
    let database = postgres.database("feeds_cached");
    let env = [
        ("DATABASE_URL", database.as_str()),
        ("REDIS_URL", redis_url.as_str()),
    ];
    pair("PostgreSQL + Redis cache", &bin, &env, || {
        cut_postgres("feeds_cached")
    });
    let cut_redis = || {
        assert_ne!(
            redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).trim(),
            "0",
            "a subscriber was cut"
        );
    };
    pair("Redis", &bin, &[("DATABASE_URL", &redis_url)], cut_redis);

    let project = generate("feeds-sqlite-svc", &["database=sqlite"]);
    let bin = binary(&project, "feeds-sqlite-svc");
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("keys.db").display());
    // SQLite's feed is the audit log, read every 25 ms: there is no connection to cut.
    pair("SQLite", &bin, &[("DATABASE_URL", &database)], || {});
}
