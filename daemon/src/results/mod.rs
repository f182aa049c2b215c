//! The DICOM result objects of a study result: a Comprehensive SR holding a TID 1500
//! measurement report of the findings ([`sr`]), the heatmap as a Parametric Map a viewer
//! overlays itself ([`parametric_map`]) and a Secondary Capture with the heatmap burned in
//! ([`sc`], drawn by [`overlay`]), each in its own series, with UIDs derived from the
//! report id ([`uids`]) and the patient, study and equipment attributes of the report
//! ([`attributes`]); the SR's content items come from [`content`]. They are stored and
//! indexed exactly like received instances, so the Q/R SCP serves them and the outbox
//! pushes them to PACS. When a study is given to another patient, the objects made for
//! the former one are withdrawn by an IOCM rejection note ([`rejection`]).

pub mod attributes;
pub mod content;
pub mod overlay;
pub mod parametric_map;
pub mod rejection;
pub mod sc;
pub mod sr;
pub mod uids;

use crate::model::InstanceRecord;
use crate::store::outbox::Batch;
use crate::store::{header, Store, StoreError};
use dicom_object::{FileDicomObject, InMemDicomObject};

/// The AE title recorded as the source of objects this box generates.
pub const SOURCE_AE: &str = "DULI";

/// Errors building or storing a result object.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// The object could not be assembled or encoded.
    #[error("cannot build the result object: {0}")]
    Build(String),
    /// Writing it failed.
    #[error("cannot write the result object: {0}")]
    Io(#[from] std::io::Error),
    /// The written object does not read back.
    #[error("the result object does not read back: {0}")]
    Header(#[from] header::HeaderError),
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Wraps a data set as a Part 10 object of `sop_class` / `sop_instance` in
/// `transfer_syntax`, with this box's implementation class and version.
pub fn with_meta(
    obj: InMemDicomObject,
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
) -> Result<FileDicomObject<InMemDicomObject>, ResultsError> {
    let meta = dicom_object::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(crate::ul::negotiate::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::ul::negotiate::IMPLEMENTATION_VERSION);
    obj.with_meta(meta)
        .map_err(|e| ResultsError::Build(e.to_string()))
}

/// Puts 8-bit pixel data (OB, padded to an even length).
pub fn put_pixels_8bit(obj: &mut InMemDicomObject, mut pixels: Vec<u8>) {
    if pixels.len() % 2 == 1 {
        pixels.push(0);
    }
    obj.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::PIXEL_DATA,
        dicom_core::VR::OB,
        dicom_core::PrimitiveValue::from(pixels),
    ));
}

/// Writes `obj` as a Part 10 file into the store and indexes it (durable after the store's
/// next flush). Blocking: call from a blocking context.
pub fn store_object(
    store: &Store,
    obj: &FileDicomObject<InMemDicomObject>,
) -> Result<InstanceRecord, ResultsError> {
    write_object(store, obj, SOURCE_AE, true, &[])
}

/// [`store_object`], committing `batches` (the object's push entries) in the same index
/// transaction.
pub fn store_object_with(
    store: &Store,
    obj: &FileDicomObject<InMemDicomObject>,
    batches: &[Batch],
) -> Result<InstanceRecord, ResultsError> {
    write_object(store, obj, SOURCE_AE, true, batches)
}

/// Writes `obj` into the store like [`store_object`], recorded as coming from
/// `source_ae`; `generated` marks objects this box made (they do not reopen the study).
pub fn store_as(
    store: &Store,
    obj: &FileDicomObject<InMemDicomObject>,
    source_ae: &str,
    generated: bool,
) -> Result<InstanceRecord, ResultsError> {
    write_object(store, obj, source_ae, generated, &[])
}

/// Writes the rejection note `note` into the store like [`store_object`], withdrawing the
/// generated objects `rejects` (SOP Instance UIDs) of its study in the same transaction
/// ([`Store::place_rejection_note`]).
pub fn store_rejection_note(
    store: &Store,
    note: &FileDicomObject<InMemDicomObject>,
    rejects: &[String],
) -> Result<InstanceRecord, ResultsError> {
    let (staged, header) = stage(store, note)?;
    Ok(store.place_rejection_note(staged, &header, SOURCE_AE, rejects)?)
}

fn write_object(
    store: &Store,
    obj: &FileDicomObject<InMemDicomObject>,
    source_ae: &str,
    generated: bool,
    batches: &[Batch],
) -> Result<InstanceRecord, ResultsError> {
    let (staged, header) = stage(store, obj)?;
    Ok(store
        .place_and_commit(staged, &header, source_ae, generated, batches)?
        .0)
}

/// Encodes `obj` into a synced file of the store's incoming area and reads its header back.
fn stage(
    store: &Store,
    obj: &FileDicomObject<InMemDicomObject>,
) -> Result<(crate::store::files::StagedFile, header::Header), ResultsError> {
    let mut bytes = Vec::with_capacity(64 * 1024);
    obj.write_all(&mut bytes)
        .map_err(|e| ResultsError::Build(e.to_string()))?;
    let mut file = store.files().incoming()?;
    file.write(&bytes)?;
    let staged = file.finish()?;
    let header = header::read_header(staged.path())?;
    Ok((staged, header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    fn tool(name: &str) -> Option<std::path::PathBuf> {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| std::path::Path::new(d).join(name))
            .find(|p| p.is_file())
    }

    /// A store in a temporary folder, the fixture report and its result UIDs.
    fn fixture() -> (
        tempfile::TempDir,
        Store,
        crate::report::Report,
        uids::ResultUids,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let report = fixtures::report();
        let key = crate::site_secret::SiteSecret::from_bytes(&[6u8; 32]);
        let uids = uids::ResultUids::new("2.25.", &report.report_id, &key, "edge-01");
        (dir, store, report, uids)
    }

    /// The map takes its source's Frame of Reference UID only when that is one valid UID;
    /// otherwise (several values, too long, not digits and dots) it carries its own.
    #[test]
    fn the_parametric_map_takes_only_a_valid_frame_of_reference_from_its_source() {
        use dicom_dictionary_std::tags;
        let (_dir, _store, report, uids) = fixture();
        let grid = parametric_map::Grid {
            width: 1,
            height: 1,
            values: vec![0.5],
        };
        let long = format!("1.{}", "2".repeat(78));
        for (source_for, expected) in [
            (Some("1.2.x"), uids.frame_of_reference.as_str()),
            (Some("1.2.3\\1.2.4"), uids.frame_of_reference.as_str()),
            (Some(long.as_str()), uids.frame_of_reference.as_str()),
            (Some(""), uids.frame_of_reference.as_str()),
            (None, uids.frame_of_reference.as_str()),
            (Some("1.2.3.4"), "1.2.3.4"),
        ] {
            let source = parametric_map::Source {
                sop_class: "1.2.840.10008.5.1.4.1.1.1.1".into(),
                sop_instance: "1.2.826.0.1.3680043.8.498.1.1.1".into(),
                series: "1.2.826.0.1.3680043.8.498.1.1".into(),
                rows: 1,
                columns: 1,
                frame_of_reference: source_for.map(String::from),
                ..Default::default()
            };
            let pm = parametric_map::build(&report, &uids, &source, &grid, "BOX-1").unwrap();
            let carried = pm
                .element(tags::FRAME_OF_REFERENCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_string();
            assert_eq!(carried, expected, "source {source_for:?}");
        }
    }

    /// The Parametric Map keeps the saliency as 32-bit floats (clamped to 0–1, a value that
    /// is not a number written as 0), carries none of integer Pixel Data's attributes, and
    /// is stored and indexed like the other result objects (the header reader stops at the
    /// Float Pixel Data), and is re-encoded for a retrieve in Implicit VR Little Endian with
    /// the same values.
    #[test]
    fn the_parametric_map_keeps_the_saliency_as_floats_and_is_indexed() {
        use dicom_dictionary_std::tags;
        let (_dir, store, report, uids) = fixture();
        let source = parametric_map::Source {
            sop_class: "1.2.840.10008.5.1.4.1.1.1.1".into(),
            sop_instance: "1.2.826.0.1.3680043.8.498.1.1.1".into(),
            series: "1.2.826.0.1.3680043.8.498.1.1".into(),
            rows: 2,
            columns: 3,
            pixel_spacing: Some((0.2, 0.2)),
            ..Default::default()
        };
        let grid = parametric_map::Grid {
            width: 3,
            height: 2,
            values: vec![0.0, 0.25, 1.0, f32::NAN, 1.5, -0.5],
        };
        let pm = parametric_map::build(&report, &uids, &source, &grid, "BOX-1").unwrap();
        let rec = store_object(&store, &pm).unwrap();
        assert_eq!(rec.sop_class_uid, parametric_map::PARAMETRIC_MAP);
        assert_eq!(rec.study_instance_uid, report.study.study_instance_uid);
        assert_eq!(store.instance_count(), 1);

        let back = dicom_object::open_file(store.root().join(&rec.path)).unwrap();
        let floats = back
            .element(tags::FLOAT_PIXEL_DATA)
            .unwrap()
            .to_multi_float32()
            .unwrap();
        assert_eq!(floats, [0.0, 0.25, 1.0, 0.0, 1.0, 0.0]);
        assert_eq!(
            back.element(tags::BITS_ALLOCATED)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            32
        );
        for absent in [
            tags::PIXEL_DATA,
            tags::BITS_STORED,
            tags::HIGH_BIT,
            tags::PIXEL_REPRESENTATION,
        ] {
            assert!(back.element_opt(absent).unwrap().is_none(), "{absent}");
        }
        // A retrieve by a peer that takes Implicit VR Little Endian only re-encodes it with
        // the same floats.
        let payload = crate::qr::payload::load(
            store.root(),
            &rec,
            crate::dimse::uids::IMPLICIT_VR_LITTLE_ENDIAN,
            crate::qr::payload::Limits {
                max_pixels: crate::config::DEFAULT_MAX_PIXELS,
                disk_reserve: 0,
            },
        )
        .unwrap();
        let crate::qr::payload::Payload::Transcoded(transcoded) = payload else {
            panic!("not re-encoded");
        };
        let bytes = std::fs::read(transcoded.path()).unwrap();
        assert_eq!(bytes.len() as u64, transcoded.len());
        let implicit = dicom_object::InMemDicomObject::read_dataset_with_ts(
            bytes.as_slice(),
            &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        let floats = implicit
            .element(tags::FLOAT_PIXEL_DATA)
            .unwrap()
            .to_multi_float32()
            .unwrap();
        assert_eq!(floats, [0.0, 0.25, 1.0, 0.0, 1.0, 0.0]);
    }

    /// The results carry the study's Issuer of Patient ID beside its Patient ID, and the
    /// store reads it back from a received header; without one, none is written.
    #[test]
    fn result_objects_carry_the_issuer_of_patient_id() {
        use dicom_dictionary_std::tags;
        let (_dir, _store, mut report, uids) = fixture();
        let issuer = |r: &crate::report::Report| {
            sr::build(r, &uids, &[], None)
                .unwrap()
                .element_opt(tags::ISSUER_OF_PATIENT_ID)
                .unwrap()
                .map(|e| e.to_str().unwrap().trim().to_string())
        };
        assert_eq!(issuer(&report), None);
        report.study.issuer_of_patient_id = "HOSP_A".into();
        assert_eq!(issuer(&report).as_deref(), Some("HOSP_A"));
        // Read from a received instance's header.
        let sr = sr::build(&report, &uids, &[], None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sr.dcm");
        sr.write_to_file(&path).unwrap();
        let h = crate::store::header::read_header(&path).unwrap();
        assert_eq!(h.study.issuer_of_patient_id, "HOSP_A");
    }

    #[test]
    fn sr_and_sc_are_stored_indexed_and_parse_with_dcmtk() {
        let (dir, store, report, uids) = fixture();
        let source = InstanceRecord {
            sop_instance_uid: "1.2.826.0.1.3680043.8.498.1.1.1".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1.1".into(),
            series_instance_uid: "1.2.826.0.1.3680043.8.498.1.1".into(),
            study_instance_uid: report.study.study_instance_uid.clone(),
            ..Default::default()
        };
        let sr = sr::build(&report, &uids, std::slice::from_ref(&source), None).unwrap();
        let sr_rec = store_object(&store, &sr).unwrap();
        let mut img = overlay::Rgb::from_gray(320, 240, &vec![90u8; 320 * 240]);
        overlay::blend_heatmap(&mut img, &[0.0, 1.0, 0.2, 0.6], 2, 2, 0.45, 0.2);
        overlay::annotate(&mut img, "PNEUMONIA 87%");
        let sc = sc::build(&report, &uids, &img).unwrap();
        let sc_rec = store_object(&store, &sc).unwrap();

        // Indexed like received instances, in the original study, in their own series.
        assert_eq!(sr_rec.modality, "SR");
        assert_eq!(sc_rec.modality, "OT");
        assert_eq!(sr_rec.study_instance_uid, report.study.study_instance_uid);
        assert_ne!(sr_rec.series_instance_uid, sc_rec.series_instance_uid);
        assert_eq!(
            store
                .instances_of(&report.study.study_instance_uid)
                .unwrap()
                .len(),
            2
        );
        let study = store
            .study(&report.study.study_instance_uid)
            .unwrap()
            .unwrap();
        assert_eq!(study.patient_name, "Conceição^João^Maria^Dr.^Jr.");
        // Generated objects do not reopen the study.
        store.force_state(
            &report.study.study_instance_uid,
            crate::model::StudyState::Done,
        );
        // Building again (a resend) replaces, never duplicates.
        store_object(&store, &sr::build(&report, &uids, &[source], None).unwrap()).unwrap();
        assert_eq!(store.instance_count(), 2);
        assert_eq!(
            store
                .study(&report.study.study_instance_uid)
                .unwrap()
                .unwrap()
                .state,
            crate::model::StudyState::Done
        );

        // A peer's object under another UID whose header claims to come from this box
        // (its Manufacturer): stored as the peer's. A rebuilt index asks the ledger of
        // what this box generated, not the header: ours stay ours, the forgery is not.
        let elsewhere = crate::site_secret::SiteSecret::from_bytes(&[9u8; 32]);
        let other = uids::ResultUids::new("2.25.", &report.report_id, &elsewhere, "edge-01");
        let forged = sc::build(&report, &other, &img).unwrap();
        let forged_uid = other.sc_instance.clone();
        let forged_rec = store_as(&store, &forged, "PEER", false).unwrap();
        assert!(!forged_rec.generated);
        store.reindex().unwrap();
        let generated = |uid: &str| store.instance(uid).unwrap().unwrap().generated;
        assert!(generated(&sr_rec.sop_instance_uid));
        assert!(generated(&sc_rec.sop_instance_uid));
        assert!(!generated(&forged_uid), "a header made the forgery ours");
        assert_eq!(store.instance_count(), 3);

        let (Some(dsrdump), Some(dcmdump)) = (tool("dsrdump"), tool("dcmdump")) else {
            crate::infer::testdata::skip("DCMTK absent, objects not parsed by a second reader");
            return;
        };
        let out = std::process::Command::new(dsrdump)
            .arg(dir.path().join(&sr_rec.path))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "dsrdump: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("Pneumonia"), "{text}");
        assert!(text.contains("Algorithm Name"), "{text}");
        assert!(
            text.contains("PRELIMINARY") || text.contains("Preliminary"),
            "{text}"
        );
        assert!(text.contains("0.873460"), "{text}");
        assert!(text.contains("Imaging Measurement Report"), "{text}");
        let out = std::process::Command::new(dcmdump)
            .arg(dir.path().join(&sc_rec.path))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "dcmdump failed");
        assert!(text.contains("(0028,0010) US 240"), "{text}");
        assert!(text.contains("(0028,0011) US 320"), "{text}");
        assert!(text.contains("RGB"), "{text}");
    }
}
