//! Reads the header of a stored Part 10 file (everything before Pixel Data) into the index
//! records. Text is decoded per Specific Character Set (dicom-rs does this while parsing,
//! [`crate::iso2022`] where code extensions switch sets within a value), so Latin-1, UTF-8
//! and ISO 2022 Japanese, Korean or Chinese names reach the index as UTF-8.

use crate::model::{InstanceRecord, StudyRecord};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use std::path::Path;

/// Manufacturer (0008,0070) of the objects this box generates (SR, SC), by which a rebuilt
/// index still knows them.
pub const GENERATED_BY: &str = "DULI Edge";

/// Why a file's header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Refused before parsing: nested too deep, lengths beyond the data (see
    /// [`crate::dataset_guard`]).
    #[error("data set refused: {0}")]
    Refused(#[from] crate::dataset_guard::GuardError),
    /// Not a parseable DICOM file.
    #[error("cannot parse DICOM data: {0}")]
    Parse(String),
    /// A required attribute is missing or empty.
    #[error("required attribute {0} is missing or empty")]
    Missing(&'static str),
    /// A unique identifier that is not a UID (digits and dots, at most 64 characters).
    #[error("{0} is not a valid UID: {1:?}")]
    InvalidUid(&'static str, String),
    /// A text attribute far longer than its value representation allows: it would become an
    /// index key and travel into the console, HL7 and the results.
    #[error("{0} holds {1} bytes, over the {MAX_TEXT} any value of it may have")]
    TooLong(&'static str, usize),
}

/// Most bytes a text attribute the store keeps may hold once decoded: well above what its
/// value representation allows (a Person Name's three groups of 64 characters in any
/// character set, a Long String's 64), so lenient modalities pass and only abuse is refused.
pub const MAX_TEXT: usize = 1024;

/// Whether `uid` can be a UID (PS3.5 §9.1): 1 to 64 characters, digits and dots only.
/// Components with leading zeros, which some modalities write, are let through.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn valid(name: &'static str, uid: &str) -> Result<(), HeaderError> {
    if is_valid_uid(uid) {
        Ok(())
    } else {
        Err(HeaderError::InvalidUid(
            name,
            uid.chars().take(80).collect(),
        ))
    }
}

/// Most distinct modalities a study record lists (Modalities in Study, the report's
/// `modalities`); further ones are logged and left out.
pub const MAX_STUDY_MODALITIES: usize = 16;

/// Whether `m` is a Modality value a study record keeps: a Code String (PS3.5 §6.2) of 1 to
/// 16 characters, upper-case letters, digits, space and underscore, already trimmed.
pub fn is_valid_modality(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 16
        && m.trim() == m
        && m.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'_')
}

/// Adds `m` to `list` if it is a valid Modality value not yet listed and the list has
/// room ([`MAX_STUDY_MODALITIES`]); logs what it leaves out.
fn add_modality(list: &mut Vec<String>, m: &str, study: &str) {
    if list.iter().any(|x| x == m) {
        return;
    }
    if !is_valid_modality(m) {
        log::warn!(
            "study {study}: Modality {:?} ({} bytes) is not a valid code string; not listed",
            m.chars().take(20).collect::<String>(),
            m.len()
        );
    } else if list.len() >= MAX_STUDY_MODALITIES {
        log::warn!("study {study}: more than {MAX_STUDY_MODALITIES} modalities; {m:?} not listed");
    } else {
        list.push(m.to_string());
    }
}

/// What the index needs from one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The instance's record (path, size and times are filled in by the caller).
    pub instance: InstanceRecord,
    /// The patient/study attributes of the instance's study.
    pub study: StudyRecord,
    /// The identifying element the data set itself lacks, whose value was taken from the
    /// file meta (Media Storage SOP Instance or Class UID): acceptable in a file read back,
    /// not in a C-STORE, whose meta this box wrote from the command.
    pub identity_from_meta: Option<&'static str>,
}

/// Opens the Part 10 file at `path` up to its pixels: reading stops at the first pixel data
/// element of any kind (Float Pixel Data (7FE0,0008) and Double Float Pixel Data
/// (7FE0,0009) come before Pixel Data (7FE0,0010)), so no pixel value, whatever its size,
/// is loaded with the header. Every header read of a stored file goes through it, after
/// the bounded pre-scan ([`crate::dataset_guard::check_file`]).
pub fn open_header(path: &Path) -> Result<DefaultDicomObject, dicom_object::ReadError> {
    OpenFileOptions::new()
        .read_until(tags::FLOAT_PIXEL_DATA)
        .open_file(path)
}

/// [`open_header`] of a Part 10 stream (preamble optional, as the pre-scan allows), read
/// from where it stands.
pub fn header_from<R: std::io::Read>(
    source: R,
) -> Result<DefaultDicomObject, dicom_object::ReadError> {
    OpenFileOptions::new()
        .read_until(tags::FLOAT_PIXEL_DATA)
        .from_reader(source)
}

/// Parses the header of the Part 10 file at `path`, after the bounded pre-scan.
pub fn read_header(path: &Path) -> Result<Header, HeaderError> {
    crate::dataset_guard::check_file(path)?;
    let obj = open_header(path).map_err(|e| HeaderError::Parse(e.to_string()))?;
    from_object(&obj)
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    let declared = crate::iso2022::declared(obj);
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| crate::iso2022::text_of(declared.as_deref(), e))
        .map(|s| clean(&s))
        .unwrap_or_default()
}

/// Trims DICOM padding (spaces and NULs) from a text value.
fn clean(s: &str) -> String {
    s.trim_matches(|c: char| c == ' ' || c == '\0').to_string()
}

fn int(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<i64> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<i64>().ok())
}

fn from_object(obj: &DefaultDicomObject) -> Result<Header, HeaderError> {
    let meta = obj.meta();
    let mut identity_from_meta = None;
    let sop_instance_uid = {
        let v = text(obj, tags::SOP_INSTANCE_UID);
        if v.is_empty() {
            identity_from_meta = Some("SOP Instance UID (0008,0018)");
            clean(&meta.media_storage_sop_instance_uid)
        } else {
            v
        }
    };
    let sop_class_uid = {
        let v = text(obj, tags::SOP_CLASS_UID);
        if v.is_empty() {
            identity_from_meta = identity_from_meta.or(Some("SOP Class UID (0008,0016)"));
            clean(&meta.media_storage_sop_class_uid)
        } else {
            v
        }
    };
    let study_instance_uid = text(obj, tags::STUDY_INSTANCE_UID);
    let series_instance_uid = text(obj, tags::SERIES_INSTANCE_UID);
    if sop_instance_uid.is_empty() {
        return Err(HeaderError::Missing("SOP Instance UID (0008,0018)"));
    }
    if sop_class_uid.is_empty() {
        return Err(HeaderError::Missing("SOP Class UID (0008,0016)"));
    }
    if study_instance_uid.is_empty() {
        return Err(HeaderError::Missing("Study Instance UID (0020,000D)"));
    }
    if series_instance_uid.is_empty() {
        return Err(HeaderError::Missing("Series Instance UID (0020,000E)"));
    }
    valid("SOP Instance UID (0008,0018)", &sop_instance_uid)?;
    valid("SOP Class UID (0008,0016)", &sop_class_uid)?;
    valid("Study Instance UID (0020,000D)", &study_instance_uid)?;
    valid("Series Instance UID (0020,000E)", &series_instance_uid)?;
    let modality = text(obj, tags::MODALITY);
    let instance = InstanceRecord {
        sop_instance_uid,
        sop_class_uid,
        study_instance_uid: study_instance_uid.clone(),
        series_instance_uid,
        transfer_syntax: clean(&meta.transfer_syntax),
        modality: modality.clone(),
        series_number: int(obj, tags::SERIES_NUMBER),
        instance_number: int(obj, tags::INSTANCE_NUMBER),
        series_description: text(obj, tags::SERIES_DESCRIPTION),
        body_part: text(obj, tags::BODY_PART_EXAMINED),
        view_position: text(obj, tags::VIEW_POSITION),
        rows: int(obj, tags::ROWS).and_then(|v| u32::try_from(v).ok()),
        generated: text(obj, tags::MANUFACTURER) == GENERATED_BY,
        columns: int(obj, tags::COLUMNS).and_then(|v| u32::try_from(v).ok()),
        ..Default::default()
    };
    let mut study = StudyRecord {
        study_instance_uid,
        patient_id: text(obj, tags::PATIENT_ID),
        patient_name: text(obj, tags::PATIENT_NAME),
        patient_birth_date: text(obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(obj, tags::PATIENT_SEX),
        issuer_of_patient_id: text(obj, tags::ISSUER_OF_PATIENT_ID),
        accession_number: text(obj, tags::ACCESSION_NUMBER),
        study_date: text(obj, tags::STUDY_DATE),
        study_time: text(obj, tags::STUDY_TIME),
        study_description: text(obj, tags::STUDY_DESCRIPTION),
        study_id: text(obj, tags::STUDY_ID),
        referring_physician: text(obj, tags::REFERRING_PHYSICIAN_NAME),
        ..Default::default()
    };
    for (name, value) in [
        ("Modality (0008,0060)", &instance.modality),
        (
            "Series Description (0008,103E)",
            &instance.series_description,
        ),
        ("Body Part Examined (0018,0015)", &instance.body_part),
        ("View Position (0018,5101)", &instance.view_position),
        ("Patient ID (0010,0020)", &study.patient_id),
        ("Patient's Name (0010,0010)", &study.patient_name),
        (
            "Patient's Birth Date (0010,0030)",
            &study.patient_birth_date,
        ),
        ("Patient's Sex (0010,0040)", &study.patient_sex),
        (
            "Issuer of Patient ID (0010,0021)",
            &study.issuer_of_patient_id,
        ),
        ("Accession Number (0008,0050)", &study.accession_number),
        ("Study Date (0008,0020)", &study.study_date),
        ("Study Time (0008,0030)", &study.study_time),
        ("Study Description (0008,1030)", &study.study_description),
        ("Study ID (0020,0010)", &study.study_id),
        (
            "Referring Physician's Name (0008,0090)",
            &study.referring_physician,
        ),
    ] {
        if value.len() > MAX_TEXT {
            return Err(HeaderError::TooLong(name, value.len()));
        }
    }
    if !modality.is_empty() {
        add_modality(&mut study.modalities, &modality, &study.study_instance_uid);
    }
    Ok(Header {
        instance,
        study,
        identity_from_meta,
    })
}

/// Merges one instance's study attributes `from` into the study record `into`; returns true
/// when `from` replaced the patient identity the study had.
///
/// The patient identity (Patient ID, name, birth date, sex) moves as one group, never field
/// by field, so a study never shows one patient's ID beside another's name: an instance with
/// a non-empty Patient ID other than the study's replaces the whole group (the newest
/// identity wins: a modality or PACS resends a study after correcting its patient), and one
/// with the same or no Patient ID only fills the group's gaps. The study's own attributes
/// keep their first non-empty value; the modality lists are merged (valid values only, at
/// most [`MAX_STUDY_MODALITIES`]).
pub fn merge_study(into: &mut StudyRecord, from: &StudyRecord) -> bool {
    let mut replaced = false;
    if !from.patient_id.is_empty() && from.patient_id != into.patient_id {
        replaced = !into.patient_id.is_empty();
        into.patient_id.clone_from(&from.patient_id);
        into.patient_name.clone_from(&from.patient_name);
        into.patient_birth_date.clone_from(&from.patient_birth_date);
        into.patient_sex.clone_from(&from.patient_sex);
        into.issuer_of_patient_id
            .clone_from(&from.issuer_of_patient_id);
    } else if from.patient_id == into.patient_id {
        fill_gaps([
            (&mut into.patient_name, &from.patient_name),
            (&mut into.patient_birth_date, &from.patient_birth_date),
            (&mut into.patient_sex, &from.patient_sex),
            (&mut into.issuer_of_patient_id, &from.issuer_of_patient_id),
        ]);
    }
    fill_study_attributes(into, from);
    replaced
}

/// Fills the gaps of `into` (a study as its files give it) from `from` (the index's
/// record of it) without ever replacing a value: the patient identity is taken whole
/// when `into` has none at all, its gaps filled when both name the same Patient ID; the
/// study's own attributes fill empty ones; the modality lists are merged.
pub fn fill_study_gaps(into: &mut StudyRecord, from: &StudyRecord) {
    let no_identity = [
        &into.patient_id,
        &into.patient_name,
        &into.patient_birth_date,
        &into.patient_sex,
    ]
    .iter()
    .all(|v| v.is_empty());
    if no_identity || into.patient_id == from.patient_id {
        fill_gaps([
            (&mut into.patient_id, &from.patient_id),
            (&mut into.patient_name, &from.patient_name),
            (&mut into.patient_birth_date, &from.patient_birth_date),
            (&mut into.patient_sex, &from.patient_sex),
            (&mut into.issuer_of_patient_id, &from.issuer_of_patient_id),
        ]);
    }
    fill_study_attributes(into, from);
}

/// Fills the study's own empty attributes from `from` and merges the modality lists.
fn fill_study_attributes(into: &mut StudyRecord, from: &StudyRecord) {
    fill_gaps([
        (&mut into.accession_number, &from.accession_number),
        (&mut into.study_date, &from.study_date),
        (&mut into.study_time, &from.study_time),
        (&mut into.study_description, &from.study_description),
        (&mut into.study_id, &from.study_id),
        (&mut into.referring_physician, &from.referring_physician),
    ]);
    for m in &from.modalities {
        add_modality(&mut into.modalities, m, &into.study_instance_uid);
    }
}

/// Sets each empty target to its non-empty source.
fn fill_gaps<const N: usize>(pairs: [(&mut String, &String); N]) {
    for (a, b) in pairs {
        if a.is_empty() && !b.is_empty() {
            a.clone_from(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset_guard::{fixtures, GuardError};

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

    /// A Part 10 file of SOP class `class`, instance 1.2.3.4, around the explicit VR LE
    /// data set `ds`.
    fn part10(class: &str, ds: &[u8]) -> Vec<u8> {
        fixtures::part10_with_meta(class, "1.2.3.4", EXPLICIT_LE, ds)
    }

    #[test]
    fn uids_that_could_name_paths_are_refused() {
        assert!(is_valid_uid("1.2.840.10008.5.1.4.1.1.1.1"));
        assert!(is_valid_uid("1.2.03.4"));
        for bad in [
            "",
            "../../etc",
            "1.2.3/4",
            "1.2.3.4 ",
            &"1".repeat(65),
            "1.2.x",
        ] {
            assert!(!is_valid_uid(bad), "{bad:?}");
        }
    }

    /// PS3.5 Annex H.3.1 and I.2: Japanese and Korean names in ISO 2022 code extensions
    /// reach the index as Unicode, not as escape sequences and raw bytes.
    #[test]
    fn names_in_iso_2022_code_extensions_are_indexed_as_unicode() {
        let dir = tempfile::tempdir().unwrap();
        for (charset, name, expected) in [
            (
                &b"\\ISO 2022 IR 87 "[..],
                &b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"[..],
                "Yamada^Tarou=山田^太郎=やまだ^たろう",
            ),
            (
                b"\\ISO 2022 IR 149",
                b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf",
                "Hong^Gildong=洪^吉洞=홍^길동",
            ),
        ] {
            let mut name = name.to_vec();
            if name.len() % 2 == 1 {
                name.push(b' ');
            }
            let mut ds = fixtures::short(0x0008, 0x0005, b"CS", charset);
            ds.extend(fixtures::short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.1\0"));
            ds.extend(fixtures::short(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
            ds.extend(fixtures::short(0x0010, 0x0010, b"PN", &name));
            ds.extend(fixtures::short(0x0020, 0x000D, b"UI", b"1.2.3\0"));
            ds.extend(fixtures::short(0x0020, 0x000E, b"UI", b"1.2.3.5\0"));
            let path = dir.path().join("names.dcm");
            std::fs::write(&path, part10("1.2.840.10008.5.1.4.1.1.1", &ds)).unwrap();
            let h = read_header(&path).unwrap();
            assert_eq!(h.study.patient_name, expected);
        }
    }

    /// A stored file that carries Float Pixel Data (a peer's, or our Parametric Map): the
    /// header read stops before it, whatever its size, and the file is indexed; with more
    /// float bytes than the header budget the pre-scan refuses it before any parse.
    #[test]
    fn float_pixel_data_is_not_read_with_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let mut ds = fixtures::short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.30\0");
        ds.extend(fixtures::short(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
        ds.extend(fixtures::short(0x0020, 0x000D, b"UI", b"1.2.3\0"));
        ds.extend(fixtures::short(0x0020, 0x000E, b"UI", b"1.2.3.5\0"));
        let floats = 1024 * 1024;
        ds.extend(fixtures::long_header(0x7FE0, 0x0008, b"OF", floats * 4));
        ds.extend(vec![0u8; floats as usize * 4]);
        let path = dir.path().join("float.dcm");
        std::fs::write(&path, part10("1.2.840.10008.5.1.4.1.1.30", &ds)).unwrap();
        let header = open_header(&path).unwrap();
        assert!(header
            .element_opt(tags::FLOAT_PIXEL_DATA)
            .unwrap()
            .is_none());
        assert!(header
            .element_opt(tags::SERIES_INSTANCE_UID)
            .unwrap()
            .is_some());
        let h = read_header(&path).unwrap();
        assert_eq!(h.instance.sop_instance_uid, "1.2.3.4");

        // Float values past the header budget: refused by the pre-scan.
        let over = (crate::dataset_guard::MAX_HEADER_BYTES / 4 + 1) as u32;
        let mut big = ds[..ds.len() - floats as usize * 4 - 12].to_vec();
        big.extend(fixtures::long_header(0x7FE0, 0x0008, b"OF", over * 4));
        big.extend(vec![0u8; over as usize * 4]);
        std::fs::write(&path, part10("1.2.840.10008.5.1.4.1.1.30", &big)).unwrap();
        assert!(matches!(read_header(&path), Err(HeaderError::Refused(_))));
    }

    /// Modality is a Code String of at most 16 characters; a study lists at most
    /// [`MAX_STUDY_MODALITIES`] of them, so an instance cannot inflate the report.
    #[test]
    fn study_modalities_are_valid_code_strings_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let long = "X".repeat(MAX_TEXT);
        let mut ds = fixtures::short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.1\0");
        ds.extend(fixtures::short(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
        ds.extend(fixtures::short(0x0008, 0x0060, b"CS", long.as_bytes()));
        ds.extend(fixtures::short(0x0020, 0x000D, b"UI", b"1.2.3\0"));
        ds.extend(fixtures::short(0x0020, 0x000E, b"UI", b"1.2.3.5\0"));
        let path = dir.path().join("modality.dcm");
        std::fs::write(&path, part10("1.2.840.10008.5.1.4.1.1.1", &ds)).unwrap();
        let h = read_header(&path).unwrap();
        assert!(h.study.modalities.is_empty(), "{:?}", h.study.modalities);

        let mut study = StudyRecord {
            study_instance_uid: "1.2.3".into(),
            modalities: vec!["DX".into()],
            ..Default::default()
        };
        let from = |m: &str| StudyRecord {
            modalities: vec![m.to_string()],
            ..Default::default()
        };
        for bad in [
            long.as_str(),
            "dx",
            "CR\\DX",
            "ABCDEFGHIJKLMNOPQ",
            " DX",
            "DX",
        ] {
            merge_study(&mut study, &from(bad));
        }
        assert_eq!(study.modalities, ["DX"]);
        merge_study(&mut study, &from("CR"));
        for i in 0..40 {
            merge_study(&mut study, &from(&format!("M{i}")));
        }
        assert_eq!(study.modalities.len(), MAX_STUDY_MODALITIES);
        assert_eq!(study.modalities[..3], ["DX", "CR", "M0"]);
        assert!(study.modalities.iter().all(|m| is_valid_modality(m)));
        assert!(is_valid_modality("OT") && is_valid_modality("SEG_16 CHARS_XYZ"));
    }

    /// A text attribute far over what its value representation allows (a 10 MB Patient ID,
    /// a Person Name of three 10 kB groups) is refused with its name, not indexed and sent
    /// on to the console, HL7 and the results.
    #[test]
    fn text_attributes_far_over_their_size_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (group, element, vr, name) in [
            (0x0010, 0x0020, b"LO", "Patient ID"),
            (0x0010, 0x0010, b"PN", "Patient's Name"),
            (0x0008, 0x0050, b"SH", "Accession Number"),
            (0x0008, 0x1030, b"LO", "Study Description"),
        ] {
            let mut ds = fixtures::short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.1\0");
            ds.extend(fixtures::short(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
            let value = "A|".repeat(MAX_TEXT / 2 + 1);
            let mut with = ds.clone();
            with.extend(fixtures::short(group, element, vr, value.as_bytes()));
            with.extend(fixtures::short(0x0020, 0x000D, b"UI", b"1.2.3\0"));
            with.extend(fixtures::short(0x0020, 0x000E, b"UI", b"1.2.3.5\0"));
            let path = dir.path().join("long.dcm");
            std::fs::write(&path, part10("1.2.840.10008.5.1.4.1.1.1", &with)).unwrap();
            match read_header(&path) {
                Err(e @ HeaderError::TooLong(..)) => {
                    assert!(e.to_string().contains(name), "{e}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_patient_identity_moves_as_one_group_and_the_newest_wins() {
        let person = |id: &str, name: &str, birth: &str| StudyRecord {
            patient_id: id.into(),
            patient_name: name.into(),
            patient_birth_date: birth.into(),
            study_description: format!("from {id}"),
            ..Default::default()
        };
        // The first instance has no name: a later one of the same patient fills it in.
        let mut study = person("TMP1", "", "");
        assert!(!merge_study(&mut study, &person("TMP1", "Doe^Jane", "")));
        assert_eq!(study.patient_name, "Doe^Jane");
        // No Patient ID: nothing of its patient group is taken.
        assert!(!merge_study(
            &mut study,
            &person("", "Roe^Rick", "19500101")
        ));
        assert_eq!(
            (
                study.patient_name.as_str(),
                study.patient_birth_date.as_str()
            ),
            ("Doe^Jane", "")
        );
        // A corrected identity replaces the whole group; the study's own fields stay.
        assert!(merge_study(&mut study, &person("MRN9", "Doe^Janet", "")));
        assert_eq!(
            (
                study.patient_id.as_str(),
                study.patient_name.as_str(),
                study.patient_birth_date.as_str(),
                study.study_description.as_str()
            ),
            ("MRN9", "Doe^Janet", "", "from TMP1")
        );
        // A study that had no Patient ID takes the first one without calling it a change.
        let mut study = person("", "Nobody^Known", "");
        assert!(!merge_study(
            &mut study,
            &person("P1", "Smith^Ann", "19800101")
        ));
        assert_eq!(
            (study.patient_id.as_str(), study.patient_name.as_str()),
            ("P1", "Smith^Ann")
        );
    }

    #[test]
    fn hostile_files_are_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        // 2,000 levels overflowed a worker's stack in the recursive parser.
        let deep = dir.path().join("deep.dcm");
        std::fs::write(
            &deep,
            fixtures::part10(EXPLICIT_LE, &fixtures::nested(2000)),
        )
        .unwrap();
        assert!(matches!(
            read_header(&deep),
            Err(HeaderError::Refused(GuardError::TooDeep { .. }))
        ));
        // A 30-byte lie made the parser allocate and zero 4 GiB.
        let lie = dir.path().join("lie.dcm");
        std::fs::write(&lie, fixtures::part10(EXPLICIT_LE, &fixtures::ut_lie())).unwrap();
        let err = read_header(&lie).unwrap_err();
        assert!(
            matches!(
                err,
                HeaderError::Refused(GuardError::LengthBeyondData { .. })
            ),
            "{err}"
        );
    }
}
