//! Secondary indexes of the study records for C-FIND: patient ID, accession number, study
//! date and patient name (upper-cased, under every form a query may match: see
//! [`pn_forms`]), all in Unicode Normalization Form C ([`nfc`]: `Müller` composed or
//! decomposed is one name), each a key `kind, value, 0, study UID` in one sled
//! tree; and every study once more in the order C-FIND answers in ([`order_key`]), so a
//! query that narrows on no indexed key reads the studies one at a time in that order
//! instead of all of them to sort. They are written in the same transaction as the study
//! record they derive from ([`crate::store::Store::commit_instance`]), so a query never
//! sees one without the other.

use crate::model::StudyRecord;
use sled::transaction::{TransactionalTree, UnabortableTransactionError};
use std::collections::BTreeSet;

/// Name of the tree holding the keys.
pub const TREE: &str = "qr_keys";

/// Version of the keys' layout: a store whose tree was written by another is rebuilt.
pub const VERSION: u8 = 5;

/// The first byte of the order keys ([`order_key`]).
const ORDER: u8 = b'O';

/// Which attribute a key indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Patient ID (0010,0020), exact.
    PatientId,
    /// Accession Number (0008,0050), exact.
    Accession,
    /// Study Date (0008,0020), YYYYMMDD (ordered, so ranges scan).
    StudyDate,
    /// Patient's Name (0010,0010), upper-cased, as stored, per component group and in
    /// shortest form (exact look-ups, prefix scans for `NAME*`).
    PatientName,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::PatientId => b'P',
            Kind::Accession => b'A',
            Kind::StudyDate => b'D',
            Kind::PatientName => b'N',
        }
    }
}

/// The values a study is indexed under for `kind` (empty values are not indexed).
fn values(study: &StudyRecord, kind: Kind) -> Vec<String> {
    match kind {
        Kind::PatientId => vec![nfc(&study.patient_id)],
        Kind::Accession => vec![nfc(&study.accession_number)],
        // Indexed as compared: an old ACR-NEMA date `2024.06.15` without its dots.
        Kind::StudyDate => vec![study.study_date.replace('.', "")],
        Kind::PatientName => pn_forms(&study.patient_name),
    }
}

/// `text` in Unicode Normalization Form C (canonical composition), the one form text is
/// indexed and compared in: a name sent decomposed (`u` + U+0308) matches one sent
/// composed (`ü`). ASCII and text already in NFC come back unchanged without rebuilding.
pub fn nfc(text: &str) -> String {
    use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};
    if is_nfc_quick(text.chars()) == IsNormalized::Yes {
        text.to_string()
    } else {
        text.nfc().collect()
    }
}

/// A Person Name has at most three component groups (alphabetic, ideographic, phonetic;
/// PS3.5 6.2.1): text after a third `=` is no group of its own, so a hostile name of
/// thousands of `=` adds no more index keys than a real one.
const PN_GROUPS: usize = 3;

/// A Person Name's component groups with their trailing `^` delimiters dropped, and the
/// trailing empty groups dropped (PS3.5 6.2.1 lets both be left out).
fn pn_groups(v: &str) -> Vec<&str> {
    let mut groups: Vec<&str> = v
        .splitn(PN_GROUPS, '=')
        .map(|g| g.trim_end_matches('^'))
        .collect();
    while groups.last().is_some_and(|g| g.is_empty()) {
        groups.pop();
    }
    groups
}

/// The shortest form of a Person Name: `Doe^John^^^` is `Doe^John`, `Doe^John==` is
/// `Doe^John` (case kept).
pub fn pn_shortest(v: &str) -> String {
    pn_groups(v).join("=")
}

/// Every form of a Person Name a query may match (upper case, padding trimmed): the name
/// as stored, each component group as stored, and each group and the whole name in their
/// shortest form. A name is indexed under all of them, so narrowing by name never drops a
/// study that C-FIND matching (`qr::matching`) accepts.
pub fn pn_forms(v: &str) -> Vec<String> {
    let v = nfc(&v
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_uppercase());
    let mut forms = vec![pn_shortest(&v)];
    forms.extend(pn_groups(&v).iter().map(|g| g.to_string()));
    forms.extend(v.splitn(PN_GROUPS, '=').map(str::to_string));
    forms.push(v);
    forms.retain(|f| !f.is_empty());
    forms.sort();
    forms.dedup();
    forms
}

/// `value` as a key holds it: a 0 byte ends a key's parts, so one inside a value (a sender
/// may put it there) is written 1,1 and a 1 byte 1,2. The escape keeps the order of values
/// and of their prefixes, so exact, prefix and range look-ups work on escaped values alike,
/// and no value can reach into the next part of a key.
fn escaped(value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        match b {
            0 => out.extend_from_slice(&[1, 1]),
            1 => out.extend_from_slice(&[1, 2]),
            b => out.push(b),
        }
    }
    out
}

fn key(kind: Kind, value: &str, study_uid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + study_uid.len() + 2);
    k.push(kind.byte());
    k.extend_from_slice(&escaped(value));
    k.push(0);
    k.extend_from_slice(study_uid.as_bytes());
    k
}

/// The key that places a study in C-FIND's response order: Patient ID, Study Date,
/// Study Time, Study Instance UID, as stored (a 0 byte inside a value escaped), each
/// ended by a 0 byte, so the keys sort as those four values do (a value that is a prefix of another sorts first, as
/// in a string comparison). Every study has one, whatever it lacks.
pub fn order_key(study: &StudyRecord) -> Vec<u8> {
    let mut k = vec![ORDER];
    for v in [&study.patient_id, &study.study_date, &study.study_time] {
        k.extend_from_slice(&escaped(v));
        k.push(0);
    }
    k.extend_from_slice(study.study_instance_uid.as_bytes());
    k
}

/// The order keys ([`order_key`]) in order, each with its Study Instance UID.
pub(super) fn in_order(
    tree: &sled::Tree,
) -> impl Iterator<Item = Result<(sled::IVec, String), sled::Error>> {
    tree.scan_prefix([ORDER]).filter_map(|kv| match kv {
        Ok((k, _)) => study_of(&k).map(|uid| Ok((k, uid))),
        Err(e) => Some(Err(e)),
    })
}

/// Every index key of a study record.
pub fn keys(study: &StudyRecord) -> BTreeSet<Vec<u8>> {
    std::iter::once(order_key(study))
        .chain(lookup_keys(study))
        .collect()
}

/// The look-up keys of a study record (its values that are not empty).
fn lookup_keys(study: &StudyRecord) -> impl Iterator<Item = Vec<u8>> + '_ {
    [
        Kind::PatientId,
        Kind::Accession,
        Kind::StudyDate,
        Kind::PatientName,
    ]
    .into_iter()
    .flat_map(move |kind| {
        values(study, kind)
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(move |v| key(kind, &v, &study.study_instance_uid))
    })
}

/// Inside a transaction: replaces the keys of `old` (if any) by those of `new`.
pub(super) fn update(
    tree: &TransactionalTree,
    old: Option<&StudyRecord>,
    new: &StudyRecord,
) -> Result<(), UnabortableTransactionError> {
    let new_keys = keys(new);
    if let Some(old) = old {
        for k in keys(old).difference(&new_keys) {
            tree.remove(k.as_slice())?;
        }
    }
    for k in new_keys {
        tree.insert(k, &[])?;
    }
    Ok(())
}

/// Rebuilds the whole tree from the study records (for a store written before it existed).
pub(super) fn rebuild<'a>(
    tree: &sled::Tree,
    studies: impl Iterator<Item = &'a StudyRecord>,
) -> Result<(), sled::Error> {
    tree.clear()?;
    for s in studies {
        for k in keys(s) {
            tree.insert(k, &[])?;
        }
    }
    Ok(())
}

/// The Study Instance UID a key belongs to: what follows its last 0 byte.
pub(super) fn study_of(k: &[u8]) -> Option<String> {
    let at = k.iter().rposition(|b| *b == 0)?;
    Some(String::from_utf8_lossy(&k[at + 1..]).into_owned())
}

/// Study UIDs whose `kind` value equals `value` exactly.
pub(super) fn exact(
    tree: &sled::Tree,
    kind: Kind,
    value: &str,
    max: usize,
) -> Result<Vec<String>, sled::Error> {
    let mut prefix = vec![kind.byte()];
    prefix.extend_from_slice(&escaped(value));
    prefix.push(0);
    scan(tree.scan_prefix(prefix), max)
}

/// Study UIDs whose `kind` value starts with `prefix`.
pub(super) fn prefixed(
    tree: &sled::Tree,
    kind: Kind,
    prefix: &str,
    max: usize,
) -> Result<Vec<String>, sled::Error> {
    let mut p = vec![kind.byte()];
    p.extend_from_slice(&escaped(prefix));
    scan(tree.scan_prefix(p), max)
}

/// Study UIDs whose `kind` value lies in `lo..=hi` (either bound open when empty).
pub(super) fn range(
    tree: &sled::Tree,
    kind: Kind,
    lo: &str,
    hi: &str,
    max: usize,
) -> Result<Vec<String>, sled::Error> {
    let mut start = vec![kind.byte()];
    start.extend_from_slice(&escaped(lo));
    let mut end = vec![kind.byte()];
    if hi.is_empty() {
        end = vec![kind.byte() + 1];
    } else {
        end.extend_from_slice(&escaped(hi));
        // Every key with value `hi` is `hi, 0, uid`, below `hi, 1`.
        end.push(1);
    }
    scan(tree.range(start..end), max)
}

/// The study UIDs of the keys `iter` walks, at most `max` of them (a caller that asks for
/// one more than it will use learns that there are more without holding them all).
fn scan(iter: sled::Iter, max: usize) -> Result<Vec<String>, sled::Error> {
    let mut out = Vec::new();
    for kv in iter {
        if out.len() >= max {
            break;
        }
        let (k, _) = kv?;
        if let Some(uid) = study_of(&k) {
            out.push(uid);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study(uid: &str, pid: &str, date: &str, name: &str) -> StudyRecord {
        StudyRecord {
            study_instance_uid: uid.into(),
            patient_id: pid.into(),
            study_date: date.into(),
            patient_name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn lookups_by_exact_prefix_and_range() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TREE).unwrap();
        let all = [
            study("1.1", "P1", "20240101", "Doe^John"),
            study("1.2", "P1", "20240315", "Doe^John"),
            study("1.3", "P10", "20241231", "Dorian^Gray"),
        ];
        rebuild(&tree, all.iter()).unwrap();
        assert_eq!(
            exact(&tree, Kind::PatientId, "P1", usize::MAX).unwrap(),
            ["1.1", "1.2"]
        );
        assert_eq!(
            exact(&tree, Kind::PatientId, "P10", usize::MAX).unwrap(),
            ["1.3"]
        );
        assert_eq!(
            prefixed(&tree, Kind::PatientName, "DO", usize::MAX)
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            range(&tree, Kind::StudyDate, "20240201", "20241231", usize::MAX).unwrap(),
            ["1.2", "1.3"]
        );
        assert_eq!(
            range(&tree, Kind::StudyDate, "", "20240315", usize::MAX).unwrap(),
            ["1.1", "1.2"]
        );
        assert_eq!(
            range(&tree, Kind::StudyDate, "20240316", "", usize::MAX).unwrap(),
            ["1.3"]
        );
    }

    /// A name is found under its shortest form and under each component group, as the
    /// C-FIND matcher compares it (a narrowing that dropped such a study lost a match).
    #[test]
    fn names_are_indexed_in_shortest_form_and_per_component_group() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TREE).unwrap();
        let all = [
            study("2.1", "P1", "20240101", "Doe^John^^^"),
            study("2.2", "P2", "20240101", "Hong^Gildong=洪^吉洞=홍^길동"),
        ];
        rebuild(&tree, all.iter()).unwrap();
        let exact = |v: &str| exact(&tree, Kind::PatientName, v, usize::MAX).unwrap();
        assert_eq!(exact("DOE^JOHN"), ["2.1"]);
        assert_eq!(exact("DOE^JOHN^^^"), ["2.1"]);
        assert_eq!(exact("HONG^GILDONG"), ["2.2"]);
        assert_eq!(exact("洪^吉洞"), ["2.2"]);
        assert_eq!(exact("홍^길동"), ["2.2"]);
        assert_eq!(exact("HONG^GILDONG=洪^吉洞=홍^길동"), ["2.2"]);
        let prefixed = |p: &str| prefixed(&tree, Kind::PatientName, p, usize::MAX).unwrap();
        assert!(prefixed("洪").contains(&"2.2".to_string()));
        assert!(prefixed("DOE^JOHN^").contains(&"2.1".to_string()));
        assert_eq!(pn_shortest("Doe^John^^=="), "Doe^John");
        // At most three groups: a name of 10,000 `=` has no more forms than a real one.
        let hostile = format!("Doe^John={}", "x=".repeat(10_000));
        assert!(
            pn_forms(&hostile).len() <= 7,
            "{}",
            pn_forms(&hostile).len()
        );
        assert!(pn_forms(&hostile).contains(&"DOE^JOHN".to_string()));
    }

    /// A name or ID sent decomposed is indexed as the composed one a query brings.
    #[test]
    fn values_are_indexed_in_nfc() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TREE).unwrap();
        let all = [study(
            "2.1",
            "Pe\u{301}",
            "20240101",
            "Mu\u{308}ller^Jo\u{308}rg",
        )];
        rebuild(&tree, all.iter()).unwrap();
        assert_eq!(
            exact(
                &tree,
                Kind::PatientName,
                "M\u{dc}LLER^J\u{d6}RG",
                usize::MAX
            )
            .unwrap(),
            ["2.1"]
        );
        assert_eq!(
            exact(&tree, Kind::PatientId, "P\u{e9}", usize::MAX).unwrap(),
            ["2.1"]
        );
        assert!(prefixed(&tree, Kind::PatientName, "M\u{dc}L", usize::MAX)
            .unwrap()
            .contains(&"2.1".to_string()));
    }
}
