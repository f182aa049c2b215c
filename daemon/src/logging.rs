//! Logging: to journald (structured, with priorities) when started by systemd
//! (`JOURNAL_STREAM` is set and the journal socket answers), otherwise readable lines on
//! stderr. The level comes from `DULI_LOG` (error, warn, info, debug, trace; default info).
//!
//! Every message is one line: text from outside (AE titles, UIDs, comments a peer sent)
//! cannot start a line of its own, because [`single_line`] replaces the control characters
//! of each message before either sink sees it.

use log::{LevelFilter, Log, Metadata, Record};
use std::borrow::Cow;
use std::io::Write;

/// `s` with every control character (C0, DEL, C1) and the Unicode line and paragraph
/// separators replaced by a space: text that stays on one log line, and a DICOM text value
/// (an Error Comment) free of control characters.
pub fn single_line(s: &str) -> Cow<'_, str> {
    fn breaks(c: char) -> bool {
        c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
    }
    if s.chars().any(breaks) {
        Cow::Owned(s.chars().map(|c| if breaks(c) { ' ' } else { c }).collect())
    } else {
        Cow::Borrowed(s)
    }
}

/// A logger that hands `inner` each record with its message made [`single_line`].
struct SingleLine<L>(L);

impl<L: Log> Log for SingleLine<L> {
    fn enabled(&self, m: &Metadata) -> bool {
        self.0.enabled(m)
    }

    fn log(&self, r: &Record) {
        if let Some(fixed) = r.args().as_str() {
            if !matches!(single_line(fixed), Cow::Owned(_)) {
                return self.0.log(r);
            }
        }
        let text = r.args().to_string();
        match single_line(&text) {
            Cow::Borrowed(_) => self.0.log(r),
            Cow::Owned(line) => self.0.log(
                &Record::builder()
                    .args(format_args!("{line}"))
                    .metadata(r.metadata().clone())
                    .module_path(r.module_path())
                    .file(r.file())
                    .line(r.line())
                    .key_values(r.key_values())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.0.flush()
    }
}

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
            if log::set_boxed_logger(Box::new(SingleLine(j))).is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    if log::set_boxed_logger(Box::new(SingleLine(StderrLog { level }))).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn single_line_replaces_every_line_break_and_control_character() {
        assert_eq!(
            single_line("a\nb\rc\td\u{0}e\u{7f}f\u{85}g\u{2028}h\u{2029}i\u{1b}[31m"),
            "a b c d e f g h i [31m"
        );
        assert!(matches!(single_line("1.2.840 ÄÖ 山田"), Cow::Borrowed(_)));
    }

    struct Capture(Mutex<Vec<String>>);

    impl Log for Capture {
        fn enabled(&self, _: &Metadata) -> bool {
            true
        }
        fn log(&self, r: &Record) {
            self.0.lock().unwrap().push(r.args().to_string());
        }
        fn flush(&self) {}
    }

    #[test]
    fn every_message_reaches_the_sink_as_one_line() {
        let logger = SingleLine(Capture(Mutex::new(Vec::new())));
        let forged = "PEER\nINFO forged";
        logger.log(
            &Record::builder()
                .args(format_args!("from {forged}"))
                .build(),
        );
        logger.log(&Record::builder().args(format_args!("plain")).build());
        let seen = logger.0 .0.lock().unwrap().clone();
        assert_eq!(seen, ["from PEER INFO forged", "plain"]);
    }
}
