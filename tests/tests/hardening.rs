//! A generated service under hostile conditions, as separate processes on a real SQLite file and a
//! real Redis: no key ever leaks into logs (at trace level) or storage, a SIGTERM under load loses no
//! usage count, under concurrent load with faults no revoked, expired or made-up key is let in, and
//! schemathesis, driven by the service's own OpenAPI document, finds no server error and no answer
//! that contradicts the document.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_api_auth_tests::servers::{Nginx, Redis};
use actix_api_auth_tests::{Client, Service, binary, free_port, generate, mint_admin_key, tools};
use regex::Regex;
use serde_json::json;

const KEYS: &str = "/api/v1/api-keys";
const NAME: &str = "vault-svc";

/// The service binary, generated and built once for every test here.
fn service_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| binary(&generate(NAME, &["redis_cache=true"]), NAME))
        .clone()
}

/// Any key of any generated service, whole: prefix, id, separator, secret and checksum.
fn key_shape() -> Regex {
    Regex::new("[a-z0-9]{1,15}_[0-9A-Za-z]{12}_[0-9A-Za-z]{49}").unwrap()
}

fn create(client: &Client, admin: &str, body: serde_json::Value) -> (String, String) {
    let (status, created) = client.send("POST", KEYS, Some(admin), Some(body));
    assert_eq!(status, 201, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    )
}

/// The same key with one character of its secret changed and a checksum that fits: a wrong secret
/// that reaches the digest comparison, as a forger who knows the format would send it.
fn wrong_secret(key: &str) -> String {
    let mut body = key[..key.len() - 6].to_owned().into_bytes();
    let at = body.len() - 14;
    body[at] = if body[at] == b'a' { b'b' } else { b'a' };
    with_checksum(&body)
}

/// Every key this test issued, and every key-shaped string, must be absent from `haystack`.
fn assert_no_key(what: &str, haystack: &[u8], issued: &[String]) {
    let text = String::from_utf8_lossy(haystack);
    for key in issued {
        // The secret alone would be a leak too.
        let secret = &key[key.len() - 49..key.len() - 6];
        assert!(
            !text.contains(secret),
            "{what} holds the secret of {}",
            &key[..15]
        );
    }
    if let Some(found) = key_shape().find(&text) {
        panic!(
            "{what} holds something shaped like a key: {}…",
            &found.as_str()[..15]
        );
    }
}

#[test]
fn keys_never_leak_into_logs_or_storage() {
    let redis = Redis::start();
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let db = scratch.path().join("vault.db");
    let log = scratch.path().join("service.log");
    let database_url = format!("sqlite://{}", db.display());
    let redis_url = redis.url();
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("RUST_LOG", "trace"),
        ("USAGE_FLUSH_SECONDS", "1"),
    ];

    // The CLI at trace level: the key goes to stdout, alone; nothing key-shaped to stderr.
    let cli = std::process::Command::new(&bin)
        .args(["keys", "create", "--name", "bootstrap", "--admin"])
        .envs(env)
        .output()
        .unwrap();
    assert!(cli.status.success());
    let admin = String::from_utf8(cli.stdout).unwrap().trim().to_owned();
    assert!(key_shape().is_match(&admin));
    let mut issued = vec![admin.clone()];
    assert_no_key("the CLI's log", &cli.stderr, &issued);

    let service = Service::start_logged(&bin, &env, free_port(), &log);
    let client = Client::new(&service.base_url);
    let (id, key) = create(
        &client,
        &admin,
        json!({"name": "reader", "scopes": ["users:read"]}),
    );
    let (doomed_id, doomed) = create(&client, &admin, json!({"name": "doomed"}));
    let (_, admin_all) = create(
        &client,
        &admin,
        json!({"name": "verifier", "scopes": ["*"]}),
    );
    issued.extend([key.clone(), doomed.clone(), admin_all.clone()]);

    // Every path a key takes: success, both headers, wrong secrets, revoked, in a query string,
    // in a body, listed, read, and a repeated header.
    assert_eq!(client.send("GET", "/protected", Some(&key), None).0, 200);
    assert_eq!(client.send("GET", "/api/data", Some(&key), None).0, 200);
    assert_eq!(
        client
            .send("GET", "/protected", Some(&wrong_secret(&key)), None)
            .0,
        401
    );
    assert_eq!(
        client
            .send("DELETE", &format!("{KEYS}/{doomed_id}"), Some(&admin), None)
            .0,
        204
    );
    assert_eq!(client.send("GET", "/protected", Some(&doomed), None).0, 401);
    assert_eq!(
        client
            .send("GET", &format!("/protected?api_key={key}"), None, None)
            .0,
        401
    );
    let (status, _) = client.send("POST", KEYS, Some(&admin), Some(json!({"name": key})));
    assert_eq!(
        status, 422,
        "a key-shaped name is refused, so it is never stored"
    );
    // Verified for another service: valid, a wrong secret, revoked, and in a field that is refused.
    let verify = format!("{KEYS}/verify");
    for (presented, code) in [
        (key.clone(), "valid"),
        (wrong_secret(&key), "invalid_api_key"),
        (doomed.clone(), "revoked_api_key"),
    ] {
        let (status, verdict) = client.send(
            "POST",
            &verify,
            Some(&admin_all),
            Some(json!({"key": presented})),
        );
        assert_eq!(
            (status, verdict["code"].as_str()),
            (200, Some(code)),
            "{verdict}"
        );
    }
    let (status, _) = client.send(
        "POST",
        &verify,
        Some(&admin_all),
        Some(json!({"key": key, "scopes": [key]})),
    );
    assert_eq!(status, 422);
    // Through the forward-auth check, as a proxy sends it.
    assert_eq!(client.send("GET", "/auth/check", Some(&key), None).0, 200);
    assert_eq!(
        client
            .send("GET", "/auth/check", Some(&wrong_secret(&key)), None)
            .0,
        401
    );
    assert_eq!(
        client
            .send("GET", &format!("{KEYS}/{id}"), Some(&admin), None)
            .0,
        200
    );
    assert_eq!(client.send("GET", KEYS, Some(&admin), None).0, 200);
    let bearer = ureq::get(format!("{}/protected", service.base_url))
        .header("Authorization", format!("Bearer {key}"))
        .call()
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let repeated = ureq::get(format!("{}/protected", service.base_url))
        .header("X-API-Key", &key)
        .header("X-API-Key", &key)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(repeated.status(), 401);
    // The key's later life: updated, rotated (a new key, shown once), its audit trail read.
    let (status, _) = client.send(
        "PATCH",
        &format!("{KEYS}/{id}"),
        Some(&admin),
        Some(json!({"name": "reader v2", "rate_limit": {"requests": 100, "window": 60}})),
    );
    assert_eq!(status, 200);
    let (status, rotated) = client.send(
        "POST",
        &format!("{KEYS}/{doomed_id}/rotate"),
        Some(&admin),
        Some(json!({})),
    );
    assert_eq!(status, 409, "a revoked key is not rotated: {rotated}");
    let (status, rotated) = client.send(
        "POST",
        &format!("{KEYS}/{id}/rotate"),
        Some(&admin),
        Some(json!({"grace_period": 60})),
    );
    assert_eq!(status, 201, "{rotated}");
    let replacement = rotated["key"].as_str().unwrap().to_owned();
    issued.push(replacement.clone());
    assert_eq!(
        client.send("GET", "/protected", Some(&replacement), None).0,
        200
    );
    let (status, events) = client.send("GET", &format!("{KEYS}/{id}/events"), Some(&admin), None);
    assert_eq!(status, 200);
    assert_eq!(events["total"], 3, "created, updated, rotated: {events}");
    std::thread::sleep(Duration::from_millis(1500));
    let (_, details) = client.send("GET", &format!("{KEYS}/{id}"), Some(&admin), None);
    // Two guarded requests, one verified for another service and one passed by the check.
    assert_eq!(details["request_count"], 5, "the flush ran: {details}");
    assert!(service.stop().success());

    // The CLI's rotation prints the new key alone on stdout, like creation.
    let cli = std::process::Command::new(&bin)
        .args([
            "keys",
            "rotate",
            rotated["id"].as_str().unwrap(),
            "--grace",
            "1m",
        ])
        .envs(env)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let again = String::from_utf8(cli.stdout).unwrap().trim().to_owned();
    assert!(key_shape().is_match(&again), "{again}");
    issued.push(again);
    assert_no_key("the CLI's log", &cli.stderr, &issued);

    let logged = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&logged);
    assert!(text.contains("TRACE"), "trace logging was on");
    assert!(
        text.contains("authentication failed"),
        "failures were logged"
    );
    assert!(text.contains(&id), "events name keys by their public id");
    assert_no_key("the service's log", &logged, &issued);

    for suffix in ["", "-wal", "-shm"] {
        let file = Path::new(&format!("{}{suffix}", db.display())).to_owned();
        if let Ok(bytes) = std::fs::read(&file) {
            assert_no_key(
                &format!("the database file {}", file.display()),
                &bytes,
                &issued,
            );
        }
    }
    let cached = redis.cli(&["--scan"]);
    assert!(!cached.trim().is_empty(), "the Redis cache was used");
    for entry in cached.lines() {
        let value = redis.cli(&["get", entry]);
        assert_no_key(
            &format!("Redis entry {entry}"),
            format!("{entry} {value}").as_bytes(),
            &issued,
        );
    }
    println!(
        "no leak: {} keys issued, {} log lines and the SQLite and Redis contents scanned",
        issued.len(),
        text.lines().count()
    );
}

#[test]
fn sigterm_under_load_loses_no_usage_count() {
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", scratch.path().join("drain.db").display());
    // A long flush interval: only the shutdown flush can write the counts.
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("USAGE_FLUSH_SECONDS", "3600"),
        ("RUST_LOG", "warn"),
    ];
    let admin = mint_admin_key(&bin, &env);
    let service = Service::start(&bin, &env, free_port());
    let client = Client::new(&service.base_url);
    let (id, key) = create(&client, &admin, json!({"name": "busy"}));

    let accepted = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (base, key, accepted) = (service.base_url.clone(), key.clone(), accepted.clone());
            std::thread::spawn(move || {
                let client = Client::new(&base);
                // Until the service stops answering.
                while let Some(status) = client.try_send("GET", "/protected", Some(&key)) {
                    assert_eq!(status, 200);
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(service.stop().success(), "a clean exit on SIGTERM");
    for worker in workers {
        worker.join().unwrap();
    }

    let service = Service::start(&bin, &env, free_port());
    let (_, details) =
        Client::new(&service.base_url).send("GET", &format!("{KEYS}/{id}"), Some(&admin), None);
    let accepted = accepted.load(Ordering::Relaxed);
    println!(
        "SIGTERM under load: {accepted} requests answered 200, request_count {}",
        details["request_count"]
    );
    assert!(accepted > 100, "the load was real");
    assert_eq!(
        details["request_count"], accepted,
        "every answered request counted once"
    );
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Valid,
    Revoked,
    RevokedDuringLoad,
    Expired,
    Garbage,
}

#[test]
fn under_load_with_faults_only_valid_keys_get_in() {
    let redis = Redis::start();
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", scratch.path().join("faults.db").display());
    let redis_url = redis.url();
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("USAGE_FLUSH_SECONDS", "1"),
        ("RUST_LOG", "warn"),
        // Every request comes from 127.0.0.1: the failure limits would answer 429 to the test itself.
        ("AUTH_FAILURES_PER_MINUTE", "0"),
        ("AUTH_FAILURES_PER_KEY_PER_MINUTE", "0"),
    ];
    let admin = mint_admin_key(&bin, &env);
    let service = Service::start(&bin, &env, free_port());
    let client = Client::new(&service.base_url);

    let mut keys: Vec<(Kind, String, String)> = Vec::new();
    for n in 0..4 {
        let (id, key) = create(&client, &admin, json!({"name": format!("valid-{n}")}));
        keys.push((Kind::Valid, id, key));
        let (id, key) = create(&client, &admin, json!({"name": format!("late-{n}")}));
        keys.push((Kind::RevokedDuringLoad, id, key));
        let (id, key) = create(&client, &admin, json!({"name": format!("revoked-{n}")}));
        assert_eq!(
            client
                .send("DELETE", &format!("{KEYS}/{id}"), Some(&admin), None)
                .0,
            204
        );
        keys.push((Kind::Revoked, id, key));
        let (id, key) = create(
            &client,
            &admin,
            json!({"name": format!("expired-{n}"), "expires_in": 1}),
        );
        keys.push((Kind::Expired, id, key.clone()));
        keys.push((Kind::Garbage, String::new(), wrong_secret(&key)));
        keys.push((
            Kind::Garbage,
            String::new(),
            format!("{}x", &key[..key.len() - 1]),
        ));
    }
    std::thread::sleep(Duration::from_millis(1100));

    // When each late key's revocation returned: from then on it must never get in.
    let revoked_at: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let keys = Arc::new(keys);
    let workers: Vec<_> = (0..6)
        .map(|worker| {
            let (base, keys, stop, revoked_at) = (
                service.base_url.clone(),
                keys.clone(),
                stop.clone(),
                revoked_at.clone(),
            );
            std::thread::spawn(move || {
                let client = Client::new(&base);
                let mut seen = Vec::new();
                let mut n = worker;
                while !stop.load(Ordering::Relaxed) {
                    let (kind, id, key) = &keys[n % keys.len()];
                    n += 7;
                    let sent = Instant::now();
                    let (status, _) = client.send("GET", "/protected", Some(key), None);
                    assert!(status < 500, "{kind:?} answered {status}");
                    let late = revoked_at
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|(revoked, at)| revoked == id && *at <= sent);
                    seen.push((*kind, id.clone(), status, late));
                }
                seen
            })
        })
        .collect();

    // Faults during the load: the late keys are revoked one by one, and Redis goes away and back.
    let mut faults = 0;
    for (kind, id, _) in keys.iter() {
        if *kind == Kind::RevokedDuringLoad {
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(
                client
                    .send("DELETE", &format!("{KEYS}/{id}"), Some(&admin), None)
                    .0,
                204
            );
            revoked_at
                .lock()
                .unwrap()
                .push((id.clone(), Instant::now()));
            faults += 1;
        }
    }
    redis.stop();
    std::thread::sleep(Duration::from_millis(800));
    redis.restart();
    faults += 1;
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<_> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();

    let mut leaks = Vec::new();
    let mut accepted = std::collections::HashMap::<String, u64>::new();
    for (kind, id, status, late) in &seen {
        let allowed = match kind {
            Kind::Valid => true,
            Kind::RevokedDuringLoad => !late,
            Kind::Revoked | Kind::Expired | Kind::Garbage => false,
        };
        if *status == 200 {
            if !allowed {
                leaks.push((*kind, id.clone()));
            }
            *accepted.entry(id.clone()).or_default() += 1;
        }
    }
    assert!(leaks.is_empty(), "let in: {leaks:?}");

    // The counts add up to the 2xx answers, key by key, once flushed.
    assert!(service.stop().success());
    let service = Service::start(&bin, &env, free_port());
    let client = Client::new(&service.base_url);
    for (id, count) in &accepted {
        let (_, details) = client.send("GET", &format!("{KEYS}/{id}"), Some(&admin), None);
        assert_eq!(details["request_count"], *count, "{details}");
    }
    let by_kind = |k: Kind| seen.iter().filter(|s| s.0 == k).count();
    println!(
        "faults under load: {} requests ({} valid, {} revoked before, {} revoked during, {} expired, {} garbage), {faults} faults, 0 let in wrongly, request_count exact for {} keys",
        seen.len(),
        by_kind(Kind::Valid),
        by_kind(Kind::Revoked),
        by_kind(Kind::RevokedDuringLoad),
        by_kind(Kind::Expired),
        by_kind(Kind::Garbage),
        accepted.len()
    );
}

#[test]
fn schemathesis_finds_no_server_error_and_no_contradiction_of_the_document() {
    let st = tools::pip_tool("schemathesis", "4.32.5", "st");
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", scratch.path().join("schema.db").display());
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RUST_LOG", "error"),
        // schemathesis sends wrong keys on purpose, all from 127.0.0.1.
        ("AUTH_FAILURES_PER_MINUTE", "0"),
        ("AUTH_FAILURES_PER_KEY_PER_MINUTE", "0"),
    ];
    let admin = mint_admin_key(&bin, &env);
    // Panics are printed whatever RUST_LOG says; they are counted in this log below.
    let log = scratch.path().join("service.log");
    let service = Service::start_logged(&bin, &env, free_port(), &log);
    // A key holding every scope, so every operation can succeed.
    let (_, all) = create(
        &Client::new(&service.base_url),
        &admin,
        json!({"name": "schemathesis", "scopes": ["*"]}),
    );
    let output = std::process::Command::new(st)
        .arg("run")
        .arg(format!("{}/docs/openapi.json", service.base_url))
        .args(["--header", &format!("X-API-Key: {all}")])
        .args(["--checks", "all"])
        // positive_data_acceptance: valid-by-schema requests that the service still refuses, by
        // rules OpenAPI cannot state (expires_in and expires_at together, an expiry in the past).
        // use_after_free: DELETE revokes a key, and the revoked key stays readable (status
        // "revoked") for the audit trail, by design. See docs/src/security.md.
        .args([
            "--exclude-checks",
            "positive_data_acceptance,use_after_free",
        ])
        .args(["--max-examples", "100", "--seed", "7", "--no-color"])
        // It keeps a cache of examples in the working directory.
        .current_dir(scratch.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = report
        .lines()
        .skip_while(|line| !line.starts_with("Test cases:"))
        .nth(1)
        .unwrap_or_default()
        .trim();
    assert!(generated.contains("generated"), "{report}");

    // Numbers beyond every bound, where a conversion could overflow: each a 4xx, none a panic.
    let client = Client::new(&service.base_url);
    let (target, _) = create(&client, &admin, json!({"name": "target"}));
    let huge = [
        u64::MAX.to_string(),
        "10000000000000000".into(),
        "1e300".into(),
    ];
    for number in &huge {
        let body = |json: &str| serde_json::from_str::<serde_json::Value>(json).ok();
        for (method, path, payload) in [
            (
                "POST",
                format!("{KEYS}/{target}/rotate"),
                body(&format!(r#"{{"grace_period": {number}}}"#)),
            ),
            (
                "POST",
                KEYS.to_owned(),
                body(&format!(r#"{{"name": "n", "expires_in": {number}}}"#)),
            ),
            (
                "POST",
                KEYS.to_owned(),
                body(&format!(r#"{{"name": "n", "remaining": {number}}}"#)),
            ),
            (
                "POST",
                KEYS.to_owned(),
                body(&format!(
                    r#"{{"name": "n", "rate_limit": {{"requests": {number}, "window": {number}}}}}"#
                )),
            ),
            (
                "PATCH",
                format!("{KEYS}/{target}"),
                body(&format!(
                    r#"{{"refill": {{"interval": "daily", "amount": {number}}}}}"#
                )),
            ),
            (
                "GET",
                format!("{KEYS}?limit={number}&offset={number}&expiring_within_days={number}"),
                None,
            ),
            (
                "GET",
                format!("{KEYS}/{target}/events?limit={number}&offset={number}"),
                None,
            ),
        ] {
            let (status, problem) = client.send(method, &path, Some(&all), payload);
            assert!(
                (400..500).contains(&status) || status == 200,
                "{method} {path} with {number}: {status} {problem}"
            );
        }
    }
    assert!(service.stop().success());
    let panics = std::fs::read_to_string(&log)
        .unwrap()
        .matches("panicked")
        .count();
    assert_eq!(panics, 0, "the service panicked; see {}", log.display());
    println!(
        "schemathesis: {generated}, every check but positive_data_acceptance and use_after_free, all phases; \
         then {} oversized numbers; 0 panics",
        huge.len() * 7
    );
}

#[test]
fn user_input_cannot_forge_log_lines() {
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("service.log");
    let database_url = format!("sqlite://{}", scratch.path().join("forge.db").display());
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RUST_LOG", "info"),
    ];
    let admin = mint_admin_key(&bin, &env);
    let service = Service::start_logged(&bin, &env, free_port(), &log);
    let client = Client::new(&service.base_url);
    let (_, deleter) = create(
        &client,
        &admin,
        json!({"name": "deleter", "scopes": ["admin:delete"]}),
    );
    let forged =
        "/api/admin/users/42%0D%0A2026-01-01T00:00:00Z%20INFO%20forged:%20admin%20logged%20in";
    let (status, _) = client.send("DELETE", forged, Some(&deleter), None);
    assert_eq!(status, 204);
    assert!(service.stop().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|line| line.contains("user deleted"))
        .unwrap_or_else(|| panic!("no deletion line in {text}"));
    assert!(
        line.contains(r"42\r\n2026-01-01"),
        "escaped in place: {line}"
    );
    assert!(
        !text
            .lines()
            .any(|line| line.starts_with("2026-01-01T00:00:00Z")),
        "a forged line: {text}"
    );
}

#[test]
fn a_flood_of_bad_keys_is_audited_in_a_few_lines_without_colour() {
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("service.log");
    let database_url = format!("sqlite://{}", scratch.path().join("flood.db").display());
    // The default log level; failure limits off, so every bad key reaches the checksum.
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RUST_LOG", "info"),
        ("AUTH_FAILURES_PER_MINUTE", "0"),
    ];
    let service = Service::start_logged(&bin, &env, free_port(), &log);
    let client = Client::new(&service.base_url);
    let flood = 3000;
    let started = Instant::now();
    for i in 0..flood {
        let garbage = format!("sk_{i:0>12}_not-a-key");
        assert_eq!(
            client.try_send("GET", "/protected", Some(&garbage)),
            Some(401)
        );
    }
    let windows = started.elapsed().as_secs() / 10 + 1;
    assert!(service.stop().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "no colour codes in a log file");
    let one_by_one = text
        .lines()
        .filter(|l| l.contains("authentication failed"))
        .count() as u64;
    assert!(
        (1..=3 * windows).contains(&one_by_one),
        "{one_by_one} failures logged one by one over {windows} window(s)"
    );
    let counted: u64 = text
        .lines()
        .filter(|l| l.contains("authentication failures not logged one by one"))
        .map(|l| {
            let count = l
                .split("failures=")
                .nth(1)
                .and_then(|rest| rest.split(' ').next());
            count
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no count: {l}"))
        })
        .sum();
    assert_eq!(
        one_by_one + counted,
        flood,
        "every failure is on record:\n{text}"
    );
    println!(
        "{flood} bad keys left {one_by_one} lines of their own and {counted} counted, {} bytes of log",
        text.len()
    );
}

#[test]
fn wrong_secrets_for_one_key_log_the_lockout_once() {
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("service.log");
    let database_url = format!("sqlite://{}", scratch.path().join("secrets.db").display());
    // The address limit off, the per-key limit at its default (10 a minute, one every 6 s).
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RUST_LOG", "info"),
        ("AUTH_FAILURES_PER_MINUTE", "0"),
    ];
    let admin = mint_admin_key(&bin, &env);
    let service = Service::start_logged(&bin, &env, free_port(), &log);
    let client = Client::new(&service.base_url);
    let started = Instant::now();
    let secret_at = "sk_".len() + 12 + 1;
    let mut statuses = Vec::new();
    for i in 0..300 {
        // Another secret under the key's id, with a checksum that fits it: a real guess.
        let mut body = admin[..admin.len() - 6].to_owned().into_bytes();
        let at = secret_at + i % 40;
        body[at] = if body[at] == b'a' { b'b' } else { b'a' };
        let wrong = with_checksum(&body);
        statuses.push(client.try_send("GET", "/protected", Some(&wrong)));
    }
    let crossings = started.elapsed().as_secs() / 6 + 1;
    assert!(service.stop().success());
    // One more wrong secret is let through every 6 s the loop takes.
    let refused = statuses.iter().filter(|s| **s == Some(429)).count() as u64;
    assert!(
        (300 - 9 - crossings..=290).contains(&refused),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == Some(401)).count() as u64,
        300 - refused
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lockouts = text
        .lines()
        .filter(|l| l.contains("too many wrong secrets"))
        .count() as u64;
    assert!(
        (1..=crossings).contains(&lockouts),
        "{lockouts} lockout lines for {refused} refusals:\n{text}"
    );
}

/// A GET through nginx with `headers`: status, the headers named in `wanted`, and the body.
fn through(
    url: &str,
    headers: &[(&str, &str)],
    wanted: &[&str],
) -> (u16, Vec<Option<String>>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = ureq::http::Request::builder().uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = agent.run(request.body(()).unwrap()).expect("nginx answers");
    let found = wanted
        .iter()
        .map(|name| {
            response
                .headers()
                .get(*name)
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (response.status().as_u16(), found, body)
}

#[test]
fn nginx_lets_through_only_what_the_forward_auth_check_passes() {
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", scratch.path().join("gateway.db").display());
    // As deploy/nginx.conf says: nginx is the trusted proxy (PROXY_HEADER left at its default).
    // Three failures a minute per client, to see which address they count against.
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RUST_LOG", "warn"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("AUTH_FAILURES_PER_MINUTE", "3"),
    ];
    let admin = mint_admin_key(&bin, &env);
    let service = Service::start(&bin, &env, free_port());
    let client = Client::new(&service.base_url);
    let reports = |name: &str, extra: serde_json::Value| {
        let mut body =
            json!({"name": name, "owner_id": "team-reports", "scopes": ["reports:read"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        create(&client, &admin, body)
    };
    let (reader_id, reader) = reports("reader", json!({}));
    let (_, limited) = reports(
        "limited",
        json!({"rate_limit": {"requests": 1, "window": 60}}),
    );
    let (revoked_id, revoked) = reports("revoked", json!({}));
    assert_eq!(
        client
            .send(
                "DELETE",
                &format!("{KEYS}/{revoked_id}"),
                Some(&admin),
                None
            )
            .0,
        204
    );
    let (_, unscoped) = create(
        &client,
        &admin,
        json!({"name": "elsewhere", "scopes": ["billing:read"]}),
    );
    let (ownerless_id, ownerless) = create(
        &client,
        &admin,
        json!({"name": "ownerless", "scopes": ["reports:read"]}),
    );

    // The shipped configuration, on this test's ports, and an upstream that says what it was sent.
    let project = actix_api_auth_tests::work_dir()
        .join("generated")
        .join(NAME);
    let shipped = std::fs::read_to_string(project.join("deploy/nginx.conf")).unwrap();
    let (listen, upstream) = (free_port(), free_port());
    let service_port = service.base_url.rsplit(':').next().unwrap().to_owned();
    let http = format!(
        "{}\nserver {{ listen 127.0.0.1:{upstream}; location / {{ default_type text/plain; \
         return 200 'id=$http_x_api_key_id owner=$http_x_api_key_owner scopes=$http_x_api_key_scopes \
         key=$http_x_api_key authorization=$http_authorization'; }} }}",
        shipped
            .replace("127.0.0.1:8000", &format!("127.0.0.1:{listen}"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{service_port}"))
            .replace("127.0.0.1:9000", &format!("127.0.0.1:{upstream}"))
    );
    let nginx = Nginx::start(&http, listen);
    let url = format!("http://127.0.0.1:{listen}/reports/monthly");
    let wanted = ["www-authenticate", "retry-after"];

    // A valid key reaches the upstream with who it is, and without the key; a client's own identity
    // headers are replaced.
    let forged = [
        ("X-API-Key", reader.as_str()),
        ("X-Api-Key-Id", "someone-else"),
    ];
    let (status, _, body) = through(&url, &forged, &wanted);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!("id={reader_id} owner=team-reports scopes=reports:read key= authorization=")
    );
    let bearer = format!("Bearer {reader}");
    assert_eq!(through(&url, &[("Authorization", &bearer)], &wanted).0, 200);
    // A key without an owner: the client's own owner and scopes headers do not get through either.
    let forged = [
        ("X-API-Key", ownerless.as_str()),
        ("X-Api-Key-Owner", "team-billing"),
        ("X-Api-Key-Scopes", "*"),
    ];
    let (status, _, body) = through(&url, &forged, &wanted);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!("id={ownerless_id} owner= scopes=reports:read key= authorization=")
    );

    // Missing, wrong and revoked keys: 401 from nginx, with the challenge.
    let cases = [
        (None, "missing"),
        (Some(wrong_secret(&reader)), "wrong"),
        (Some(revoked), "revoked"),
    ];
    for (key, what) in cases {
        let headers: Vec<(&str, &str)> = key.iter().map(|k| ("X-API-Key", k.as_str())).collect();
        let (status, found, body) = through(&url, &headers, &wanted);
        assert_eq!(status, 401, "{what} key: {body}");
        assert!(
            found[0].as_deref().is_some_and(|c| c.starts_with("Bearer")),
            "{what}: {found:?}"
        );
        assert!(!body.contains("id="), "{what} key reached the upstream");
    }
    // A key without the route's scope: 403.
    let (status, _, body) = through(&url, &[("X-API-Key", unscoped.as_str())], &wanted);
    assert_eq!(status, 403, "{body}");
    // A key over its rate limit: 429 with the check's Retry-After.
    assert_eq!(
        through(&url, &[("X-API-Key", limited.as_str())], &wanted).0,
        200
    );
    let (status, found, body) = through(&url, &[("X-API-Key", limited.as_str())], &wanted);
    assert_eq!(status, 429, "{body}");
    let wait: u64 = found[1]
        .as_deref()
        .expect("Retry-After is passed on")
        .parse()
        .unwrap();
    assert!((59..=60).contains(&wait), "{wait}");

    // Failures count against the address nginx saw, whatever the client claims to be: with one
    // wrong key above, the third claimed address is refused, and so is a good key after it.
    let spoofed: Vec<Option<u16>> = (1..=3)
        .map(|n| {
            let address = format!("198.51.100.{n}");
            let headers = [
                ("X-API-Key", "sk_made_up"),
                ("X-Forwarded-For", address.as_str()),
                ("X-Real-IP", address.as_str()),
            ];
            Some(through(&url, &headers, &wanted).0)
        })
        .collect();
    assert_eq!(spoofed, [Some(401), Some(401), Some(429)]);
    let (status, found, _) = through(&url, &[("X-API-Key", reader.as_str())], &wanted);
    assert_eq!(status, 429);
    assert!(found[1].is_some(), "Retry-After is passed on");

    let errors = nginx.errors();
    assert!(!errors.contains("[warn]"), "nginx warned: {errors}");

    // Without the service, nothing gets through.
    drop(service);
    let (status, _, body) = through(&url, &[("X-API-Key", reader.as_str())], &wanted);
    assert_eq!(status, 500, "{body}");
    assert!(!body.contains("id="), "the upstream was reached: {body}");
}

/// `body` with the checksum a key ends with: its CRC-32 (IEEE) in six base62 digits.
fn with_checksum(body: &[u8]) -> String {
    const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut crc = !0u32;
    for &byte in body {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut n = !crc;
    let mut sum = [b'0'; 6];
    for slot in sum.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8([body, &sum].concat()).unwrap()
}

#[test]
fn a_tenants_expiry_listing_reads_only_its_own_keys_from_redis() {
    let redis = Redis::start();
    let bin = service_binary();
    let database_url = redis.url();
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RUST_LOG", "warn"),
    ];
    let admin = mint_admin_key(&bin, &env);
    let service = Service::start(&bin, &env, free_port());
    let client = Client::new(&service.base_url);
    let owned = |owner: &str, name: &str, scopes: &[&str]| json!({"name": name, "owner_id": owner, "scopes": scopes, "expires_in": 86400});
    for n in 0..200 {
        create(&client, &admin, owned("team-a", &format!("a{n}"), &[]));
    }
    create(&client, &admin, owned("team-b", "b-expiring", &[]));
    let (_, manager) = create(
        &client,
        &admin,
        owned("team-b", "b-manager", &["api_keys:manage"]),
    );
    // Warm the manager's key, so the listing below is the only thing Redis is asked.
    assert_eq!(client.send("GET", KEYS, Some(&manager), None).0, 200);

    redis.cli(&["CONFIG", "RESETSTAT"]);
    let (status, page) = client.send(
        "GET",
        &format!("{KEYS}?expiring_within_days=3660"),
        Some(&manager),
        None,
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 2, "team-b's two keys: {page}");
    let stats = redis.cli(&["INFO", "commandstats"]);
    let calls = |command: &str| {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let records_read = calls("hgetall");
    assert!(
        records_read <= 2,
        "a tenant's listing read {records_read} key records, of 202 in Redis:\n{stats}"
    );
    println!("a tenant's expiry listing read {records_read} key records of 202");
}

#[test]
fn a_change_made_while_redis_is_away_is_fenced_when_it_returns() {
    let redis = Redis::start();
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", scratch.path().join("fence.db").display());
    let redis_url = redis.url();
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("RUST_LOG", "warn"),
        // The second instance keeps keys in memory briefly, so it leans on Redis.
        ("KEY_CACHE_TTL_MS", "50"),
    ];
    let admin = mint_admin_key(&bin, &env);
    let changer = Service::start(&bin, &env, free_port());
    let other = Service::start(&bin, &env, free_port());
    let (changer_client, other_client) =
        (Client::new(&changer.base_url), Client::new(&other.base_url));
    let (id, key) = create(&changer_client, &admin, json!({"name": "doomed"}));
    // The other instance caches the key in Redis.
    assert_eq!(
        other_client.try_send("GET", "/protected", Some(&key)),
        Some(200)
    );
    assert!(
        redis
            .cli(&["GET", &format!("apikey:v1:{id}")])
            .contains(&id)
    );

    // Redis goes away, keeping its data, while the key is revoked, then comes back with the old
    // entry: only the revoking instance's retries can fence it off now.
    redis.stop_keeping_data();
    let (status, _) = changer_client.send("DELETE", &format!("{KEYS}/{id}"), Some(&admin), None);
    assert_eq!(status, 204, "the revocation is saved");
    std::thread::sleep(Duration::from_millis(300));
    redis.restart();
    let back = Instant::now();
    let entry = format!("apikey:v1:{id}");
    while !redis.cli(&["GET", &entry]).contains("fenced") {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the old entry was never fenced off"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "a revocation made while Redis was away was fenced {:?} after Redis came back",
        back.elapsed()
    );
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(other_client.try_send("GET", "/protected", Some(&key)));
        std::thread::sleep(Duration::from_millis(60));
    }
    assert!(
        statuses.iter().all(|status| *status == Some(401)),
        "the other instance, after Redis came back: {statuses:?}"
    );
    assert!(
        redis
            .cli(&["GET", &format!("apikey:v1:{id}")])
            .contains("fenced")
    );
}

#[test]
fn metrics_can_have_a_listener_of_their_own() {
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", scratch.path().join("metrics.db").display());
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RUST_LOG", "warn"),
        ("METRICS_ADDR", metrics_addr.as_str()),
    ];
    let service = Service::start(&bin, &env, free_port());
    let api = Client::new(&service.base_url);
    assert_eq!(api.try_send("GET", "/metrics", None), Some(404));
    assert_eq!(api.try_send("GET", "/health", None), Some(200));
    let metrics = Client::new(&format!("http://{metrics_addr}")).text("/metrics");
    assert!(
        metrics.contains("http_request_duration_seconds"),
        "{metrics}"
    );
    assert!(service.stop().success(), "both listeners stop on SIGTERM");
}

#[test]
fn json_logs_carry_the_request_id() {
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("service.log");
    let database_url = format!("sqlite://{}", scratch.path().join("logs.db").display());
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RUST_LOG", "info"),
        ("LOG_FORMAT", "json"),
    ];
    let admin = mint_admin_key(&bin, &env);
    let service = Service::start_logged(&bin, &env, free_port(), &log);
    let created = ureq::post(format!("{}{KEYS}", service.base_url))
        .header("X-API-Key", &admin)
        .header("X-Request-Id", "edge-7f3a9c")
        .header("Content-Type", "application/json")
        .send(json!({"name": "logged"}).to_string())
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(
        created.headers()["x-request-id"].to_str().unwrap(),
        "edge-7f3a9c"
    );
    assert!(service.stop().success());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let audit = lines
        .iter()
        .find(|line| line["fields"]["message"] == "API key created")
        .unwrap_or_else(|| panic!("no creation event in {text}"));
    assert_eq!(audit["target"], "audit");
    assert_eq!(audit["span"]["id"], "edge-7f3a9c", "{audit}");
    assert_eq!(audit["span"]["method"], "POST");
    println!("a JSON log line: {audit}");
}

#[test]
fn the_redis_cache_works_over_tls_with_a_password() {
    let redis = Redis::start_tls("a-redis-password");
    let bin = service_binary();
    let scratch = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", scratch.path().join("tls.db").display());
    let ca = redis.ca_file().to_str().unwrap().to_owned();
    let good_url = redis.url();
    let wrong_url = good_url.replace("a-redis-password", "not-the-password");
    let env = |redis_url| {
        [
            ("DATABASE_URL", database_url.as_str()),
            ("REDIS_URL", redis_url),
            ("RUST_LOG", "warn"),
            // Trust the test's own CA, as a system's CA store would a real one.
            ("SSL_CERT_FILE", ca.as_str()),
        ]
    };
    let good: [(&str, &str); 4] = env(good_url.as_str());
    let admin = mint_admin_key(&bin, &good);
    let service = Service::start(&bin, &good, free_port());
    let client = Client::new(&service.base_url);
    let (status, ready) = client.send("GET", "/ready", None, None);
    assert_eq!(status, 200, "{ready}");
    let (id, key) = create(&client, &admin, json!({"name": "over-tls"}));
    assert_eq!(client.try_send("GET", "/protected", Some(&key)), Some(200));
    assert!(
        redis
            .cli(&["GET", &format!("apikey:v1:{id}")])
            .contains(&id),
        "the key is cached in Redis, over TLS"
    );
    assert!(service.stop().success());

    let wrong = env(wrong_url.as_str());
    let service = Service::start(&bin, &wrong, free_port());
    let (status, ready) = Client::new(&service.base_url).send("GET", "/ready", None, None);
    assert_eq!(status, 503, "a wrong password: {ready}");
    assert_eq!(ready["checks"]["redis_cache"], "unavailable");
    drop(service);

    // Without the CA, the server's certificate is not trusted: TLS is checked, not just spoken.
    let untrusting: Vec<_> = good
        .into_iter()
        .filter(|(name, _)| *name != "SSL_CERT_FILE")
        .collect();
    let service = Service::start(&bin, &untrusting, free_port());
    let (status, ready) = Client::new(&service.base_url).send("GET", "/ready", None, None);
    assert_eq!(status, 503, "an unknown CA: {ready}");
}
