//! What a key is, defined once: the stored key ([`ApiKeyRecord`]), what a new key and a change to
//! one carry ([`NewKey`], [`KeyChanges`]), its limits, and the audit log's [`KeyEvent`].
//!
//! The HTTP bodies, the key service and every store use these types as they are; their serde and
//! `#[schema]` attributes are the wire format and the OpenAPI document. To add a field to your
//! keys, add it here (to the record, and to `NewKey` and `KeyChanges` if it can be set), then to
//! the SQL table in `store/sql/`; the compiler points at every conversion that must carry it.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

// The digest does not serialise (the record skips it, and `KeyHash` has no `Serialize`) nor print,
// so no response or log line made from a record can carry it; stores that keep records as JSON
// write `ApiKeyRecord::stored`.
/// A stored key: never the key itself, and never its digest in an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyRecord {
    /// The key's public id.
    #[schema(example = "4fTq9ZbX2mKp")]
    pub id: String,
    #[serde(skip_serializing)]
    #[schema(ignore)]
    pub key_hash: KeyHash,
    #[schema(example = "billing-sync")]
    pub name: String,
    /// Whoever the key belongs to.
    #[schema(example = "team-billing")]
    pub owner_id: Option<String>,
    #[schema(example = json!(["invoices:read"]))]
    pub scopes: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Requests made with this key.
    pub request_count: u64,
    /// `false` while disabled: refused until enabled again; unlike revocation, this can be undone.
    /// Records written before this field existed (in Redis) read back enabled.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub rate_limit: Option<RateLimit>,
    /// Uses left, when the key has a quota; taken one per admitted request.
    pub remaining: Option<u64>,
    pub refill: Option<Refill>,
    /// When the quota was last filled by its refill.
    pub refilled_at: Option<DateTime<Utc>>,
    /// The key this one replaced, when it was made by a rotation.
    pub rotated_from: Option<String>,
    /// The key that replaced this one, once rotated.
    pub replaced_by: Option<String>,
    /// When a rotated key stops working: the end of its grace period.
    pub retires_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    /// A new key like this one, as a rotation issues it: the same name, owner, scopes, metadata,
    /// expiry and limits.
    pub fn successor(&self) -> NewKey {
        NewKey {
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            owner_id: self.owner_id.clone(),
            expires_in: None,
            expires_at: self.expires_at,
            metadata: self.metadata.clone(),
            rate_limit: self.rate_limit,
            remaining: self.remaining,
            refill: self.refill,
        }
    }
}

/// A record as a store writes it, digest included: serialise [`ApiKeyRecord::stored`], not the
/// record, when your store keeps records as JSON (reading one back needs no wrapper).
#[derive(Serialize)]
pub struct StoredRecord<'a> {
    #[serde(serialize_with = "hex::serialize")]
    key_hash: &'a [u8; 32],
    #[serde(flatten)]
    record: &'a ApiKeyRecord,
}

impl ApiKeyRecord {
    pub fn stored(&self) -> StoredRecord<'_> {
        StoredRecord { key_hash: &self.key_hash.0, record: self }
    }
}

fn enabled_by_default() -> bool {
    true
}

/// A new key, as the create route, the command line and your code describe it. Give at most one of
/// `expires_in` and `expires_at`; with neither, the key does not expire.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateKeyRequest)]
pub struct NewKey {
    #[schema(example = "billing-sync", min_length = 1, max_length = 100)]
    pub name: String,
    /// Scopes the key holds: `resource:action`, `resource:*` or `*`.
    #[serde(default)]
    #[schema(example = json!(["invoices:read", "invoices:write"]))]
    pub scopes: Vec<String>,
    /// Whoever the key belongs to, for listing by owner.
    #[schema(example = "team-billing")]
    pub owner_id: Option<String>,
    /// Lifetime in seconds from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = 2592000, minimum = 1)]
    pub expires_in: Option<u64>,
    /// Expiry as an RFC 3339 time with an offset.
    pub expires_at: Option<DateTime<Utc>>,
    /// Free-form JSON object stored with the key (at most 4 KiB).
    #[serde(default, deserialize_with = "null_as_empty")]
    #[schema(value_type = Object, example = json!({"ticket": "OPS-42"}))]
    pub metadata: Map<String, Value>,
    /// At most `requests` per `window` seconds on guarded routes; then 429 `rate_limit_exceeded`.
    pub rate_limit: Option<RateLimit>,
    /// Uses the key may make on guarded routes; then 429 `usage_exceeded`. With a `refill` and no
    /// `remaining`, the quota starts full.
    #[schema(example = 10000, minimum = 0)]
    pub remaining: Option<u64>,
    pub refill: Option<Refill>,
}

impl NewKey {
    /// The record of this key, minted at `now` with `id` and digest `key_hash`. `expires_in` must
    /// already be resolved into `expires_at`, as the key service does.
    pub fn into_record(
        self,
        id: String,
        key_hash: KeyHash,
        now: DateTime<Utc>,
        rotated_from: Option<String>,
    ) -> ApiKeyRecord {
        let Self {
            name,
            scopes,
            owner_id,
            expires_in,
            expires_at,
            metadata,
            rate_limit,
            remaining,
            refill,
        } = self;
        debug_assert!(expires_in.is_none(), "resolve expires_in first");
        ApiKeyRecord {
            id,
            key_hash,
            name,
            owner_id,
            scopes,
            metadata,
            created_at: now,
            expires_at: expires_at.map(|t| t.trunc_subsecs(6)),
            revoked_at: None,
            last_used_at: None,
            request_count: 0,
            enabled: true,
            rate_limit,
            remaining,
            refill,
            refilled_at: refill.map(|_| now),
            rotated_from,
            replaced_by: None,
            retires_at: None,
        }
    }
}

/// Changes to a key: absent fields stay as they are; `null` clears `expires_at`, `rate_limit`,
/// `remaining` and `refill`. Serialised, it is what the audit log records of an update.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UpdateKeyRequest, example = json!({"name": "billing-sync (2026)", "enabled": false, "rate_limit": {"requests": 100, "window": 60}}))]
pub struct KeyChanges {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// Replaces the key's scopes. A manager key grants only scopes it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Replaces the key's metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// `false` refuses the key (`disabled_api_key`) until set back to `true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, minimum = 0)]
    pub remaining: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Refill>)]
    pub refill: Option<Option<Refill>>,
    /// When `refill` was set, so that the quota's periods count from then (now, if not given).
    #[serde(skip)]
    #[schema(ignore)]
    pub refilled_at: Option<DateTime<Utc>>,
}

impl KeyChanges {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Makes these changes to `record`.
    pub fn apply(&self, record: &mut ApiKeyRecord) {
        let Self {
            name,
            scopes,
            metadata,
            expires_at,
            enabled,
            rate_limit,
            remaining,
            refill,
            refilled_at,
        } = self.clone();
        set(&mut record.name, name);
        set(&mut record.scopes, scopes);
        set(&mut record.metadata, metadata);
        set(&mut record.expires_at, expires_at);
        set(&mut record.enabled, enabled);
        set(&mut record.rate_limit, rate_limit);
        set(&mut record.remaining, remaining);
        if let Some(refill) = refill {
            record.refill = refill;
            record.refilled_at = refill.map(|_| refilled_at.unwrap_or_else(now));
        }
    }
}

fn set<T>(field: &mut T, change: Option<T>) {
    if let Some(value) = change {
        *field = value;
    }
}

/// An object that may be sent as `null`, meaning none.
fn null_as_empty<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Map<String, Value>, D::Error> {
    Option::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// A field that was sent, possibly as `null` (`Some(None)`), as opposed to one left out (`None`).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `value` as a JSON object: the shape every audit event's `changes` has.
pub fn to_object(value: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    /// Switched off with `enabled: false`; can be switched on again.
    Disabled,
    Expired,
    /// Replaced by a rotation, and past its grace period.
    Rotated,
    Revoked,
}

impl KeyStatus {
    pub fn of(record: &ApiKeyRecord) -> Self {
        Self::at(record, Utc::now())
    }

    /// Where `record` stands at `now`; the first that applies, in this order: a revoked key is
    /// said to be revoked even once past its expiry. Authentication refuses a key with the code of
    /// its standing, so this order is also the order of those codes, not only of the `status`
    /// field and the CLI's column.
    pub fn at(record: &ApiKeyRecord, now: DateTime<Utc>) -> Self {
        if record.revoked_at.is_some() {
            Self::Revoked
        } else if record.expires_at.is_some_and(|at| at <= now) {
            Self::Expired
        } else if record.retires_at.is_some_and(|at| at <= now) {
            Self::Rotated
        } else if !record.enabled {
            Self::Disabled
        } else {
            Self::Active
        }
    }
}

/// At most `requests` requests per `window` seconds, spread evenly: a key that has been idle may
/// send all of them at once, then one more every `window / requests` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[schema(example = 100, minimum = 1)]
    pub requests: u32,
    /// Seconds.
    #[schema(example = 60, minimum = 1)]
    pub window: u32,
}

/// Fills a quota back up to `amount` at the start of every UTC day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    pub interval: RefillInterval,
    #[schema(example = 1000, minimum = 1)]
    pub amount: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefillInterval {
    Daily,
    Monthly,
}

impl RefillInterval {
    /// When the period holding `now` began: midnight UTC of the day, or of the month's first day.
    pub fn period_start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        use chrono::Datelike;
        let day = now.date_naive();
        let first = match self {
            Self::Daily => day,
            Self::Monthly => day.with_day(1).unwrap_or(day),
        };
        first.and_time(chrono::NaiveTime::MIN).and_utc()
    }

    /// When the period after the one holding `now` begins.
    pub fn next_start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let start = self.period_start(now);
        match self {
            Self::Daily => start + chrono::Days::new(1),
            Self::Monthly => start + chrono::Months::new(1),
        }
    }
}

/// One change to a key, as the audit log keeps it. Never holds a key or its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = EventDetails)]
pub struct KeyEvent {
    #[schema(example = "9c1f0e4b7a2d3e58")]
    pub id: String,
    pub key_id: String,
    pub action: EventAction,
    /// The key that made the change; `null` for the operator (command line, start-up, server code).
    pub actor_key_id: Option<String>,
    /// The address the change came from, over HTTP.
    pub client: Option<String>,
    /// Changed fields and their new values.
    #[schema(value_type = Object, example = json!({"enabled": false}))]
    pub changes: Map<String, Value>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    Created,
    Rotated,
    Updated,
    Revoked,
    /// Keys that had stopped working and old events were deleted (`keys purge`); the event's
    /// `key_id` is `*`, its changes give the cut-offs and the counts.
    Purged,
}

/// The current time at the precision every backend stores.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The name serde gives a unit variant (`monthly`, `revoked`): what a text column or a table holds.
pub fn name_of(variant: impl Serialize) -> String {
    match serde_json::to_value(variant) {
        Ok(Value::String(name)) => name,
        _ => String::new(),
    }
}

/// The unit variant serde reads from `name`, if there is one.
pub fn from_name<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(Value::from(name)).ok()
}

/// A fresh random id for a record that has no other: 16 hex digits.
pub fn random_id() -> String {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("the OS random number generator is available");
    hex::encode(random)
}

/// A key's public id, held inline rather than as a pointer to a string elsewhere: maps keyed by it
/// find an entry without a second memory access, which with many keys in use is a cache miss per
/// lookup.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId([u8; KeyId::LEN]);

impl KeyId {
    /// The length of every id this service mints.
    pub const LEN: usize = 12;

    /// `None` unless `id` is [`KeyId::LEN`] bytes long, the only length a presented key's id can
    /// have.
    pub fn new(id: &str) -> Option<Self> {
        id.as_bytes().try_into().ok().map(Self)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a KeyId is made from a whole str")
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The stored digest of a key (SHA-256, or HMAC-SHA256 under the pepper), written as 64 hex digits.
/// Only [`StoredRecord`] writes one out, so nothing else can serialise a digest by accident.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KeyHash(#[serde(deserialize_with = "hex::deserialize")] pub(crate) [u8; 32]);

impl From<[u8; 32]> for KeyHash {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// Redacted: a digest in a log line or a failed assertion is a digest an attacker can test guesses
/// against offline.
impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    /// Authentication refuses a key with the code of the first standing that applies.
    #[test]
    fn a_key_stands_by_the_first_that_applies() {
        let now = Utc::now();
        let past = now - Duration::seconds(1);
        let mut key = NewKey::default().into_record(random_id(), KeyHash([0; 32]), now, None);
        assert_eq!(KeyStatus::at(&key, now), KeyStatus::Active);
        key.enabled = false;
        assert_eq!(KeyStatus::at(&key, now), KeyStatus::Disabled);
        key.retires_at = Some(past);
        assert_eq!(KeyStatus::at(&key, now), KeyStatus::Rotated);
        key.expires_at = Some(past);
        assert_eq!(KeyStatus::at(&key, now), KeyStatus::Expired);
        key.revoked_at = Some(past);
        assert_eq!(KeyStatus::at(&key, now), KeyStatus::Revoked);
        key.expires_at = Some(now + Duration::seconds(1));
        assert_eq!(KeyStatus::at(&key, now), KeyStatus::Revoked);
    }
}
