//! Generates a demo service from this template with the default answers, builds it (cargo's progress
//! shows), mints its first admin key, and then becomes the service: the demo's process is the
//! service's, so Ctrl-C or a SIGTERM to it stops the service and frees the port.
//!
//! `cargo run --locked --manifest-path tests/Cargo.toml --bin demo`

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use actix_api_auth_tests::{cargo_command, generate_in_process, shared_target_dir, work_dir};

const NAME: &str = "demo-svc";

fn main() -> ExitCode {
    match run() {
        Ok(never) => match never {},
        Err(err) => {
            eprintln!("demo: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<std::convert::Infallible, String> {
    let destination = work_dir().join("demo");
    let project = destination.join(NAME);
    if project.exists() {
        std::fs::remove_dir_all(&project).map_err(|err| format!("{}: {err}", project.display()))?;
    }
    generate_in_process(&destination, NAME, &[])?;
    println!(
        "Generated {} (replaced by the next demo run: generate your own with `cargo generate`).",
        project.display()
    );

    println!("Building it; a first build takes about 3 minutes on 2 cores...");
    let built = cargo_command(&project)
        .args(["build", "--locked", "--bin", NAME])
        .status()
        .map_err(|err| format!("cargo cannot run: {err}"))?;
    if !built.success() {
        return Err("the build failed (cargo's output is above)".into());
    }
    let binary = shared_target_dir().join("debug").join(NAME);

    let minted = Command::new(&binary)
        .args(["keys", "create", "--name", "admin", "--admin"])
        .current_dir(&project)
        .env("RUST_LOG", "warn")
        .output()
        .map_err(|err| format!("{}: {err}", binary.display()))?;
    if !minted.status.success() {
        return Err(String::from_utf8_lossy(&minted.stderr).trim().to_owned());
    }
    let key = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
    println!("\nAdmin key (shown once): {key}");
    println!("Try: curl -s http://127.0.0.1:8080/api/v1/api-keys -H 'X-API-Key: {key}'");
    println!("Swagger UI: http://127.0.0.1:8080/docs/  (Authorize with the key above)");
    println!("Ctrl-C stops the service.\n");

    // exec returns only when it failed; on success this process is the service from here on.
    let err = Command::new(&binary)
        .arg("serve")
        .current_dir(&project)
        .exec();
    Err(format!("{}: {err}", binary.display()))
}
