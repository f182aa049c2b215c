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

/// The appliance's configuration file.
pub const APPLIANCE_CONFIG: &str = "/etc/duli/duli.toml";

/// The configuration file of a command that works on the box's own store, trail or
/// firmware: `given`, else `appliance` when it exists (said on stderr), so that a
/// technician's `duli diagnostics` or `duli status` on the box reads its configuration,
/// not the built-in defaults of a development checkout; else none (the defaults).
pub fn box_config(
    given: Option<std::path::PathBuf>,
    appliance: &std::path::Path,
) -> Option<std::path::PathBuf> {
    if given.is_some() {
        return given;
    }
    appliance.is_file().then(|| {
        eprintln!(
            "duli: using {} (give --config to use another)",
            appliance.display()
        );
        appliance.to_path_buf()
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A command on the box's store reads the appliance's configuration when given none,
    /// the one given when given, and the defaults off the appliance.
    #[test]
    fn box_commands_read_the_appliance_configuration_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let appliance = dir.path().join("duli.toml");
        assert_eq!(box_config(None, &appliance), None, "no appliance: defaults");
        std::fs::write(&appliance, "").unwrap();
        assert_eq!(box_config(None, &appliance), Some(appliance.clone()));
        let other = dir.path().join("other.toml");
        assert_eq!(box_config(Some(other.clone()), &appliance), Some(other));
    }
}
