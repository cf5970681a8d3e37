//! The recipes in `docs/src/recipes.md` work as written: their patches apply to a freshly generated
//! project, which then passes its own tests on SQLite and on a real PostgreSQL server, stores and
//! returns the new field on both, and serves the new route with the scope the document shows.

use std::path::Path;
use std::process::Command;

use actix_api_auth_tests::servers::Postgres;
use actix_api_auth_tests::{
    Client, Service, cargo, cargo_with_env, free_port, generate, mint_admin_key, repo_root,
    shared_target_dir,
};
use serde_json::{Value, json};

const KEYS: &str = "/api/v1/api-keys";

/// Applies every `diff` block of the recipes page to `project`, in order.
fn apply_recipes(project: &Path) {
    let page = std::fs::read_to_string(repo_root().join("docs/src/recipes.md")).unwrap();
    let mut patches = 0;
    for block in page.split("```diff\n").skip(1) {
        let patch = &block[..block.find("\n```").expect("a closed diff block") + 1];
        let file = project.join(format!("recipe-{patches}.patch"));
        std::fs::write(&file, patch).unwrap();
        // Generated under this repository's target/: without the ceiling, git would find the
        // repository and apply the paths relative to its root.
        let output = Command::new("git")
            .args(["apply", "--verbose"])
            .arg(&file)
            .env("GIT_CEILING_DIRECTORIES", project.parent().unwrap())
            .current_dir(project)
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "patch {patches} of recipes.md does not apply:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::remove_file(file).unwrap();
        patches += 1;
    }
    assert_eq!(patches, 4, "the recipes page has its four patches");
    let model = std::fs::read_to_string(project.join("src/model.rs")).unwrap();
    assert!(
        model.contains("pub plan: Option<String>"),
        "the model has the field"
    );
}

/// The field's life through the API: set on create, returned, cleared by `PATCH`.
fn plan_round_trip(client: &Client, admin: &str) {
    let body = json!({"name": "acme", "plan": "pro"});
    let (status, created) = client.send("POST", KEYS, Some(admin), Some(body));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["plan"], "pro");
    let item = format!("{KEYS}/{}", created["id"].as_str().unwrap());
    let (_, details) = client.send("GET", &item, Some(admin), None);
    assert_eq!(details["plan"], "pro", "stored and read back: {details}");
    let (status, changed) = client.send("PATCH", &item, Some(admin), Some(json!({"plan": null})));
    assert_eq!((status, &changed["plan"]), (200, &Value::Null), "{changed}");
    let (_, details) = client.send("GET", &item, Some(admin), None);
    assert_eq!(details["plan"], Value::Null);
}

#[test]
fn the_recipes_apply_and_the_project_passes_its_tests_on_sqlite_and_postgres() {
    let project = generate("recipe-svc", &[]);
    apply_recipes(&project);
    let postgres = Postgres::start();
    let tests_database = postgres.database("recipe_tests");
    let features = ["--features", "postgres"];
    cargo(&project, &["fmt", "--all", "--check"]);
    let clippy = [
        "clippy",
        "--locked",
        "--all-targets",
        features[0],
        features[1],
    ];
    cargo(&project, &[&clippy[..], &["--", "-D", "warnings"]].concat());
    let output = cargo_with_env(
        &project,
        &["test", "--locked", features[0], features[1]],
        &[("TEST_POSTGRES_URL", &tests_database)],
    );
    assert!(
        output.contains("sqlite_backend_conforms ... ok"),
        "{output}"
    );
    assert!(
        output.contains("postgres_backend_conforms ... ok"),
        "{output}"
    );
    cargo(
        &project,
        &[
            "build",
            "--locked",
            features[0],
            features[1],
            "--bin",
            "recipe-svc",
        ],
    );
    let bin = shared_target_dir().join("debug/recipe-svc");

    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("keys.db").display());
    let served = postgres.database("recipe_served");
    for url in [&sqlite, &served] {
        let env = [("DATABASE_URL", url.as_str())];
        let admin = mint_admin_key(&bin, &env);
        let service = Service::start(&bin, &env, free_port());
        let client = Client::new(&service.base_url);
        plan_round_trip(&client, &admin);
        if url == &sqlite {
            the_new_route_is_guarded_and_documented(&client, &admin);
        }
    }
}

fn the_new_route_is_guarded_and_documented(client: &Client, admin: &str) {
    let mint = |scopes: Value| {
        let body = json!({"name": "reader", "scopes": scopes});
        let (status, created) = client.send("POST", KEYS, Some(admin), Some(body));
        assert_eq!(status, 201, "{created}");
        created["key"].as_str().unwrap().to_owned()
    };
    let reader = mint(json!(["reports:read"]));
    let other = mint(json!(["invoices:read"]));
    let (status, report) = client.send("GET", "/reports/42", Some(&reader), None);
    assert_eq!((status, &report["report"]), (200, &json!("42")), "{report}");
    let (status, problem) = client.send("GET", "/reports/42", Some(&other), None);
    assert_eq!(
        (status, &problem["code"]),
        (403, &json!("insufficient_scope"))
    );
    assert_eq!(client.send("GET", "/reports/42", None, None).0, 401);

    let (_, doc) = client.send("GET", "/docs/openapi.json", None, None);
    let operation = &doc["paths"]["/reports/{id}"]["get"];
    assert_eq!(operation["operationId"], "report", "{operation}");
    assert_eq!(operation["security"][0]["api_key"], json!(["reports:read"]));
    assert_eq!(
        doc["components"]["schemas"]["ApiKeyRecord"]["properties"]["plan"]["type"],
        json!(["string", "null"]),
        "the field is in the document"
    );
}
