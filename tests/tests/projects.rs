//! Generated projects build with zero warnings, are rustfmt- and clippy-clean, and pass their own tests.
//!
//! Two representative projects: the defaults (SQLite), and every string placeholder changed on
//! PostgreSQL, whose tests run against a throwaway PostgreSQL server. They share one target
//! directory, so dependencies are compiled once per feature set.

use actix_api_auth_tests::servers::Postgres;
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
fn customised_postgres_project_is_clean_and_passes_its_tests() {
    let postgres = Postgres::start();
    let url = postgres.database("acme_keys_test");
    let output = check(
        "acme-keys",
        &[
            "database=postgres",
            "key_prefix=acme_",
            "route_prefix=/admin/keys",
            "docs_path=/api/docs",
        ],
        &[("TEST_POSTGRES_URL", &url)],
    );
    assert!(
        !output.contains("SKIPPED"),
        "the PostgreSQL tests ran:\n{output}"
    );
}
