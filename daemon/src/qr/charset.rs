//! Character sets of C-FIND identifiers (PS3.5 6.1, PS3.4 C.4.1.1.3.3): how a value is
//! read when the peer sends non-ASCII bytes without Specific Character Set (0008,0005),
//! which character set a response declares, and how its values are written in it.
//!
//! Values are matched as Unicode text, so a query and a study stored in different character
//! sets (ISO_IR 100 and ISO_IR 192, say) match whenever they spell the same name.

use dicom_encoding::text::{SpecificCharacterSet, TextCodec};

/// UTF-8: what a response declares when its values are not all ASCII and the query's own
/// character set (if any) cannot carry them.
pub const UTF8: &str = "ISO_IR 192";

/// The Specific Character Set (0008,0005) an identifier declares.
pub use crate::iso2022::declared;

/// A value of an identifier that declares no character set, as decoded under the default
/// repertoire (one character per byte, as ISO 8859-1), read again: as UTF-8 when its bytes
/// are valid UTF-8, otherwise as ISO-IR 100 (Latin-1), i.e. unchanged.
pub fn undeclared(value: String) -> String {
    if value.is_ascii() {
        return value;
    }
    let bytes: Option<Vec<u8>> = value
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect();
    match bytes.map(String::from_utf8) {
        Some(Ok(utf8)) => utf8,
        _ => value,
    }
}

/// A value as it is put into a response declaring `cs`: Unicode text for a single
/// character set (dicom-rs encodes it when writing), or for ISO 2022 code extensions the
/// escape-switched bytes ([`crate::iso2022::encode`]) in the form dicom-rs's writer, which
/// knows only the first declared set, passes through unchanged; `None` when `cs` cannot
/// carry it.
pub fn written(cs: &str, value: &str, person_name: bool) -> Option<String> {
    if value.is_ascii() {
        return Some(value.to_string());
    }
    if crate::iso2022::uses_code_extensions(cs) {
        let bytes = crate::iso2022::encode(cs, value, person_name)?;
        return crate::iso2022::for_writer(cs, &bytes);
    }
    match SpecificCharacterSet::from_code(cs.trim()) {
        Some(c) if c != SpecificCharacterSet::ISO_IR_6 => {
            c.encode(value).ok().map(|_| value.to_string())
        }
        _ => None,
    }
}

/// True when the character set `code` can carry every one of `values`.
fn carries<'a>(code: &str, values: &mut impl Iterator<Item = &'a str>) -> bool {
    values.all(|v| written(code, v, false).is_some())
}

/// The Specific Character Set (0008,0005) of a response carrying `values`, for a query
/// that declared `query` (if any): the query's own when it can encode them all (ISO 2022
/// code extensions included, see [`written`]), otherwise
/// ISO_IR 192 when any is non-ASCII, otherwise none (the default repertoire).
pub fn for_response<'a>(
    query: Option<&str>,
    values: impl Iterator<Item = &'a str> + Clone,
) -> Option<String> {
    if let Some(q) = query {
        if values.clone().all(str::is_ascii) || carries(q, &mut values.clone()) {
            return Some(q.to_string());
        }
        return Some(UTF8.to_string());
    }
    let mut values = values;
    if values.all(str::is_ascii) {
        None
    } else {
        Some(UTF8.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;

    #[test]
    fn undeclared_values_are_utf8_when_valid_else_latin1() {
        // "Conceição" sent as UTF-8 bytes, decoded one character per byte.
        let utf8_bytes: String = "Conceição".bytes().map(char::from).collect();
        assert_eq!(undeclared(utf8_bytes), "Conceição");
        // The same name in Latin-1 bytes is not valid UTF-8: kept as Latin-1.
        let latin1: String = [b'C', b'o', b'n', b'c', b'e', b'i', 0xE7, 0xE3, b'o']
            .into_iter()
            .map(char::from)
            .collect();
        assert_eq!(undeclared(latin1), "Conceição");
        assert_eq!(undeclared("Doe^John".into()), "Doe^John");
        // Not from a byte decoding at all: left alone, never a panic.
        assert_eq!(undeclared("Łukasz".into()), "Łukasz");
    }

    #[test]
    fn declared_character_set() {
        let mut obj = InMemDicomObject::new_empty();
        assert_eq!(declared(&obj), None);
        obj.put(DataElement::new(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            PrimitiveValue::from("ISO_IR 100 "),
        ));
        assert_eq!(declared(&obj).as_deref(), Some("ISO_IR 100"));
        obj.put(DataElement::new(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            PrimitiveValue::Empty,
        ));
        assert_eq!(declared(&obj), None);
    }

    #[test]
    fn response_character_set() {
        let ascii = ["Doe^John", "P1"];
        let latin = ["Conceição^Maria", "P2"];
        let polish = ["Łukasz^Nowak", "P3"];
        assert_eq!(for_response(None, ascii.iter().copied()), None);
        assert_eq!(
            for_response(None, latin.iter().copied()).as_deref(),
            Some(UTF8)
        );
        let latin1 = Some("ISO_IR 100");
        assert_eq!(
            for_response(latin1, latin.iter().copied()).as_deref(),
            latin1
        );
        assert_eq!(
            for_response(latin1, ascii.iter().copied()).as_deref(),
            latin1
        );
        assert_eq!(
            for_response(latin1, polish.iter().copied()).as_deref(),
            Some(UTF8),
            "Latin-1 cannot carry Ł"
        );
        assert_eq!(
            for_response(Some(UTF8), polish.iter().copied()).as_deref(),
            Some(UTF8)
        );
        assert_eq!(
            for_response(Some("ISO_IR 6"), latin.iter().copied()).as_deref(),
            Some(UTF8)
        );
        // Code extensions carry what their sets have, switched by escape sequences.
        let extended = Some("ISO 2022 IR 6\\ISO 2022 IR 100");
        assert_eq!(
            for_response(extended, latin.iter().copied()).as_deref(),
            extended
        );
        assert_eq!(
            for_response(extended, polish.iter().copied()).as_deref(),
            Some(UTF8)
        );
        let japanese = Some("\\ISO 2022 IR 87");
        assert_eq!(
            for_response(japanese, ["山田^太郎"].into_iter()).as_deref(),
            japanese
        );
        assert_eq!(
            for_response(japanese, ["홍^길동"].into_iter()).as_deref(),
            Some(UTF8)
        );
        // What is put into such a response: the escape-switched bytes, one per character.
        assert_eq!(
            written("\\ISO 2022 IR 87", "山田^太郎", true).as_deref(),
            Some("\u{1b}$B;3ED\u{1b}(B^\u{1b}$BB@O:\u{1b}(B")
        );
        assert_eq!(written("ISO_IR 100", "Łukasz", false), None);
        assert_eq!(
            for_response(Some("NOT A CHARSET"), ascii.iter().copied()).as_deref(),
            Some("NOT A CHARSET")
        );
    }
}
