//! The generated project's dependencies, checked by cargo-deny against its `deny.toml`: permissive
//! licences only, no wildcard versions, crates.io only. The RustSec advisories are not checked here:
//! their database is fetched from GitHub, which this machine cannot reach.

use std::process::Command;

use actix_api_auth_tests::{generate, tools};

#[test]
fn dependencies_have_permissive_licences_and_known_sources() {
    let deny = tools::cargo_tool("cargo-deny", "0.20.2", "cargo-deny");
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
}
