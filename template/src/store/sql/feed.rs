//! The change feeds of the SQL databases (see [`crate::store::feed`]).
//!
//! PostgreSQL: every change runs `pg_notify('apikeys_changed', id)` in its own transaction, so the
//! notification goes out when, and only when, the change commits; each instance `LISTEN`s on a
//! connection of its own and sends its heartbeats through the same channel. (A pooler in
//! transaction mode, such as PgBouncer's, cannot carry `LISTEN`: the heartbeats then never come
//! back, and instances trust their copies only briefly.)
//!
//! SQLite: instances sharing one database file are processes on one machine, and every change
//! already writes an `api_key_events` row in its transaction; each instance reads the rows added
//! since the last one it saw (but creations: nothing can have cached a new key), every [`POLL`],
//! on a connection of its own. Should the log's row
//! numbers go back (the newest events deleted, or a `VACUUM` after pruning), the feed counts as
//! lost and is followed afresh.

use std::time::Duration;

use async_trait::async_trait;
use diesel::QueryResult;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use tokio::sync::mpsc::Sender;

use super::unavailable;
use crate::store::StoreError;
use crate::store::feed::{ChangeFeed, Heard};

/// The channel PostgreSQL announces changes on.
pub const CHANNEL: &str = "apikeys_changed";
/// The `application_name` of the connection each instance listens on.
pub const APPLICATION_NAME: &str = "api-keys-change-feed";
/// How often SQLite's audit log is read for new changes.
pub const POLL: Duration = Duration::from_millis(25);
/// The most rows of the audit log one read takes.
#[cfg(feature = "sqlite")]
const PAGE: usize = 1000;

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
        use tokio::time::timeout;

        use crate::store::feed::{SILENCE, follow_with_heartbeats};

        // Named, so that operators (and the harness) can tell it in `pg_stat_activity`.
        let separator = if self.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}application_name={APPLICATION_NAME}", self.url);
        let mut conn = timeout(SILENCE, super::PgConnection::establish(&url))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        timeout(SILENCE, diesel::sql_query(format!("LISTEN {CHANNEL}")).execute(&mut conn))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        follow_with_heartbeats(
            &mut conn,
            &heard,
            async |conn, beat| conn.announce(&beat).await.map_err(unavailable),
            async |conn, wait| {
                let mut notifications = std::pin::pin!(conn.notifications_stream());
                match timeout(wait, notifications.next()).await {
                    Err(_) => Ok(None),
                    Ok(None) => Err(StoreError::Unavailable("the connection closed".into())),
                    Ok(Some(notification)) => {
                        notification.map(|n| Some(n.payload)).map_err(unavailable)
                    }
                }
            },
        )
        .await
    }
}

#[cfg(feature = "sqlite")]
pub(super) struct SqliteFeed {
    pub(super) path: String,
}

#[cfg(feature = "sqlite")]
#[derive(diesel::QueryableByName)]
struct Seen {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    key_id: String,
    #[diesel(sql_type = Text)]
    action: String,
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl ChangeFeed for SqliteFeed {
    async fn follow(&self, heard: Sender<Heard>) -> Result<(), StoreError> {
        use diesel::sql_types::BigInt;
        use diesel_async::{AsyncConnection, SimpleAsyncConnection};

        use crate::store::feed::tell;

        let latest =
            "SELECT COALESCE(MAX(rowid), 0) AS seq, '' AS key_id, '' AS action FROM api_key_events";
        let since = format!(
            "SELECT rowid AS seq, key_id, action FROM api_key_events WHERE rowid > ? \
             ORDER BY rowid LIMIT {PAGE}"
        );
        let mut conn = super::SqliteConnection::establish(&self.path).await.map_err(unavailable)?;
        conn.batch_execute(super::SQLITE_PRAGMAS).await.map_err(unavailable)?;
        let mut last =
            diesel::sql_query(latest).get_result::<Seen>(&mut conn).await.map_err(unavailable)?.seq;
        if !tell(&heard, Heard::Listening).await {
            return Ok(());
        }
        let mut ticks = tokio::time::interval(POLL);
        loop {
            ticks.tick().await;
            let polled = std::time::Instant::now();
            let seen: Vec<Seen> = diesel::sql_query(&since)
                .bind::<BigInt, _>(last)
                .load(&mut conn)
                .await
                .map_err(unavailable)?;
            if seen.is_empty() {
                let newest = diesel::sql_query(latest).get_result::<Seen>(&mut conn).await;
                if newest.map_err(unavailable)?.seq < last {
                    return Err(StoreError::Unavailable("the audit log's rows went back".into()));
                }
            }
            // A full page may leave rows unread: caught up only once a page comes back short.
            let caught_up = seen.len() < PAGE;
            for change in seen {
                last = change.seq;
                if change.action != "created" && !tell(&heard, Heard::Changed(change.key_id)).await
                {
                    return Ok(());
                }
            }
            if caught_up && !tell(&heard, Heard::Alive(polled)).await {
                return Ok(());
            }
        }
    }
}
