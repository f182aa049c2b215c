//! Which images the chest model is for: CR and DX images of the chest in PA or AP view
//! (or with no view recorded), and Secondary Capture images the console's upload marks as
//! chest radiographs; then the model's intended use from its manifest (modalities, views,
//! body parts, the patient's age range, the shortest image side). Everything else is "not
//! applicable", with the reason; an image whose age is unknown, or whose view neither its
//! View Position nor its descriptions give, is analysed with a caveat.

use super::age::{bound, computed_age, patient_age, Age};
use super::dicom_image::ImageHeader;
use super::manifest::IntendedUse;

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
    /// Analyse it, and show the caveat with the result (e.g. the age is unknown).
    EligibleWithCaveat(String),
    /// Do not; the reason is recorded.
    NotApplicable(String),
}

fn mentions_chest(s: &str) -> bool {
    let s = s.to_uppercase();
    ["CHEST", "THORAX", "TORAX", "TÓRAX", "LUNG", "PULM"]
        .iter()
        .any(|w| s.contains(w))
}

/// Whether a description names a lateral view as a word of its own (`CHEST LAT`,
/// `Thorax lateral`, `LL`), as CR images without a View Position often say it.
fn mentions_lateral(s: &str) -> bool {
    names_one_of(s, &["LAT", "LATERAL", "LL", "RL", "LLAT", "RLAT"])
}

/// Whether a description names a frontal view as a word of its own (`Tórax PA`,
/// `CHEST AP`, `frontal`).
fn mentions_frontal(s: &str) -> bool {
    names_one_of(
        s,
        &["PA", "AP", "FRONTAL", "POSTEROANTERIOR", "ANTEROPOSTERIOR"],
    )
}

/// Whether `s` has one of `words` (upper case) as a word of its own, whatever its case.
fn names_one_of(s: &str, words: &[&str]) -> bool {
    s.to_uppercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| words.contains(&w))
}

/// The caveat of a chest image whose view is not recorded: neither a View Position (type 2
/// in CR) nor a description naming one.
pub const VIEW_UNKNOWN_CAVEAT: &str =
    "view not recorded: the model is intended for frontal (PA or AP) chest images";

/// The DX "for processing" SOP class: raw detector data, whatever its Presentation Intent
/// Type says.
const DX_FOR_PROCESSING: &str = "1.2.840.10008.5.1.4.1.1.1.1.1";

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
    if h.presentation_intent == "FOR PROCESSING" || h.sop_class_uid == DX_FOR_PROCESSING {
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
        // No View Position (type 2 in CR): a description that names a lateral view says
        // it; one that names neither view leaves it unknown, which the result says.
        "" => {
            let described = [&h.series_description, &h.study_description];
            match described.into_iter().find(|d| mentions_lateral(d)) {
                Some(d) => NotApplicable(format!("lateral view (described as {d:?})")),
                None if described.into_iter().any(|d| mentions_frontal(d)) => Eligible,
                None => EligibleWithCaveat(VIEW_UNKNOWN_CAVEAT.into()),
            }
        }
        "PA" | "AP" => Eligible,
        "LL" | "RL" | "LAT" | "LATERAL" | "LLD" | "RLD" => {
            NotApplicable(format!("lateral view ({})", h.view_position))
        }
        other => NotApplicable(format!("view {other} is not PA or AP")),
    }
}

/// [`check`], then the model's intended use.
pub fn check_with(h: &ImageHeader, iu: &IntendedUse) -> Eligibility {
    use Eligibility::*;
    match check(h) {
        Eligible => check_intended_use(h, iu),
        EligibleWithCaveat(first) => match check_intended_use(h, iu) {
            Eligible => EligibleWithCaveat(first),
            EligibleWithCaveat(then) => EligibleWithCaveat(format!("{first}; {then}")),
            not => not,
        },
        not => not,
    }
}

fn listed(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|v| v.eq_ignore_ascii_case(value))
}

/// The model's age range for people: "1–5 y", "from 18 y", "up to 5 y".
pub fn age_range(iu: &IntendedUse) -> Option<String> {
    match (iu.age_min_years, iu.age_max_years) {
        (Some(lo), Some(hi)) => Some(format!("{}\u{2013}{} y", bound(lo), bound(hi))),
        (Some(lo), None) => Some(format!("from {} y", bound(lo))),
        (None, Some(hi)) => Some(format!("up to {} y", bound(hi))),
        (None, None) => None,
    }
}

/// The caveat of an image without a usable age, for a model intended for `range`.
pub fn unknown_age_caveat(range: &str) -> String {
    format!("patient age unknown: the model is intended for {range}")
}

/// Whether an image is within the intended use declared in the model's manifest. Marked
/// Secondary Capture uploads are checked for age and size only (their modality is OT).
pub fn check_intended_use(h: &ImageHeader, iu: &IntendedUse) -> Eligibility {
    use Eligibility::*;
    let is_sc = SC_SOP_CLASSES.contains(&h.sop_class_uid.as_str());
    if !is_sc {
        if !listed(&iu.modalities, &h.modality) {
            return NotApplicable(format!(
                "modality {} outside the model's {}",
                empty_as(&h.modality),
                iu.modalities.join("/")
            ));
        }
        if !h.view_position.is_empty() && !listed(&iu.views, &h.view_position) {
            return NotApplicable(format!(
                "view {} outside the model's {}",
                h.view_position,
                iu.views.join("/")
            ));
        }
        if !h.body_part.is_empty() && !listed(&iu.body_parts, &h.body_part) {
            return NotApplicable(format!(
                "body part {} outside the model's {}",
                h.body_part,
                iu.body_parts.join("/")
            ));
        }
    }
    if let Some(min) = iu.min_image_size {
        let side = h.rows.min(h.columns);
        if side > 0 && side < min {
            return NotApplicable(format!(
                "image {}\u{d7}{} smaller than the model's minimum side of {min} px",
                h.columns, h.rows
            ));
        }
    }
    let Some(range) = age_range(iu) else {
        return Eligible;
    };
    let age = patient_age(&h.patient_age, &h.patient_birth_date, &h.study_date);
    // A stated age and the age the dates give must agree about the range: a header that
    // says 4 years where the birth date says 40 is not analysed on either.
    if let (Age::Stated(s), Some(c)) = (age, computed_age(&h.patient_birth_date, &h.study_date)) {
        let (lo, hi) = (iu.age_min_years, iu.age_max_years);
        // A stated age is rounded to its unit (`001Y` for 11 months and 28 days): only a
        // year or more apart is a disagreement.
        if s.within(lo, hi) != c.within(lo, hi) && s.months.abs_diff(c.months) >= 12 {
            return NotApplicable(format!(
                "age {} stated but {} from the birth and study dates, one of them outside the model's {range}",
                s.describe(),
                c.describe()
            ));
        }
    }
    match age.completed() {
        Some(age) if !age.within(iu.age_min_years, iu.age_max_years) => NotApplicable(format!(
            "age {} outside the model's {range}",
            age.describe()
        )),
        Some(_) => Eligible,
        None => EligibleWithCaveat(unknown_age_caveat(&range)),
    }
}

fn empty_as(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

/// A header of an eligible image, for tests.
#[cfg(test)]
pub(crate) fn chest_dx() -> ImageHeader {
    ImageHeader {
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.1.1".into(),
        modality: "DX".into(),
        body_part: "CHEST".into(),
        view_position: "AP".into(),
        has_pixels: true,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dx() -> ImageHeader {
        chest_dx()
    }

    #[test]
    fn chest_pa_ap_and_unknown_views_are_analysed() {
        assert_eq!(check(&dx()), Eligibility::Eligible);
        let pa = ImageHeader {
            view_position: "PA".into(),
            ..dx()
        };
        assert_eq!(check(&pa), Eligibility::Eligible);
        // No view recorded anywhere: analysed, and the result says the view is unknown.
        let unknown = ImageHeader {
            view_position: String::new(),
            series_description: "Chest 1 view".into(),
            ..dx()
        };
        assert_eq!(
            check(&unknown),
            Eligibility::EligibleWithCaveat(VIEW_UNKNOWN_CAVEAT.into())
        );
        // With the model's age range and no age either, both caveats.
        let iu = IntendedUse {
            age_min_years: Some(1.0),
            age_max_years: Some(5.0),
            ..Default::default()
        };
        match check_with(&unknown, &iu) {
            Eligibility::EligibleWithCaveat(c) => {
                assert!(
                    c.starts_with(VIEW_UNKNOWN_CAVEAT) && c.contains("age unknown"),
                    "{c}"
                )
            }
            other => panic!("{other:?}"),
        }
        // A description that names the frontal view stands for the View Position.
        let described = ImageHeader {
            view_position: String::new(),
            study_description: "CHEST (PA)".into(),
            ..dx()
        };
        assert_eq!(check(&described), Eligibility::Eligible);
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
                    view_position: String::new(),
                    series_description: "CHEST LAT".into(),
                    ..dx()
                },
                "lateral view (described as \"CHEST LAT\")",
            ),
            (
                ImageHeader {
                    sop_class_uid: DX_FOR_PROCESSING.into(),
                    ..dx()
                },
                "a FOR PROCESSING image (raw detector data)",
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

    fn pediatric() -> IntendedUse {
        IntendedUse {
            modalities: vec!["CR".into(), "DX".into()],
            views: vec!["AP".into(), "PA".into()],
            body_parts: vec!["CHEST".into()],
            age_min_years: Some(1.0),
            age_max_years: Some(5.0),
            min_image_size: Some(150),
            ..Default::default()
        }
    }

    #[test]
    fn an_adult_is_outside_a_pediatric_model_with_the_reason() {
        let adult = ImageHeader {
            patient_age: "045Y".into(),
            ..dx()
        };
        assert_eq!(
            check_with(&adult, &pediatric()),
            Eligibility::NotApplicable("age 45 y outside the model's 1\u{2013}5 y".into())
        );
        // The age from the birth date and the study date when Patient's Age is absent.
        let by_dates = ImageHeader {
            patient_birth_date: "19800301".into(),
            study_date: "20250303".into(),
            ..dx()
        };
        assert_eq!(
            check_with(&by_dates, &pediatric()),
            Eligibility::NotApplicable("age 45 y outside the model's 1\u{2013}5 y".into())
        );
        let infant = ImageHeader {
            patient_age: "006M".into(),
            ..dx()
        };
        assert_eq!(
            check_with(&infant, &pediatric()),
            Eligibility::NotApplicable("age 6 mo outside the model's 1\u{2013}5 y".into())
        );
        // Ages by the calendar, each bound holding its whole year: five and a half is
        // inside "1–5 y", the sixth birthday is not, the first birthday is.
        for (birth, study, verdict) in [
            ("20200101", "20250701", Eligibility::Eligible),
            (
                "20200101",
                "20260101",
                Eligibility::NotApplicable("age 6 y outside the model's 1\u{2013}5 y".into()),
            ),
            ("20250315", "20260315", Eligibility::Eligible),
            (
                "20250315",
                "20260314",
                Eligibility::NotApplicable("age 11 mo outside the model's 1\u{2013}5 y".into()),
            ),
        ] {
            let h = ImageHeader {
                patient_birth_date: birth.into(),
                study_date: study.into(),
                ..dx()
            };
            assert_eq!(check_with(&h, &pediatric()), verdict, "{birth} {study}");
        }
        for inside in ["001Y", "003Y", "005Y", "030M", "071M"] {
            let h = ImageHeader {
                patient_age: inside.into(),
                ..dx()
            };
            assert_eq!(
                check_with(&h, &pediatric()),
                Eligibility::Eligible,
                "{inside}"
            );
        }
        // Without a declared range, age does not matter.
        assert_eq!(
            check_with(&adult, &IntendedUse::default()),
            Eligibility::Eligible
        );
    }

    /// Patient's Age and the birth and study dates that disagree about the model's range:
    /// not analysed on either; agreeing (both inside, or both outside), as before.
    #[test]
    fn ages_that_disagree_about_the_range_are_not_analysed() {
        let h = |age: &str, birth: &str| ImageHeader {
            patient_age: age.into(),
            patient_birth_date: birth.into(),
            study_date: "20250601".into(),
            ..dx()
        };
        assert_eq!(
            check_with(&h("004Y", "19850101"), &pediatric()),
            Eligibility::NotApplicable(
                "age 4 y stated but 40 y from the birth and study dates, one of them outside the model's 1\u{2013}5 y".into()
            )
        );
        assert!(matches!(
            check_with(&h("040Y", "20210101"), &pediatric()),
            Eligibility::NotApplicable(_)
        ));
        assert_eq!(
            check_with(&h("004Y", "20210101"), &pediatric()),
            Eligibility::Eligible
        );
        // A year stated for 11 months and some days (the unit rounds): not a disagreement.
        assert_eq!(
            check_with(&h("001Y", "20240627"), &pediatric()),
            Eligibility::Eligible
        );
        assert_eq!(
            check_with(&h("040Y", "19850101"), &pediatric()),
            Eligibility::NotApplicable("age 40 y outside the model's 1\u{2013}5 y".into())
        );
    }

    #[test]
    fn an_unknown_age_is_analysed_with_a_caveat() {
        for (age, birth, study) in [("", "", ""), ("", "20240101", ""), ("4 years", "x", "y")] {
            let h = ImageHeader {
                patient_age: age.into(),
                patient_birth_date: birth.into(),
                study_date: study.into(),
                ..dx()
            };
            assert_eq!(
                check_with(&h, &pediatric()),
                Eligibility::EligibleWithCaveat(
                    "patient age unknown: the model is intended for 1\u{2013}5 y".into()
                )
            );
        }
    }

    #[test]
    fn manifest_lists_and_minimum_size_restrict() {
        let iu = IntendedUse {
            modalities: vec!["DX".into()],
            ..pediatric()
        };
        let cr = ImageHeader {
            modality: "CR".into(),
            patient_age: "002Y".into(),
            ..dx()
        };
        assert_eq!(
            check_with(&cr, &iu),
            Eligibility::NotApplicable("modality CR outside the model's DX".into())
        );
        let small = ImageHeader {
            rows: 100,
            columns: 120,
            patient_age: "002Y".into(),
            ..dx()
        };
        assert_eq!(
            check_with(&small, &pediatric()),
            Eligibility::NotApplicable(
                "image 120\u{d7}100 smaller than the model's minimum side of 150 px".into()
            )
        );
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
