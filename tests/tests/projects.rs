//! Generated projects build with zero warnings, are rustfmt- and clippy-clean, and pass their own tests.
//!
//! Four representative projects: the defaults (SQLite); PostgreSQL without Redis; Redis alone; and
//! every placeholder changed (PostgreSQL with the Redis cache). All but the first run their tests
//! against throwaway PostgreSQL and Redis servers; the last runs them at `RUST_LOG=trace`, and no
//! key may appear in anything they print. All share one target directory, so dependencies
//! are compiled once per feature set.

use actix_api_auth_tests::servers::{Postgres, Redis};
use actix_api_auth_tests::{cargo, cargo_with_env, generate};

fn check(name: &str, defines: &[&str], env: &[(&str, &str)]) -> String {
    let project = generate(name, defines);
    cargo(&project, &["fmt", "--all", "--check"]);
    cargo(
        &project,
        &[
            "clippy",
            "--locked",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    );
    let output = cargo_with_env(&project, &["test", "--locked", "--", "--nocapture"], env);
    assert!(output.contains("test result: ok"), "{output}");
    assert!(
        !output.contains("warning:"),
        "the build has warnings:\n{output}"
    );
    output
}

#[test]
fn default_project_is_clean_and_passes_its_tests() {
    check("demo-svc", &[], &[]);
}

#[test]
fn postgres_project_passes_its_tests_on_a_real_server() {
    let postgres = Postgres::start();
    let database = postgres.database("pg_keys_test");
    let output = check(
        "pg-keys",
        &["database=postgres"],
        &[("TEST_POSTGRES_URL", &database)],
    );
    assert!(
        !output.contains("SKIPPED"),
        "the PostgreSQL tests ran:\n{output}"
    );
    assert!(
        output.contains("postgres_backend_conforms ... ok"),
        "{output}"
    );
}

#[test]
fn redis_project_passes_its_tests_on_a_real_server() {
    let redis = Redis::start();
    let output = check(
        "redis-keys",
        &["database=redis"],
        &[("TEST_REDIS_URL", &redis.url())],
    );
    assert!(
        !output.contains("SKIPPED"),
        "the Redis tests ran:\n{output}"
    );
    assert!(output.contains("redis_backend_conforms ... ok"), "{output}");
}

#[test]
fn customised_postgres_redis_project_is_clean_and_passes_its_tests() {
    let postgres = Postgres::start();
    let redis = Redis::start();
    let database = postgres.database("acme_keys_test");
    let output = check(
        "acme-keys",
        &[
            "database=postgres",
            "redis_cache=true",
            "key_prefix=acme_",
            "route_prefix=/admin/keys",
            "docs_path=/api/docs",
        ],
        &[
            ("TEST_POSTGRES_URL", &database),
            ("TEST_REDIS_URL", &redis.url()),
            // The whole suite at trace level: what it logs is scanned for keys below.
            ("RUST_LOG", "trace"),
        ],
    );
    assert!(
        output.contains("TRACE") && output.contains("authentication failed"),
        "the suite logged at trace level:\n{output}"
    );
    let key_shape = regex::Regex::new("[a-z0-9]{1,15}_[0-9A-Za-z]{12}_[0-9A-Za-z]{49}").unwrap();
    if let Some(found) = key_shape.find(&output) {
        panic!(
            "the test suite printed something shaped like a key: {}…",
            &found.as_str()[..20]
        );
    }
    assert!(
        !output.contains("SKIPPED"),
        "the PostgreSQL and Redis tests ran:\n{output}"
    );
    assert_ne!(
        redis.cli(&["dbsize"]).trim(),
        "0",
        "the Redis cache was used"
    );
    assert!(
        output.contains("revocation reached the second instance in"),
        "{output}"
    );
}
