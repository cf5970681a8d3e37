//! The Diesel backend: SQLite or PostgreSQL through diesel-async and a deadpool pool.
//!
//! Both databases share one schema and one set of queries; which one is used follows the
//! `DATABASE_URL` scheme, among those compiled in (the `sqlite` and `postgres` cargo features).

pub mod feed;
pub mod models;
pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::dsl::case_when;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use self::feed::Announce;
use self::models::{ApiKeyRow, ChangesRow, EventRow, UsageRow};
use self::schema::{api_key_events, api_key_usage, api_keys};
use super::feed::ChangeFeed;
use super::{Backend, EventQuery, ListQuery, Page, Purged, QuotaUse, Retention, StoreError, Usage};
use crate::config::{DEFAULT_POOL_SIZE, StoreKind};
use crate::model::{ApiKeyRecord, KeyChanges, KeyEvent};

#[cfg(feature = "sqlite")]
type SqliteConnection =
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>;
#[cfg(feature = "postgres")]
type PgConnection = diesel_async::AsyncPgConnection;

#[cfg(feature = "sqlite")]
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Per-connection SQLite settings: waiting on locks instead of failing at once (first, since
/// switching to WAL takes a lock another connection may hold), concurrent readers (WAL).
#[cfg(feature = "sqlite")]
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
                              PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

/// How long a replica starting beside another waits for its SQLite migration.
#[cfg(feature = "sqlite")]
const SQLITE_MIGRATION_WAIT: &str = "PRAGMA busy_timeout = 60000";

/// On PostgreSQL, instances take turns by two advisory locks, held until their transaction ends
/// (in `pg_locks`, `locktype = 'advisory'`): one to migrate, one to write usage. Each of those
/// transactions reads committed data, whatever the database's default isolation: one that waited
/// for the lock must see what the holder wrote.
#[cfg(feature = "postgres")]
const READ_COMMITTED: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED";
#[cfg(feature = "postgres")]
const TRY_MIGRATION_LOCK: &str =
    "SELECT pg_try_advisory_xact_lock(hashtext('api_keys migrations'))";
#[cfg(feature = "postgres")]
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('api_keys migrations'))";
/// Once a replica holds the migration lock, a migration that waits longer for a table's lock (behind
/// a `pg_dump`, say) fails rather than stall every query queued behind it.
#[cfg(feature = "postgres")]
const MIGRATION_LOCK_WAIT: &str = "SET LOCAL lock_timeout = '10s'";
/// A usage write (or a purge's batch of keys) that waits longer than this for a lock gives up: its
/// counts wait for the next flush, and the purge stops, to be run again. A session holding a lock
/// forever must not stall every flush, nor shutdown.
#[cfg(feature = "postgres")]
const USAGE_LOCK: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; \
                          SET LOCAL lock_timeout = '5s'; \
                          SELECT pg_advisory_xact_lock(hashtext('api_keys usage flush'))";

/// A database named by a `DATABASE_URL`, among those compiled in.
enum Database<'a> {
    #[cfg(feature = "sqlite")]
    Sqlite { path: &'a str },
    #[cfg(feature = "postgres")]
    Postgres { url: &'a str },
}

impl<'a> Database<'a> {
    fn parse(url: &'a str) -> Result<Self, StoreError> {
        match StoreKind::of(url) {
            #[cfg(feature = "sqlite")]
            Some(StoreKind::Sqlite) => {
                let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"));
                Ok(Self::Sqlite { path: path.unwrap_or_default() })
            }
            #[cfg(feature = "postgres")]
            Some(StoreKind::Postgres) => Ok(Self::Postgres { url }),
            _ => Err(super::not_built(url)),
        }
    }
}

enum Connections {
    #[cfg(feature = "sqlite")]
    Sqlite(Pool<SqliteConnection>),
    #[cfg(feature = "postgres")]
    Postgres(Pool<PgConnection>),
}

impl Connections {
    fn is_sqlite(&self) -> bool {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => true,
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => false,
        }
    }
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever database is in use.
macro_rules! with_conn {
    ($self:ident, |$conn:ident| $body:expr) => {
        match &$self.connections {
            #[cfg(feature = "sqlite")]
            Connections::Sqlite(pool) => {
                let mut $conn = pool.get().await.map_err(unavailable)?;
                $body
            }
            #[cfg(feature = "postgres")]
            Connections::Postgres(pool) => {
                let mut $conn = pool.get().await.map_err(unavailable)?;
                $body
            }
        }
    };
}

pub struct SqlBackend {
    connections: Connections,
    feed: Arc<dyn ChangeFeed>,
}

impl SqlBackend {
    /// Opens a pool of at most [`DEFAULT_POOL_SIZE`] connections. It does not migrate: run
    /// [`migrate`] first.
    pub async fn connect(database_url: &str) -> Result<Self, StoreError> {
        Self::connect_with_pool(database_url, DEFAULT_POOL_SIZE).await
    }

    /// Opens a pool of at most `size` connections (`DATABASE_POOL_SIZE`), 2 or more: a usage write
    /// holds one while it waits its turn.
    pub async fn connect_with_pool(database_url: &str, size: usize) -> Result<Self, StoreError> {
        let database = Database::parse(database_url)?;
        if size < 2 {
            return Err(StoreError::Unavailable(format!(
                "a pool of {size} connection(s) (DATABASE_POOL_SIZE): must be 2 or more"
            )));
        }
        Ok(match database {
            #[cfg(feature = "sqlite")]
            Database::Sqlite { path } => {
                let mut config = diesel_async::pooled_connection::ManagerConfig::default();
                config.custom_setup = Box::new(|path| {
                    let path = path.to_owned();
                    Box::pin(async move {
                        use diesel_async::SimpleAsyncConnection;
                        let mut conn = SqliteConnection::establish(&path).await?;
                        conn.batch_execute(SQLITE_PRAGMAS)
                            .await
                            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(path, config);
                let pool = build_pool(manager, size)?;
                let feed = Arc::new(feed::SqliteFeed { path: path.to_owned() });
                Self { connections: Connections::Sqlite(pool), feed }
            }
            #[cfg(feature = "postgres")]
            Database::Postgres { url } => Self {
                connections: Connections::Postgres(build_pool(
                    AsyncDieselConnectionManager::new(url),
                    size,
                )?),
                feed: Arc::new(feed::PgFeed { url: url.to_owned() }),
            },
        })
    }
}

/// Creates the database if needed and applies pending migrations. Returns how many ran.
pub async fn migrate(database_url: &str) -> Result<usize, StoreError> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || -> Result<usize, StoreError> {
        // Diesel's migration harness is synchronous: run it on a blocking thread with a plain connection.
        Ok(match Database::parse(&url)? {
            #[cfg(feature = "sqlite")]
            Database::Sqlite { path } => {
                if let Some(dir) =
                    std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let mut conn = diesel::SqliteConnection::establish(path).map_err(unavailable)?;
                diesel::connection::SimpleConnection::batch_execute(
                    &mut conn,
                    SQLITE_MIGRATION_WAIT,
                )
                .map_err(unavailable)?;
                // Holding the write lock from the start: replicas started together wait for the
                // first to migrate, then find nothing left to do. All pending migrations run in
                // this one transaction, so a migration must be one that can (no `VACUUM`).
                conn.immediate_transaction(|conn| {
                    conn.run_pending_migrations(SQLITE_MIGRATIONS).map(|applied| applied.len())
                })
                .map_err(unavailable)?
            }
            #[cfg(feature = "postgres")]
            Database::Postgres { url } => {
                use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
                let mut conn =
                    <AsyncConnectionWrapper<PgConnection> as diesel::Connection>::establish(url)
                        .map_err(unavailable)?;
                // Replicas started together take turns, or two would create the same table and
                // one would fail. All pending migrations run in this one transaction, so a
                // migration must be one that can (no `CREATE INDEX CONCURRENTLY`).
                diesel::Connection::transaction(&mut conn, |conn| {
                    #[derive(QueryableByName)]
                    struct Locked {
                        #[diesel(sql_type = Bool)]
                        pg_try_advisory_xact_lock: bool,
                    }
                    diesel::connection::SimpleConnection::batch_execute(conn, READ_COMMITTED)?;
                    let free = diesel::RunQueryDsl::get_result::<Locked>(
                        diesel::sql_query(TRY_MIGRATION_LOCK),
                        conn,
                    )?;
                    if !free.pg_try_advisory_xact_lock {
                        tracing::info!("waiting for another instance to migrate the database");
                        diesel::RunQueryDsl::execute(diesel::sql_query(MIGRATION_LOCK), conn)?;
                    }
                    diesel::connection::SimpleConnection::batch_execute(conn, MIGRATION_LOCK_WAIT)?;
                    conn.run_pending_migrations(POSTGRES_MIGRATIONS).map(|applied| applied.len())
                })
                .map_err(unavailable)?
            }
        })
    })
    .await
    .map_err(unavailable)?
}

fn build_pool<C>(
    manager: AsyncDieselConnectionManager<C>,
    size: usize,
) -> Result<Pool<C>, StoreError>
where
    AsyncDieselConnectionManager<C>: deadpool::managed::Manager<Type = C>,
{
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(unavailable)
}

/// Rows one purge statement deletes at most.
const PURGE_BATCH: usize = 5_000;

/// Keys per usage statement: three parameters each, far below SQLite's and PostgreSQL's limits.
const USAGE_CHUNK: usize = 500;

/// The statement adding the uses of `keys` keys, bound as (id, requests, last use) each, in order.
/// Parameters are numbered, `$n` on PostgreSQL and `?n` on SQLite: SQLite takes `$n` for a name,
/// and looks each name up among those before it, which made preparing 1,500 of them cost more
/// than writing the rows. Both name the columns of `VALUES` `column1`, `column2`…; a key deleted
/// before the statement gets no row, and a purge deletes none during it (see
/// [`OneFlushAtATime`]). (SQLite reads `ON CONFLICT` after a join's `ON` as the join's: hence
/// `WHERE EXISTS`.)
fn add_usage(keys: usize, sigil: char) -> String {
    let rows: Vec<String> = (1..=keys)
        .map(|k| format!("({sigil}{}, {sigil}{}, {sigil}{})", 3 * k - 2, 3 * k - 1, 3 * k))
        .collect();
    format!(
        "INSERT INTO api_key_usage (key_id, request_count, last_used_at) \
         SELECT used.column1, used.column2, used.column3 FROM (VALUES {}) AS used \
         WHERE EXISTS (SELECT 1 FROM api_keys WHERE api_keys.id = used.column1) \
         ON CONFLICT (key_id) DO UPDATE SET \
         request_count = api_key_usage.request_count + excluded.request_count, \
         last_used_at = CASE WHEN api_key_usage.last_used_at < excluded.last_used_at \
         THEN excluded.last_used_at ELSE api_key_usage.last_used_at END",
        rows.join(", ")
    )
}

/// Keys with their uses, for reads of one key (a list reads its page's counts apart).
#[diesel::dsl::auto_type(no_type_alias)]
fn keys_with_usage() -> _ {
    api_keys::table.left_join(api_key_usage::table)
}

type KeyWithUsage = (ApiKeyRow, Option<UsageRow>);

/// Usage writes take many rows each, in one transaction, and instances behind one load balancer
/// write much the same keys: on PostgreSQL they take turns, or two writes locking shared rows in
/// different orders would deadlock, and PostgreSQL would abort one. (Sorting the batch would not
/// do: the order a join visits rows in is the planner's choice.) A purge's batch of keys takes the
/// same turn: a key deleted while a flush writes its counts would fail the flush's foreign-key
/// check, or deadlock with it. SQLite lets one writer in at a time anyway.
trait OneFlushAtATime {
    /// Must be the first statement of the write's transaction: on PostgreSQL it sets the
    /// transaction's isolation, which only a first statement may.
    fn begin_usage_write(&mut self) -> impl Future<Output = QueryResult<()>> + Send;
}

#[cfg(feature = "sqlite")]
impl OneFlushAtATime for SqliteConnection {
    async fn begin_usage_write(&mut self) -> QueryResult<()> {
        Ok(())
    }
}

#[cfg(feature = "postgres")]
impl OneFlushAtATime for PgConnection {
    async fn begin_usage_write(&mut self) -> QueryResult<()> {
        diesel_async::SimpleAsyncConnection::batch_execute(self, USAGE_LOCK).await
    }
}

impl SqlBackend {
    /// Deletes what `retention` names, adding to `purged` as it goes (a dry run only counts).
    /// Batches, each its own transaction, rather than one: on SQLite a transaction deleting a year of
    /// events held the only write lock for longer than the service's writes wait for it.
    async fn delete_ended(
        &self,
        retention: &Retention,
        dry_run: bool,
        purged: &mut Purged,
    ) -> Result<(), StoreError> {
        let keys_before = retention.keys_before.map(|at| at.naive_utc());
        let events_before = retention.events_before.map(|at| at.naive_utc());
        let one_writer = self.connections.is_sqlite();
        with_conn!(self, |conn| {
            async {
                if let Some(before) = keys_before {
                    let ended = move || {
                        api_keys::revoked_at
                            .lt(before)
                            .or(api_keys::expires_at.lt(before))
                            .or(api_keys::retires_at.lt(before))
                    };
                    if dry_run {
                        let count = api_keys::table.filter(ended()).count();
                        purged.keys = count.get_result::<i64>(&mut conn).await? as u64;
                    } else {
                        in_batches(&mut conn, one_writer, &mut purged.keys, async move |conn| {
                            let batch: Vec<String> = api_keys::table
                                .select(api_keys::id)
                                .filter(ended())
                                .limit(PURGE_BATCH as i64)
                                .load(conn)
                                .await?;
                            // Asked again: an expiry moved forward meanwhile keeps its key.
                            let still = api_keys::id.eq_any(&batch).and(ended());
                            let delete = diesel::delete(api_keys::table.filter(still));
                            let deleted = conn
                                .transaction(async |conn| {
                                    conn.begin_usage_write().await?;
                                    delete.execute(conn).await
                                })
                                .await?;
                            Ok((batch.len(), deleted))
                        })
                        .await?;
                    }
                }
                if let Some(before) = events_before {
                    let old = move || api_key_events::at.lt(before);
                    if dry_run {
                        let count = api_key_events::table.filter(old()).count();
                        purged.events = count.get_result::<i64>(&mut conn).await? as u64;
                    } else {
                        in_batches(&mut conn, one_writer, &mut purged.events, async move |conn| {
                            let batch: Vec<String> = api_key_events::table
                                .select(api_key_events::id)
                                .filter(old())
                                .limit(PURGE_BATCH as i64)
                                .load(conn)
                                .await?;
                            let still = api_key_events::id.eq_any(&batch).and(old());
                            let deleted = diesel::delete(api_key_events::table.filter(still))
                                .execute(conn)
                                .await?;
                            Ok((batch.len(), deleted))
                        })
                        .await?;
                    }
                }
                Ok::<_, DieselError>(())
            }
            .await
            .map_err(query_failed)
        })
    }
}

/// Runs `delete_batch`, which deletes up to [`PURGE_BATCH`] rows and answers (rows found, rows
/// deleted), until it finds fewer, adding to `deleted` as it goes. With `one_writer` (SQLite), each
/// batch that found rows is followed by a pause as long as it took, so that the service's writes
/// get the lock about half the time, also between the keys' last batch and the events' first;
/// PostgreSQL locks rows, not the database, and needs no pause.
async fn in_batches<C>(
    conn: &mut C,
    one_writer: bool,
    deleted: &mut u64,
    mut delete_batch: impl AsyncFnMut(&mut C) -> QueryResult<(usize, usize)>,
) -> QueryResult<()> {
    loop {
        let started = Instant::now();
        let (found, gone) = delete_batch(conn).await?;
        *deleted += gone as u64;
        if one_writer && found > 0 {
            tokio::time::sleep(started.elapsed()).await;
        }
        if found < PURGE_BATCH {
            return Ok(());
        }
    }
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn query_failed(err: DieselError) -> StoreError {
    match err {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => StoreError::Duplicate,
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// How many rows a page skips and takes, in SQL's signed integers.
fn window(limit: u32, offset: u64) -> (i64, i64) {
    (i64::from(limit), i64::try_from(offset).unwrap_or(i64::MAX))
}

/// One page of `rows`, with `total` as SQL counted it.
fn paged<R, T: TryFrom<R, Error = StoreError>>(
    rows: Vec<R>,
    total: i64,
) -> Result<Page<T>, StoreError> {
    Ok(Page {
        items: rows.into_iter().map(T::try_from).collect::<Result<_, _>>()?,
        total: u64::try_from(total).unwrap_or(0),
    })
}

#[async_trait]
impl Backend for SqlBackend {
    async fn insert(&self, key: &ApiKeyRecord, event: &KeyEvent) -> Result<(), StoreError> {
        let (row, event) = (ApiKeyRow::from(key), EventRow::from(event));
        with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                diesel::insert_into(api_keys::table).values(&row).execute(conn).await?;
                diesel::insert_into(api_key_events::table).values(&event).execute(conn).await
            })
            .await
            .map_err(query_failed)?;
        });
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row: Option<KeyWithUsage> = with_conn!(self, |conn| {
            keys_with_usage()
                .filter(api_keys::id.eq(id))
                .select(KeyWithUsage::as_select())
                .first(&mut conn)
                .await
                .optional()
                .map_err(query_failed)?
        });
        row.map(ApiKeyRecord::try_from).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<ApiKeyRecord>, StoreError> {
        let (limit, offset) = window(query.limit, query.offset);
        let (rows, total): (Vec<KeyWithUsage>, i64) = with_conn!(self, |conn| {
            let mut page = api_keys::table
                .select(ApiKeyRow::as_select())
                .order_by((api_keys::created_at.desc(), api_keys::id.desc()))
                .limit(limit)
                .offset(offset)
                .into_boxed();
            let mut count = api_keys::table.count().into_boxed();
            if let Some(owner) = &query.owner_id {
                page = page.filter(api_keys::owner_id.eq(owner));
                count = count.filter(api_keys::owner_id.eq(owner));
            }
            if let Some((after, by)) = query.expiring {
                let expiring = || {
                    api_keys::revoked_at
                        .is_null()
                        .and(api_keys::expires_at.gt(after.naive_utc()))
                        .and(api_keys::expires_at.le(by.naive_utc()))
                };
                page = page.filter(expiring());
                count = count.filter(expiring());
            }
            let keys: Vec<ApiKeyRow> = page.load(&mut conn).await.map_err(query_failed)?;
            // The page's counts only: joined before the sort, every key's would be read (five
            // times the time of the page alone, on PostgreSQL with 100,000 keys).
            let ids: Vec<&str> = keys.iter().map(|key| key.id.as_str()).collect();
            let mut counts: HashMap<String, UsageRow> = api_key_usage::table
                .filter(api_key_usage::key_id.eq_any(&ids))
                .select((api_key_usage::key_id, UsageRow::as_select()))
                .load(&mut conn)
                .await
                .map_err(query_failed)?
                .into_iter()
                .collect();
            let total = count.get_result(&mut conn).await.map_err(query_failed)?;
            let rows = keys.into_iter().map(|key| {
                let usage = counts.remove(&key.id);
                (key, usage)
            });
            (rows.collect(), total)
        });
        paged(rows, total)
    }

    async fn revoke(
        &self,
        id: &str,
        at: DateTime<Utc>,
        event: &KeyEvent,
    ) -> Result<bool, StoreError> {
        let (at, event) = (at.naive_utc(), EventRow::from(event));
        with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                let updated =
                    diesel::update(api_keys::table.find(id).filter(api_keys::revoked_at.is_null()))
                        .set(api_keys::revoked_at.eq(at))
                        .execute(conn)
                        .await?;
                if updated > 0 {
                    diesel::insert_into(api_key_events::table).values(&event).execute(conn).await?;
                    conn.announce(id).await?;
                    return Ok(true);
                }
                let existing: i64 = api_keys::table.find(id).count().get_result(conn).await?;
                Ok(existing > 0)
            })
            .await
            .map_err(query_failed)
        })
    }

    async fn update(
        &self,
        id: &str,
        changes: &KeyChanges,
        event: &KeyEvent,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        if changes.is_empty() {
            return self.get(id).await;
        }
        let (changes, event) = (ChangesRow::from(changes), EventRow::from(event));
        let row: Option<KeyWithUsage> = with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                let updated =
                    diesel::update(api_keys::table.find(id)).set(&changes).execute(conn).await?;
                if updated == 0 {
                    return Ok(None);
                }
                diesel::insert_into(api_key_events::table).values(&event).execute(conn).await?;
                conn.announce(id).await?;
                keys_with_usage()
                    .filter(api_keys::id.eq(id))
                    .select(KeyWithUsage::as_select())
                    .first(conn)
                    .await
                    .map(Some)
            })
            .await
            .map_err(query_failed)?
        });
        row.map(ApiKeyRecord::try_from).transpose()
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        retires_at: DateTime<Utc>,
        events: &[KeyEvent],
    ) -> Result<bool, StoreError> {
        let events: Vec<EventRow> = events.iter().map(EventRow::from).collect();
        with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                let replaced = diesel::update(
                    api_keys::table
                        .find(old_id)
                        .filter(api_keys::revoked_at.is_null())
                        .filter(api_keys::replaced_by.is_null()),
                )
                .set((
                    api_keys::replaced_by.eq(&new.id),
                    api_keys::retires_at.eq(retires_at.naive_utc()),
                ))
                .returning((api_keys::remaining, api_keys::refilled_at))
                .get_result(conn)
                .await
                .optional()?;
                let Some((remaining, refilled_at)) = replaced else {
                    return Ok(false);
                };
                // The quota as it stands now: uses taken since `new` was made from the old key are
                // spent.
                let row = ApiKeyRow { remaining, refilled_at, ..ApiKeyRow::from(new) };
                diesel::insert_into(api_keys::table).values(&row).execute(conn).await?;
                // One statement per event: SQLite has no multi-row insert in Diesel.
                for event in &events {
                    diesel::insert_into(api_key_events::table).values(event).execute(conn).await?;
                }
                conn.announce(old_id).await?;
                Ok(true)
            })
            .await
            .map_err(query_failed)
        })
    }

    async fn use_quota(
        &self,
        id: &str,
        want: u64,
        refill_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<QuotaUse, StoreError> {
        use self::schema::api_keys::{refill_amount, refilled_at, remaining};

        let (now, n) = (now.naive_utc(), i64::try_from(want.max(1)).unwrap_or(i64::MAX));
        // Enough left for a block of `n`: one use, or sixteen times `n` (see `block_fits`).
        let enough = if n == 1 { 1 } else { n.saturating_mul(16) };
        // One UPDATE taking `n` when enough are there: the row lock (PostgreSQL) or the write lock
        // (SQLite) makes concurrent uses queue, and each re-checks what is left after the one before
        // it. With too few left, the block shrinks to one use.
        let left: Option<Option<i64>> = with_conn!(self, |conn| {
            let quota = api_keys::table.find(id).filter(remaining.is_not_null());
            let taken = match refill_before {
                None => {
                    diesel::update(quota.filter(remaining.ge(enough)))
                        .set(remaining.eq(remaining - n))
                        .returning(remaining)
                        .get_result(&mut conn)
                        .await
                }
                Some(before) => {
                    let due = || {
                        refill_amount
                            .is_not_null()
                            .and(refilled_at.is_null().or(refilled_at.lt(before.naive_utc())))
                    };
                    // A due refill decides alone: the old period's uses are never taken from.
                    // A block goes only to a caller dated no earlier than the last refill: one
                    // dated before it may still be in the period before, whose block would be
                    // dropped unused.
                    let since_refill = (n == 1)
                        .into_sql::<Bool>()
                        .or(refilled_at.is_null())
                        .or(refilled_at.le(now));
                    let takes = due()
                        .and(refill_amount.ge(enough))
                        .or(diesel::dsl::not(due()).and(remaining.ge(enough)).and(since_refill));
                    diesel::update(quota.filter(takes))
                        .set((
                            remaining.eq(case_when::<_, _, Nullable<BigInt>>(
                                due(),
                                refill_amount - n,
                            )
                            .otherwise(remaining - n)),
                            refilled_at.eq(case_when::<_, _, Nullable<Timestamp>>(
                                due(),
                                Some(now),
                            )
                            .otherwise(refilled_at)),
                        ))
                        .returning(remaining)
                        .get_result(&mut conn)
                        .await
                }
            };
            taken.optional().map_err(query_failed)?
        });
        if let Some(left) = left {
            let left = left.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
            return Ok(QuotaUse::Taken { taken: want.max(1), remaining: left });
        }
        if want > 1 {
            return self.use_quota(id, 1, refill_before, now.and_utc()).await;
        }
        Ok(match self.get(id).await? {
            Some(key) if key.remaining.is_some() => QuotaUse::Exhausted,
            _ => QuotaUse::Unlimited,
        })
    }

    async fn events(&self, query: &EventQuery) -> Result<Page<KeyEvent>, StoreError> {
        let (limit, offset) = window(query.limit, query.offset);
        let (rows, total): (Vec<EventRow>, i64) = with_conn!(self, |conn| {
            let mut page = api_key_events::table
                .select(EventRow::as_select())
                .order_by((api_key_events::at.desc(), api_key_events::id.desc()))
                .limit(limit)
                .offset(offset)
                .into_boxed();
            let mut count = api_key_events::table.count().into_boxed();
            if let Some(key_id) = &query.key_id {
                page = page.filter(api_key_events::key_id.eq(key_id));
                count = count.filter(api_key_events::key_id.eq(key_id));
            }
            let rows = page.load(&mut conn).await.map_err(query_failed)?;
            let total = count.get_result(&mut conn).await.map_err(query_failed)?;
            (rows, total)
        });
        paged(rows, total)
    }

    async fn purge(
        &self,
        retention: &Retention,
        event: Option<&KeyEvent>,
    ) -> Result<Purged, StoreError> {
        let mut purged = Purged::default();
        let deleted = self.delete_ended(retention, event.is_none(), &mut purged).await;
        if let (Err(err), Some(_)) = (&deleted, event) {
            // The batches run stay deleted: say how far the purge got, as no event will.
            let (keys, events) = (purged.keys, purged.events);
            tracing::warn!(target: "audit", keys, events, "purge cut short: {err}");
        }
        deleted?;
        if let Some(event) = event {
            let row = EventRow::from(&purged.recorded_in(event));
            let insert = diesel::insert_into(api_key_events::table).values(&row);
            with_conn!(self, |conn| insert.execute(&mut conn).await.map_err(query_failed))?;
        }
        Ok(purged)
    }

    fn feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        Some(self.feed.clone())
    }

    async fn record_usage(&self, batch: &[Usage]) -> Result<(), StoreError> {
        // One transaction for the batch: a failed write applies nothing, so re-queueing it writes
        // nothing twice (unless the commit went through and its answer was lost). One statement
        // per chunk of keys rather than per key, for callers with batches larger than the
        // tracker's: on SQLite each statement is a hop to a blocking thread.
        let sigil = if self.connections.is_sqlite() { '?' } else { '$' };
        with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                conn.begin_usage_write().await?;
                for chunk in batch.chunks(USAGE_CHUNK) {
                    let mut query = diesel::sql_query(add_usage(chunk.len(), sigil)).into_boxed();
                    for usage in chunk {
                        query = query
                            .bind::<Text, _>(usage.id.as_str())
                            .bind::<BigInt, _>(i64::try_from(usage.requests).unwrap_or(i64::MAX))
                            .bind::<Timestamp, _>(usage.last_used_at.naive_utc());
                    }
                    query.execute(conn).await?;
                }
                Ok::<_, DieselError>(())
            })
            .await
            .map_err(query_failed)
        })
    }
}
