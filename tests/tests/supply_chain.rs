//! The generated project's dependencies, checked by cargo-deny against its `deny.toml`: permissive
//! licences only, no wildcard versions, crates.io only, and the RustSec advisories when the advisory
//! database can be fetched.

use std::path::PathBuf;
use std::process::Command;

use actix_api_auth_tests::{generate, work_dir};

/// cargo-deny, pinned, installed once under the tests' work directory.
fn cargo_deny() -> PathBuf {
    const VERSION: &str = "0.20.2";
    let root = work_dir().join(format!("cargo-deny-{VERSION}"));
    let bin = root.join("bin").join("cargo-deny");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args([
                "install",
                "cargo-deny",
                "--locked",
                "--version",
                VERSION,
                "--root",
            ])
            .arg(&root)
            .env_remove("RUSTFLAGS")
            .status()
            .unwrap();
        assert!(status.success(), "installing cargo-deny {VERSION} failed");
    }
    bin
}

#[test]
fn dependencies_have_permissive_licences_and_known_sources() {
    let deny = cargo_deny();
    let project = generate("deny-svc", &["redis_cache=true"]);
    let check = |what: &[&str]| {
        let output = Command::new(&deny)
            .args(["--color", "never", "check"])
            .args(what)
            .current_dir(&project)
            .output()
            .unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), report)
    };

    let (passed, report) = check(&["licenses", "bans", "sources"]);
    assert!(passed, "{report}");
    assert!(
        report.contains("bans ok, licenses ok, sources ok"),
        "{report}"
    );

    let (passed, report) = check(&["advisories"]);
    if report.contains("failed to fetch advisory database") {
        // Offline (this CI reaches crates.io, not GitHub): said loudly, not passed off as a pass.
        println!(
            "cargo deny: advisories SKIPPED, the RustSec database on github.com is unreachable here; \
             run `cargo deny check advisories` where it is"
        );
    } else {
        assert!(passed, "{report}");
        println!("cargo deny: advisories ok");
    }
}
