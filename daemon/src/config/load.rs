//! Loading: built-in defaults, then the file, then `DULI_SECTION__KEY` variables, then
//! relative paths resolved and the whole validated.

use super::{Config, KeyError, ENV_PREFIX};
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML (file or environment) does not parse or has the wrong shape.
    #[error("{origin}: {message}")]
    Parse {
        /// Where the text came from (file path or variable name).
        origin: String,
        /// The parser's message (names the key).
        message: String,
    },
    /// One or more values are invalid.
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<KeyError>),
}

impl Config {
    /// Loads the configuration: defaults, then `path` (if given), then `DULI_*` variables
    /// from `env`, then resolves relative paths and validates.
    pub fn load<I>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut table = toml::Table::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            table = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    origin: path.display().to_string(),
                    message: e.message().to_string() + &span_hint(&text, e.span()),
                })?;
        }
        let config = Config::from_table(table, path, env)?;
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// The configuration a file at `path` holding `table` gives, as [`Config::load`] makes
    /// it but not validated: defaults, then `table`, then `DULI_*` variables from `env`,
    /// relative paths the table sets resolved against the file's folder (the others
    /// against the working directory), the model of `inference.model_pack` named. Also
    /// for a configuration about to be written (`duli provision`), checked as the daemon
    /// will load it.
    pub fn from_table<I>(
        mut table: toml::Table,
        path: Option<&Path>,
        env: I,
    ) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let mut file_dir = None;
        if let Some(path) = path {
            let dir = path.parent().unwrap_or(Path::new("."));
            file_dir = Some(if dir.as_os_str().is_empty() {
                cwd.clone()
            } else {
                cwd.join(dir)
            });
        }
        // Paths set in the file resolve against its folder; everything else (defaults and
        // environment) against the working directory.
        deserialize(table.clone(), path)?;
        let mut file_paths = keys_of(&table);
        let from_env = apply_env(&mut table, env)?;
        let set = keys_of(&table);
        file_paths.retain(|k| !from_env.contains(k));
        let mut config: Config = deserialize(table, path)?;
        if !set.iter().any(|k| k == "inference.model") {
            // Not configured: the default model wherever it is installed (see `locate`).
            config.inference.model = crate::locate::model_manifest().or_first();
        }
        config.resolve_paths(&cwd, file_dir.as_deref(), &file_paths);
        if let Some(name) = config.inference.model_pack.clone() {
            // The pack's manifest is where the loader unpacks it; a model named beside
            // the pack would be a second answer to "which model runs".
            if set.iter().any(|k| k == "inference.model") {
                return Err(ConfigError::Invalid(vec![super::validate::KeyError {
                    key: "inference.model".into(),
                    reason:
                        "must not be set with inference.model_pack (the pack's own manifest runs)"
                            .into(),
                }]));
            }
            config.inference.model =
                crate::infer::pack::manifest_path(&config.device.data_dir, &name);
        }
        config.origin = path.map(|p| cwd.join(p));
        Ok(config)
    }

    fn resolve_paths(&mut self, cwd: &Path, file_dir: Option<&Path>, from_file: &[String]) {
        let base_for = |key: &str| -> PathBuf {
            match file_dir {
                Some(dir) if from_file.iter().any(|k| k == key) => dir.to_path_buf(),
                _ => cwd.to_path_buf(),
            }
        };
        let fix = |p: &mut PathBuf, key: &str| {
            if p.is_relative() {
                *p = base_for(key).join(&*p);
            }
        };
        let fix_opt = |p: &mut Option<PathBuf>, key: &str| {
            if let Some(p) = p {
                if p.is_relative() {
                    *p = base_for(key).join(&*p);
                }
            }
        };
        fix(&mut self.device.data_dir, "device.data_dir");
        fix_opt(&mut self.device.site_secret, "device.site_secret");
        fix_opt(&mut self.dicom.ca, "dicom.ca");
        fix_opt(&mut self.dicom.cert, "dicom.cert");
        fix_opt(&mut self.dicom.key, "dicom.key");
        fix(&mut self.inference.model, "inference.model");
        fix_opt(&mut self.inference.openvino_lib, "inference.openvino_lib");
        fix_opt(&mut self.hl7.ca, "hl7.ca");
        fix_opt(&mut self.hl7.cert, "hl7.cert");
        fix_opt(&mut self.hl7.key, "hl7.key");
        fix_opt(&mut self.mqtt.ca, "mqtt.ca");
        fix_opt(&mut self.mqtt.cert, "mqtt.cert");
        fix_opt(&mut self.mqtt.key, "mqtt.key");
        fix_opt(&mut self.console.cert, "console.cert");
        fix_opt(&mut self.console.key, "console.key");
        fix_opt(&mut self.audit.syslog_ca, "audit.syslog_ca");
        fix_opt(&mut self.audit.syslog_cert, "audit.syslog_cert");
        fix_opt(&mut self.audit.syslog_key, "audit.syslog_key");
        for d in &mut self.pacs.destinations {
            for p in [&mut d.tls_ca, &mut d.tls_cert, &mut d.tls_key] {
                fix_opt(p, "pacs.destinations");
            }
        }
        let fw = &mut self.firmware;
        for (p, key) in [
            (&mut fw.grubenv, "firmware.grubenv"),
            (&mut fw.uboot_config, "firmware.uboot_config"),
            (&mut fw.boot_env_file, "firmware.boot_env_file"),
            (&mut fw.slot_a, "firmware.slot_a"),
            (&mut fw.slot_b, "firmware.slot_b"),
            (&mut fw.cmdline, "firmware.cmdline"),
            (&mut fw.endorsed_keys, "firmware.endorsed_keys"),
            (&mut fw.staged_bundle, "firmware.staged_bundle"),
            (&mut fw.model_packs, "firmware.model_packs"),
            (&mut fw.model_pack_versions, "firmware.model_pack_versions"),
        ] {
            fix(p, key);
        }
    }
}

/// Names (`section.key`) of the keys present in a raw table.
fn keys_of(table: &toml::Table) -> Vec<String> {
    let mut keys = Vec::new();
    for (section, value) in table {
        if let Some(inner) = value.as_table() {
            for key in inner.keys() {
                keys.push(format!("{section}.{key}"));
            }
        }
    }
    keys
}

fn deserialize(table: toml::Table, path: Option<&Path>) -> Result<Config, ConfigError> {
    // serde_path_to_error names the key (e.g. `dicom.allowed_peers[0].permissions[0]`) of a
    // value with the wrong type or an unknown variant, whether it came from the file or
    // from the environment.
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().message().to_string();
        ConfigError::Parse {
            origin: path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "configuration".into()),
            message: if key.is_empty() || key == "." {
                message
            } else {
                format!("{key}: {message}")
            },
        }
    })
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// Applies `DULI_SECTION__KEY=value` variables to the raw TOML table and returns the keys
/// they set. Values are parsed as inline TOML (numbers, booleans, lists, tables); anything
/// that does not parse is a string.
fn apply_env<I>(table: &mut toml::Table, env: I) -> Result<Vec<String>, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    let mut set = Vec::new();
    for (name, raw) in vars {
        let rest = &name[ENV_PREFIX.len()..];
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let section = section.to_ascii_lowercase();
        let key = key.to_ascii_lowercase();
        let value = parse_env_value(&raw);
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(inner) = entry.as_table_mut() else {
            return Err(ConfigError::Parse {
                origin: name,
                message: format!("[{section}] is not a table"),
            });
        };
        set.push(format!("{section}.{key}"));
        inner.insert(key, value);
    }
    Ok(set)
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
