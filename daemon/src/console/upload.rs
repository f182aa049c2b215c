//! Manual uploads from the console: a DICOM Part 10 file, or a PNG/JPEG image wrapped as
//! a Secondary Capture marked as a chest radiograph (so the analysis stage takes it).
//!
//! An upload is never a patient's record: its Patient ID becomes `UPLOAD-<random>`, which
//! keeps its results away from the RIS, the cloud and the PACS
//! (`deliver::publish::is_manual_upload`), and it gets fresh Study, Series and SOP
//! Instance UIDs under `dicom.uid_root`, so it never joins or replaces a received study.

use crate::infer::eligibility::SC_UPLOAD_MARK;
use crate::results::sc::SECONDARY_CAPTURE;
use crate::results::uids::derive;
use crate::results::{put_pixels_8bit, with_meta};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject, OpenFileOptions};
use rand::Rng;

/// Largest upload accepted (bytes).
pub const MAX_UPLOAD: usize = 64 * 1024 * 1024;
/// Source AE title recorded on uploaded instances.
pub const UPLOAD_AE: &str = "UPLOAD";
/// Patient ID prefix of every upload.
pub const PATIENT_PREFIX: &str = "UPLOAD-";
/// Largest image side accepted for PNG/JPEG uploads.
const MAX_SIDE: u32 = 16_384;

/// Why an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// Nothing was sent.
    #[error("the file is empty")]
    Empty,
    /// Neither DICOM Part 10 nor PNG nor JPEG.
    #[error("not a DICOM Part 10 file, PNG or JPEG image")]
    UnknownFormat,
    /// A PNG/JPEG that does not decode.
    #[error("the {format} image cannot be read: {reason}")]
    BadImage {
        /// `PNG` or `JPEG`.
        format: &'static str,
        /// Why.
        reason: String,
    },
    /// A DICOM file that does not parse or lacks what makes it an image.
    #[error("the DICOM file cannot be used: {0}")]
    BadDicom(String),
    /// The object could not be built or encoded.
    #[error("cannot build the DICOM object: {0}")]
    Build(String),
}

/// What an upload became.
#[derive(Debug)]
pub struct Prepared {
    /// The object to store.
    pub object: FileDicomObject<InMemDicomObject>,
    /// `dicom`, `png` or `jpeg`.
    pub format: &'static str,
    /// The `UPLOAD-…` Patient ID given to it.
    pub patient_id: String,
    /// Its (fresh) Study Instance UID.
    pub study_uid: String,
}

/// The fresh identifiers of one upload.
struct Identity {
    patient_id: String,
    study: String,
    series: String,
    instance: String,
}

impl Identity {
    fn new(uid_root: &str) -> Identity {
        let mut rng = rand::thread_rng();
        let seed: u128 = rng.gen();
        let seed = format!("upload/{seed:032x}/{}", crate::clock::now_millis());
        Identity {
            patient_id: format!("{PATIENT_PREFIX}{:08X}", rng.gen::<u32>()),
            study: derive(uid_root, &format!("{seed}/study")),
            series: derive(uid_root, &format!("{seed}/series")),
            instance: derive(uid_root, &format!("{seed}/instance")),
        }
    }
}

fn text(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

fn us(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

/// The file name as a Person Name component: no path, no `^ = \`, no control characters,
/// at most 60 characters.
pub fn name_component(filename: &str) -> String {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '^' | '=' | '\\') {
                '_'
            } else {
                c
            }
        })
        .take(60)
        .collect();
    let clean = clean.trim().to_string();
    if clean.is_empty() {
        "upload".into()
    } else {
        clean
    }
}

/// Builds the object to store from the uploaded bytes.
pub fn prepare(bytes: &[u8], filename: &str, uid_root: &str) -> Result<Prepared, UploadError> {
    if bytes.is_empty() {
        return Err(UploadError::Empty);
    }
    let id = Identity::new(uid_root);
    if bytes.len() > 132 && &bytes[128..132] == b"DICM" {
        return from_dicom(bytes, id);
    }
    let format = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        image::ImageFormat::Png
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        image::ImageFormat::Jpeg
    } else {
        return Err(UploadError::UnknownFormat);
    };
    from_image(bytes, format, filename, id)
}

fn from_dicom(bytes: &[u8], id: Identity) -> Result<Prepared, UploadError> {
    crate::dataset_guard::check_part10_bytes(bytes)
        .map_err(|e| UploadError::BadDicom(e.to_string()))?;
    let obj = OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| UploadError::BadDicom(e.to_string()))?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let sop_class = obj
        .meta()
        .media_storage_sop_class_uid()
        .trim_end_matches('\0')
        .to_string();
    let mut ds = obj.into_inner();
    if ds.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(UploadError::BadDicom(format!(
            "no pixel data (SOP class {sop_class}): only images can be analysed"
        )));
    }
    ds.put(text(tags::PATIENT_ID, VR::LO, &id.patient_id));
    ds.put(text(tags::STUDY_INSTANCE_UID, VR::UI, &id.study));
    ds.put(text(tags::SERIES_INSTANCE_UID, VR::UI, &id.series));
    ds.put(text(tags::SOP_INSTANCE_UID, VR::UI, &id.instance));
    let object = with_meta(ds, &sop_class, &id.instance, &ts)
        .map_err(|e| UploadError::Build(e.to_string()))?;
    Ok(Prepared {
        object,
        format: "dicom",
        patient_id: id.patient_id,
        study_uid: id.study,
    })
}

fn decode(bytes: &[u8], format: image::ImageFormat) -> Result<image::GrayImage, UploadError> {
    let name = if format == image::ImageFormat::Png {
        "PNG"
    } else {
        "JPEG"
    };
    let bad = |reason: String| UploadError::BadImage {
        format: name,
        reason,
    };
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    let gray = img.to_luma8();
    if gray.width() == 0 || gray.height() == 0 {
        return Err(bad("no pixels".into()));
    }
    Ok(gray)
}

fn dicom_now() -> (String, String) {
    let t = time::OffsetDateTime::now_utc();
    (
        format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day()),
        format!("{:02}{:02}{:02}", t.hour(), t.minute(), t.second()),
    )
}

fn from_image(
    bytes: &[u8],
    format: image::ImageFormat,
    filename: &str,
    id: Identity,
) -> Result<Prepared, UploadError> {
    let gray = decode(bytes, format)?;
    let (w, h) = (gray.width(), gray.height());
    let (date, time) = dicom_now();
    let name = name_component(filename);
    let mut obj = InMemDicomObject::new_empty();
    obj.put(text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    obj.put(text(tags::SOP_CLASS_UID, VR::UI, SECONDARY_CAPTURE));
    obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, &id.instance));
    obj.put(text(tags::PATIENT_NAME, VR::PN, &format!("UPLOAD^{name}")));
    obj.put(text(tags::PATIENT_ID, VR::LO, &id.patient_id));
    obj.put(text(tags::PATIENT_BIRTH_DATE, VR::DA, ""));
    obj.put(text(tags::PATIENT_SEX, VR::CS, ""));
    obj.put(text(tags::STUDY_INSTANCE_UID, VR::UI, &id.study));
    obj.put(text(tags::STUDY_DATE, VR::DA, &date));
    obj.put(text(tags::STUDY_TIME, VR::TM, &time));
    obj.put(text(tags::CONTENT_DATE, VR::DA, &date));
    obj.put(text(tags::CONTENT_TIME, VR::TM, &time));
    obj.put(text(tags::STUDY_ID, VR::SH, "UPLOAD"));
    obj.put(text(tags::ACCESSION_NUMBER, VR::SH, ""));
    obj.put(text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""));
    obj.put(text(
        tags::STUDY_DESCRIPTION,
        VR::LO,
        "Uploaded chest radiograph (not a patient record)",
    ));
    obj.put(text(tags::MODALITY, VR::CS, "DX"));
    obj.put(text(tags::SERIES_INSTANCE_UID, VR::UI, &id.series));
    obj.put(text(tags::SERIES_NUMBER, VR::IS, "1"));
    obj.put(text(tags::INSTANCE_NUMBER, VR::IS, "1"));
    obj.put(text(tags::SERIES_DESCRIPTION, VR::LO, &name));
    obj.put(text(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"));
    obj.put(text(tags::VIEW_POSITION, VR::CS, "PA"));
    obj.put(text(tags::PATIENT_ORIENTATION, VR::CS, ""));
    obj.put(text(tags::CONVERSION_TYPE, VR::CS, "WSD"));
    obj.put(text(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY"));
    obj.put(text(tags::DERIVATION_DESCRIPTION, VR::ST, SC_UPLOAD_MARK));
    obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
    obj.put(text(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    ));
    obj.put(us(tags::ROWS, h as u16));
    obj.put(us(tags::COLUMNS, w as u16));
    obj.put(us(tags::BITS_ALLOCATED, 8));
    obj.put(us(tags::BITS_STORED, 8));
    obj.put(us(tags::HIGH_BIT, 7));
    obj.put(us(tags::PIXEL_REPRESENTATION, 0));
    put_pixels_8bit(&mut obj, gray.into_raw());
    let object = with_meta(
        obj,
        SECONDARY_CAPTURE,
        &id.instance,
        crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN,
    )
    .map_err(|e| UploadError::Build(e.to_string()))?;
    Ok(Prepared {
        object,
        format: if format == image::ImageFormat::Png {
            "png"
        } else {
            "jpeg"
        },
        patient_id: id.patient_id,
        study_uid: id.study,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::dicom_image::DicomImage;
    use crate::infer::eligibility::{check, Eligibility};

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 200]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn hostile_dicom_uploads_are_refused_before_parsing() {
        use crate::dataset_guard::fixtures;
        let ts = "1.2.840.10008.1.2.1";
        for body in [fixtures::nested(2000), fixtures::ut_lie()] {
            let err = prepare(&fixtures::part10(ts, &body), "x.dcm", "2.25.").unwrap_err();
            assert!(matches!(err, UploadError::BadDicom(_)), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("declares") || text.contains("nested"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_png_becomes_an_analysable_monochrome_secondary_capture() {
        let p = prepare(&png(33, 20), "dir/chest^pa.png", "2.25.").unwrap();
        assert_eq!(p.format, "png");
        assert!(p.patient_id.starts_with("UPLOAD-"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dcm");
        p.object.write_to_file(&path).unwrap();
        let img = DicomImage::open(&path).unwrap();
        assert_eq!(check(img.header()), Eligibility::Eligible);
        let gray = img.display_image().unwrap();
        assert_eq!((gray.width, gray.height), (33, 20));
        let obj = dicom_object::open_file(&path).unwrap();
        let s = |t| obj.element(t).unwrap().to_str().unwrap().trim().to_string();
        assert_eq!(s(tags::PATIENT_NAME), "UPLOAD^chest_pa.png");
        assert_eq!(s(tags::SOP_CLASS_UID), SECONDARY_CAPTURE);
        assert_eq!(s(tags::PHOTOMETRIC_INTERPRETATION), "MONOCHROME2");
        assert_eq!(s(tags::STUDY_INSTANCE_UID), p.study_uid);
        // Fresh identifiers every time.
        let q = prepare(&png(4, 4), "a.png", "2.25.").unwrap();
        assert_ne!(q.study_uid, p.study_uid);
        assert_ne!(q.patient_id, p.patient_id);
    }

    #[test]
    fn a_jpeg_is_taken_too() {
        let img = image::GrayImage::from_fn(40, 30, |x, y| image::Luma([(x * 6 + y) as u8]));
        let mut jpeg = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        let p = prepare(&jpeg, "chest.jpg", "1.2.826.0.1.3680043.10.").unwrap();
        assert_eq!(p.format, "jpeg");
        assert!(p.study_uid.starts_with("1.2.826.0.1.3680043.10."));
        assert!(p.study_uid.len() <= 64);
    }

    #[test]
    fn broken_and_unknown_files_are_refused_with_the_reason() {
        let mut broken = png(8, 8);
        broken.truncate(40);
        let e = prepare(&broken, "b.png", "2.25.").unwrap_err();
        assert!(
            e.to_string().starts_with("the PNG image cannot be read"),
            "{e}"
        );
        assert_eq!(
            prepare(b"hello", "x.txt", "2.25.").unwrap_err(),
            UploadError::UnknownFormat
        );
        assert_eq!(prepare(b"", "x", "2.25.").unwrap_err(), UploadError::Empty);
        let mut fake = vec![0u8; 128];
        fake.extend_from_slice(b"DICMgarbage");
        assert!(matches!(
            prepare(&fake, "x.dcm", "2.25.").unwrap_err(),
            UploadError::BadDicom(_)
        ));
    }

    #[test]
    fn file_names_become_safe_name_components() {
        assert_eq!(name_component("C:\\x\\a^b=c.jpg"), "a_b_c.jpg");
        assert_eq!(name_component(""), "upload");
        assert_eq!(name_component(&"x".repeat(100)).len(), 60);
    }
}
