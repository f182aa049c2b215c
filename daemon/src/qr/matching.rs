//! Attribute matching of C-FIND keys (PS3.4 C.2.2.2): universal, single value, wildcard
//! (`*`, `?`), list of UIDs (or of values), and date/time ranges.
//!
//! Case rules: values are compared case-sensitively except Person Name, which is compared
//! case-insensitively (the freedom PS3.4 C.2.2.2.1 gives PN, and what users expect when they
//! type a name). Leading and trailing spaces are padding and never significant.
//!
//! Person Names are compared in their shortest form (PS3.5 6.2.1: trailing empty components
//! and component groups may be left out, with their delimiters), so `Doe^John^^^` is
//! `Doe^John`; a query of one component group matches any of the stored groups (alphabetic,
//! ideographic, phonetic). Wildcards apply to the text representations only (PS3.4
//! C.2.2.2.4); IS and DS values compare as numbers.

use crate::store::qr_index::{nfc, pn_forms, pn_shortest};
use dicom_core::VR;

/// How one query key matches.
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    /// Empty key or `*`: everything matches (and the value is returned).
    Universal,
    /// One value, compared whole.
    Single(String),
    /// A pattern with `*` and/or `?`.
    Wildcard(Vec<char>),
    /// Any of several values (UID lists; multi-valued keys such as Modalities in Study).
    List(Vec<String>),
    /// An inclusive range of dates, times or date-times; an empty bound is open.
    Range {
        /// Lower bound (inclusive), empty for none.
        lo: String,
        /// Upper bound (inclusive), empty for none.
        hi: String,
    },
}

fn is_temporal(vr: VR) -> bool {
    matches!(vr, VR::DA | VR::TM | VR::DT)
}

fn case_insensitive(vr: VR) -> bool {
    vr == VR::PN
}

/// The representations whose values may be matched with `*` and `?` (PS3.4 C.2.2.2.4).
fn takes_wildcards(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE | VR::CS | VR::LO | VR::LT | VR::PN | VR::SH | VR::ST | VR::UC | VR::UR | VR::UT
    )
}

/// A query name `q` (shortest form, upper case) against a stored name `v` (the same): a
/// query of several component groups compares whole, a query of one against each group.
fn pn_equal(q: &str, v: &str) -> bool {
    if q.contains('=') {
        q == v
    } else {
        v.split('=').any(|g| g == q)
    }
}

/// IS and DS compare as numbers; a value that does not parse compares as text.
fn equal(vr: VR, q: &str, v: &str) -> bool {
    match vr {
        VR::PN => pn_equal(q, v),
        VR::IS | VR::DS => match (q.parse::<f64>(), v.parse::<f64>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => q == v,
        },
        _ => q == v,
    }
}

/// Trims DICOM padding.
pub fn clean(s: &str) -> &str {
    s.trim_matches(|c: char| c == ' ' || c == '\0')
}

/// The matcher for a key of representation `vr` with value `raw` (as decoded, values joined
/// by `\`).
pub fn parse(vr: VR, raw: &str) -> Matcher {
    let value = clean(raw);
    if value.is_empty() || value == "*" {
        return Matcher::Universal;
    }
    if value.contains('\\') {
        let items: Vec<String> = value
            .split('\\')
            .map(|v| normalise(vr, clean(v)))
            .filter(|v| !v.is_empty())
            .collect();
        return if items.is_empty() {
            Matcher::Universal
        } else {
            Matcher::List(items)
        };
    }
    if is_temporal(vr) {
        if let Some((lo, hi)) = value.split_once('-') {
            let (lo, hi) = (normalise(vr, clean(lo)), normalise(vr, clean(hi)));
            // `-` alone bounds nothing: every value matches, as for an empty key.
            if lo.is_empty() && hi.is_empty() {
                return Matcher::Universal;
            }
            return Matcher::Range { lo, hi };
        }
        return Matcher::Single(normalise(vr, value));
    }
    if takes_wildcards(vr) && (value.contains('*') || value.contains('?')) {
        let pattern = if case_insensitive(vr) {
            nfc(&value.to_uppercase())
        } else {
            nfc(value)
        };
        // A run of `*` matches as one: collapsed, so a pattern of many stars costs no more.
        let mut chars: Vec<char> = Vec::with_capacity(pattern.len());
        for c in pattern.chars() {
            if !(c == '*' && chars.last() == Some(&'*')) {
                chars.push(c);
            }
        }
        return Matcher::Wildcard(chars);
    }
    let single = normalise(vr, value);
    if single.is_empty() {
        // A name of delimiters only (`^`, `=`): no component to match on.
        return Matcher::Universal;
    }
    Matcher::Single(single)
}

/// Normal form for comparison: text in Unicode NFC ([`nfc`]), upper case and shortest
/// form for PN; dates and times without the old `.`/`:` separators.
fn normalise(vr: VR, v: &str) -> String {
    match vr {
        VR::PN => pn_shortest(&nfc(&v.to_uppercase())),
        VR::DA => v.replace('.', ""),
        VR::TM => v.replace(':', ""),
        _ => nfc(v),
    }
}

/// True when any of `values` (an attribute's values in the store) matches.
pub fn matches(m: &Matcher, vr: VR, values: &[String]) -> bool {
    if *m == Matcher::Universal {
        return true;
    }
    values.iter().any(|raw| {
        let v = clean(raw);
        if v.is_empty() {
            return false;
        }
        match m {
            Matcher::Universal => true,
            Matcher::Single(s) => equal(vr, s, &normalise(vr, v)),
            Matcher::List(items) => {
                let v = normalise(vr, v);
                items.iter().any(|s| equal(vr, s, &v))
            }
            Matcher::Wildcard(p) if vr == VR::PN => pn_forms(v)
                .iter()
                .any(|f| glob(p, &f.chars().collect::<Vec<_>>())),
            Matcher::Wildcard(p) => glob(p, &normalise(vr, v).chars().collect::<Vec<_>>()),
            Matcher::Range { lo, hi } => in_range(vr, lo, hi, &normalise(vr, v)),
        }
    })
}

/// `*`/`?` pattern matching (iterative, with backtracking to the last `*`).
fn glob(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn in_range(vr: VR, lo: &str, hi: &str, v: &str) -> bool {
    match vr {
        VR::TM => {
            let Some(t) = seconds(v, false) else {
                return false;
            };
            let above = lo.is_empty() || seconds(lo, false).is_some_and(|l| t >= l);
            let below = hi.is_empty() || seconds(hi, true).is_some_and(|h| t <= h);
            above && below
        }
        VR::DT => {
            // Compare on the common YYYYMMDDHHMMSS.FFFFFF form, partial bounds widened.
            let v = pad_datetime(v, '0');
            (lo.is_empty() || v >= pad_datetime(lo, '0'))
                && (hi.is_empty() || v <= pad_datetime(hi, '9'))
        }
        _ => (lo.is_empty() || v >= lo) && (hi.is_empty() || v <= hi),
    }
}

/// A time `HH[MM[SS[.F{1,6}]]]` in seconds; missing parts are zero, or their maximum for an
/// upper bound (so `-12` includes 12:59:59.999999).
fn seconds(t: &str, upper: bool) -> Option<f64> {
    let (main, frac) = match t.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (t, None),
    };
    if main.len() % 2 != 0 || main.is_empty() || main.len() > 6 {
        return None;
    }
    let part = |i: usize, max: f64| -> Option<f64> {
        match main.get(i..i + 2) {
            Some(p) => p.parse::<f64>().ok(),
            None => Some(if upper { max } else { 0.0 }),
        }
    };
    let h = part(0, 23.0)?;
    let m = part(2, 59.0)?;
    let s = part(4, 59.0)?;
    let f = match frac {
        Some(f) if !f.is_empty() => format!("0.{f}").parse::<f64>().ok()?,
        _ if upper => 0.999_999,
        _ => 0.0,
    };
    Some(h * 3600.0 + m * 60.0 + s + f)
}

fn pad_datetime(v: &str, fill: char) -> String {
    // Drop a UTC offset; compare local values.
    let base = match v.get(8..).and_then(|rest| rest.find(['+', '-'])) {
        Some(i) => &v[..8 + i],
        None => v,
    };
    let mut out: String = base.to_string();
    let template = "YYYYMMDDHHMMSS.FFFFFF";
    while out.len() < template.len() {
        out.push(if out.len() == 14 { '.' } else { fill });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(vr: VR, key: &str, value: &str) -> bool {
        matches(&parse(vr, key), vr, &[value.to_string()])
    }

    #[test]
    fn universal_single_and_case_rules() {
        assert!(m(VR::LO, "", "anything"));
        assert!(m(VR::LO, "*", ""));
        assert!(m(VR::LO, "P1 ", "P1"));
        assert!(!m(VR::LO, "p1", "P1"), "LO is case-sensitive");
        assert!(m(VR::PN, "doe^john", "Doe^John"), "PN is not");
        assert!(
            !m(VR::LO, "P1", ""),
            "an empty value matches only universally"
        );
        assert!(!m(VR::LO, "P1", "P10"));
    }

    #[test]
    fn composed_and_decomposed_text_match_alike() {
        // "Müller^Jörg" with precomposed ü/ö (NFC) and with u/o + U+0308 (NFD).
        let composed = "M\u{fc}ller^J\u{f6}rg";
        let decomposed = "Mu\u{308}ller^Jo\u{308}rg";
        assert!(m(VR::PN, composed, decomposed));
        assert!(m(VR::PN, decomposed, composed));
        assert!(m(VR::PN, "m\u{fc}l*", decomposed));
        assert!(m(VR::PN, "MU\u{308}LLER^J?RG", composed), "one character");
        assert!(m(VR::LO, "Z\u{fc}rich", "Zu\u{308}rich"));
        assert!(m(VR::LO, "Zu\u{308}r*", "Z\u{fc}rich"));
        assert!(!m(VR::LO, "Zurich", "Z\u{fc}rich"), "no accent folding");
        assert_eq!(nfc("plain ASCII"), "plain ASCII");
    }

    #[test]
    fn wildcards() {
        assert!(m(VR::PN, "DOE*", "Doe^John"));
        assert!(m(VR::PN, "*john", "Doe^John"));
        assert!(m(VR::LO, "P?", "P1"));
        assert!(!m(VR::LO, "P?", "P10"));
        assert!(m(VR::LO, "A*C*E", "ABCDE"));
        assert!(!m(VR::LO, "A*C*F", "ABCDE"));
        assert!(m(VR::SH, "ACC*", "ACC00001"));
        // A UID is never a pattern.
        assert!(!m(VR::UI, "1.2.*", "1.2.3"));
    }

    /// PS3.5 6.2.1: trailing empty components and groups may be left out, so they do not
    /// take part in matching; a one-group query matches any stored group.
    #[test]
    fn person_names_match_in_shortest_form_and_by_component_group() {
        assert!(m(VR::PN, "DOE^JOHN", "Doe^John^^^"));
        assert!(m(VR::PN, "Doe^John^", "Doe^John"));
        assert!(m(VR::PN, "Doe^John^^^^", "Doe^John^^=="));
        let korean = "Hong^Gildong=洪^吉洞=홍^길동";
        assert!(m(VR::PN, "Hong^Gildong", korean));
        assert!(m(VR::PN, "洪^吉洞", korean));
        assert!(m(VR::PN, "홍^길동", korean));
        assert!(m(VR::PN, "Hong^Gildong=洪^吉洞=홍^길동", korean));
        assert!(m(VR::PN, "HONG^GILDONG\\Doe", korean), "list");
        assert!(!m(VR::PN, "Hong", korean), "a component is not a name");
        assert!(!m(VR::PN, "Hong^Gildong=洪^吉", korean));
        assert!(!m(VR::PN, "Doe^John^A", "Doe^John"));
        assert!(!m(VR::PN, "Doe", "Doe^John^^^"));
        assert!(m(VR::PN, "^", "Doe^John"), "delimiters only: universal");
        assert!(m(VR::PN, "洪*", korean), "a pattern against each group");
        assert!(m(VR::PN, "*^GILDONG", korean));
        assert!(m(VR::PN, "DOE^JOHN^*", "Doe^John^^^"), "as stored too");
        assert!(!m(VR::PN, "KIM*", korean));
    }

    /// PS3.4 C.2.2.2.4: no wildcards for IS and DS; numbers compare as numbers.
    #[test]
    fn numbers_take_no_wildcards_and_compare_numerically() {
        assert!(!m(VR::IS, "1*", "10"));
        assert!(!m(VR::IS, "1*", "9901"));
        assert!(!m(VR::IS, "1?", "11"));
        assert!(m(VR::IS, "01", "1"));
        assert!(m(VR::IS, "+1", " 1"));
        assert!(!m(VR::IS, "1", "10"));
        assert!(m(VR::IS, "1\\2", "02"), "list");
        assert!(m(VR::DS, "1.50", "1.5"));
        assert!(m(VR::DS, "abc", "abc"), "not a number: as text");
        assert!(m(VR::CS, "D*", "DX"), "text VRs keep them");
        assert!(m(VR::AE, "PAC?", "PACS"));
    }

    #[test]
    fn lists() {
        assert!(m(VR::UI, "1.2.3\\1.2.4", "1.2.4"));
        assert!(!m(VR::UI, "1.2.3\\1.2.4", "1.2.5"));
        let modalities = ["DX".to_string(), "SR".to_string()];
        assert!(matches(&parse(VR::CS, "SR"), VR::CS, &modalities));
        assert!(matches(&parse(VR::CS, "CT\\SR"), VR::CS, &modalities));
        assert!(!matches(&parse(VR::CS, "CT\\MR"), VR::CS, &modalities));
    }

    #[test]
    fn date_and_time_ranges() {
        assert!(m(VR::DA, "20240101-20241231", "20240615"));
        assert!(m(VR::DA, "20240101-", "20240101"));
        assert!(m(VR::DA, "-20240101", "20240101"));
        assert!(!m(VR::DA, "-20240101", "20240102"));
        assert!(m(VR::DA, "2024.01.01-2024.12.31", "20240615"));
        assert!(m(VR::TM, "0800-1200", "120000"));
        assert!(
            m(VR::TM, "-12", "125959.5"),
            "partial upper bound covers its hour"
        );
        assert!(!m(VR::TM, "-12", "130000"));
        assert!(m(VR::TM, "101500", "101500"));
        assert!(m(VR::TM, "10:15-", "101500"));
        assert!(m(VR::DT, "20240101-20240101", "20240101123000"));
        assert!(!m(VR::DT, "20240102-", "20240101123000"));
        assert!(!m(VR::DA, "20240101-20241231", ""));
    }
}
