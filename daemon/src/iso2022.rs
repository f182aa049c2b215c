//! Text in ISO 2022 code extensions (PS3.5 6.1.2.5, PS3.3 C.12.1.1.2): values whose
//! Specific Character Set (0008,0005) has several values or names `ISO 2022 IR …`, where
//! escape sequences switch between ASCII, JIS X 0201/0208/0212 (Japanese), KS X 1001
//! (Korean), GB 2312 (Chinese) and the single-byte ISO 8859 parts within one value.
//!
//! dicom-rs decodes a value with the first declared character set only, so the escape
//! sequences and the bytes after them reach us undecoded. [`redecode`] recovers the bytes
//! from that reading and decodes them here; [`encode`] writes Unicode text back in the
//! code extensions a C-FIND query asked for.
//!
//! Both are linear in the value's length and never fail: an unknown escape sequence, a
//! truncated double-byte character or a byte the active set does not define becomes
//! U+FFFD, and the next delimiter restores the initial state as the standard asks.

use dicom_core::value::Value;
use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;
use encoding_rs::Encoding;

const ESC: u8 = 0x1b;

/// The set invoked in G0 (bytes 0x21–0x7E).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G0 {
    /// ISO-IR 6.
    Ascii,
    /// JIS X 0201 Romaji (ISO-IR 14): ASCII with ‾ at 0x7E (and ¥ at 0x5C, which DICOM
    /// keeps as the value separator).
    Romaji,
    /// JIS X 0208 (ISO-IR 87), two bytes per character.
    Jis0208,
    /// JIS X 0212 (ISO-IR 159), two bytes per character.
    Jis0212,
}

/// The set invoked in G1 (bytes 0xA1–0xFE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G1 {
    /// None designated.
    None,
    /// JIS X 0201 Katakana (ISO-IR 13).
    Katakana,
    /// KS X 1001 (ISO-IR 149), two bytes per character.
    Ksx1001,
    /// GB 2312 (ISO-IR 58), two bytes per character.
    Gb2312,
    /// The upper half of an ISO 8859 part, with its escape sequence's final byte.
    Single(&'static Encoding, u8),
}

/// The single-byte G1 sets: defined term, final byte of `ESC - F`, and the table (the
/// WHATWG tables agree with ISO 8859 on 0xA0–0xFF for each of these).
const SINGLE_BYTE: [(&str, u8, &Encoding); 11] = [
    ("ISO 2022 IR 100", b'A', encoding_rs::WINDOWS_1252),
    ("ISO 2022 IR 101", b'B', encoding_rs::ISO_8859_2),
    ("ISO 2022 IR 109", b'C', encoding_rs::ISO_8859_3),
    ("ISO 2022 IR 110", b'D', encoding_rs::ISO_8859_4),
    ("ISO 2022 IR 144", b'L', encoding_rs::ISO_8859_5),
    ("ISO 2022 IR 127", b'G', encoding_rs::ISO_8859_6),
    ("ISO 2022 IR 126", b'F', encoding_rs::ISO_8859_7),
    ("ISO 2022 IR 138", b'H', encoding_rs::ISO_8859_8),
    ("ISO 2022 IR 148", b'M', encoding_rs::WINDOWS_1254),
    ("ISO 2022 IR 203", b'b', encoding_rs::ISO_8859_15),
    ("ISO 2022 IR 166", b'T', encoding_rs::WINDOWS_874),
];

/// The state of G0 and G1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    g0: G0,
    g1: G1,
}

/// The values of a Specific Character Set as sent (`\`-separated, padding trimmed).
fn terms(declared: &str) -> Vec<&str> {
    declared
        .split('\\')
        .map(|t| t.trim_matches(|c: char| c == ' ' || c == '\0'))
        .collect()
}

/// True when `declared` (the whole value of (0008,0005)) uses code extensions: several
/// values, or a defined term of the `ISO 2022 IR` form.
pub fn uses_code_extensions(declared: &str) -> bool {
    let t = terms(declared);
    t.len() > 1 || t.iter().any(|t| t.starts_with("ISO 2022"))
}

/// The state at the start of a value and after each delimiter: that of the first value
/// (the default repertoire when it is empty).
fn initial(declared: &str) -> State {
    let first = terms(declared).first().copied().unwrap_or("");
    let mut s = State {
        g0: G0::Ascii,
        g1: G1::None,
    };
    match first {
        "ISO 2022 IR 13" => {
            s.g0 = G0::Romaji;
            s.g1 = G1::Katakana;
        }
        "ISO 2022 IR 149" => s.g1 = G1::Ksx1001,
        "ISO 2022 IR 58" => s.g1 = G1::Gb2312,
        "ISO 2022 IR 87" => s.g0 = G0::Jis0208,
        t => {
            if let Some((_, f, e)) = SINGLE_BYTE.iter().find(|(name, _, _)| *name == t) {
                s.g1 = G1::Single(e, *f);
            }
        }
    }
    s
}

/// Whether `b` ends a component and so restores the initial state: CR, LF, FF, TAB and the
/// value separator always; `^` and `=` in person names.
fn is_delimiter(b: u8, person_name: bool) -> bool {
    matches!(b, b'\r' | b'\n' | 0x0c | b'\t' | b'\\') || (person_name && matches!(b, b'^' | b'='))
}

/// Reads the escape sequence at the start of `rest` (after ESC): the state it sets and
/// its length, or `None` when it is not one of the defined terms'.
fn escape(rest: &[u8], s: State) -> Option<(State, usize)> {
    let mut n = s;
    let len = match rest {
        [b'(', b'B', ..] => {
            n.g0 = G0::Ascii;
            2
        }
        [b'(', b'J', ..] => {
            n.g0 = G0::Romaji;
            2
        }
        [b')', b'I', ..] => {
            n.g1 = G1::Katakana;
            2
        }
        [b'$', b'B', ..] | [b'$', b'@', ..] => {
            n.g0 = G0::Jis0208;
            2
        }
        [b'$', b'(', b'D', ..] => {
            n.g0 = G0::Jis0212;
            3
        }
        [b'$', b')', b'C', ..] => {
            n.g1 = G1::Ksx1001;
            3
        }
        [b'$', b')', b'A', ..] => {
            n.g1 = G1::Gb2312;
            3
        }
        [b'-', f, ..] => {
            let (_, f, e) = SINGLE_BYTE
                .iter()
                .find(|(_, final_byte, _)| final_byte == f)?;
            n.g1 = G1::Single(e, *f);
            2
        }
        _ => return None,
    };
    Some((n, len))
}

/// Decodes `bytes` with `encoding`, U+FFFD for anything it does not define.
fn decode_with(encoding: &'static Encoding, bytes: &[u8], out: &mut String) {
    out.push_str(&encoding.decode_without_bom_handling(bytes).0);
}

/// Decodes one value's bytes under `declared` (the whole value of (0008,0005)).
/// `person_name` makes `^` and `=` delimiters (VR PN).
pub fn decode(declared: &str, bytes: &[u8], person_name: bool) -> String {
    let start = initial(declared);
    let mut s = start;
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == ESC {
            match escape(&bytes[i + 1..], s) {
                Some((n, len)) => {
                    s = n;
                    i += 1 + len;
                }
                None => {
                    out.push(char::REPLACEMENT_CHARACTER);
                    i += 1;
                }
            }
            continue;
        }
        if b < 0x80 {
            match s.g0 {
                G0::Jis0208 | G0::Jis0212 if (0x21..=0x7e).contains(&b) => {
                    match bytes.get(i + 1) {
                        Some(&b2) if (0x21..=0x7e).contains(&b2) => {
                            let euc = [b | 0x80, b2 | 0x80];
                            if s.g0 == G0::Jis0212 {
                                decode_with(encoding_rs::EUC_JP, &[0x8f, euc[0], euc[1]], &mut out);
                            } else {
                                decode_with(encoding_rs::EUC_JP, &euc, &mut out);
                            }
                            i += 2;
                        }
                        _ => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            i += 1;
                        }
                    }
                    continue;
                }
                // 0x5C stays the value separator in every set.
                G0::Romaji if b == 0x7e => out.push('‾'),
                _ => out.push(char::from(b)),
            }
            if is_delimiter(b, person_name) {
                s = start;
            }
            i += 1;
            continue;
        }
        match s.g1 {
            G1::Katakana if (0xa1..=0xdf).contains(&b) => {
                out.extend(char::from_u32(0xff61 + u32::from(b - 0xa1)));
                i += 1;
            }
            G1::Ksx1001 | G1::Gb2312 if (0xa1..0xff).contains(&b) => match bytes.get(i + 1) {
                Some(&b2) if (0xa1..0xff).contains(&b2) => {
                    let e = if s.g1 == G1::Ksx1001 {
                        encoding_rs::EUC_KR
                    } else {
                        encoding_rs::GBK
                    };
                    decode_with(e, &[b, b2], &mut out);
                    i += 2;
                }
                _ => {
                    out.push(char::REPLACEMENT_CHARACTER);
                    i += 1;
                }
            },
            G1::Single(e, _) if b >= 0xa0 => {
                decode_with(e, &[b], &mut out);
                i += 1;
            }
            _ => {
                out.push(char::REPLACEMENT_CHARACTER);
                i += 1;
            }
        }
    }
    out
}

/// The codec dicom-rs reads and writes a data set declaring `declared` with: that of the
/// first value (the default repertoire when dicom-rs does not know it, or it is empty).
fn writer_codec(declared: &str) -> SpecificCharacterSet {
    let first = terms(declared).first().copied().unwrap_or("");
    SpecificCharacterSet::from_code(first).unwrap_or_default()
}

/// A value as dicom-rs decoded it (with the first declared character set only), decoded
/// again under all of `declared` when it carries escape sequences; otherwise unchanged.
/// `person_name` as in [`decode`].
pub fn redecode(declared: &str, value: String, person_name: bool) -> String {
    if !value.contains('\u{1b}') || !uses_code_extensions(declared) {
        return value;
    }
    match writer_codec(declared).encode(&value) {
        Ok(bytes) => decode(declared, &bytes, person_name),
        Err(_) => value,
    }
}

/// The Specific Character Set (0008,0005) a data set declares, as sent (values joined
/// by `\\`, padding trimmed); `None` when absent or empty (the default repertoire).
pub fn declared(obj: &InMemDicomObject) -> Option<String> {
    let e = obj
        .element_opt(tags::SPECIFIC_CHARACTER_SET)
        .ok()
        .flatten()?;
    if !matches!(e.value(), Value::Primitive(_)) {
        return None;
    }
    let v = e.to_str().ok()?;
    let v = v.trim_matches(|c: char| c == ' ' || c == '\0');
    (!v.trim_matches('\\').is_empty()).then(|| v.to_string())
}

/// The text of element `e` of a data set that declares `declared`: dicom-rs's reading,
/// decoded again when it carries ISO 2022 escape sequences ([`redecode`]).
pub fn text_of(declared: Option<&str>, e: &InMemElement) -> Option<String> {
    let v = e.to_str().ok()?.into_owned();
    Some(match declared {
        Some(cs) => redecode(cs, v, e.vr() == VR::PN),
        None => v,
    })
}

/// One character in the double-byte set of `encoding` (both bytes in 0xA1–0xFE, as in the
/// 94×94 sets), or `None`.
fn double_byte(encoding: &'static Encoding, c: char) -> Option<[u8; 2]> {
    let mut buf = [0u8; 4];
    let (bytes, _, unmappable) = encoding.encode(c.encode_utf8(&mut buf));
    match (&*bytes, unmappable) {
        (&[a, b], false) if (0xa1..0xff).contains(&a) && (0xa1..0xff).contains(&b) => Some([a, b]),
        _ => None,
    }
}

/// One character in the upper half of a single-byte set, or `None`.
fn upper_half(encoding: &'static Encoding, c: char) -> Option<u8> {
    let mut buf = [0u8; 4];
    let (bytes, _, unmappable) = encoding.encode(c.encode_utf8(&mut buf));
    match (&*bytes, unmappable) {
        (&[a], false) if a >= 0xa0 => Some(a),
        _ => None,
    }
}

/// The bytes and state that write the non-ASCII `c` with one of `declared`'s sets, or
/// `None` when none of them has it.
fn place(declared: &[&str], c: char) -> Option<(State, Vec<u8>)> {
    for t in declared {
        let mut s = State {
            g0: G0::Ascii,
            g1: G1::None,
        };
        let bytes = match *t {
            "ISO 2022 IR 87" => {
                s.g0 = G0::Jis0208;
                match double_byte(encoding_rs::EUC_JP, c) {
                    Some([a, b]) => vec![a & 0x7f, b & 0x7f],
                    None => continue,
                }
            }
            "ISO 2022 IR 13" => {
                let cp = u32::from(c);
                if !(0xff61..=0xff9f).contains(&cp) {
                    continue;
                }
                s.g1 = G1::Katakana;
                vec![u8::try_from(cp - 0xff61 + 0xa1).ok()?]
            }
            "ISO 2022 IR 149" => {
                s.g1 = G1::Ksx1001;
                match double_byte(encoding_rs::EUC_KR, c) {
                    Some(b) => b.to_vec(),
                    None => continue,
                }
            }
            "ISO 2022 IR 58" => {
                s.g1 = G1::Gb2312;
                match double_byte(encoding_rs::GBK, c) {
                    Some(b) => b.to_vec(),
                    None => continue,
                }
            }
            t => {
                let Some((_, f, e)) = SINGLE_BYTE.iter().find(|(name, _, _)| *name == t) else {
                    continue;
                };
                s.g1 = G1::Single(e, *f);
                match upper_half(e, c) {
                    Some(b) => vec![b],
                    None => continue,
                }
            }
        };
        return Some((s, bytes));
    }
    None
}

/// The escape sequence that designates `g0`.
fn designate_g0(g0: G0, out: &mut Vec<u8>) {
    out.push(ESC);
    out.extend_from_slice(match g0 {
        G0::Ascii => b"(B",
        G0::Romaji => b"(J",
        G0::Jis0208 => b"$B",
        G0::Jis0212 => b"$(D",
    });
}

/// The escape sequence that designates `g1` (none for [`G1::None`]).
fn designate_g1(g1: G1, out: &mut Vec<u8>) {
    match g1 {
        G1::None => {}
        G1::Katakana => out.extend_from_slice(b"\x1b)I"),
        G1::Ksx1001 => out.extend_from_slice(b"\x1b$)C"),
        G1::Gb2312 => out.extend_from_slice(b"\x1b$)A"),
        G1::Single(_, f) => out.extend_from_slice(&[ESC, b'-', f]),
    }
}

/// Writes `text` in the code extensions of `declared` (the whole value of (0008,0005)),
/// switching back to the initial state before every delimiter and at the end, as PS3.5
/// 6.1.2.5.3 asks; `None` when a character is in none of the declared sets (JIS X 0212 is
/// read, never written). `person_name` as in [`decode`].
pub fn encode(declared: &str, text: &str, person_name: bool) -> Option<Vec<u8>> {
    let sets = terms(declared);
    let start = initial(declared);
    let mut s = start;
    let mut out = Vec::with_capacity(text.len() * 2);
    for c in text.chars() {
        if let Ok(b) = u8::try_from(u32::from(c)) {
            if b < 0x80 {
                let romaji_clash = matches!(b, 0x5c | 0x7e);
                let g0_ok = match s.g0 {
                    G0::Ascii => true,
                    G0::Romaji => !romaji_clash,
                    G0::Jis0208 | G0::Jis0212 => false,
                };
                if is_delimiter(b, person_name) {
                    if s.g0 != start.g0 {
                        designate_g0(start.g0, &mut out);
                    }
                    out.push(b);
                    s = start;
                    continue;
                }
                if !g0_ok {
                    let g0 = if start.g0 == G0::Romaji && !romaji_clash {
                        G0::Romaji
                    } else {
                        G0::Ascii
                    };
                    designate_g0(g0, &mut out);
                    s.g0 = g0;
                }
                out.push(b);
                continue;
            }
        }
        let (want, bytes) = place(&sets, c)?;
        if want.g0 != G0::Ascii && s.g0 != want.g0 {
            designate_g0(want.g0, &mut out);
            s.g0 = want.g0;
        }
        if want.g1 != G1::None && s.g1 != want.g1 {
            designate_g1(want.g1, &mut out);
            s.g1 = want.g1;
        }
        out.extend_from_slice(&bytes);
    }
    if s.g0 != start.g0 {
        designate_g0(start.g0, &mut out);
    }
    Some(out)
}

/// `bytes` as text that the first declared character set's codec (the one dicom-rs writes
/// with) encodes back to exactly `bytes`; `None` when it cannot.
pub fn for_writer(declared: &str, bytes: &[u8]) -> Option<String> {
    let codec = writer_codec(declared);
    let text = codec.decode(bytes).ok()?;
    (codec.encode(&text).ok()? == bytes).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PS3.5 Annex H.3.1 (Japanese, JIS X 0208 in G0).
    const H31: &[u8] =
        b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
    /// PS3.5 Annex H.3.2 (half-width Katakana in G1, JIS X 0201 Romaji in G0).
    const H32: &[u8] = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
    /// PS3.5 Annex I.2 (Korean, KS X 1001 in G1).
    const I2: &[u8] = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
    /// PS3.5 Annex K.2 (Chinese, GB 2312 in G1).
    const K2: &[u8] = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab=";

    const CASES: [(&str, &[u8], &str); 4] = [
        (
            "\\ISO 2022 IR 87",
            H31,
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
        ),
        (
            "ISO 2022 IR 13\\ISO 2022 IR 87",
            H32,
            "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
        ),
        ("\\ISO 2022 IR 149", I2, "Hong^Gildong=洪^吉洞=홍^길동"),
        ("\\ISO 2022 IR 58", K2, "Zhang^XiaoDong=张^小东="),
    ];

    #[test]
    fn the_standards_examples_decode_and_encode_byte_for_byte() {
        for (declared, bytes, text) in CASES {
            assert!(uses_code_extensions(declared));
            assert_eq!(decode(declared, bytes, true), text, "{declared}");
            assert_eq!(
                encode(declared, text, true).as_deref(),
                Some(bytes),
                "{declared}"
            );
        }
    }

    #[test]
    fn single_byte_sets_switch_by_escape_and_start_from_the_first_value() {
        let declared = "ISO 2022 IR 100\\ISO 2022 IR 144";
        let text = "Jérôme^Люкс";
        let bytes = encode(declared, text, true).unwrap();
        assert_eq!(bytes, b"J\xe9r\xf4me^\x1b-L\xbb\xee\xda\xe1");
        assert_eq!(decode(declared, &bytes, true), text);
        // Greek after a delimiter: Latin-1 is active again without an escape.
        let bytes = encode("ISO 2022 IR 100\\ISO 2022 IR 126", "Ωμέγα^é", true).unwrap();
        assert_eq!(
            decode("ISO 2022 IR 100\\ISO 2022 IR 126", &bytes, true),
            "Ωμέγα^é"
        );
    }

    #[test]
    fn text_outside_the_declared_sets_cannot_be_encoded() {
        assert_eq!(encode("\\ISO 2022 IR 87", "홍^길동", true), None);
        assert_eq!(encode("\\ISO 2022 IR 149", "กข", true), None);
        assert_eq!(encode("\\ISO 2022 IR 87", "Müller", true), None);
        assert_eq!(
            encode("\\ISO 2022 IR 87", "ASCII only", false).as_deref(),
            Some(&b"ASCII only"[..])
        );
    }

    #[test]
    fn outside_person_names_caret_and_equals_are_text() {
        let bytes = b"\x1b$B;3ED\x1b(B=x^\x1b$B;3\x1b(B";
        assert_eq!(decode("\\ISO 2022 IR 87", bytes, false), "山田=x^山");
        // In a long text a line break restores ASCII even without the escape.
        assert_eq!(decode("\\ISO 2022 IR 87", b"\x1b$B;3\rAB", false), "山\rAB");
    }

    #[test]
    fn hostile_bytes_become_replacement_characters_never_a_panic() {
        let d = "\\ISO 2022 IR 87\\ISO 2022 IR 149";
        for bytes in [
            &b"\x1b"[..],
            b"\x1b$",
            b"\x1b$)",
            b"\x1b$B;",
            b"\x1b$B;\x1b(B",
            b"\x1b$)C\xfb",
            b"\x1b$)C\xfb\x20",
            b"\xff\xfe\x80",
            b"\x1b-Z\x1b%G",
            b"\x1b$)D\xb0\xa1",
        ] {
            let s = decode(d, bytes, true);
            assert!(s.chars().count() <= bytes.len(), "{bytes:?} -> {s:?}");
        }
        assert_eq!(decode(d, b"\x1b$B;", true), "\u{fffd}");
        assert_eq!(decode(d, b"a\xffb", true), "a\u{fffd}b");
        // Linear: a megabyte of escapes and pairs decodes at once.
        let big: Vec<u8> = b"\x1b$B;3\x1b(B^".repeat(100_000);
        assert_eq!(decode(d, &big, true).chars().count(), 200_000);
    }

    #[test]
    fn values_dicom_rs_read_with_the_first_set_are_decoded_again() {
        for (declared, bytes, text) in CASES {
            let codec = writer_codec(declared);
            let as_read = codec.decode(bytes).unwrap();
            assert_eq!(redecode(declared, as_read, true), text, "{declared}");
            // The inverse, for dicom-rs's writer.
            let for_write = for_writer(declared, bytes).unwrap();
            assert_eq!(codec.encode(&for_write).unwrap(), bytes);
        }
        // Without escape sequences or code extensions nothing changes.
        assert_eq!(redecode("ISO_IR 100", "Jé".into(), true), "Jé");
        assert_eq!(
            redecode("\\ISO 2022 IR 87", "Yamada".into(), true),
            "Yamada"
        );
    }
}
