//! U-Boot: the variables live in the U-Boot environment, read with `fw_printenv` and
//! written with `fw_setenv -s` (package `libubootenv-tool`), all in one environment write.
//! With a redundant environment (two copies in the config file) libubootenv alternates
//! copies, so a power cut during the write leaves the previous copy valid.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{parse_env_lines, run_tool, store_checked, BootControl, BootError, BootState};

/// Boot variables in a U-Boot environment described by an `fw_env.config` file.
#[derive(Debug, Clone)]
pub struct UBootEnv {
    printenv: PathBuf,
    setenv: PathBuf,
    config: PathBuf,
}

impl UBootEnv {
    /// Uses the environment described by `config` (e.g. `/etc/fw_env.config`) through
    /// `fw_printenv`/`fw_setenv` from `PATH`.
    pub fn new(config: impl Into<PathBuf>) -> Self {
        UBootEnv {
            printenv: "fw_printenv".into(),
            setenv: "fw_setenv".into(),
            config: config.into(),
        }
    }

    /// The `fw_env.config` in use.
    pub fn config(&self) -> &Path {
        &self.config
    }
}

impl BootControl for UBootEnv {
    fn backend(&self) -> &'static str {
        "u-boot"
    }

    fn load(&self) -> Result<BootState, BootError> {
        let out = run_tool(
            Command::new(&self.printenv).arg("-c").arg(&self.config),
            None,
        )?;
        BootState::from_vars(&parse_env_lines(&out))
    }

    fn store(&mut self, state: &BootState) -> Result<(), BootError> {
        // libubootenv 0.3 reads `name=value` lines from the script.
        let mut script = String::new();
        for (k, v) in state.to_vars() {
            script.push_str(&format!("{k}={v}\n"));
        }
        let mut cmd = Command::new(&self.setenv);
        cmd.arg("-c").arg(&self.config).arg("-s").arg("/dev/stdin");
        store_checked(self, state, || {
            run_tool(&mut cmd, Some(script.as_bytes())).map(drop)
        })
    }
}
