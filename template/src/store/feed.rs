//! The change feed: how a change made through one instance reaches the caches of every other.
//!
//! Every store announces each changed key in the same step as the change itself: PostgreSQL with
//! `NOTIFY` in the change's transaction, Redis with `PUBLISH` in the change's script, SQLite through
//! the audit log row the change writes (read by polling), memory through an in-process channel.
//! Each instance follows its store's feed ([`ChangeFeed::follow`]) and drops what it cached of
//! every key it hears of, so cached keys can live until they change instead of for a short TTL.
//!
//! A feed proves itself by sending heartbeats *through itself* (a `NOTIFY` or `PUBLISH` the follower
//! makes, or a poll of the log), so that a heartbeat heard means every change announced before it
//! was heard too; it is dated when it was sent, so a follower falling behind counts as silence. A
//! feed not proven for [`SILENCE`] is taken as lost: cached keys are then trusted only for the
//! short `KEY_CACHE_TTL_MS` after they were read, and once the feed is followed again everything
//! cached before is dropped, since changes may have been missed meanwhile.
//!
//! Whoever may write to the store may also announce changes; a forged announcement only drops a
//! copy from a cache. Payloads that cannot be key ids are ignored.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc::Sender;
use tokio::time::timeout;

use super::StoreError;
use crate::model::random_id;

/// How often a feed proves it is still followed.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// How long a feed may stay silent before it is taken as lost.
pub const SILENCE: Duration = Duration::from_secs(1);

/// What a follower hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Following (again) from now on: what was cached before may have missed changes.
    Listening,
    /// Every change announced before this instant has been heard.
    Alive(Instant),
    /// This key changed somewhere.
    Changed(String),
}

/// A store's announcements of changed keys.
#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Follows the feed, sending [`Heard::Listening`] once subscribed, then every change, and
    /// [`Heard::Alive`] about every [`HEARTBEAT`] while heartbeats come back through the feed.
    /// Returns when it stops working (a heartbeat not back within [`SILENCE`], say) or when `heard`
    /// is closed; the caller follows again.
    async fn follow(&self, heard: Sender<Heard>) -> Result<(), StoreError>;
}

/// Whether an announced payload can be a key id, and so is worth acting on.
pub fn plausible_id(payload: &str) -> bool {
    (1..=64).contains(&payload.len())
        && payload.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Sends `heard`; `false` once nobody listens any more.
pub(crate) async fn tell(heard: &Sender<Heard>, what: Heard) -> bool {
    heard.send(what).await.is_ok()
}

/// Follows a feed that carries its own heartbeats. `announce` sends a payload through the feed;
/// `next` waits up to the given time for the next payload (`None` if none came). Heartbeats are
/// payloads starting with `~`, which no key id does; other followers' are passed over.
pub(crate) async fn follow_with_heartbeats<C>(
    conn: &mut C,
    heard: &Sender<Heard>,
    mut announce: impl AsyncFnMut(&mut C, String) -> Result<(), StoreError>,
    mut next: impl AsyncFnMut(&mut C, Duration) -> Result<Option<String>, StoreError>,
) -> Result<(), StoreError> {
    let lost = |what: &str| StoreError::Unavailable(format!("change feed: {what}"));
    let nonce = random_id();
    if !tell(heard, Heard::Listening).await {
        return Ok(());
    }
    for count in 1u64.. {
        let beat = format!("~{nonce}.{count}");
        let sent = Instant::now();
        timeout(SILENCE, announce(conn, beat.clone()))
            .await
            .map_err(|_| lost("a heartbeat could not be sent"))??;
        // Pass changes on until the heartbeat is back and the next is due; wait for it up to
        // SILENCE. Whatever was announced before it was sent is heard before it comes back.
        let mut back = false;
        loop {
            let until = sent + if back { HEARTBEAT } else { SILENCE };
            let Some(wait) = until.checked_duration_since(Instant::now()) else { break };
            let told = match next(conn, wait).await? {
                Some(payload) if payload == beat => {
                    back = true;
                    tell(heard, Heard::Alive(sent)).await
                }
                Some(id) if !id.starts_with('~') => tell(heard, Heard::Changed(id)).await,
                _ => true,
            };
            if !told {
                return Ok(());
            }
        }
        if !back {
            return Err(lost("a heartbeat did not come back through it"));
        }
    }
    Ok(())
}
