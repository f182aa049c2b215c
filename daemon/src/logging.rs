//! Logging: to journald (structured, with priorities) when started by systemd
//! (`JOURNAL_STREAM` is set and the journal socket answers), otherwise readable lines on
//! stderr. The level comes from `DULI_LOG` (error, warn, info, debug, trace; default info).

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLog {
    level: LevelFilter,
}

impl Log for StderrLog {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level && (m.target().starts_with("duli") || m.level() <= log::Level::Warn)
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let now = time::OffsetDateTime::now_utc();
        let ts = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr().lock(),
            "{ts} {:<5} {}: {}",
            r.level(),
            r.target(),
            r.args()
        );
    }

    fn flush(&self) {}
}

fn level_from_env() -> LevelFilter {
    std::env::var("DULI_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::Info)
}

/// Installs the logger once; later calls do nothing.
pub fn init() {
    let level = level_from_env();
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            let j = j.with_syslog_identifier("duli".to_string());
            if j.install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    if log::set_boxed_logger(Box::new(StderrLog { level })).is_ok() {
        log::set_max_level(level);
    }
}
