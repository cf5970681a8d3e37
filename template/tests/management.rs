//! Who may manage which keys: every key-management route against the admin, a manager of the same
//! owner, a manager of another owner, a plain key and no key at all.

mod common;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use chrono::{Duration, Utc};
use serde_json::{Value, json};

use common::{KEYS, call, memory_harness, with_key};
use {{crate_name}}::keys::Manager;
use {{crate_name}}::model::NewKey;

#[derive(Clone, Copy, Debug)]
enum Caller {
    Admin,
    SameOwner,
    OtherOwner,
    Plain,
    Anonymous,
}

impl Caller {
    /// What a route acting on one key of team-a answers this caller, when it succeeds with `success`.
    fn on_a_team_a_key(self, success: StatusCode) -> StatusCode {
        match self {
            Self::Admin | Self::SameOwner => success,
            Self::OtherOwner => StatusCode::NOT_FOUND,
            Self::Plain => StatusCode::FORBIDDEN,
            Self::Anonymous => StatusCode::UNAUTHORIZED,
        }
    }
}

const CALLERS: [Caller; 5] =
    [Caller::Admin, Caller::SameOwner, Caller::OtherOwner, Caller::Plain, Caller::Anonymous];

struct Keys {
    admin: String,
    same_owner: String,
    other_owner: String,
    plain: String,
}

impl Keys {
    fn of(&self, caller: Caller) -> Option<&str> {
        match caller {
            Caller::Admin => Some(&self.admin),
            Caller::SameOwner => Some(&self.same_owner),
            Caller::OtherOwner => Some(&self.other_owner),
            Caller::Plain => Some(&self.plain),
            Caller::Anonymous => None,
        }
    }
}

fn request(req: TestRequest, key: Option<&str>) -> TestRequest {
    match key {
        Some(key) => with_key(req, key),
        None => req,
    }
}

fn new_key(name: &str, scopes: &[&str], owner: &str) -> NewKey {
    NewKey {
        name: name.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        owner_id: Some(owner.into()),
        expires_at: Some(Utc::now() + Duration::days(30)),
        ..NewKey::default()
    }
}

#[actix_web::test]
async fn every_route_against_every_kind_of_caller() {
    let h = memory_harness().await;
    let mint = async |new: NewKey| {
        let created = h.mint(new).await;
        (created.record.id, created.key.to_string())
    };
    let keys = Keys {
        admin: h.admin.clone(),
        same_owner: mint(new_key("manager a", &["api_keys:manage", "users:read"], "team-a"))
            .await
            .1,
        other_owner: mint(new_key("manager b", &["api_keys:manage", "users:read"], "team-b"))
            .await
            .1,
        plain: mint(new_key("plain a", &["users:read"], "team-a")).await.1,
    };

    for caller in CALLERS {
        let key = keys.of(caller);
        // The target expires before the managers do, so that they may rotate it.
        let (target, _) = mint(NewKey {
            expires_at: Some(Utc::now() + Duration::days(10)),
            ..new_key("target", &["users:read"], "team-a")
        })
        .await;
        let item = format!("{KEYS}/{target}");

        let body = json!({"name": "new", "scopes": ["users:read"], "owner_id": "team-a", "expires_in": 3600});
        let (status, _, created) =
            call(&h.app, request(TestRequest::post().uri(KEYS), key).set_json(body)).await;
        let expected = match caller {
            Caller::Admin | Caller::SameOwner => StatusCode::CREATED,
            Caller::OtherOwner | Caller::Plain => StatusCode::FORBIDDEN,
            Caller::Anonymous => StatusCode::UNAUTHORIZED,
        };
        assert_eq!(status, expected, "create as {caller:?}: {created}");
        if matches!(caller, Caller::OtherOwner) {
            assert_eq!(created["code"], "owner_mismatch");
        }
        if matches!(caller, Caller::Plain) {
            assert_eq!(created["code"], "insufficient_scope");
            assert_eq!(created["required_scopes"], json!(["api_keys:admin", "api_keys:manage"]));
        }

        let (status, _, list) = call(&h.app, request(TestRequest::get().uri(KEYS), key)).await;
        match caller {
            Caller::Admin => {
                assert_eq!(status, StatusCode::OK);
                assert!(ids(&list).contains(&target.as_str()));
                assert!(owners(&list).contains(&"team-b"), "the admin sees every owner");
            }
            Caller::SameOwner | Caller::OtherOwner => {
                assert_eq!(status, StatusCode::OK);
                let own = if matches!(caller, Caller::SameOwner) { "team-a" } else { "team-b" };
                assert!(owners(&list).iter().all(|o| *o == own), "{caller:?}: {list}");
                assert_eq!(
                    ids(&list).contains(&target.as_str()),
                    matches!(caller, Caller::SameOwner)
                );
                assert_eq!(list["total"].as_u64().unwrap() as usize, ids(&list).len());
            }
            Caller::Plain => assert_eq!(status, StatusCode::FORBIDDEN),
            Caller::Anonymous => assert_eq!(status, StatusCode::UNAUTHORIZED),
        }
        // Asking for another owner's keys by filter finds nothing either.
        if matches!(caller, Caller::OtherOwner) {
            let (status, _, list) = call(
                &h.app,
                request(TestRequest::get().uri(&format!("{KEYS}?owner_id=team-a")), key),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(list["total"], 0);
            assert_eq!(list["items"], json!([]));
        }

        let (status, _, got) = call(&h.app, request(TestRequest::get().uri(&item), key)).await;
        let expected = caller.on_a_team_a_key(StatusCode::OK);
        assert_eq!(status, expected, "get as {caller:?}: {got}");
        if matches!(caller, Caller::OtherOwner) {
            assert_eq!(got["code"], "api_key_not_found", "the same answer as a missing key");
        }

        let patch = TestRequest::patch().uri(&item).set_json(json!({"name": "renamed"}));
        let (status, _, updated) = call(&h.app, request(patch, key)).await;
        assert_eq!(
            status,
            caller.on_a_team_a_key(StatusCode::OK),
            "update as {caller:?}: {updated}"
        );

        let events = TestRequest::get().uri(&format!("{item}/events"));
        let (status, _, _) = call(&h.app, request(events, key)).await;
        assert_eq!(status, caller.on_a_team_a_key(StatusCode::OK), "key events as {caller:?}");

        let all = TestRequest::get().uri(&format!("{KEYS}/events"));
        let (status, _, events) = call(&h.app, request(all, key)).await;
        let expected = match caller {
            Caller::Admin => StatusCode::OK,
            Caller::SameOwner | Caller::OtherOwner | Caller::Plain => StatusCode::FORBIDDEN,
            Caller::Anonymous => StatusCode::UNAUTHORIZED,
        };
        assert_eq!(status, expected, "all events as {caller:?}: {events}");
        if matches!(caller, Caller::SameOwner | Caller::OtherOwner) {
            assert_eq!(events["code"], "admin_required");
        }

        let rotate = TestRequest::post().uri(&format!("{item}/rotate")).set_json(json!({}));
        let (status, _, rotated) = call(&h.app, request(rotate, key)).await;
        assert_eq!(
            status,
            caller.on_a_team_a_key(StatusCode::CREATED),
            "rotate as {caller:?}: {rotated}"
        );

        let (status, _, _) = call(&h.app, request(TestRequest::delete().uri(&item), key)).await;
        let expected = caller.on_a_team_a_key(StatusCode::NO_CONTENT);
        assert_eq!(status, expected, "revoke as {caller:?}");
        let stored = h.state.service.get_key(&Manager::Operator, &target).await.unwrap();
        assert_eq!(
            stored.revoked_at.is_some(),
            expected == StatusCode::NO_CONTENT,
            "revoked by {caller:?}"
        );
    }
}

#[actix_web::test]
async fn a_manager_grants_no_more_than_it_holds() {
    let h = memory_harness().await;
    let own_expiry = Utc::now() + Duration::days(30);
    let manager = h
        .mint(NewKey {
            expires_at: Some(own_expiry),
            ..new_key("manager", &["api_keys:manage", "users:read", "billing:*"], "team-a")
        })
        .await
        .key
        .to_string();
    let create = |body: Value| {
        call(&h.app, with_key(TestRequest::post().uri(KEYS), &manager).set_json(body))
    };

    let refused = [
        (json!({"name": "x", "scopes": ["users:write"], "expires_in": 60}), "scope_escalation"),
        (json!({"name": "x", "scopes": ["users:*"], "expires_in": 60}), "scope_escalation"),
        (json!({"name": "x", "scopes": ["*"], "expires_in": 60}), "scope_escalation"),
        (json!({"name": "x", "scopes": ["api_keys:admin"], "expires_in": 60}), "scope_escalation"),
        (json!({"name": "x", "scopes": ["users:read"]}), "expiry_escalation"),
        (
            json!({"name": "x", "scopes": ["users:read"], "expires_in": 60 * 86400}),
            "expiry_escalation",
        ),
        (json!({"name": "x", "owner_id": "team-b", "expires_in": 60}), "owner_mismatch"),
    ];
    for (body, code) in refused {
        let (status, _, problem) = create(body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {problem}");
        assert_eq!(problem["code"], code, "{body}");
    }

    // Within its own scopes (wildcards included), owner and lifetime, it may.
    let (status, _, created) = create(json!({
        "name": "child",
        "scopes": ["users:read", "billing:invoices:read", "billing:*", "api_keys:manage"],
        "expires_in": 3600
    }))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["owner_id"], "team-a", "the manager's owner is the default");

    let (_, _, list) = call(&h.app, with_key(TestRequest::get().uri(KEYS), &h.admin)).await;
    assert_eq!(list["total"], 3, "nothing was stored by the refused requests: {list}");
}

#[actix_web::test]
async fn a_manager_without_an_owner_manages_nothing() {
    let h = memory_harness().await;
    let manager = h
        .mint(NewKey {
            name: "ownerless".into(),
            scopes: vec!["api_keys:manage".into()],
            ..NewKey::default()
        })
        .await
        .key
        .to_string();
    let (status, _, problem) = call(&h.app, with_key(TestRequest::get().uri(KEYS), &manager)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem["code"], "owner_required");
}

fn ids(list: &Value) -> Vec<&str> {
    list["items"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect()
}

fn owners(list: &Value) -> Vec<&str> {
    list["items"].as_array().unwrap().iter().filter_map(|k| k["owner_id"].as_str()).collect()
}
