//! The bodies of the `duli` subcommands, one module per family; `main.rs` parses the
//! command line and dispatches here.

pub mod analysis;
pub mod daemon;
pub mod diagnostics;
pub mod firmware;
pub mod password;
pub mod provision;
pub mod send;
pub mod store;

use anyhow::{Context, Result};
use duli::config::Config;

/// The configuration (`path`, or the built-in defaults) with the environment's overrides.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Config> {
    Config::load(path, std::env::vars()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The async runtime of a command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
