//! Manual uploads from the console: a DICOM Part 10 file, or a PNG/JPEG image wrapped as
//! a Secondary Capture marked as a chest radiograph (so the analysis stage takes it).
//!
//! An upload is never a patient's record: its Patient ID becomes `UPLOAD-<random>`, which
//! keeps its results away from the RIS, the cloud and the PACS
//! (`record::is_manual_upload`), and it gets fresh Study, Series and SOP
//! Instance UIDs under `dicom.uid_root`, so it never joins or replaces a received study.
//! A DICOM upload also loses what identifies its patient, visit and staff
//! ([`IDENTIFYING`], private attributes): the console and the audit trail name it as the
//! upload it is, never as the patient it came from.

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

/// What Patient Name (0010,0010) of an upload starts with; the file name follows.
const PATIENT_NAME_PREFIX: &str = "UPLOAD^";

/// Most characters of a Person Name component group, delimiters included (PS3.5 §6.2, PN).
const PN_GROUP_MAX_CHARS: usize = 64;

/// The file name as a Person Name component: no path, no `^ = \`, no control characters,
/// and short enough (57 characters) that the Patient Name `UPLOAD^<component>` keeps to the
/// 64 characters of a PN component group.
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
        .take(PN_GROUP_MAX_CHARS - PATIENT_NAME_PREFIX.chars().count())
        .collect();
    let clean = clean.trim().to_string();
    if clean.is_empty() {
        "upload".into()
    } else {
        clean
    }
}

/// Builds the object to store from the uploaded bytes.
pub fn prepare(
    bytes: &[u8],
    filename: &str,
    uid_root: &str,
    max_pixels: u64,
) -> Result<Prepared, UploadError> {
    if bytes.is_empty() {
        return Err(UploadError::Empty);
    }
    let id = Identity::new(uid_root);
    if bytes.len() > 132 && &bytes[128..132] == b"DICM" {
        return from_dicom(bytes, filename, id);
    }
    let format = sniff(bytes).ok_or(UploadError::UnknownFormat)?;
    from_image(bytes, format, filename, id, max_pixels)
}

/// PNG or JPEG, from the signature.
fn sniff(bytes: &[u8]) -> Option<image::ImageFormat> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(image::ImageFormat::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(image::ImageFormat::Jpeg)
    } else {
        None
    }
}

/// Most bytes an uploaded data set's values may decode to when that is more than the
/// upload itself (a deflated one): an upload is never inflated in memory beyond this.
pub const MAX_DECODED_UPLOAD: u64 = 64 * 1024 * 1024;

/// One upload is decoded at a time on the box (a decoded image and its copies are the
/// largest allocation a logged-in user can ask for), whatever number are received at once.
static DECODING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Decodes an upload as [`prepare`] does, one at a time on the box.
pub fn prepare_one_at_a_time(
    bytes: &[u8],
    filename: &str,
    uid_root: &str,
    max_pixels: u64,
) -> Result<Prepared, UploadError> {
    let _turn = DECODING.lock().unwrap_or_else(|p| p.into_inner());
    prepare(bytes, filename, uid_root, max_pixels)
}

fn from_dicom(bytes: &[u8], filename: &str, id: Identity) -> Result<Prepared, UploadError> {
    let summary = crate::dataset_guard::check_part10_bytes(bytes)
        .map_err(|e| UploadError::BadDicom(e.to_string()))?;
    let decoded = summary
        .header_bytes
        .saturating_add(summary.pixel_data_bytes.unwrap_or(0));
    let limit = (bytes.len() as u64).max(MAX_DECODED_UPLOAD);
    if decoded > limit {
        return Err(UploadError::BadDicom(format!(
            "its data set decodes to {decoded} bytes, over the {limit} an upload may hold \
             (send such an object to the box over DICOM)"
        )));
    }
    let obj = OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| UploadError::BadDicom(e.to_string()))?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    if !crate::dimse::uids::TRANSFER_SYNTAXES.contains(&ts.as_str()) {
        return Err(UploadError::BadDicom(format!(
            "its transfer syntax {ts} is not one the box accepts over DICOM either \
             (see the DICOM conformance statement)"
        )));
    }
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
    without_identity(&mut ds, filename);
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

/// What an uploaded data set loses: the attributes a radiograph carries that identify its
/// patient, the visit or the staff (from the Basic Application Level Confidentiality
/// Profile, PS3.15 Annex E), and the sequences that reference other objects of the
/// patient's record. Patient's Age, Sex, Size and Weight stay (the intended-use check
/// reads the age; the Retain Patient Characteristics Option keeps them), as do the study
/// date and the acquisition's technique.
pub const IDENTIFYING: &[Tag] = &[
    Tag(0x0008, 0x0080), // Institution Name
    Tag(0x0008, 0x0081), // Institution Address
    Tag(0x0008, 0x0082), // Institution Code Sequence
    Tag(0x0008, 0x0092), // Referring Physician's Address
    Tag(0x0008, 0x0094), // Referring Physician's Telephone Numbers
    Tag(0x0008, 0x1010), // Station Name
    Tag(0x0008, 0x1040), // Institutional Department Name
    Tag(0x0008, 0x1048), // Physician(s) of Record
    Tag(0x0008, 0x1050), // Performing Physician's Name
    Tag(0x0008, 0x1060), // Name of Physician(s) Reading Study
    Tag(0x0008, 0x1070), // Operators' Name
    Tag(0x0008, 0x1110), // Referenced Study Sequence
    Tag(0x0008, 0x1111), // Referenced Performed Procedure Step Sequence
    Tag(0x0008, 0x1120), // Referenced Patient Sequence
    Tag(0x0008, 0x1140), // Referenced Image Sequence
    Tag(0x0008, 0x9123), // Creator-Version UID
    Tag(0x0010, 0x0021), // Issuer of Patient ID
    Tag(0x0010, 0x0024), // Issuer of Patient ID Qualifiers Sequence
    Tag(0x0010, 0x0030), // Patient's Birth Date
    Tag(0x0010, 0x0032), // Patient's Birth Time
    Tag(0x0010, 0x0050), // Patient's Insurance Plan Code Sequence
    Tag(0x0010, 0x1000), // Other Patient IDs
    Tag(0x0010, 0x1001), // Other Patient Names
    Tag(0x0010, 0x1002), // Other Patient IDs Sequence
    Tag(0x0010, 0x1005), // Patient's Birth Name
    Tag(0x0010, 0x1040), // Patient's Address
    Tag(0x0010, 0x1060), // Patient's Mother's Birth Name
    Tag(0x0010, 0x1080), // Military Rank
    Tag(0x0010, 0x1090), // Medical Record Locator
    Tag(0x0010, 0x2150), // Country of Residence
    Tag(0x0010, 0x2152), // Region of Residence
    Tag(0x0010, 0x2154), // Patient's Telephone Numbers
    Tag(0x0010, 0x2155), // Patient's Telecom Information
    Tag(0x0010, 0x2160), // Ethnic Group
    Tag(0x0010, 0x2180), // Occupation
    Tag(0x0010, 0x21B0), // Additional Patient History
    Tag(0x0010, 0x21F0), // Patient's Religious Preference
    Tag(0x0010, 0x4000), // Patient Comments
    Tag(0x0020, 0x0052), // Frame of Reference UID (links to the patient's other series)
    Tag(0x0020, 0x4000), // Image Comments
    Tag(0x0032, 0x1032), // Requesting Physician
    Tag(0x0032, 0x1033), // Requesting Service
    Tag(0x0038, 0x0010), // Admission ID
    Tag(0x0038, 0x0300), // Current Patient Location
    Tag(0x0038, 0x0400), // Patient's Institution Residence
    Tag(0x0040, 0x0275), // Request Attributes Sequence
    Tag(0x0040, 0x0280), // Comments on the Performed Procedure Step
    Tag(0x0040, 0x1001), // Requested Procedure ID
    Tag(0x0040, 0xA124), // UID
];

/// The data set of a DICOM upload without what identifies its patient, visit and staff:
/// Patient Name `UPLOAD^<file name>` (as an image upload's), the [`IDENTIFYING`]
/// attributes and every private attribute removed, Accession Number and Referring
/// Physician's Name kept empty (type 2), Study ID `UPLOAD`. An age the header gave only
/// by birth date is kept as Patient's Age before the birth date goes, so the model's
/// intended use is still checked on it.
fn without_identity(ds: &mut InMemDicomObject, filename: &str) {
    let value = |tag| crate::infer::dicom_image::text(ds, tag);
    let stated = value(tags::PATIENT_AGE);
    if crate::infer::age::parse_age_string(&stated).is_none() {
        let age = crate::infer::age::computed_age(
            &value(tags::PATIENT_BIRTH_DATE),
            &value(tags::STUDY_DATE),
        );
        match age {
            Some(age) => {
                ds.put(text(tags::PATIENT_AGE, VR::AS, &age.as_age_string()));
            }
            None => {
                ds.remove_element(tags::PATIENT_AGE);
            }
        }
    }
    for tag in IDENTIFYING {
        ds.remove_element(*tag);
    }
    let private: Vec<Tag> = ds.tags().filter(|t| t.group() % 2 == 1).collect();
    for tag in private {
        ds.remove_element(tag);
    }
    let name = name_component(filename);
    ds.put(text(
        tags::PATIENT_NAME,
        VR::PN,
        &format!("{PATIENT_NAME_PREFIX}{name}"),
    ));
    ds.put(text(tags::ACCESSION_NUMBER, VR::SH, ""));
    ds.put(text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""));
    ds.put(text(tags::STUDY_ID, VR::SH, "UPLOAD"));
}

fn decode(
    bytes: &[u8],
    format: image::ImageFormat,
    max_pixels: u64,
) -> Result<image::GrayImage, UploadError> {
    let name = if format == image::ImageFormat::Png {
        "PNG"
    } else {
        "JPEG"
    };
    let bad = |reason: String| UploadError::BadImage {
        format: name,
        reason,
    };
    // Grey as the offline tool and the reference pipeline make it (PIL's luma, JPEGs with
    // libjpeg's inverse DCT), by the one decoder for files and uploads, which refuses an
    // image over the pixel budget from its header (the same `inference.max_pixels` that
    // received images are held to) before decoding it.
    use crate::infer::raster::{decode_bytes, RasterError};
    let gray = decode_bytes(bytes, max_pixels).map_err(|e| match e {
        RasterError::TooLarge {
            width,
            height,
            limit,
        } => bad(format!(
            "{width}x{height} pixels is over the limit of {limit} (inference.max_pixels)"
        )),
        RasterError::Decode(reason) => bad(reason),
    })?;
    let (w, h) = (gray.width, gray.height);
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(bad(format!("{w}x{h} pixels: a side is over {MAX_SIDE}")));
    }
    image::GrayImage::from_raw(w, h, gray.pixels).ok_or_else(|| bad("no pixels".into()))
}

/// What an image wrapped as DICOM is recorded as: the patient, the study and the kind of
/// object. Uploads become Secondary Captures marked as chest radiographs; the demo's
/// sample images become DX images as a modality would send them.
#[derive(Debug, Clone)]
pub struct WrapHeader {
    /// SOP Class UID (Secondary Capture or DX for presentation).
    pub sop_class: &'static str,
    /// Patient's Name (PN).
    pub patient_name: String,
    /// Patient ID.
    pub patient_id: String,
    /// Patient's Birth Date (DA, may be empty).
    pub birth_date: String,
    /// Patient's Sex (`M`, `F`, `O` or empty).
    pub sex: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// SOP Instance UID.
    pub instance_uid: String,
    /// Accession Number (may be empty).
    pub accession: String,
    /// Study ID.
    pub study_id: String,
    /// Study Description.
    pub study_description: String,
    /// Series Description.
    pub series_description: String,
    /// Image Type.
    pub image_type: &'static str,
    /// View Position (`PA`, `AP`).
    pub view_position: &'static str,
    /// Derivation Description (the upload mark), when any.
    pub derivation: Option<&'static str>,
    /// Institution Name, when any.
    pub institution: Option<String>,
}

/// Decodes a PNG or JPEG into 8-bit grey levels (bounded in size).
pub fn decode_image(
    bytes: &[u8],
    max_pixels: u64,
) -> Result<(image::GrayImage, &'static str), UploadError> {
    let format = sniff(bytes).ok_or(UploadError::UnknownFormat)?;
    let name = if format == image::ImageFormat::Png {
        "png"
    } else {
        "jpeg"
    };
    Ok((decode(bytes, format, max_pixels)?, name))
}

/// Wraps 8-bit grey levels as a monochrome DICOM image in explicit VR little endian.
pub fn wrap_gray(
    gray: image::GrayImage,
    h: &WrapHeader,
) -> Result<FileDicomObject<InMemDicomObject>, UploadError> {
    let (w, ht) = (gray.width(), gray.height());
    let (Ok(rows), Ok(cols)) = (u16::try_from(ht), u16::try_from(w)) else {
        return Err(UploadError::Build(format!(
            "{w}x{ht} is too large for DICOM"
        )));
    };
    let (date, time, _) = crate::clock::dicom_local_date_time(crate::clock::now_secs());
    let is_sc = h.sop_class == SECONDARY_CAPTURE;
    let mut obj = InMemDicomObject::new_empty();
    obj.put(text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    obj.put(text(tags::IMAGE_TYPE, VR::CS, h.image_type));
    obj.put(text(tags::SOP_CLASS_UID, VR::UI, h.sop_class));
    obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, &h.instance_uid));
    obj.put(text(tags::STUDY_DATE, VR::DA, &date));
    obj.put(text(tags::STUDY_TIME, VR::TM, &time));
    obj.put(text(tags::CONTENT_DATE, VR::DA, &date));
    obj.put(text(tags::CONTENT_TIME, VR::TM, &time));
    obj.put(text(tags::ACCESSION_NUMBER, VR::SH, &h.accession));
    obj.put(text(tags::MODALITY, VR::CS, "DX"));
    if !is_sc {
        obj.put(text(
            tags::PRESENTATION_INTENT_TYPE,
            VR::CS,
            "FOR PRESENTATION",
        ));
    }
    if let Some(inst) = &h.institution {
        obj.put(text(tags::INSTITUTION_NAME, VR::LO, inst));
    }
    obj.put(text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""));
    obj.put(text(tags::STUDY_DESCRIPTION, VR::LO, &h.study_description));
    obj.put(text(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &h.series_description,
    ));
    obj.put(text(tags::PATIENT_NAME, VR::PN, &h.patient_name));
    obj.put(text(tags::PATIENT_ID, VR::LO, &h.patient_id));
    obj.put(text(tags::PATIENT_BIRTH_DATE, VR::DA, &h.birth_date));
    obj.put(text(tags::PATIENT_SEX, VR::CS, &h.sex));
    obj.put(text(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"));
    obj.put(text(tags::VIEW_POSITION, VR::CS, h.view_position));
    obj.put(text(tags::STUDY_INSTANCE_UID, VR::UI, &h.study_uid));
    obj.put(text(tags::SERIES_INSTANCE_UID, VR::UI, &h.series_uid));
    obj.put(text(tags::STUDY_ID, VR::SH, &h.study_id));
    obj.put(text(tags::SERIES_NUMBER, VR::IS, "1"));
    obj.put(text(tags::INSTANCE_NUMBER, VR::IS, "1"));
    obj.put(text(tags::PATIENT_ORIENTATION, VR::CS, ""));
    if is_sc {
        obj.put(text(tags::CONVERSION_TYPE, VR::CS, "WSD"));
    } else {
        obj.put(text(tags::IMAGE_LATERALITY, VR::CS, "U"));
        obj.put(text(tags::BURNED_IN_ANNOTATION, VR::CS, "NO"));
    }
    if let Some(mark) = h.derivation {
        obj.put(text(tags::DERIVATION_DESCRIPTION, VR::ST, mark));
    }
    obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
    obj.put(text(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    ));
    obj.put(us(tags::ROWS, rows));
    obj.put(us(tags::COLUMNS, cols));
    obj.put(us(tags::BITS_ALLOCATED, 8));
    obj.put(us(tags::BITS_STORED, 8));
    obj.put(us(tags::HIGH_BIT, 7));
    obj.put(us(tags::PIXEL_REPRESENTATION, 0));
    put_pixels_8bit(&mut obj, gray.into_raw());
    with_meta(
        obj,
        h.sop_class,
        &h.instance_uid,
        crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN,
    )
    .map_err(|e| UploadError::Build(e.to_string()))
}

fn from_image(
    bytes: &[u8],
    format: image::ImageFormat,
    filename: &str,
    id: Identity,
    max_pixels: u64,
) -> Result<Prepared, UploadError> {
    let gray = decode(bytes, format, max_pixels)?;
    let name = name_component(filename);
    let header = WrapHeader {
        sop_class: SECONDARY_CAPTURE,
        patient_name: format!("{PATIENT_NAME_PREFIX}{name}"),
        patient_id: id.patient_id.clone(),
        birth_date: String::new(),
        sex: String::new(),
        study_uid: id.study.clone(),
        series_uid: id.series,
        instance_uid: id.instance,
        accession: String::new(),
        study_id: "UPLOAD".into(),
        study_description: "Uploaded chest radiograph (not a patient record)".into(),
        series_description: name,
        image_type: "DERIVED\\SECONDARY",
        view_position: "PA",
        derivation: Some(SC_UPLOAD_MARK),
        institution: None,
    };
    let object = wrap_gray(gray, &header)?;
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
    const TEST_MAX_PIXELS: u64 = 100_000_000;
    use super::*;
    use crate::infer::dicom_image::DicomImage;
    use crate::infer::eligibility::{check, Eligibility};

    /// A deflated DICOM upload of under a megabyte whose Pixel Data inflates past
    /// [`MAX_DECODED_UPLOAD`] is refused from the pre-scan's measure, before the data set
    /// is parsed into memory.
    #[test]
    fn a_deflated_upload_that_inflates_past_the_bound_is_refused_before_parsing() {
        use crate::dataset_guard::fixtures::{long_header, part10, short};
        use std::io::Write;
        let mut body = short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0");
        body.extend(short(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
        body.extend(short(0x0028, 0x0010, b"US", &16u16.to_le_bytes()));
        body.extend(short(0x0028, 0x0011, b"US", &16u16.to_le_bytes()));
        let pixels = MAX_DECODED_UPLOAD as u32 + 1024;
        body.extend(long_header(0x7FE0, 0x0010, b"OB", pixels));
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&body).unwrap();
        enc.write_all(&vec![0u8; pixels as usize]).unwrap();
        let mut file = part10("1.2.840.10008.1.2.1.99", &[]);
        file.extend(enc.finish().unwrap());
        assert!(file.len() < 1 << 20, "{} bytes", file.len());
        match prepare(&file, "bomb.dcm", "2.25.", TEST_MAX_PIXELS) {
            Err(UploadError::BadDicom(why)) => assert!(why.contains("decodes to"), "{why}"),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    /// An upload in a transfer syntax the DICOM port does not accept (here Deflated Image
    /// Frame Compression, whose frames no check holds to the header) is refused.
    #[test]
    fn an_upload_in_a_transfer_syntax_the_box_does_not_accept_is_refused() {
        use crate::dataset_guard::fixtures::{long_header, part10_with_meta, short};
        let part10 = |ts: &str, body: &[u8]| {
            part10_with_meta("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", ts, body)
        };
        let mut body = short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0");
        body.extend(short(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
        body.extend(short(0x0028, 0x0010, b"US", &2u16.to_le_bytes()));
        body.extend(short(0x0028, 0x0011, b"US", &2u16.to_le_bytes()));
        body.extend(long_header(0x7FE0, 0x0010, b"OW", 8));
        body.extend([0u8; 8]);
        for ts in ["1.2.840.10008.1.2.8.1", "1.2.840.10008.1.2.4.201"] {
            match prepare(&part10(ts, &body), "x.dcm", "2.25.", TEST_MAX_PIXELS) {
                Err(UploadError::BadDicom(why)) => assert!(why.contains(ts), "{why}"),
                Err(other) => panic!("{ts}: {other}"),
                Ok(_) => panic!("{ts}: accepted"),
            }
        }
        assert!(prepare(
            &part10("1.2.840.10008.1.2.1", &body),
            "x.dcm",
            "2.25.",
            TEST_MAX_PIXELS
        )
        .is_ok());
    }

    /// A DICOM upload keeps its image and technique but not who it was: the patient's
    /// name, birth date, other IDs, the institution and private attributes are gone, the
    /// age the birth date gave is kept as Patient's Age for the intended-use check.
    #[test]
    fn a_dicom_upload_loses_what_identifies_its_patient() {
        use crate::dataset_guard::fixtures::{long_header, part10_with_meta, short};
        let mut body = short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0");
        body.extend(short(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
        body.extend(short(0x0008, 0x0020, b"DA", b"20250115"));
        body.extend(short(0x0008, 0x0050, b"SH", b"ACC123"));
        body.extend(short(0x0008, 0x0060, b"CS", b"DX"));
        body.extend(short(0x0008, 0x0080, b"LO", b"GENERAL HOSPITAL"));
        body.extend(short(0x0009, 0x0010, b"LO", b"ACME 1.0"));
        body.extend(short(0x0009, 0x1001, b"LO", b"DOE JANE"));
        body.extend(short(0x0010, 0x0010, b"PN", b"DOE^JANE"));
        body.extend(short(0x0010, 0x0020, b"LO", b"PAT-1 "));
        body.extend(short(0x0010, 0x0030, b"DA", b"19800115"));
        body.extend(short(0x0010, 0x0040, b"CS", b"F "));
        body.extend(short(0x0010, 0x1000, b"LO", b"OTHER-ID"));
        body.extend(short(0x0028, 0x0010, b"US", &2u16.to_le_bytes()));
        body.extend(short(0x0028, 0x0011, b"US", &2u16.to_le_bytes()));
        body.extend(long_header(0x7FE0, 0x0010, b"OW", 8));
        body.extend([0u8; 8]);
        let file = part10_with_meta(
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2.3.4",
            "1.2.840.10008.1.2.1",
            &body,
        );
        let prepared = prepare(&file, "/home/u/chest.dcm", "2.25.", TEST_MAX_PIXELS).unwrap();
        let value = |tag| {
            prepared.object.element_opt(tag).unwrap().map(|e| {
                e.to_str()
                    .unwrap()
                    .trim_end_matches(['\0', ' '])
                    .to_string()
            })
        };
        assert_eq!(
            value(tags::PATIENT_NAME).as_deref(),
            Some("UPLOAD^chest.dcm")
        );
        assert_eq!(value(tags::PATIENT_ID), Some(prepared.patient_id.clone()));
        assert_eq!(value(tags::PATIENT_AGE).as_deref(), Some("045Y"));
        assert_eq!(value(tags::PATIENT_SEX).as_deref(), Some("F"));
        assert_eq!(value(tags::MODALITY).as_deref(), Some("DX"));
        assert_eq!(value(tags::ACCESSION_NUMBER).as_deref(), Some(""));
        for gone in [
            tags::PATIENT_BIRTH_DATE,
            Tag(0x0010, 0x1000),
            tags::INSTITUTION_NAME,
            Tag(0x0009, 0x0010),
            Tag(0x0009, 0x1001),
        ] {
            assert_eq!(value(gone), None, "{gone}");
        }
        assert!(prepared
            .object
            .element_opt(tags::PIXEL_DATA)
            .unwrap()
            .is_some());
    }

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
            let err = prepare(
                &fixtures::part10(ts, &body),
                "x.dcm",
                "2.25.",
                TEST_MAX_PIXELS,
            )
            .unwrap_err();
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
        let p = prepare(&png(33, 20), "dir/chest^pa.png", "2.25.", TEST_MAX_PIXELS).unwrap();
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
        let q = prepare(&png(4, 4), "a.png", "2.25.", TEST_MAX_PIXELS).unwrap();
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
        let p = prepare(
            &jpeg,
            "chest.jpg",
            "1.2.826.0.1.3680043.10.",
            TEST_MAX_PIXELS,
        )
        .unwrap();
        assert_eq!(p.format, "jpeg");
        assert!(p.study_uid.starts_with("1.2.826.0.1.3680043.10."));
        assert!(p.study_uid.len() <= 64);
    }

    #[test]
    fn an_image_over_the_pixel_budget_is_refused_from_its_header() {
        let big = png(2000, 1000);
        let e = prepare(&big, "big.png", "2.25.", 1_999_999).unwrap_err();
        assert!(
            matches!(&e, UploadError::BadImage { reason, .. } if reason.contains("2000x1000")),
            "{e}"
        );
        assert!(prepare(&big, "big.png", "2.25.", 2_000_000).is_ok());
    }

    #[test]
    fn broken_and_unknown_files_are_refused_with_the_reason() {
        let mut broken = png(8, 8);
        broken.truncate(40);
        let e = prepare(&broken, "b.png", "2.25.", TEST_MAX_PIXELS).unwrap_err();
        assert!(
            e.to_string().starts_with("the PNG image cannot be read"),
            "{e}"
        );
        assert_eq!(
            prepare(b"hello", "x.txt", "2.25.", TEST_MAX_PIXELS).unwrap_err(),
            UploadError::UnknownFormat
        );
        assert_eq!(
            prepare(b"", "x", "2.25.", TEST_MAX_PIXELS).unwrap_err(),
            UploadError::Empty
        );
        let mut fake = vec![0u8; 128];
        fake.extend_from_slice(b"DICMgarbage");
        assert!(matches!(
            prepare(&fake, "x.dcm", "2.25.", TEST_MAX_PIXELS).unwrap_err(),
            UploadError::BadDicom(_)
        ));
    }

    #[test]
    fn file_names_become_safe_name_components() {
        assert_eq!(name_component("C:\\x\\a^b=c.jpg"), "a_b_c.jpg");
        assert_eq!(name_component(""), "upload");
        assert_eq!(name_component(&"x".repeat(100)).len(), 57);
    }

    #[test]
    fn the_patient_name_of_a_long_file_name_keeps_to_one_pn_component_group() {
        for stem in ["x".repeat(80), "é".repeat(80)] {
            let p = prepare(&png(4, 4), &format!("{stem}.png"), "2.25.", TEST_MAX_PIXELS).unwrap();
            let name = p
                .object
                .element(tags::PATIENT_NAME)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end()
                .to_string();
            assert!(name.starts_with("UPLOAD^"), "{name}");
            assert_eq!(name.chars().count(), 64, "{name}");
        }
    }
}
