//! The command line: `serve` (the default), `migrate`, and `keys create|list|rotate|revoke|purge`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand};

use crate::keys::{ApiKeyService, Manager, Rotation};
use crate::model::{ApiKeyRecord, KeyStatus, NewKey, name_of};
use crate::store::{ListQuery, Retention};

#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate the database, then serve HTTP (the default)
    Serve {
        /// Mint an admin key at start-up and write it to this new file (readable by you only):
        /// the way in for stores the `keys` command cannot reach, such as memory://
        #[arg(long, value_name = "PATH")]
        admin_key_file: Option<PathBuf>,
    },
    /// Apply pending database migrations and exit
    Migrate,
    /// Manage API keys directly in the database
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it, once
    Create {
        /// A name to recognise the key by
        #[arg(long)]
        name: String,
        /// Scopes, comma-separated (e.g. invoices:read,invoices:write)
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Owner of the key
        #[arg(long)]
        owner: Option<String>,
        /// Lifetime, e.g. 30d, 12h, 90min
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// Also grant the key-management (admin) scope
        #[arg(long)]
        admin: bool,
    },
    /// List keys, newest first
    List {
        #[arg(long)]
        owner: Option<String>,
        /// Only unrevoked keys expiring within this time, e.g. 7d
        #[arg(long, value_name = "WITHIN", value_parser = humantime::parse_duration)]
        expiring: Option<Duration>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Replace a key by a new one, printed once; the old key keeps working for the grace period
    Rotate {
        id: String,
        /// How long the old key keeps working, e.g. 24h (at most 30d)
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Revoke a key by its id
    Revoke { id: String },
    /// Delete keys that stopped working and audit events, older than the ages given; a purge that
    /// completes is recorded in the audit log, and one cut short is finished by running it again
    #[command(group(ArgGroup::new("what").required(true).multiple(true)))]
    Purge {
        /// Keys revoked, expired or retired at least this long ago (30d or more), e.g. 90d
        #[arg(long, value_name = "AGE", group = "what", value_parser = humantime::parse_duration)]
        revoked_keys: Option<Duration>,
        /// Audit events at least this old, e.g. 365d
        #[arg(long, value_name = "AGE", group = "what", value_parser = humantime::parse_duration)]
        events: Option<Duration>,
        /// Count what would be deleted, and delete nothing
        #[arg(long)]
        dry_run: bool,
    },
}

impl KeysCommand {
    pub async fn run(
        self,
        service: &ApiKeyService,
        admin_scope: &str,
    ) -> Result<(), Box<dyn std::error::Error>> {
        match self {
            Self::Create { name, mut scopes, owner, expires_in, admin } => {
                if admin {
                    scopes.push(admin_scope.to_owned());
                }
                let expires_at =
                    expires_in.map(|d| later(d).ok_or("--expires-in is too long")).transpose()?;
                let created = service
                    .create_key(
                        &Manager::Operator,
                        NewKey { name, scopes, owner_id: owner, expires_at, ..NewKey::default() },
                    )
                    .await?;
                let record = &created.record;
                eprintln!(
                    "Created key {} ({}) with scopes [{}]{}.",
                    record.id,
                    record.name,
                    record.scopes.join(", "),
                    record.expires_at.map(|at| format!(", expiring {at}")).unwrap_or_default()
                );
                show_once(&created.key);
            }
            Self::List { owner, expiring, limit, offset } => {
                let now = crate::model::now();
                let expiring = expiring
                    .map(|within| later(within).map(|by| (now, by)).ok_or("--expiring is too long"))
                    .transpose()?;
                let page = service
                    .list_keys(
                        &Manager::Operator,
                        &ListQuery { owner_id: owner, expiring, limit, offset },
                    )
                    .await?;
                print_table(&page.items, now);
                eprintln!("{} of {} keys", page.items.len(), page.total);
            }
            Self::Rotate { id, grace } => {
                let rotation =
                    Rotation { grace_period: Some(grace.as_secs()), ..Rotation::default() };
                let created = service.rotate_key(&Manager::Operator, &id, rotation).await?;
                eprintln!(
                    "Rotated key {id} into {}; {id} keeps working for {}.",
                    created.record.id,
                    humantime::format_duration(grace)
                );
                show_once(&created.key);
            }
            Self::Revoke { id } => {
                service.revoke_key(&Manager::Operator, &id).await?;
                eprintln!("Revoked key {id}.");
            }
            Self::Purge { revoked_keys, events, dry_run } => {
                let before = |age: Option<Duration>| {
                    age.map(|age| earlier(age).ok_or("an age is too long")).transpose()
                };
                let retention = Retention {
                    keys_before: before(revoked_keys)?,
                    events_before: before(events)?,
                };
                let purged = service.purge(&retention, dry_run).await?;
                let verb = if dry_run { "would purge" } else { "purged" };
                if let Some(at) = retention.keys_before {
                    println!("{verb} {} keys revoked, expired or retired before {at}", purged.keys);
                }
                if let Some(at) = retention.events_before {
                    println!("{verb} {} audit events recorded before {at}", purged.events);
                }
            }
        }
        Ok(())
    }
}

/// A new key, on standard output alone so that it can be piped; it is never shown again.
fn show_once(key: &str) {
    eprintln!("Store it now; it is not shown again:");
    println!("{key}");
}

/// One line per key, in columns.
fn print_table(keys: &[ApiKeyRecord], now: chrono::DateTime<chrono::Utc>) {
    println!(
        "{:<12}  {:<8}  {:<24}  {:>8}  {:<12}  SCOPES",
        "ID", "STATUS", "NAME", "REQUESTS", "EXPIRES IN"
    );
    for key in keys {
        let expires_in = match key.expires_at.map(|at| (at - now).to_std()) {
            None => "never".to_owned(),
            Some(Err(_)) => "expired".to_owned(),
            // To the minute: seconds would only make the column wider.
            Some(Ok(left)) => {
                humantime::format_duration(Duration::from_secs(left.as_secs() / 60 * 60))
                    .to_string()
            }
        };
        println!(
            "{:<12}  {:<8}  {:<24}  {:>8}  {:<12}  {}",
            key.id,
            name_of(KeyStatus::at(key, now)),
            key.name,
            key.request_count,
            expires_in,
            key.scopes.join(",")
        );
    }
}

/// Now minus `duration`, to the second, if that is a time chrono can hold.
fn earlier(duration: std::time::Duration) -> Option<chrono::DateTime<chrono::Utc>> {
    let duration = chrono::Duration::from_std(duration).ok()?;
    chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0).checked_sub_signed(duration)
}

/// Now plus `duration`, if that is a time chrono can hold.
fn later(duration: std::time::Duration) -> Option<chrono::DateTime<chrono::Utc>> {
    let duration = chrono::Duration::from_std(duration).ok()?;
    crate::model::now().checked_add_signed(duration)
}
