//! The change feed: how a change made through one instance reaches the caches of every other.
//!
//! Every store announces each changed key in the same step as the change itself: PostgreSQL with
//! `NOTIFY` in the change's transaction, Redis with `PUBLISH` in the change's script, SQLite through
//! the audit log row the change writes (read by polling), memory through an in-process channel.
//! Each instance follows its store's feed ([`ChangeFeed::follow`]) and drops what it cached of
//! every key it hears of, so cached keys can live until they change instead of for a short TTL.
//!
//! A feed that is not heard from for [`SILENCE`] is taken as lost: cached keys are then trusted only
//! for the short `KEY_CACHE_TTL_MS` after they were read, and once the feed is followed again
//! everything cached before is dropped, since changes may have been missed meanwhile.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc::Sender;

use super::StoreError;

/// How often a feed proves it is still followed.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// How long a feed may stay silent before it is taken as lost.
pub const SILENCE: Duration = Duration::from_secs(1);

/// What a follower hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Following (again) from now on: what was cached before may have missed changes.
    Listening,
    /// The feed works, as of now.
    Alive,
    /// This key changed somewhere.
    Changed(String),
}

/// A store's announcements of changed keys.
#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Follows the feed, sending [`Heard::Listening`] once subscribed, then every change, and
    /// [`Heard::Alive`] at least every [`HEARTBEAT`] while the feed answers. Returns when it stops
    /// working (or when `heard` is closed); the caller follows again.
    async fn follow(&self, heard: Sender<Heard>) -> Result<(), StoreError>;
}

/// Sends `heard`; `false` once nobody listens any more.
pub(crate) async fn tell(heard: &Sender<Heard>, what: Heard) -> bool {
    heard.send(what).await.is_ok()
}
