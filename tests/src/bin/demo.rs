//! Generates a demo service from this template with the default answers, mints its first admin key,
//! and runs it in the foreground (Ctrl-C stops it).
//!
//! `cargo run --locked --manifest-path tests/Cargo.toml --bin demo`

use std::path::Path;
use std::process::{Command, ExitCode};

use actix_api_auth_tests::generate_in_process;

const NAME: &str = "demo-svc";

fn main() -> ExitCode {
    let tests_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let destination = tests_dir.join("target").join("demo");
    let project = destination.join(NAME);
    if project.exists() {
        std::fs::remove_dir_all(&project).expect("the previous demo can be removed");
    }
    if let Err(err) = generate_in_process(&destination, NAME, &[]) {
        eprintln!("{err}");
        return ExitCode::FAILURE;
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!(
        "\nBuilding {} and minting an admin key...",
        project.display()
    );
    let minted = Command::new(&cargo)
        .args([
            "run", "--quiet", "--", "keys", "create", "--name", "admin", "--admin",
        ])
        .current_dir(&project)
        .env("RUST_LOG", "warn")
        .output()
        .expect("cargo runs");
    if !minted.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&minted.stderr));
        return ExitCode::FAILURE;
    }
    let key = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
    println!("\nAdmin key (shown once): {key}");
    println!("Try: curl -s http://127.0.0.1:8080/api/v1/api-keys -H 'X-API-Key: {key}'");
    println!("Swagger UI: http://127.0.0.1:8080/docs/  (Authorize with the key above)\n");

    let status = Command::new(&cargo)
        .args(["run", "--quiet"])
        .current_dir(&project)
        .status()
        .expect("cargo runs");
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
