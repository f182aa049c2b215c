//! SOP class and transfer syntax UIDs the product negotiates (PS3.6 Annex A).

/// Verification SOP class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Storage Commitment Push Model SOP class (N-ACTION to ask, N-EVENT-REPORT to answer).
pub const STORAGE_COMMITMENT_PUSH_MODEL: &str = "1.2.840.10008.1.20.1";
/// The well-known SOP instance of Storage Commitment Push Model (PS3.4 J.3.1).
pub const STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE: &str = "1.2.840.10008.1.20.1.1";

/// Computed Radiography Image Storage.
pub const COMPUTED_RADIOGRAPHY: &str = "1.2.840.10008.5.1.4.1.1.1";
/// Digital X-Ray Image Storage - For Presentation.
pub const DIGITAL_XRAY_PRESENTATION: &str = "1.2.840.10008.5.1.4.1.1.1.1";
/// Digital X-Ray Image Storage - For Processing.
pub const DIGITAL_XRAY_PROCESSING: &str = "1.2.840.10008.5.1.4.1.1.1.1.1";
/// Secondary Capture Image Storage.
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
/// Multi-frame Single Bit Secondary Capture Image Storage.
pub const MULTIFRAME_SINGLE_BIT_SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7.1";
/// Multi-frame Grayscale Byte Secondary Capture Image Storage.
pub const MULTIFRAME_GRAYSCALE_BYTE_SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7.2";
/// Multi-frame Grayscale Word Secondary Capture Image Storage.
pub const MULTIFRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7.3";
/// Multi-frame True Color Secondary Capture Image Storage.
pub const MULTIFRAME_TRUE_COLOR_SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7.4";
/// Basic Text SR Storage.
pub const BASIC_TEXT_SR: &str = "1.2.840.10008.5.1.4.1.1.88.11";
/// Enhanced SR Storage.
pub const ENHANCED_SR: &str = "1.2.840.10008.5.1.4.1.1.88.22";
/// Comprehensive SR Storage (the product's result reports).
pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
/// Key Object Selection Document Storage.
pub const KEY_OBJECT_SELECTION: &str = "1.2.840.10008.5.1.4.1.1.88.59";

/// Parametric Map Storage (the heatmaps this box makes; a C-GET requester takes them in
/// the SCP role).
pub const PARAMETRIC_MAP: &str = "1.2.840.10008.5.1.4.1.1.30";

/// Storage SOP classes the SCP accepts by default.
pub const STORAGE_SOP_CLASSES: &[&str] = &[
    COMPUTED_RADIOGRAPHY,
    DIGITAL_XRAY_PRESENTATION,
    DIGITAL_XRAY_PROCESSING,
    SECONDARY_CAPTURE,
    MULTIFRAME_SINGLE_BIT_SECONDARY_CAPTURE,
    MULTIFRAME_GRAYSCALE_BYTE_SECONDARY_CAPTURE,
    MULTIFRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE,
    MULTIFRAME_TRUE_COLOR_SECONDARY_CAPTURE,
    BASIC_TEXT_SR,
    ENHANCED_SR,
    COMPREHENSIVE_SR,
    KEY_OBJECT_SELECTION,
    PARAMETRIC_MAP,
];

/// Patient Root Query/Retrieve Information Model - FIND.
pub const PATIENT_ROOT_QR_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";
/// Patient Root Query/Retrieve Information Model - MOVE.
pub const PATIENT_ROOT_QR_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
/// Patient Root Query/Retrieve Information Model - GET.
pub const PATIENT_ROOT_QR_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";
/// Study Root Query/Retrieve Information Model - FIND.
pub const STUDY_ROOT_QR_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
/// Study Root Query/Retrieve Information Model - MOVE.
pub const STUDY_ROOT_QR_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
/// Study Root Query/Retrieve Information Model - GET.
pub const STUDY_ROOT_QR_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

/// Implicit VR Little Endian (the default transfer syntax).
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// Deflated Explicit VR Little Endian.
pub const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";
/// Explicit VR Big Endian (retired, still sent by old modalities).
pub const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
/// JPEG Baseline (Process 1).
pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
/// JPEG Extended (Process 2 & 4).
pub const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";
/// JPEG Lossless, Non-Hierarchical (Process 14).
pub const JPEG_LOSSLESS: &str = "1.2.840.10008.1.2.4.57";
/// JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, SV1).
pub const JPEG_LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";
/// JPEG-LS Lossless.
pub const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
/// JPEG-LS Lossy (Near-Lossless).
pub const JPEG_LS_NEAR_LOSSLESS: &str = "1.2.840.10008.1.2.4.81";
/// JPEG 2000 Image Compression (Lossless Only).
pub const JPEG_2000_LOSSLESS: &str = "1.2.840.10008.1.2.4.90";
/// JPEG 2000 Image Compression.
pub const JPEG_2000: &str = "1.2.840.10008.1.2.4.91";
/// RLE Lossless.
pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Transfer syntaxes the SCP accepts for storage, in order of preference.
pub const TRANSFER_SYNTAXES: &[&str] = &[
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    RLE_LOSSLESS,
];

/// Root under which every storage SOP class UID lives (PS3.4 Annex B.5).
const STORAGE_ROOT: &str = "1.2.840.10008.5.1.4.1.1.";

/// True for any well-formed storage SOP class UID (under `1.2.840.10008.5.1.4.1.1.`), for
/// the "accept any storage class" option. Query/retrieve classes (`…5.1.4.1.2.…`), the
/// Verification class and malformed UIDs are not storage classes.
pub fn is_storage_sop_class(uid: &str) -> bool {
    let Some(rest) = uid.strip_prefix(STORAGE_ROOT) else {
        return false;
    };
    !rest.is_empty()
        && uid.len() <= 64
        && rest
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}

/// A short name for the UIDs in this module, for logs; `None` for any other UID.
pub fn name(uid: &str) -> Option<&'static str> {
    Some(match uid {
        VERIFICATION => "Verification",
        COMPUTED_RADIOGRAPHY => "CR Image Storage",
        DIGITAL_XRAY_PRESENTATION => "DX Image Storage - For Presentation",
        DIGITAL_XRAY_PROCESSING => "DX Image Storage - For Processing",
        SECONDARY_CAPTURE => "Secondary Capture Image Storage",
        MULTIFRAME_SINGLE_BIT_SECONDARY_CAPTURE => "Multi-frame Single Bit SC Image Storage",
        MULTIFRAME_GRAYSCALE_BYTE_SECONDARY_CAPTURE => {
            "Multi-frame Grayscale Byte SC Image Storage"
        }
        MULTIFRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE => {
            "Multi-frame Grayscale Word SC Image Storage"
        }
        MULTIFRAME_TRUE_COLOR_SECONDARY_CAPTURE => "Multi-frame True Color SC Image Storage",
        BASIC_TEXT_SR => "Basic Text SR Storage",
        ENHANCED_SR => "Enhanced SR Storage",
        COMPREHENSIVE_SR => "Comprehensive SR Storage",
        KEY_OBJECT_SELECTION => "Key Object Selection Document Storage",
        PARAMETRIC_MAP => "Parametric Map Storage",
        PATIENT_ROOT_QR_FIND => "Patient Root Q/R FIND",
        PATIENT_ROOT_QR_MOVE => "Patient Root Q/R MOVE",
        PATIENT_ROOT_QR_GET => "Patient Root Q/R GET",
        STUDY_ROOT_QR_FIND => "Study Root Q/R FIND",
        STUDY_ROOT_QR_MOVE => "Study Root Q/R MOVE",
        STUDY_ROOT_QR_GET => "Study Root Q/R GET",
        IMPLICIT_VR_LITTLE_ENDIAN => "Implicit VR Little Endian",
        EXPLICIT_VR_LITTLE_ENDIAN => "Explicit VR Little Endian",
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => "Deflated Explicit VR Little Endian",
        EXPLICIT_VR_BIG_ENDIAN => "Explicit VR Big Endian",
        JPEG_BASELINE => "JPEG Baseline",
        JPEG_EXTENDED => "JPEG Extended",
        JPEG_LOSSLESS => "JPEG Lossless",
        JPEG_LOSSLESS_SV1 => "JPEG Lossless SV1",
        JPEG_LS_LOSSLESS => "JPEG-LS Lossless",
        JPEG_LS_NEAR_LOSSLESS => "JPEG-LS Near-Lossless",
        JPEG_2000_LOSSLESS => "JPEG 2000 Lossless",
        JPEG_2000 => "JPEG 2000",
        RLE_LOSSLESS => "RLE Lossless",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes_are_recognised() {
        for uid in STORAGE_SOP_CLASSES {
            assert!(is_storage_sop_class(uid), "{uid}");
        }
        // Other storage classes (CT, MR, Digital Mammography) for "accept any".
        assert!(is_storage_sop_class("1.2.840.10008.5.1.4.1.1.2"));
        assert!(is_storage_sop_class("1.2.840.10008.5.1.4.1.1.4"));
        assert!(is_storage_sop_class("1.2.840.10008.5.1.4.1.1.1.2"));
        for uid in [
            VERIFICATION,
            STUDY_ROOT_QR_FIND,
            STUDY_ROOT_QR_MOVE,
            STUDY_ROOT_QR_GET,
            PATIENT_ROOT_QR_FIND,
            PATIENT_ROOT_QR_GET,
            "1.2.840.10008.5.1.4.1.1.",
            "1.2.840.10008.5.1.4.1.1",
            "1.2.840.10008.5.1.4.1.1.7.",
            "1.2.840.10008.5.1.4.1.1..7",
            "1.2.840.10008.5.1.4.1.1.7x",
            "1.2.840.10008.5.1.4.1.1.7\0",
            "",
        ] {
            assert!(!is_storage_sop_class(uid), "{uid:?}");
        }
        let too_long = format!("{STORAGE_ROOT}{}", "1".repeat(60));
        assert!(!is_storage_sop_class(&too_long));
    }

    #[test]
    fn lists_are_distinct_and_named() {
        let mut all: Vec<&str> = STORAGE_SOP_CLASSES
            .iter()
            .chain(TRANSFER_SYNTAXES)
            .copied()
            .collect();
        all.extend([
            VERIFICATION,
            STUDY_ROOT_QR_FIND,
            STUDY_ROOT_QR_MOVE,
            STUDY_ROOT_QR_GET,
        ]);
        for uid in &all {
            assert!(name(uid).is_some(), "{uid}");
            assert!(uid.len() <= 64);
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(name("1.2.3"), None);
        assert_eq!(TRANSFER_SYNTAXES.len(), 13);
    }
}
