use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use {{crate_name}}::app;
use {{crate_name}}::auth::UsageTracker;
use {{crate_name}}::auth::key_format::KeyFormat;
use {{crate_name}}::cli::{Cli, Command};
use {{crate_name}}::config::{Config, LogFormat, StoreKind};
use {{crate_name}}::keys::ApiKeyService;
use {{crate_name}}::store;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format() {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }

    let command = cli.command.unwrap_or(Command::Serve { admin_key_file: None });
    match run(command, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Serve { admin_key_file } => app::serve(config, admin_key_file.as_deref()).await,
        Command::Migrate => {
            let applied = store::migrate(&config.database_url).await?;
            eprintln!("{applied} migration(s) applied.");
            Ok(())
        }
        // The keys would be written to a store that ends with this process.
        Command::Keys(_) if StoreKind::of(&config.database_url) == Some(StoreKind::Memory) => Err(
            "DATABASE_URL is memory://, which the service's process holds alone: mint its first key with `serve --admin-key-file`".into(),
        ),
        Command::Keys(command) => {
            store::migrate(&config.database_url).await?;
            let store = store::open(&config).await?;
            let service = ApiKeyService::new(
                store.clone(),
                KeyFormat::from_config(&config),
                Arc::new(UsageTracker::default()),
            );
            command.run(&service, &config.api_keys_admin_scope).await?;
            // A change that could not reach the Redis cache yet is retried by this process only.
            Ok(store.settle(Duration::from_secs(5)).await?)
        }
    }
}
