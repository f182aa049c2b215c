//! The field's validators as the result-object tests run them.

use super::run;
use std::path::Path;
use std::time::Duration;

/// A defect of Debian 12's `dciodvfy` (dicom3tools 2022): it checks Minimum and Maximum
/// Stored Value Mapped of the Stored Value Color Range macro against a string enumeration
/// and reports "Non-string attribute while verifying string enumerated value" whatever
/// their VR (FD as PS3.6 gives it; US, SS and FL were tried too). Later dicom3tools define
/// the macro without that check. These two lines, and nothing else, are that defect.
pub fn is_dciodvfy_defect(line: &str) -> bool {
    line.starts_with(
        "Error - Non-string attribute while verifying string enumerated value for attribute <M",
    ) && line.contains("Stored Value Mapp")
}

/// `dciodvfy`'s error lines for `file` (it prints its findings on stderr), without the
/// lines of its own defect ([`is_dciodvfy_defect`]), and its whole output.
pub fn dciodvfy_errors(dciodvfy: &Path, file: &Path) -> (Vec<String>, String) {
    let out = run(
        std::process::Command::new(dciodvfy).arg(file),
        Duration::from_secs(60),
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    let errors = text
        .lines()
        .filter(|l| l.starts_with("Error") && !is_dciodvfy_defect(l))
        .map(String::from)
        .collect();
    (errors, text)
}
