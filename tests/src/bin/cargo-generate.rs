//! `cargo generate`, built from this repository's lockfile so that it compiles on the pinned toolchain.
//!
//! Install it with `cargo install --locked --path tests`; it behaves like the upstream binary built without
//! the `git` feature (templates come from `--path`).

use cargo_generate::{Cli, generate};
use clap::Parser;

fn main() {
    env_logger::builder()
        .format(cargo_generate::log_formatter)
        .filter_level(log::LevelFilter::Info)
        .parse_default_env()
        .format_timestamp(None)
        .format_target(false)
        .format_module_path(false)
        .format_level(false)
        .target(env_logger::Target::Stdout)
        .init();

    // Invoked as `cargo generate`, cargo passes "generate" as the first argument, which `Cli` expects.
    let Cli::Generate(args) = Cli::parse();
    if generate(args).is_err() {
        // cargo-generate has already printed the error.
        std::process::exit(1);
    }
}
