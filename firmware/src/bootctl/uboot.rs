//! U-Boot: the variables live in the U-Boot environment, read with `fw_printenv` and
//! written with `fw_setenv -s` (package `libubootenv-tool`), all in one environment write.
//! With a redundant environment (two copies in the config file, `CONFIG_ENV_REDUNDANT` in
//! U-Boot) libubootenv alternates copies, so a power cut during the write leaves the
//! previous copy valid. A single copy is rewritten in place, and a cut during that write
//! leaves a copy whose CRC fails: U-Boot then starts from its built-in default environment,
//! without the boot variables. Writes are therefore refused unless the config file names
//! two copies.

use std::io::ErrorKind;
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

    /// Checks that the config file describes a redundant environment: two device lines
    /// (comments and blank lines aside).
    fn check_redundant(&self) -> Result<(), BootError> {
        let text = match std::fs::read_to_string(&self.config) {
            Ok(text) => text,
            // Left to fw_setenv, which names the missing file in its own error.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(BootError::Io {
                    path: self.config.clone(),
                    source,
                })
            }
        };
        let copies = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        if copies < 2 {
            return Err(BootError::SingleUBootEnv {
                config: self.config.clone(),
            });
        }
        Ok(())
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
        self.check_redundant()?;
        // libubootenv 0.3 reads `name=value` lines from the script; `name=` deletes.
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
