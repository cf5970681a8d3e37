//! The generated service as a user meets it: mint an admin key from the shell, start the server, and
//! walk litestar-api-auth's flow over real HTTP on a SQLite file.

use std::process::Command;

use actix_api_auth_tests::{Client, Service, binary, free_port, generate, repo_root, work_dir};
use serde_json::json;

#[test]
fn seed_flow_over_http() {
    let project = generate("e2e-svc", &["key_prefix=e2e_"]);
    let bin = binary(&project, "e2e-svc");
    let db = work_dir().join("e2e.db");
    let _ = std::fs::remove_file(&db);
    let database_url = format!("sqlite://{}", db.display());
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RUST_LOG", "warn"),
    ];

    let minted = Command::new(&bin)
        .args(["keys", "create", "--name", "bootstrap", "--admin"])
        .envs(env)
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let admin = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    assert!(
        admin.starts_with("e2e_"),
        "stdout is the key alone: {admin:?}"
    );
    assert!(
        !String::from_utf8_lossy(&minted.stderr).contains(&admin),
        "the key is printed once, on stdout"
    );

    // The keys command refuses a store that would end with it.
    let memory = Command::new(&bin)
        .args(["keys", "list"])
        .env("DATABASE_URL", "memory://")
        .output()
        .unwrap();
    assert_eq!(memory.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&memory.stderr).contains("serve --admin-key-file"));

    // A bad setting stops start-up with the line the configuration page quotes.
    let refused = Command::new(&bin)
        .envs(env)
        .env("PORT", "eighty")
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&refused.stderr).trim().to_owned();
    assert_eq!(refused.status.code(), Some(2), "{line}");
    let page = std::fs::read_to_string(repo_root().join("docs/src/configuration.md")).unwrap();
    assert!(
        page.replace('\n', " ")
            .contains(&format!("`{line}` (exit status 2)")),
        "configuration.md quotes {line:?}"
    );

    let service = Service::start(&bin, &env, free_port());
    let client = Client::new(&service.base_url);

    // The bootstrap from the shell is in the audit log, made by the operator (no acting key).
    let (status, events) = client.send("GET", "/api/v1/api-keys/events", Some(&admin), None);
    assert_eq!(status, 200, "{events}");
    let bootstrap = &events["items"][0];
    assert_eq!(bootstrap["action"], "created");
    assert_eq!(
        bootstrap["key_id"].as_str(),
        admin.get(4..16), // the 12-character id after `e2e_`
        "{bootstrap}"
    );
    assert!(bootstrap["actor_key_id"].is_null() && bootstrap["client"].is_null());

    let (status, created) = client.send(
        "POST",
        "/api/v1/api-keys",
        Some(&admin),
        Some(json!({"name": "reader", "scopes": ["reports:read"], "owner_id": "user-123", "expires_in": 86400})),
    );
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("e2e_"));

    for _ in 0..3 {
        assert_eq!(client.send("GET", "/protected", Some(&key), None).0, 200);
    }
    let (status, problem) = client.send("DELETE", "/api/admin/users/1", Some(&key), None);
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("insufficient_scope"))
    );

    let (status, list) = client.send(
        "GET",
        "/api/v1/api-keys?owner_id=user-123",
        Some(&admin),
        None,
    );
    assert_eq!((status, list["total"].as_u64()), (200, Some(1)));
    let (status, details) =
        client.send("GET", &format!("/api/v1/api-keys/{id}"), Some(&admin), None);
    assert_eq!(status, 200);
    assert_eq!(details["request_count"], 4);

    assert_eq!(
        client
            .send(
                "DELETE",
                &format!("/api/v1/api-keys/{id}"),
                Some(&admin),
                None
            )
            .0,
        204
    );
    let (status, problem) = client.send("GET", "/protected", Some(&key), None);
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("revoked_api_key"))
    );

    let (status, _) = client.send("GET", "/docs/openapi.json", None, None);
    assert_eq!(status, 200);

    // A graceful stop writes the counts still in memory.
    assert!(service.stop().success());
    let listed = Command::new(&bin)
        .args(["keys", "list", "--owner", "user-123"])
        .envs(env)
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    let row = listed
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} in {listed}"));
    assert!(
        row.contains("revoked") && row.split_whitespace().any(|w| w == "4"),
        "{row}"
    );

    // Retention: asking for nothing, or for keys that ended within the longest grace period (they
    // may still charge an older key's limits), is refused; a dry run counts; a purge is audited.
    let purge = |args: &[&str]| {
        let out = Command::new(&bin)
            .args(["keys", "purge"])
            .args(args)
            .envs(env)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text + &*String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, refused) = purge(&[]);
    assert_eq!(code, Some(2), "{refused}");
    assert!(
        refused.contains("--revoked-keys <AGE>") && refused.contains("--events <AGE>"),
        "{refused}"
    );
    let (code, refused) = purge(&["--revoked-keys", "29d"]);
    assert_eq!(code, Some(1), "{refused}");
    assert!(refused.contains("must be at least 30 days"), "{refused}");
    let (code, counted) = purge(&["--revoked-keys", "30d", "--dry-run"]);
    assert_eq!(code, Some(0), "{counted}");
    assert!(
        counted.starts_with("would purge 0 keys revoked, expired or retired before "),
        "{counted}"
    );
    let (code, purged) = purge(&["--revoked-keys", "30d", "--events", "100y"]);
    assert_eq!(code, Some(0), "{purged}");
    let lines: Vec<&str> = purged.lines().collect();
    assert!(
        lines[0].starts_with("purged 0 keys revoked, expired or retired before ")
            && lines[1].starts_with("purged 0 audit events recorded before "),
        "{purged}"
    );
    let service = Service::start(&bin, &env, free_port());
    let (_, events) = Client::new(&service.base_url).send(
        "GET",
        "/api/v1/api-keys/events?limit=1",
        Some(&admin),
        None,
    );
    let recorded = &events["items"][0];
    assert_eq!(
        (
            &recorded["action"],
            &recorded["key_id"],
            &recorded["changes"]["keys"]
        ),
        (&json!("purged"), &json!("*"), &json!(0)),
        "{recorded}"
    );
    assert!(service.stop().success());
}
