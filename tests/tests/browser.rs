//! Swagger UI of a generated service in a real browser: Debian's Chromium, driven by Playwright
//! (`tests/browser/swagger.mjs`). The screenshots land in `<work dir>/screenshots/`.
//!
//! Needs Debian's Chromium and Node.js; the test installs Chromium (as root) and the npm packages
//! when they are missing.

use std::process::Command;

use actix_api_auth_tests::{
    Service, binary, free_port, generate, mint_admin_key, repo_root, tools, work_dir,
};

#[test]
fn swagger_ui_in_chromium() {
    let chromium = tools::require("chromium");
    let scripts = repo_root().join("tests").join("browser");
    tools::npm_ci(&scripts);

    let project = generate("browser-svc", &[]);
    let bin = binary(&project, "browser-svc");
    let db = work_dir().join("browser.db");
    let _ = std::fs::remove_file(&db);
    let database_url = format!("sqlite://{}", db.display());
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RUST_LOG", "warn"),
    ];
    let admin = mint_admin_key(&bin, &env);
    let service = Service::start(&bin, &env, free_port());

    let screenshots = work_dir().join("screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    let output = Command::new("node")
        .arg("swagger.mjs")
        .current_dir(&scripts)
        .env("BASE_URL", &service.base_url)
        .env("DOCS_PATH", "/docs")
        .env("KEYS_PREFIX", "/api/v1/api-keys")
        .env("ADMIN_KEY", &admin)
        .env("SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    assert!(
        output.status.success(),
        "the browser walk failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let taken: Vec<_> = std::fs::read_dir(&screenshots)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(taken.len(), 5, "{taken:?}");
    assert!(service.stop().success());
}
