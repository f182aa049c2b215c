//! Which images the chest model is for: CR and DX images of the chest in PA or AP view
//! (or with no view recorded), and Secondary Capture images the console's upload marks as
//! chest radiographs. Everything else is "not applicable", with the reason.

use super::dicom_image::ImageHeader;

/// Derivation Description (0008,2111) the console writes on a Secondary Capture made from
/// an uploaded chest radiograph (with Body Part Examined CHEST).
pub const SC_UPLOAD_MARK: &str = "DULI upload: chest radiograph";

const SC_SOP_CLASSES: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.7",   // Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2", // Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3", // Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4", // Multi-frame True Color SC
];

/// The verdict on one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eligibility {
    /// Analyse it.
    Eligible,
    /// Do not; the reason is recorded.
    NotApplicable(String),
}

fn mentions_chest(s: &str) -> bool {
    let s = s.to_uppercase();
    ["CHEST", "THORAX", "TORAX", "TÓRAX", "LUNG", "PULM"]
        .iter()
        .any(|w| s.contains(w))
}

/// Decides from the header alone.
pub fn check(h: &ImageHeader) -> Eligibility {
    use Eligibility::*;
    if !h.has_pixels {
        return NotApplicable(format!("not an image (SOP class {})", h.sop_class_uid));
    }
    let is_sc = SC_SOP_CLASSES.contains(&h.sop_class_uid.as_str());
    if is_sc {
        return if h.derivation_description == SC_UPLOAD_MARK && h.body_part == "CHEST" {
            Eligible
        } else {
            NotApplicable("secondary capture not marked as an uploaded chest radiograph".into())
        };
    }
    if h.modality != "CR" && h.modality != "DX" {
        return NotApplicable(format!(
            "modality {} is not CR or DX",
            empty_as(&h.modality)
        ));
    }
    if h.presentation_intent == "FOR PROCESSING" {
        return NotApplicable("a FOR PROCESSING image (raw detector data)".into());
    }
    let chest = match h.body_part.as_str() {
        "CHEST" | "THORAX" | "LUNG" => true,
        "" => mentions_chest(&h.series_description) || mentions_chest(&h.study_description),
        _ => false,
    };
    if !chest {
        return NotApplicable(format!(
            "body part {} is not the chest",
            empty_as(&h.body_part)
        ));
    }
    match h.view_position.as_str() {
        "PA" | "AP" | "" => Eligible,
        "LL" | "RL" | "LAT" | "LATERAL" | "LLD" | "RLD" => {
            NotApplicable(format!("lateral view ({})", h.view_position))
        }
        other => NotApplicable(format!("view {other} is not PA or AP")),
    }
}

fn empty_as(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dx() -> ImageHeader {
        ImageHeader {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1.1".into(),
            modality: "DX".into(),
            body_part: "CHEST".into(),
            view_position: "AP".into(),
            has_pixels: true,
            ..Default::default()
        }
    }

    #[test]
    fn chest_pa_ap_and_unknown_views_are_analysed() {
        assert_eq!(check(&dx()), Eligibility::Eligible);
        for v in ["PA", ""] {
            let h = ImageHeader {
                view_position: v.into(),
                ..dx()
            };
            assert_eq!(check(&h), Eligibility::Eligible);
        }
        let cr = ImageHeader {
            modality: "CR".into(),
            body_part: String::new(),
            series_description: "Tórax PA".into(),
            ..dx()
        };
        assert_eq!(check(&cr), Eligibility::Eligible);
    }

    #[test]
    fn others_are_not_applicable_with_a_reason() {
        let cases = [
            (
                ImageHeader {
                    view_position: "LL".into(),
                    ..dx()
                },
                "lateral view (LL)",
            ),
            (
                ImageHeader {
                    modality: "CT".into(),
                    ..dx()
                },
                "modality CT is not CR or DX",
            ),
            (
                ImageHeader {
                    body_part: "HAND".into(),
                    ..dx()
                },
                "body part HAND is not the chest",
            ),
            (
                ImageHeader {
                    has_pixels: false,
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.88.22".into(),
                    ..dx()
                },
                "not an image (SOP class 1.2.840.10008.5.1.4.1.1.88.22)",
            ),
            (
                ImageHeader {
                    presentation_intent: "FOR PROCESSING".into(),
                    ..dx()
                },
                "a FOR PROCESSING image (raw detector data)",
            ),
        ];
        for (h, reason) in cases {
            assert_eq!(check(&h), Eligibility::NotApplicable(reason.into()));
        }
    }

    #[test]
    fn secondary_capture_only_when_marked() {
        let sc = ImageHeader {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
            modality: "OT".into(),
            ..dx()
        };
        assert!(matches!(check(&sc), Eligibility::NotApplicable(_)));
        let marked = ImageHeader {
            derivation_description: SC_UPLOAD_MARK.into(),
            ..sc
        };
        assert_eq!(check(&marked), Eligibility::Eligible);
    }
}
