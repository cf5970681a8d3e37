//! The service's OpenAPI document as a real client generator reads it: openapi-python-client turns
//! it into a Python package, and a walk that uses that package alone (create a key without metadata,
//! find it in the list, read it, use it on the example routes, revoke it, see it refused) gets the
//! answers the document promises. A field marked required that the service does not need, or an
//! answer the document does not describe, breaks the generated client where a hand-written one
//! would not notice.

use std::process::Command;

use actix_api_auth_tests::{Client, Service, binary, free_port, generate, mint_admin_key, tools};

const NAME: &str = "pyclient-svc";

/// A key's life through the generated package's own operations: one line per step, exit 1 at the
/// first mismatch.
const WALK: &str = r#"
import os
import sys

from client import AuthenticatedClient
from client.api.api_keys import create_key, get_key, list_keys, revoke_key
from client.api.examples import delete_user, protected
from client.models import CreateKeyRequest

BASE_URL = os.environ["BASE_URL"]
admin = AuthenticatedClient(base_url=BASE_URL, token=os.environ["ADMIN_KEY"], prefix="Bearer")


def step(name, response, expected, holds=lambda parsed: True):
    got = int(response.status_code)
    ok = got == expected and holds(response.parsed)
    print(f"{name}: {got}" + ("" if ok else f", MISMATCH (expected {expected}): {response.content!r}"))
    if not ok:
        sys.exit(1)
    return response.parsed


# No metadata: a document that marks it required makes the generated model demand it.
try:
    body = CreateKeyRequest(name="invoices-reader", scopes=["invoices:read"])
except TypeError as err:
    sys.exit(f"create without metadata: MISMATCH, the generated model demands it: {err}")
created = step("create without metadata", create_key.sync_detailed(client=admin, body=body), 201)
step("list finds it", list_keys.sync_detailed(client=admin, limit=100), 200,
     lambda page: any(key.id == created.id for key in page.items))
step("get it by id", get_key.sync_detailed(created.id, client=admin), 200,
     lambda key: key.scopes == ["invoices:read"] and key.status == "active")

# The new key in the document's other scheme: alone in X-API-Key.
key = AuthenticatedClient(base_url=BASE_URL, token=created.key, prefix="", auth_header_name="X-API-Key")
step("GET /protected with it", protected.sync_detailed(client=key), 200)
step("DELETE /api/admin/users/{user_id} with it, lacking admin:delete",
     delete_user.sync_detailed("user-1", client=key), 403)
step("revoke it", revoke_key.sync_detailed(created.id, client=admin), 204)
step("GET /protected with it revoked", protected.sync_detailed(client=key), 401)
"#;

#[test]
fn a_client_generated_from_the_document_walks_a_key_through_its_life() {
    // The generated package runs on httpx and attrs, here in the generator's own environment.
    let generator = tools::pip_tool_with(
        "openapi-python-client",
        "0.29.1",
        "openapi-python-client",
        &["httpx==0.28.1", "attrs==26.1.0"],
    );
    let python = generator.with_file_name("python");
    let bin = binary(&generate(NAME, &[]), NAME);
    let scratch = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", scratch.path().join("client.db").display());
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("RUST_LOG", "warn"),
    ];
    let admin = mint_admin_key(&bin, &env);
    let service = Service::start(&bin, &env, free_port());

    let (status, document) =
        Client::new(&service.base_url).send("GET", "/docs/openapi.json", None, None);
    assert_eq!(status, 200, "{document}");
    std::fs::write(scratch.path().join("openapi.json"), document.to_string()).unwrap();
    // Its default post-hooks run ruff, which only formats the code; without them nothing else is
    // needed.
    std::fs::write(scratch.path().join("config.yaml"), "post_hooks: []\n").unwrap();
    let generated = Command::new(&generator)
        .args([
            "generate",
            "--path",
            "openapi.json",
            "--output-path",
            "client",
        ])
        .args(["--meta", "none", "--config", "config.yaml"])
        .current_dir(scratch.path())
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "openapi-python-client failed:\n{}{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );

    std::fs::write(scratch.path().join("walk.py"), WALK).unwrap();
    let walk = Command::new(&python)
        .arg("walk.py")
        .env("BASE_URL", &service.base_url)
        .env("ADMIN_KEY", &admin)
        .current_dir(scratch.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&walk.stdout);
    print!("{stdout}");
    assert!(
        walk.status.success(),
        "the walk through the generated client failed:\n{stdout}{}",
        String::from_utf8_lossy(&walk.stderr)
    );
    assert!(service.stop().success());
}
