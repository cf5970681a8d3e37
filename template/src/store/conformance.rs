//! A conformance suite for [`Backend`] implementations: the behaviour the service relies on.
//!
//! Run it against your own backend from a test:
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_backend_conforms() {
//!     let backend = MyBackend::connect("...").await.unwrap();
//!     my_service::store::conformance::run(&backend).await;
//! }
//! ```
//!
//! Each check uses fresh ids and its own owner, so it can run against a database that already holds
//! data. A failed check panics with what was expected.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::json;

use super::{Backend, EventQuery, ListQuery, Purged, QuotaUse, Retention, StoreError, Usage};
use crate::model::{
    ApiKeyRecord, EventAction, KeyChanges, KeyEvent, KeyHash, KeyId, NewKey, RateLimit, Refill,
    RefillInterval, random_id, to_object,
};

/// Runs every check.
pub async fn run(backend: &dyn Backend) {
    stores_and_returns_keys(backend).await;
    rejects_duplicate_ids(backend).await;
    lists_newest_first_with_the_real_total(backend).await;
    revokes_idempotently(backend).await;
    lookups_see_revocation_at_once(backend).await;
    adds_usage_and_moves_last_use_forward(backend).await;
    lists_keys_about_to_expire(backend).await;
    updates_only_what_changes(backend).await;
    rotates_once_and_links_both_keys(backend).await;
    takes_quota_atomically(backend).await;
    takes_quota_in_blocks(backend).await;
    refills_quota_once_per_period(backend).await;
    records_events_with_their_mutations(backend).await;
    purges_only_what_ended_before_the_cut_off(backend).await;
}

/// A record with a fresh random id of a key's length (so that caches keep it), owned by `owner`,
/// created at `created_at`.
pub fn sample(owner: &str, created_at: DateTime<Utc>) -> ApiKeyRecord {
    let new = NewKey {
        name: "conformance".into(),
        owner_id: Some(owner.into()),
        scopes: vec!["users:read".into(), "billing:*".into()],
        metadata: to_object(&json!({"team": "core", "limits": {"rps": 5}})),
        expires_at: Some(created_at + Duration::days(30)),
        rate_limit: Some(RateLimit { requests: 100, window: 60 }),
        ..NewKey::default()
    };
    let created_at = created_at.trunc_subsecs(6);
    new.into_record(random_id()[..KeyId::LEN].to_owned(), KeyHash::from([7; 32]), created_at, None)
}

/// An event about `key_id`, as the service records one.
pub fn event(key_id: &str) -> KeyEvent {
    KeyEvent {
        id: random_id(),
        key_id: key_id.into(),
        action: EventAction::Created,
        actor_key_id: None,
        client: Some("127.0.0.1".into()),
        changes: serde_json::Map::new(),
        at: Utc::now().trunc_subsecs(6),
    }
}

fn fresh_owner() -> String {
    format!("owner-{}", random_id())
}

async fn stored(backend: &dyn Backend, key: &ApiKeyRecord) {
    backend.insert(key, &event(&key.id)).await.expect("insert");
}

async fn reread(backend: &dyn Backend, id: &str) -> ApiKeyRecord {
    backend.get(id).await.expect("get").expect("stored")
}

pub async fn stores_and_returns_keys(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    stored(backend, &key).await;
    assert_eq!(
        backend.get(&key.id).await.expect("get"),
        Some(key.clone()),
        "a stored key reads back unchanged"
    );
    assert_eq!(backend.get("no-such-id").await.expect("get"), None, "an unknown id is None");
}

pub async fn rejects_duplicate_ids(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    stored(backend, &key).await;
    let mut again = key.clone();
    again.name = "impostor".into();
    assert!(
        matches!(backend.insert(&again, &event(&key.id)).await, Err(StoreError::Duplicate)),
        "a second key with the same id is refused"
    );
    assert_eq!(
        backend.get(&key.id).await.expect("get").map(|k| k.name),
        Some(key.name),
        "the first key is intact"
    );
}

pub async fn lists_newest_first_with_the_real_total(backend: &dyn Backend) {
    let owner = fresh_owner();
    let start = Utc::now() - Duration::minutes(10);
    let mut keys = Vec::new();
    for minute in 0..5 {
        let key = sample(&owner, start + Duration::minutes(minute));
        stored(backend, &key).await;
        keys.push(key);
    }
    stored(backend, &sample(&fresh_owner(), start)).await;
    keys.reverse();

    let query = |limit, offset| ListQuery {
        owner_id: Some(owner.clone()),
        limit,
        offset,
        ..ListQuery::default()
    };
    let page = backend.list(&query(2, 0)).await.expect("list");
    assert_eq!(page.total, 5, "total counts every match, not the page");
    assert_eq!(ids(&page.items), ids(&keys[..2]), "newest first");
    let page = backend.list(&query(2, 4)).await.expect("list");
    assert_eq!(ids(&page.items), ids(&keys[4..]), "offset skips");
    let page = backend.list(&query(2, 100)).await.expect("list");
    assert!(page.items.is_empty());
    assert_eq!(page.total, 5, "total is kept past the end");

    let everyone =
        backend.list(&ListQuery { limit: 100, ..ListQuery::default() }).await.expect("list");
    assert!(everyone.total >= 6, "without an owner every key counts");
}

fn ids(keys: &[ApiKeyRecord]) -> Vec<&str> {
    keys.iter().map(|k| k.id.as_str()).collect()
}

pub async fn revokes_idempotently(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    stored(backend, &key).await;
    let first = Utc::now().trunc_subsecs(6);
    let revoked = event(&key.id);
    assert!(backend.revoke(&key.id, first, &revoked).await.expect("revoke"));
    assert!(
        backend
            .revoke(&key.id, first + Duration::minutes(1), &event(&key.id))
            .await
            .expect("revoke again")
    );
    let stored = backend.get(&key.id).await.expect("get").expect("still stored");
    assert_eq!(stored.revoked_at, Some(first), "the first revocation time is kept");
    assert!(
        !backend.revoke("no-such-id", first, &event("no-such-id")).await.expect("revoke"),
        "an unknown id reports false"
    );
}

pub async fn lookups_see_revocation_at_once(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    stored(backend, &key).await;
    assert_eq!(
        backend.lookup(&key.id).await.expect("lookup").as_deref(),
        Some(&key),
        "a lookup finds the key"
    );
    assert_eq!(
        backend.lookup(&key.id).await.expect("lookup again").as_deref(),
        Some(&key),
        "and again"
    );
    let at = Utc::now().trunc_subsecs(6);
    backend.revoke(&key.id, at, &event(&key.id)).await.expect("revoke");
    let seen = backend.lookup(&key.id).await.expect("lookup").expect("still there");
    assert_eq!(seen.revoked_at, Some(at), "the next lookup on this instance sees the revocation");
    assert_eq!(backend.lookup("no-such-id").await.expect("lookup"), None);
}

pub async fn adds_usage_and_moves_last_use_forward(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    stored(backend, &key).await;
    let later = Utc::now().trunc_subsecs(6);
    let earlier = later - Duration::minutes(5);
    let usage = |requests, last_used_at| vec![Usage { id: key.id.clone(), requests, last_used_at }];
    backend.record_usage(&usage(3, later)).await.expect("record");
    backend.record_usage(&usage(4, earlier)).await.expect("record");
    let after = backend.get(&key.id).await.expect("get").expect("stored");
    assert_eq!(after.request_count, 7, "counts add up");
    assert_eq!(after.last_used_at, Some(later), "last use never moves back");

    let unknown = vec![Usage { id: "no-such-id".into(), requests: 1, last_used_at: later }];
    backend.record_usage(&unknown).await.expect("usage of a deleted key is ignored");

    // A busy interval's flush, larger than a statement's worth of keys: two known keys at its ends.
    let other = sample(&fresh_owner(), Utc::now());
    stored(backend, &other).await;
    let used = |id: &str, requests| Usage { id: id.to_owned(), requests, last_used_at: later };
    let mut busy: Vec<Usage> = (0..1200).map(|i| used(&format!("deleted{i}"), 1)).collect();
    busy.insert(0, used(&other.id, 2));
    busy.push(used(&key.id, 5));
    backend.record_usage(&busy).await.expect("record a large batch");
    let count = async |id| backend.get(id).await.expect("get").expect("stored").request_count;
    assert_eq!((count(&other.id).await, count(&key.id).await), (2, 12), "every key of the batch");
}

pub async fn lists_keys_about_to_expire(backend: &dyn Backend) {
    let owner = fresh_owner();
    let now = Utc::now().trunc_subsecs(6);
    let in_days = |days| {
        let mut key = sample(&owner, now);
        key.expires_at = Some(now + Duration::days(days));
        key
    };
    let soon = in_days(3);
    let later = in_days(20);
    let mut revoked = in_days(2);
    revoked.revoked_at = Some(now);
    let mut never = sample(&owner, now);
    never.expires_at = None;
    for key in [&soon, &later, &revoked, &never] {
        stored(backend, key).await;
    }
    let page = backend
        .list(&ListQuery {
            owner_id: Some(owner),
            expiring: Some((now, now + Duration::days(7))),
            limit: 10,
            offset: 0,
        })
        .await
        .expect("list");
    assert_eq!(ids(&page.items), [soon.id.as_str()], "only unrevoked keys expiring in the window");
    assert_eq!(page.total, 1);
}

pub async fn updates_only_what_changes(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    stored(backend, &key).await;
    let changes = KeyChanges {
        name: Some("renamed".into()),
        enabled: Some(false),
        expires_at: Some(None),
        rate_limit: Some(None),
        remaining: Some(Some(5)),
        ..KeyChanges::default()
    };
    let updated = backend
        .update(&key.id, &changes, &event(&key.id))
        .await
        .expect("update")
        .expect("the key exists");
    let mut expected = key.clone();
    changes.apply(&mut expected);
    assert_eq!(updated, expected, "the changed key is returned");
    assert_eq!(reread(backend, &key.id).await, expected, "and stored");
    assert_eq!(expected.scopes, key.scopes, "fields not named are kept");
    assert_eq!(
        backend.update("no-such-id", &changes, &event("no-such-id")).await.expect("update"),
        None
    );
}

pub async fn rotates_once_and_links_both_keys(backend: &dyn Backend) {
    let now = Utc::now().trunc_subsecs(6);
    let mut old = sample(&fresh_owner(), now);
    old.remaining = Some(10);
    stored(backend, &old).await;
    let mut new = sample(old.owner_id.as_deref().unwrap_or_default(), now);
    (new.rotated_from, new.remaining) = (Some(old.id.clone()), old.remaining);
    // Uses taken after the new key was made from the old one are not handed out again.
    backend.use_quota(&old.id, 1, None, now).await.expect("use");
    let retires_at = now + Duration::hours(1);
    let events = [event(&old.id), event(&new.id)];
    assert!(backend.rotate(&old.id, &new, retires_at, &events).await.expect("rotate"));
    let old_now = reread(backend, &old.id).await;
    assert_eq!(old_now.replaced_by.as_deref(), Some(new.id.as_str()));
    assert_eq!(old_now.retires_at, Some(retires_at));
    new.remaining = Some(9);
    assert_eq!(reread(backend, &new.id).await, new, "the new key is stored, with the quota left");

    let another = sample("someone", now);
    assert!(
        !backend
            .rotate(&old.id, &another, retires_at, &[event(&old.id)])
            .await
            .expect("rotate again"),
        "a replaced key is not rotated twice"
    );
    assert_eq!(backend.get(&another.id).await.expect("get"), None, "and nothing is stored");
    let revoked = sample(&fresh_owner(), now);
    stored(backend, &revoked).await;
    backend.revoke(&revoked.id, now, &event(&revoked.id)).await.expect("revoke");
    assert!(
        !backend
            .rotate(&revoked.id, &another, retires_at, &[event(&revoked.id)])
            .await
            .expect("rotate"),
        "a revoked key is not rotated"
    );
}

pub async fn takes_quota_atomically(backend: &dyn Backend) {
    let mut key = sample(&fresh_owner(), Utc::now());
    key.remaining = Some(20);
    stored(backend, &key).await;
    let now = Utc::now();
    let uses =
        futures_util::future::join_all((0..50).map(|_| backend.use_quota(&key.id, 1, None, now)))
            .await;
    let taken = uses.iter().filter(|used| matches!(used, Ok(QuotaUse::Taken { .. }))).count();
    let exhausted = uses.iter().filter(|used| matches!(used, Ok(QuotaUse::Exhausted))).count();
    assert_eq!((taken, exhausted), (20, 30), "50 concurrent uses of 20: {uses:?}");
    assert_eq!(reread(backend, &key.id).await.remaining, Some(0), "never below zero");

    let unlimited = sample(&fresh_owner(), Utc::now());
    stored(backend, &unlimited).await;
    assert_eq!(
        backend.use_quota(&unlimited.id, 1, None, now).await.expect("use"),
        QuotaUse::Unlimited
    );
}

pub async fn takes_quota_in_blocks(backend: &dyn Backend) {
    let mut key = sample(&fresh_owner(), Utc::now());
    key.remaining = Some(100);
    stored(backend, &key).await;
    let now = Utc::now();
    let take = async |want| backend.use_quota(&key.id, want, None, now).await.expect("use");
    assert_eq!(take(5).await, QuotaUse::Taken { taken: 5, remaining: 95 }, "16 × 5 are left");
    assert_eq!(take(10).await, QuotaUse::Taken { taken: 1, remaining: 94 }, "16 × 10 are not");
    let mut left = 94;
    while left > 0 {
        let QuotaUse::Taken { taken, remaining } = take(5).await else {
            panic!("{left} uses are left");
        };
        assert_eq!(taken, if left >= 80 { 5 } else { 1 }, "{left} left");
        assert_eq!(remaining, left - taken);
        left = remaining;
    }
    assert_eq!(take(5).await, QuotaUse::Exhausted);

    // A refill that is due comes first, whatever the block asked for.
    let mut key = sample(&fresh_owner(), now);
    key.remaining = Some(50);
    key.refill = Some(Refill { interval: RefillInterval::Daily, amount: 3 });
    key.refilled_at = Some(now - Duration::days(1));
    stored(backend, &key).await;
    let period = RefillInterval::Daily.period_start(now);
    let used = backend.use_quota(&key.id, 2, Some(period), now).await.expect("use");
    assert_eq!(used, QuotaUse::Taken { taken: 1, remaining: 2 }, "refilled to 3, then one taken");

    // A caller dated before the last refill gets one use, not a block.
    let now = now.trunc_subsecs(6);
    let mut key = sample(&fresh_owner(), now);
    key.remaining = Some(0);
    key.refill = Some(Refill { interval: RefillInterval::Daily, amount: 1000 });
    key.refilled_at = Some(now - Duration::days(1));
    stored(backend, &key).await;
    let take = async |want, now| {
        let period = RefillInterval::Daily.period_start(now);
        backend.use_quota(&key.id, want, Some(period), now).await.expect("use")
    };
    assert_eq!(take(10, now).await, QuotaUse::Taken { taken: 10, remaining: 990 });
    let before = now - Duration::milliseconds(1);
    assert_eq!(take(10, before).await, QuotaUse::Taken { taken: 1, remaining: 989 });
    assert_eq!(take(10, now).await, QuotaUse::Taken { taken: 10, remaining: 979 });

    // A key without a refill, never refilled (no date, NULL in SQL), asked by a caller that still
    // saw one: a block as before.
    let mut key = sample(&fresh_owner(), now);
    key.remaining = Some(1000);
    stored(backend, &key).await;
    let period = Some(RefillInterval::Daily.period_start(now));
    let used = backend.use_quota(&key.id, 10, period, now).await.expect("use");
    assert_eq!(used, QuotaUse::Taken { taken: 10, remaining: 990 });
}

pub async fn refills_quota_once_per_period(backend: &dyn Backend) {
    let now = Utc::now().trunc_subsecs(6);
    let mut key = sample(&fresh_owner(), now);
    key.remaining = Some(0);
    key.refill = Some(Refill { interval: RefillInterval::Daily, amount: 3 });
    key.refilled_at = Some(now - Duration::days(1));
    stored(backend, &key).await;
    let period = RefillInterval::Daily.period_start(now);
    assert_eq!(
        backend.use_quota(&key.id, 1, Some(period), now).await.expect("use"),
        QuotaUse::Taken { taken: 1, remaining: 2 },
        "a new period refills, then takes one"
    );
    assert_eq!(reread(backend, &key.id).await.refilled_at, Some(now));
    for left in [1, 0] {
        assert_eq!(
            backend.use_quota(&key.id, 1, Some(period), now).await.expect("use"),
            QuotaUse::Taken { taken: 1, remaining: left },
            "the same period does not refill again"
        );
    }
    assert_eq!(
        backend.use_quota(&key.id, 1, Some(period), now).await.expect("use"),
        QuotaUse::Exhausted
    );
}

pub async fn records_events_with_their_mutations(backend: &dyn Backend) {
    let key = sample(&fresh_owner(), Utc::now());
    let mut created = event(&key.id);
    created.changes.insert("name".into(), key.name.clone().into());
    backend.insert(&key, &created).await.expect("insert");
    let mut updated = event(&key.id);
    updated.action = EventAction::Updated;
    updated.at = created.at + Duration::seconds(1);
    updated.actor_key_id = Some("actor".into());
    let changes = KeyChanges { enabled: Some(false), ..KeyChanges::default() };
    backend.update(&key.id, &changes, &updated).await.expect("update");
    let mut revoked = event(&key.id);
    revoked.action = EventAction::Revoked;
    revoked.at = created.at + Duration::seconds(2);
    backend.revoke(&key.id, revoked.at, &revoked).await.expect("revoke");
    backend.revoke(&key.id, revoked.at, &event(&key.id)).await.expect("revoke again");
    backend.insert(&key, &event(&key.id)).await.expect_err("a duplicate");

    let query = |limit, offset| EventQuery { key_id: Some(key.id.clone()), limit, offset };
    let page = backend.events(&query(10, 0)).await.expect("events");
    assert_eq!(
        page.items,
        [revoked.clone(), updated.clone(), created.clone()],
        "one event per change made, newest first; none for a change not made"
    );
    assert_eq!(page.total, 3);
    let page = backend.events(&query(1, 1)).await.expect("events");
    assert_eq!(page.items, [updated], "paginated");
    let all =
        backend.events(&EventQuery { key_id: None, limit: 100, offset: 0 }).await.expect("events");
    assert!(all.total >= 3, "the global log holds every key's events");
}

pub async fn purges_only_what_ended_before_the_cut_off(backend: &dyn Backend) {
    // Long ago, so that nothing another check stores at the same time is old enough to go.
    let cut_off = Utc::now().trunc_subsecs(6) - Duration::days(365 * 30);
    let old = cut_off - Duration::hours(1);
    let ended = |change: fn(&mut ApiKeyRecord)| {
        let mut key = sample(&fresh_owner(), old - Duration::days(60));
        change(&mut key);
        key
    };
    let revoked = ended(|k| k.revoked_at = Some(k.created_at + Duration::days(1)));
    let expired = ended(|k| k.expires_at = Some(k.created_at + Duration::days(2)));
    let retired = ended(|k| {
        k.replaced_by = Some(random_id());
        k.retires_at = Some(k.created_at + Duration::days(3));
    });
    let mut working = ended(|k| k.expires_at = None);
    working.revoked_at = Some(cut_off + Duration::hours(1));
    let mut old_event = event(&working.id);
    old_event.at = old;
    for key in [&revoked, &expired, &retired] {
        stored(backend, key).await;
    }
    // A key's uses go with it.
    let used = Usage { id: revoked.id.clone(), requests: 1, last_used_at: old };
    backend.record_usage(&[used]).await.expect("record");
    backend.insert(&working, &old_event).await.expect("insert");
    let mut later = working.clone();
    later.id = random_id();
    let mut kept_event = event(&later.id);
    kept_event.at = cut_off + Duration::seconds(1);
    backend.insert(&later, &kept_event).await.expect("insert");

    let retention = Retention { keys_before: Some(cut_off), events_before: Some(cut_off) };
    let counted = backend.purge(&retention, None).await.expect("dry run");
    assert!(counted.keys >= 3 && counted.events >= 1, "a dry run counts: {counted:?}");
    assert!(backend.get(&revoked.id).await.expect("get").is_some(), "a dry run deletes nothing");

    let mut purge = event("*");
    purge.action = EventAction::Purged;
    let purged = backend.purge(&retention, Some(&purge)).await.expect("purge");
    assert!(purged.keys >= 3 && purged.events >= 1, "{purged:?}");
    for gone in [&revoked, &expired, &retired] {
        assert_eq!(backend.get(&gone.id).await.expect("get"), None, "a key that ended is gone");
    }
    assert_eq!(reread(backend, &working.id).await, working, "a key ended after the cut-off stays");
    let owners =
        ListQuery { owner_id: revoked.owner_id.clone(), limit: 10, ..ListQuery::default() };
    assert_eq!(backend.list(&owners).await.expect("list").total, 0, "and leaves no listing behind");
    let events = |key_id: &str| EventQuery { key_id: Some(key_id.into()), limit: 10, offset: 0 };
    assert_eq!(backend.events(&events(&working.id)).await.expect("events").items, []);
    assert_eq!(backend.events(&events(&later.id)).await.expect("events").items, [kept_event]);
    let recorded = backend.events(&events("*")).await.expect("events");
    assert!(
        recorded
            .items
            .iter()
            .any(|e| e.id == purge.id && e.changes == purged.recorded_in(&purge).changes),
        "the purge is recorded with its counts"
    );
    let again = backend.purge(&retention, None).await.expect("dry run");
    assert_eq!(again, Purged::default(), "nothing is left to purge");
}
