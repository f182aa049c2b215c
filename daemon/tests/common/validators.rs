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

/// A term the current standard defines that Debian 12's `dciodvfy` (dicom3tools 2022) does
/// not know yet: QUANTITY as value 4 (Derived Pixel Contrast) of Image Type and Frame Type,
/// which a Parametric Map of one quantity carries (PS3.3 C.8.16.2.1.1.4; highdicom's
/// `DerivedPixelContrastValues.QUANTITY`). Defined terms may be extended, so dciodvfy only
/// warns. This warning, and no other, is that gap.
pub fn is_dciodvfy_term_gap(line: &str) -> bool {
    line.starts_with("Warning - Unrecognized defined term <QUANTITY> for value 4 of attribute <")
        && (line.ends_with("<Image Type>") || line.ends_with("<Frame Type>"))
}

/// What `dciodvfy` found in one file.
pub struct Findings {
    /// Error lines, without those of its own defect ([`is_dciodvfy_defect`]).
    pub errors: Vec<String>,
    /// Warning lines, without those of its term gap ([`is_dciodvfy_term_gap`]).
    pub warnings: Vec<String>,
    /// Its whole output.
    pub text: String,
}

/// Runs `dciodvfy` on `file` (it prints its findings on stderr).
pub fn dciodvfy(dciodvfy: &Path, file: &Path) -> Findings {
    let out = run(
        std::process::Command::new(dciodvfy).arg(file),
        Duration::from_secs(60),
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    let pick = |kind: &str, known: fn(&str) -> bool| {
        text.lines()
            .filter(|l| l.starts_with(kind) && !known(l))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let (errors, warnings) = (
        pick("Error", is_dciodvfy_defect),
        pick("Warning", is_dciodvfy_term_gap),
    );
    Findings {
        errors,
        warnings,
        text,
    }
}

/// The SOP Instance UIDs a Key Object Selection Document's content tree references (its
/// `IMAGE` and `COMPOSITE` items, TID 2010), in order.
pub fn key_object_references(note: &dicom_object::InMemDicomObject) -> Vec<String> {
    use dicom_dictionary_std::tags;
    let Some(content) = note.get(tags::CONTENT_SEQUENCE).and_then(|e| e.items()) else {
        return Vec::new();
    };
    content
        .iter()
        .filter_map(|item| {
            item.get(tags::REFERENCED_SOP_SEQUENCE)?
                .items()?
                .first()
                .cloned()
        })
        .filter_map(|sop| {
            let uid = sop.get(tags::REFERENCED_SOP_INSTANCE_UID)?.to_str().ok()?;
            Some(uid.trim_end_matches(['\0', ' ']).to_string())
        })
        .collect()
}
