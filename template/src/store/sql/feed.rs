//! The change feeds of the SQL databases (see [`crate::store::feed`]).
//!
//! PostgreSQL: every change runs `pg_notify('apikeys_changed', id)` in its own transaction, so the
//! notification goes out when, and only when, the change commits; each instance `LISTEN`s on a
//! connection of its own and checks it with `SELECT 1` when it has heard nothing for a heartbeat.
//!
//! SQLite: instances sharing one database file are processes on one machine, and every change
//! already writes an `api_key_events` row in its transaction; each instance reads the rows added
//! since the last one it saw, every [`POLL`]. (Deleting the newest events by hand can hide a
//! change from this until `KEY_CACHE_LIFETIME_SECONDS` passes.)

use std::time::Duration;

use async_trait::async_trait;
use diesel::QueryResult;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use tokio::sync::mpsc::Sender;

use super::unavailable;
use crate::store::StoreError;
use crate::store::feed::{ChangeFeed, Heard, tell};

/// The channel PostgreSQL announces changes on.
pub const CHANNEL: &str = "apikeys_changed";
/// The `application_name` of the connection each instance listens on.
pub const APPLICATION_NAME: &str = "api-keys-change-feed";
/// How often SQLite's audit log is read for new changes.
pub const POLL: Duration = Duration::from_millis(25);

/// Announces a changed key inside the change's own transaction.
pub(super) trait Announce {
    fn announce(&mut self, id: &str) -> impl Future<Output = QueryResult<()>> + Send;
}

#[cfg(feature = "sqlite")]
impl Announce for super::SqliteConnection {
    /// The change's `api_key_events` row is its announcement.
    async fn announce(&mut self, _: &str) -> QueryResult<()> {
        Ok(())
    }
}

#[cfg(feature = "postgres")]
impl Announce for super::PgConnection {
    async fn announce(&mut self, id: &str) -> QueryResult<()> {
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<Text, _>(CHANNEL)
            .bind::<Text, _>(id)
            .execute(self)
            .await
            .map(drop)
    }
}

#[cfg(feature = "postgres")]
pub(super) struct PgFeed {
    pub(super) url: String,
}

#[cfg(feature = "postgres")]
#[async_trait]
impl ChangeFeed for PgFeed {
    async fn follow(&self, heard: Sender<Heard>) -> Result<(), StoreError> {
        use diesel_async::AsyncConnection;
        use futures_util::StreamExt;

        use crate::store::feed::{HEARTBEAT, SILENCE};

        // Named, so that operators (and the harness) can tell it in `pg_stat_activity`.
        let separator = if self.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}application_name={APPLICATION_NAME}", self.url);
        let mut conn = tokio::time::timeout(SILENCE, super::PgConnection::establish(&url))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        diesel::sql_query(format!("LISTEN {CHANNEL}"))
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut next = Heard::Listening;
        while tell(&heard, next).await {
            let notified = {
                let mut notifications = std::pin::pin!(conn.notifications_stream());
                tokio::time::timeout(HEARTBEAT, notifications.next()).await
            };
            next = match notified {
                Ok(Some(notification)) => {
                    Heard::Changed(notification.map_err(unavailable)?.payload)
                }
                Ok(None) => return Err(StoreError::Unavailable("the connection closed".into())),
                Err(_) => {
                    let probe = diesel::sql_query("SELECT 1").execute(&mut conn);
                    tokio::time::timeout(SILENCE, probe)
                        .await
                        .map_err(unavailable)?
                        .map_err(unavailable)?;
                    Heard::Alive
                }
            };
        }
        Ok(())
    }
}

#[cfg(feature = "sqlite")]
pub(super) struct SqliteFeed {
    pub(super) pool: diesel_async::pooled_connection::deadpool::Pool<super::SqliteConnection>,
}

#[cfg(feature = "sqlite")]
#[derive(diesel::QueryableByName)]
struct Seen {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    key_id: String,
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl ChangeFeed for SqliteFeed {
    async fn follow(&self, heard: Sender<Heard>) -> Result<(), StoreError> {
        let latest = "SELECT COALESCE(MAX(rowid), 0) AS seq, '' AS key_id FROM api_key_events";
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let mut last =
            diesel::sql_query(latest).get_result::<Seen>(&mut conn).await.map_err(unavailable)?.seq;
        drop(conn);
        if !tell(&heard, Heard::Listening).await {
            return Ok(());
        }
        let mut ticks = tokio::time::interval(POLL);
        loop {
            ticks.tick().await;
            let mut conn = self.pool.get().await.map_err(unavailable)?;
            let seen: Vec<Seen> = diesel::sql_query(
                "SELECT rowid AS seq, key_id FROM api_key_events WHERE rowid > ? ORDER BY rowid \
                 LIMIT 1000",
            )
            .bind::<diesel::sql_types::BigInt, _>(last)
            .load(&mut conn)
            .await
            .map_err(unavailable)?;
            drop(conn);
            if seen.is_empty() && !tell(&heard, Heard::Alive).await {
                return Ok(());
            }
            for change in seen {
                last = change.seq;
                if !tell(&heard, Heard::Changed(change.key_id)).await {
                    return Ok(());
                }
            }
        }
    }
}
