//! Boot control: the bootloader variables that choose a slot, behind one trait.
//!
//! Every backend stores the same five variables, written together in one update:
//!
//! | variable        | values   | meaning |
//! |-----------------|----------|---------|
//! | `duli_active`   | `A`/`B`  | the committed slot: known good, the fallback |
//! | `duli_target`   | `A`/`B`  | the slot to boot next; differs from `duli_active` during a trial |
//! | `duli_attempts` | `0`..`9` | trial boots of `duli_target` left before falling back |
//! | `duli_a_good`   | `0`/`1`  | slot A holds a complete image that booted and passed the health check |
//! | `duli_b_good`   | `0`/`1`  | the same for slot B |
//! | `duli_a_version`| `X.Y.Z` or empty | firmware installed in slot A by the last install (empty: unknown) |
//! | `duli_b_version`| `X.Y.Z` or empty | the same for slot B |
//!
//! | `duli_floor`    | integer or empty | the highest security version committed: root filesystems and rollbacks below it are refused |
//! | `duli_a_security`| integer or empty | security version installed in slot A by the last install |
//! | `duli_b_security`| integer or empty | the same for slot B |
//!
//! The bootloader scripts use the first five only; the versions let mark-good refuse to
//! commit a slot that does not run the firmware installed into it, and the security
//! versions keep a box from going back below a security fix it committed.
//!
//! [`choose_slot`] is the reference of what the bootloader script does on each boot (the
//! GRUB and U-Boot scripts in `yocto/meta-duli` implement exactly it); tests run it against
//! every backend to simulate reboots.

pub mod envblock;
mod file;
mod grub;
mod uboot;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::version::Version;

pub use file::FileBootControl;
pub use grub::GrubEnv;
pub use uboot::UBootEnv;

/// Highest boot-attempt count: the GRUB script counts down with a lookup table.
pub const MAX_ATTEMPTS: u8 = 9;

/// Names of the variables the bootloader scripts read and write, in the order they are
/// written.
pub const VARIABLES: [&str; 5] = [
    "duli_active",
    "duli_target",
    "duli_attempts",
    "duli_a_good",
    "duli_b_good",
];

/// Names of the variables holding the firmware version installed in slot A and slot B,
/// written after [`VARIABLES`]. Optional: an environment without them (a freshly imaged box,
/// or one last written by an older release) reads as versions unknown.
pub const VERSION_VARIABLES: [&str; 2] = ["duli_a_version", "duli_b_version"];

/// Names of the security floor and the security versions of slot A and slot B, written
/// last. Optional like the versions: absent or empty reads as 0.
pub const SECURITY_VARIABLES: [&str; 3] = ["duli_floor", "duli_a_security", "duli_b_security"];

/// One of the two root filesystem slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The first slot.
    A,
    /// The second slot.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

impl FromStr for Slot {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" => Ok(Slot::A),
            "B" => Ok(Slot::B),
            _ => Err(()),
        }
    }
}

/// The boot variables as typed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    /// Committed slot, the fallback.
    pub active: Slot,
    /// Slot to boot next.
    pub target: Slot,
    /// Trial boots of `target` left while it differs from `active`.
    pub attempts: u8,
    /// Whether slot A is good.
    pub a_good: bool,
    /// Whether slot B is good.
    pub b_good: bool,
    /// Firmware version the last install wrote into slot A (`None`: unknown).
    pub a_version: Option<Version>,
    /// The same for slot B.
    pub b_version: Option<Version>,
    /// The highest security version committed on this box (see
    /// [`crate::manifest::Manifest::security_version`]): only ever raised.
    pub floor: u32,
    /// Security version the last install wrote into slot A (0: none or unknown).
    pub a_security: u32,
    /// The same for slot B.
    pub b_security: u32,
}

impl BootState {
    /// State of a freshly imaged box: slot A committed and good, no trial.
    pub const FACTORY: BootState = BootState {
        active: Slot::A,
        target: Slot::A,
        attempts: 0,
        a_good: true,
        b_good: false,
        a_version: None,
        b_version: None,
        floor: 0,
        a_security: 0,
        b_security: 0,
    };

    /// Whether `slot` is flagged good.
    pub fn is_good(&self, slot: Slot) -> bool {
        match slot {
            Slot::A => self.a_good,
            Slot::B => self.b_good,
        }
    }

    /// Sets the good flag of `slot`.
    pub fn set_good(&mut self, slot: Slot, good: bool) {
        match slot {
            Slot::A => self.a_good = good,
            Slot::B => self.b_good = good,
        }
    }

    /// The firmware version recorded for `slot` when it was installed, if known.
    pub fn version(&self, slot: Slot) -> Option<Version> {
        match slot {
            Slot::A => self.a_version,
            Slot::B => self.b_version,
        }
    }

    /// Records the firmware version of `slot` (`None`: its content is being replaced).
    pub fn set_version(&mut self, slot: Slot, version: Option<Version>) {
        match slot {
            Slot::A => self.a_version = version,
            Slot::B => self.b_version = version,
        }
    }

    /// The security version recorded for `slot` when it was installed (0 if none).
    pub fn security(&self, slot: Slot) -> u32 {
        match slot {
            Slot::A => self.a_security,
            Slot::B => self.b_security,
        }
    }

    /// Records the security version of `slot`.
    pub fn set_security(&mut self, slot: Slot, security: u32) {
        match slot {
            Slot::A => self.a_security = security,
            Slot::B => self.b_security = security,
        }
    }

    /// Whether a trial of `target` is armed.
    pub fn trial_pending(&self) -> bool {
        self.target != self.active
    }

    /// The variables as `(name, value)` pairs: [`VARIABLES`], then [`VERSION_VARIABLES`]
    /// (an unknown version is an empty value), then [`SECURITY_VARIABLES`].
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let version = |v: Option<Version>| v.map(|v| v.to_string()).unwrap_or_default();
        vec![
            (VARIABLES[0], self.active.to_string()),
            (VARIABLES[1], self.target.to_string()),
            (VARIABLES[2], self.attempts.to_string()),
            (VARIABLES[3], flag(self.a_good)),
            (VARIABLES[4], flag(self.b_good)),
            (VERSION_VARIABLES[0], version(self.a_version)),
            (VERSION_VARIABLES[1], version(self.b_version)),
            (SECURITY_VARIABLES[0], self.floor.to_string()),
            (SECURITY_VARIABLES[1], self.a_security.to_string()),
            (SECURITY_VARIABLES[2], self.b_security.to_string()),
        ]
    }

    /// Reads the variables from a bootloader environment. An environment with none of
    /// [`VARIABLES`] is a freshly imaged box ([`BootState::FACTORY`]); one with only some is
    /// an error. A missing or empty version is unknown.
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<Self, BootError> {
        let version = |name: &'static str| -> Result<Option<Version>, BootError> {
            match vars.get(name).map(String::as_str) {
                None | Some("") => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|_| BootError::InvalidVariable {
                    name,
                    value: v.to_string(),
                }),
            }
        };
        let a_version = version(VERSION_VARIABLES[0])?;
        let b_version = version(VERSION_VARIABLES[1])?;
        let number = |name: &'static str| -> Result<u32, BootError> {
            match vars.get(name).map(String::as_str) {
                None | Some("") => Ok(0),
                Some(v) => v
                    .parse()
                    .ok()
                    .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| BootError::InvalidVariable {
                        name,
                        value: v.to_string(),
                    }),
            }
        };
        let floor = number(SECURITY_VARIABLES[0])?;
        let a_security = number(SECURITY_VARIABLES[1])?;
        let b_security = number(SECURITY_VARIABLES[2])?;
        if VARIABLES.iter().all(|name| !vars.contains_key(*name)) {
            return Ok(BootState {
                a_version,
                b_version,
                floor,
                a_security,
                b_security,
                ..BootState::FACTORY
            });
        }
        let get = |name: &'static str| -> Result<&str, BootError> {
            vars.get(name)
                .map(String::as_str)
                .ok_or(BootError::MissingVariable(name))
        };
        let invalid = |name: &'static str, value: &str| BootError::InvalidVariable {
            name,
            value: value.to_string(),
        };
        let slot = |name| -> Result<Slot, BootError> {
            let v = get(name)?;
            v.parse().map_err(|_| invalid(name, v))
        };
        let flag = |name| -> Result<bool, BootError> {
            match get(name)? {
                "0" => Ok(false),
                "1" => Ok(true),
                v => Err(invalid(name, v)),
            }
        };
        let attempts_text = get("duli_attempts")?;
        let attempts: u8 = attempts_text
            .parse()
            .ok()
            .filter(|n| *n <= MAX_ATTEMPTS)
            .ok_or_else(|| invalid("duli_attempts", attempts_text))?;
        Ok(BootState {
            active: slot("duli_active")?,
            target: slot("duli_target")?,
            attempts,
            a_good: flag("duli_a_good")?,
            b_good: flag("duli_b_good")?,
            a_version,
            b_version,
            floor,
            a_security,
            b_security,
        })
    }
}

/// A failure reading or writing boot variables.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading or writing an environment file failed.
    #[error("boot environment {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// The bootloader tool is not installed.
    #[error("{0} is not installed")]
    ToolMissing(String),
    /// The bootloader tool failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// The command.
        tool: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Some but not all variables are set.
    #[error("boot variable {0} is missing")]
    MissingVariable(&'static str),
    /// A variable holds a value outside its range.
    #[error("boot variable {name} has invalid value {value:?}")]
    InvalidVariable {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// The GRUB environment block is not one: empty, cut short or overwritten.
    #[error(
        "GRUB environment block {path} is damaged ({why}): the bootloader boots slot A \
         without a trial until it is repaired. Recreate it as root with `grub-editenv {path} \
         create` (the box then reads as freshly imaged, slot A committed) and check \
         `duli firmware status` (firmware/README.md)"
    )]
    DamagedGrubEnv {
        /// The block file.
        path: PathBuf,
        /// What is wrong with it.
        why: envblock::BlockError,
    },
    /// The variables do not fit the GRUB environment block.
    #[error("GRUB environment block {path} cannot take the boot variables: {why}")]
    GrubEnvFull {
        /// The block file.
        path: PathBuf,
        /// The sizes.
        why: envblock::BlockError,
    },
    /// The U-Boot environment is a single copy, which a power cut during a write can lose.
    #[error(
        "{config} names one U-Boot environment copy: a power cut while it is written loses \
         every variable. Configure a redundant environment (CONFIG_ENV_REDUNDANT in U-Boot, \
         two lines in {config}); see firmware/README.md"
    )]
    SingleUBootEnv {
        /// The `fw_env.config` file.
        config: PathBuf,
    },
    /// The environment read back after a write differs from what was written.
    #[error("boot environment did not take the update: read back {0:?}")]
    NotApplied(Box<BootState>),
}

/// Reads and writes the boot variables of one bootloader.
pub trait BootControl {
    /// Short backend name for status output (`grub`, `u-boot`, `file`).
    fn backend(&self) -> &'static str;

    /// Reads the current variables.
    fn load(&self) -> Result<BootState, BootError>;

    /// Writes all variables in one update of the environment, so a power cut leaves either
    /// the old or the new set, never a mix.
    fn store(&mut self, state: &BootState) -> Result<(), BootError>;
}

impl<T: BootControl + ?Sized> BootControl for Box<T> {
    fn backend(&self) -> &'static str {
        (**self).backend()
    }

    fn load(&self) -> Result<BootState, BootError> {
        (**self).load()
    }

    fn store(&mut self, state: &BootState) -> Result<(), BootError> {
        (**self).store(state)
    }
}

/// What the bootloader does on each boot: the slot it boots and the variables it saves.
///
/// While a trial is armed (`target != active`) each boot spends one attempt on `target`;
/// with none left it falls back to `active` and disarms the trial.
pub fn choose_slot(state: &BootState) -> (Slot, BootState) {
    let mut next = *state;
    if state.trial_pending() {
        if state.attempts > 0 {
            next.attempts -= 1;
            return (state.target, next);
        }
        next.target = state.active;
    }
    (state.active, next)
}

/// Simulates one power-on through a backend: applies [`choose_slot`] to the stored
/// variables, saves them as the bootloader would, and returns the slot booted.
pub fn simulate_boot<B: BootControl + ?Sized>(boot: &mut B) -> Result<Slot, BootError> {
    let state = boot.load()?;
    let (slot, next) = choose_slot(&state);
    if next != state {
        boot.store(&next)?;
    }
    Ok(slot)
}

/// The slot named by `duli.slot=A|B` on a kernel command line (the bootloader scripts pass
/// it), if present.
pub fn booted_slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|arg| arg.strip_prefix("duli.slot="))
        .and_then(|v| v.parse().ok())
}

/// Parses `name=value` lines as printed by `grub-editenv list` and `fw_printenv`.
pub(crate) fn parse_env_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

/// Runs a bootloader tool, mapping a missing binary and a failure to typed errors.
pub(crate) fn run_tool(
    cmd: &mut std::process::Command,
    stdin: Option<&[u8]>,
) -> Result<String, BootError> {
    use std::io::Write;
    use std::process::Stdio;
    let tool = format!("{:?}", cmd.get_program());
    let tool = tool.trim_matches('"').to_string();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BootError::ToolMissing(tool.clone())
        } else {
            BootError::Tool {
                tool: tool.clone(),
                status: "not started".into(),
                stderr: e.to_string(),
            }
        }
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(|e| BootError::Tool {
            tool: tool.clone(),
            status: "stdin".into(),
            stderr: e.to_string(),
        })?;
    }
    let out = child.wait_with_output().map_err(|e| BootError::Tool {
        tool: tool.clone(),
        status: "wait".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(BootError::Tool {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Stores `state` through `write`, then reads it back with `load` and checks it took.
pub(crate) fn store_checked<B: BootControl + ?Sized>(
    backend: &B,
    state: &BootState,
    write: impl FnOnce() -> Result<(), BootError>,
) -> Result<(), BootError> {
    write()?;
    let back = backend.load()?;
    if back != *state {
        return Err(BootError::NotApplied(Box::new(back)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_round_trip_and_validate() {
        let s = BootState {
            active: Slot::B,
            target: Slot::A,
            attempts: 3,
            a_good: false,
            b_good: true,
            a_version: None,
            b_version: Some(Version::new(1, 2, 3)),
            floor: 2,
            a_security: 1,
            b_security: 2,
        };
        let vars: BTreeMap<String, String> = s
            .to_vars()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(BootState::from_vars(&vars).unwrap(), s);

        assert_eq!(
            BootState::from_vars(&BTreeMap::new()).unwrap(),
            BootState::FACTORY
        );
        // An environment an older release wrote has no security variables: all 0.
        let mut older = vars.clone();
        for name in SECURITY_VARIABLES {
            older.remove(name);
        }
        assert_eq!(
            BootState::from_vars(&older).unwrap(),
            BootState {
                floor: 0,
                a_security: 0,
                b_security: 0,
                ..s
            }
        );
        let mut partial = vars.clone();
        partial.remove("duli_b_good");
        assert!(matches!(
            BootState::from_vars(&partial),
            Err(BootError::MissingVariable("duli_b_good"))
        ));
        for (k, v) in [
            ("duli_active", "C"),
            ("duli_attempts", "10"),
            ("duli_attempts", "-1"),
            ("duli_a_good", "yes"),
            ("duli_b_version", "1.2"),
            ("duli_floor", "-1"),
            ("duli_floor", "+2"),
            ("duli_a_security", "x"),
            ("duli_b_security", "99999999999"),
        ] {
            let mut bad = vars.clone();
            bad.insert(k.into(), v.into());
            assert!(
                matches!(
                    BootState::from_vars(&bad),
                    Err(BootError::InvalidVariable { .. })
                ),
                "{k}={v} accepted"
            );
        }
    }

    #[test]
    fn bootloader_counts_down_then_falls_back() {
        let armed = BootState {
            active: Slot::A,
            target: Slot::B,
            attempts: 2,
            ..BootState::FACTORY
        };
        let (slot, s1) = choose_slot(&armed);
        assert_eq!((slot, s1.attempts), (Slot::B, 1));
        let (slot, s2) = choose_slot(&s1);
        assert_eq!((slot, s2.attempts), (Slot::B, 0));
        let (slot, s3) = choose_slot(&s2);
        assert_eq!(slot, Slot::A);
        assert_eq!(s3.target, Slot::A);
        assert_eq!(choose_slot(&s3), (Slot::A, s3));
    }

    #[test]
    fn cmdline_names_booted_slot() {
        assert_eq!(
            booted_slot_from_cmdline("root=/dev/sda2 duli.slot=B quiet"),
            Some(Slot::B)
        );
        assert_eq!(booted_slot_from_cmdline("root=/dev/sda2 quiet"), None);
        assert_eq!(booted_slot_from_cmdline("duli.slot=C"), None);
    }
}
