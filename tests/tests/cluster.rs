//! Two instances of a generated service on one PostgreSQL and one Redis, as behind a load balancer:
//! a revocation reaches the other instance within the documented bound, usage counts add up exactly,
//! a key's rate limit and quota hold across both instances under parallel load, a rotated key retires
//! on both, and outages of Redis or PostgreSQL degrade the service the documented way, then heal by
//! themselves.

use std::time::{Duration, Instant};

use actix_api_auth_tests::servers::{Postgres, Redis};
use actix_api_auth_tests::{Client, Service, binary, free_port, generate, mint_admin_key};
use serde_json::json;

const KEYS: &str = "/api/v1/api-keys";
/// How soon a change reaches another instance even without the change feed (`KEY_CACHE_TTL_MS`);
/// with it, changes take milliseconds (see `feeds.rs`).
const BOUND: Duration = Duration::from_millis(500);

fn create_key(client: &Client, admin: &str, name: &str) -> (String, String) {
    let (status, created) = client.send("POST", KEYS, Some(admin), Some(json!({ "name": name })));
    assert_eq!(status, 201, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    )
}

/// `threads` × `each` parallel requests with `key`, alternating between the two instances; how many
/// were admitted (200) and how many refused with `code` (429).
fn hammer(urls: [&str; 2], key: &str, threads: usize, each: usize, code: &str) -> (usize, usize) {
    let outcomes: Vec<(u16, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let clients = urls.map(Client::new);
                    (0..each)
                        .map(|i| {
                            let (status, body) =
                                clients[(t + i) % 2].send("GET", "/protected", Some(key), None);
                            (status, body["code"].as_str().unwrap_or_default().to_owned())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let admitted = outcomes.iter().filter(|(status, _)| *status == 200).count();
    let refused = outcomes
        .iter()
        .filter(|(status, body)| *status == 429 && body == code)
        .count();
    assert_eq!(
        admitted + refused,
        threads * each,
        "nothing else: {outcomes:?}"
    );
    (admitted, refused)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn two_instances_on_postgres_and_redis() {
    let postgres = Postgres::start();
    let redis = Redis::start();
    let database = postgres.database("cluster");
    let redis_url = redis.url();
    let project = generate("cluster-svc", &["database=postgres", "redis_cache=true"]);
    let bin = binary(&project, "cluster-svc");
    let env = [
        ("DATABASE_URL", database.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("USAGE_FLUSH_SECONDS", "1"),
        ("RUST_LOG", "error"),
        // Every request comes from 127.0.0.1, and the outage checks below send many refused ones.
        ("AUTH_FAILURES_PER_MINUTE", "0"),
    ];
    let admin = mint_admin_key(&bin, &env);
    let a = Service::start(&bin, &env, free_port());
    let b = Service::start(&bin, &env, free_port());
    let (ca, cb) = (Client::new(&a.base_url), Client::new(&b.base_url));

    // Usage spread over both instances adds up exactly once both have flushed.
    let (id, key) = create_key(&ca, &admin, "shared");
    let mut accepted = 0;
    for i in 0..40 {
        let client = if i % 2 == 0 { &ca } else { &cb };
        assert_eq!(client.send("GET", "/protected", Some(&key), None).0, 200);
        accepted += 1;
    }

    // Revoked through A, refused by A at once and by B within the bound.
    assert_eq!(
        ca.send("DELETE", &format!("{KEYS}/{id}"), Some(&admin), None)
            .0,
        204
    );
    let (status, problem) = ca.send("GET", "/protected", Some(&key), None);
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("revoked_api_key"))
    );
    let took = wait_until("revocation reaches B", Duration::from_secs(3), || match cb
        .send("GET", "/protected", Some(&key), None)
        .0
    {
        401 => true,
        200 => {
            accepted += 1;
            false
        }
        other => panic!("B answered {other}"),
    });
    println!("revocation reached instance B in {took:?}");
    assert!(took <= BOUND + Duration::from_millis(300), "took {took:?}");

    std::thread::sleep(Duration::from_millis(2500));
    let (_, details) = ca.send("GET", &format!("{KEYS}/{id}"), Some(&admin), None);
    assert_eq!(
        details["request_count"], accepted,
        "every accepted request counted once"
    );

    // A rate limit is shared through Redis: 30 an hour, whichever instance is asked, under load.
    let urls = [a.base_url.as_str(), b.base_url.as_str()];
    let limited = json!({"name": "limited", "rate_limit": {"requests": 30, "window": 3600}});
    let (status, created) = ca.send("POST", KEYS, Some(&admin), Some(limited));
    assert_eq!(status, 201, "{created}");
    let (admitted, refused) = hammer(
        urls,
        created["key"].as_str().unwrap(),
        8,
        15,
        "rate_limit_exceeded",
    );
    println!("rate limit 30/h over two instances: {admitted} admitted, {refused} refused of 120");
    assert_eq!(admitted, 30, "the limit holds across instances");

    // A busy key takes its requests from the shared count in blocks: far fewer round trips than
    // requests, and never more admitted than the limit. A block is held for a second at most, so
    // at most one block per instance (640 / 16) may go unused.
    let calls =
        || sum(&ca, "shared_rate_limit_calls_total") + sum(&cb, "shared_rate_limit_calls_total");
    let before = calls();
    let busy = json!({"name": "busy", "rate_limit": {"requests": 640, "window": 3600}});
    let (status, created) = ca.send("POST", KEYS, Some(&admin), Some(busy));
    assert_eq!(status, 201, "{created}");
    let busy_key = created["key"].as_str().unwrap();
    let (admitted, _) = hammer(urls, busy_key, 8, 100, "rate_limit_exceeded");
    let calls = calls() - before;
    println!(
        "rate limit 640/h over two instances: {admitted} admitted of 800, {calls} Redis calls"
    );
    assert!(
        (640 - 2 * 40..=640).contains(&admitted),
        "{admitted} admitted"
    );
    assert!(
        calls * 4.0 < admitted as f64,
        "{calls} Redis calls for {admitted} requests"
    );

    // A quota is taken atomically in PostgreSQL: 50 uses, never more, whoever asks.
    let metered = json!({"name": "metered", "remaining": 50});
    let (status, created) = ca.send("POST", KEYS, Some(&admin), Some(metered));
    assert_eq!(status, 201, "{created}");
    let (admitted, refused) = hammer(
        urls,
        created["key"].as_str().unwrap(),
        8,
        20,
        "usage_exceeded",
    );
    println!("quota of 50 over two instances: {admitted} admitted, {refused} refused of 160");
    assert_eq!(admitted, 50, "the quota is never overspent");
    let uri = format!("{KEYS}/{}", created["id"].as_str().unwrap());
    assert_eq!(cb.send("GET", &uri, Some(&admin), None).1["remaining"], 0);

    // A busy metered key takes its uses in blocks: far fewer writes than requests, and exactly its
    // quota admitted when demand exceeds it.
    let writes = || {
        let name = "storage_operations_total{operation=\"use_quota\"}";
        sum(&ca, name) + sum(&cb, name)
    };
    let before = writes();
    let metered = json!({"name": "busy-metered", "remaining": 3000});
    let (status, created) = ca.send("POST", KEYS, Some(&admin), Some(metered));
    assert_eq!(status, 201, "{created}");
    let metered_key = created["key"].as_str().unwrap();
    let (admitted, _) = hammer(urls, metered_key, 8, 450, "usage_exceeded");
    let writes = writes() - before;
    println!(
        "quota of 3000 over two instances: {admitted} admitted of 3600, {writes} store writes"
    );
    assert_eq!(admitted, 3000, "the quota, no more and no less");
    assert!(
        writes * 4.0 < admitted as f64,
        "{writes} store writes for {admitted} requests"
    );

    // A key disabled through A is refused by B within the bound, and works again once enabled.
    let (switch_id, switch) = create_key(&ca, &admin, "switched");
    assert_eq!(cb.send("GET", "/protected", Some(&switch), None).0, 200);
    let uri = format!("{KEYS}/{switch_id}");
    let (status, _) = ca.send("PATCH", &uri, Some(&admin), Some(json!({"enabled": false})));
    assert_eq!(status, 200);
    let took = wait_until("the update reaches B", BOUND * 3, || {
        let (status, problem) = cb.send("GET", "/protected", Some(&switch), None);
        status == 401 && problem["code"] == "disabled_api_key"
    });
    println!("an update reached instance B in {took:?}");
    assert!(took <= BOUND + Duration::from_millis(300), "took {took:?}");
    ca.send("PATCH", &uri, Some(&admin), Some(json!({"enabled": true})));
    wait_until("enabled again on B", BOUND * 3, || {
        cb.send("GET", "/protected", Some(&switch), None).0 == 200
    });

    // A key rotated through A works on B for its grace period, then B refuses it too.
    let (old_id, old_key) = create_key(&ca, &admin, "rotated");
    assert_eq!(cb.send("GET", "/protected", Some(&old_key), None).0, 200);
    let rotate = format!("{KEYS}/{old_id}/rotate");
    let (status, rotated) = ca.send(
        "POST",
        &rotate,
        Some(&admin),
        Some(json!({"grace_period": 1})),
    );
    assert_eq!(status, 201, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap();
    assert_eq!(cb.send("GET", "/protected", Some(new_key), None).0, 200);
    wait_until(
        "the old key retires on B",
        Duration::from_secs(1) + BOUND * 3,
        || {
            let (status, problem) = cb.send("GET", "/protected", Some(&old_key), None);
            status == 401 && problem["code"] == "rotated_api_key"
        },
    );
    assert_eq!(cb.send("GET", "/protected", Some(new_key), None).0, 200);

    // Redis down: valid keys still work from the database, revoked ones stay refused, no 5xx.
    let (_, fresh) = create_key(&ca, &admin, "during-outage");
    redis.stop();
    for _ in 0..30 {
        for client in [&ca, &cb] {
            assert_eq!(client.send("GET", "/protected", Some(&fresh), None).0, 200);
            assert_eq!(client.send("GET", "/protected", Some(&key), None).0, 401);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Redis back: the cache fills again without a restart. B keeps the keys it has read until they
    // change, so each try uses a key B has not seen.
    redis.restart();
    let mut in_redis = String::new();
    wait_until(
        "the Redis cache is used again",
        Duration::from_secs(10),
        || {
            (_, in_redis) = create_key(&ca, &admin, "after-outage");
            assert_eq!(cb.send("GET", "/protected", Some(&in_redis), None).0, 200);
            redis.cli(&["dbsize"]).trim() != "0"
        },
    );

    // PostgreSQL down: what needs it answers 503 with a problem body; keys in the Redis cache keep
    // working (B's own copies are trusted only briefly once its change feed, on PostgreSQL, is lost).
    let (_, cold) = create_key(&ca, &admin, "never-used");
    postgres.stop();
    let (status, problem) = ca.send("GET", KEYS, Some(&admin), None);
    assert_eq!(
        (status, problem["code"].as_str()),
        (503, Some("storage_unavailable")),
        "{problem}"
    );
    let (status, problem) = cb.send("GET", "/protected", Some(&cold), None);
    assert_eq!(
        (status, problem["code"].as_str()),
        (503, Some("storage_unavailable")),
        "{problem}"
    );
    assert_eq!(
        cb.send("GET", "/protected", Some(&in_redis), None).0,
        200,
        "served from the caches"
    );
    // PostgreSQL back: the pools reconnect by themselves.
    postgres.restart();
    wait_until(
        "the database is used again",
        Duration::from_secs(15),
        || ca.send("GET", KEYS, Some(&admin), None).0 == 200,
    );
    assert_eq!(cb.send("GET", "/protected", Some(&cold), None).0, 200);

    // A crash loses the quota uses the instance held: at most two blocks (see lifecycle.md). Blocks
    // double from one use, so after 1,200 uses none is over 1,024; the bound leaves room to spare.
    wait_until(
        "A follows its change feed again",
        Duration::from_secs(15),
        || sum(&ca, "key_change_feed_up") == 1.0,
    );
    let metered = json!({"name": "crashing", "remaining": 100_000});
    let (status, created) = ca.send("POST", KEYS, Some(&admin), Some(metered));
    assert_eq!(status, 201, "{created}");
    let crashing_key = created["key"].as_str().unwrap();
    let (admitted, _) = hammer(
        [a.base_url.as_str(); 2],
        crashing_key,
        8,
        150,
        "usage_exceeded",
    );
    assert_eq!(admitted, 1200);
    a.kill();
    let uri = format!("{KEYS}/{}", created["id"].as_str().unwrap());
    let remaining = cb.send("GET", &uri, Some(&admin), None).1["remaining"]
        .as_u64()
        .unwrap();
    let lost = 100_000 - 1200 - remaining;
    println!("SIGKILL after 1200 uses of a quota lost {lost} uses");
    assert!(lost <= 3_072, "{lost} uses lost");

    assert!(b.stop().success());
}

/// The sum of the samples of the metric `series` (with or without labels) an instance reports.
fn sum(client: &Client, series: &str) -> f64 {
    client
        .text("/metrics")
        .lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
