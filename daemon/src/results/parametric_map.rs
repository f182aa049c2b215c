//! The heatmap of a study result as a Parametric Map (PS3.3 A.75), the form the IHE AI
//! Results profile gives probability and saliency maps: values a viewer overlays on the
//! source radiograph itself, instead of pixels burned into a copy of it.
//!
//! - One frame on a grid of at most [`PM_MAX_SIDE`] pixels on the long side, aligned with
//!   the source: the source is divided into `factor × factor` blocks (the factor is the
//!   smallest integer that brings the long side within the limit), the pixel spacing is the
//!   source's times the factor, and the Derivation Image Sequence names the source image.
//! - The frame of reference is the source's; projection radiographs usually have none, and
//!   then the map gets one of its own (derived from the report, so a rebuild gives the same),
//!   with the image plane as the patient plane at the origin.
//! - The values are 32-bit floats (Float Pixel Data): the saliency itself, 0 = no effect on
//!   the finding, 1 = the largest effect in the image. An identity Real World Value Mapping
//!   over 0–1 names it (quantity DCM 130404 "Saliency", unit `1`), and a VOI window covers
//!   the range for a viewer that shows it in grey.
//! - Pixel Presentation `COLOR_RANGE` with the well-known Hot Iron palette named by its UID
//!   ([`PALETTE_HOT_IRON`], PS3.6 Annex B; a well-known palette needs no lookup table data),
//!   a Stored Value Color Range over the saliency 0–1 and an sRGB ICC profile: a viewer
//!   that overlays the map colours it black → red → yellow → white. The palette's lookup
//!   table itself is not embedded: dicom3tools' `dciodvfy` reports palette data attributes
//!   as errors under the Image Pixel Description macro.

use super::attributes::{code_item, fd, object_header, seq, text, us, ObjectIdentity};
use super::uids::ResultUids;
use super::ResultsError;
use crate::report::Report;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

/// Parametric Map Storage.
pub const PARAMETRIC_MAP: &str = crate::dimse::uids::PARAMETRIC_MAP;
/// Series number of the Parametric Map series.
pub const PM_SERIES_NUMBER: i32 = 9903;
/// Longest side of the map's grid.
pub const PM_MAX_SIDE: u32 = 1024;
/// The well-known Hot Iron color palette (PS3.6 Annex B).
pub const PALETTE_HOT_IRON: &str = "1.2.840.10008.1.5.1";
/// The sRGB ICC profile the palette's colours are in: LittleCMS's built-in sRGB (version
/// 4.4, 588 bytes, "No copyright, use freely"), as Pillow's `ImageCms.createProfile("sRGB")`
/// writes it.
const SRGB_ICC: &[u8] = include_bytes!("srgb.icc");

/// What the map needs to know of its source image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    /// SOP Class UID.
    pub sop_class: String,
    /// SOP Instance UID.
    pub sop_instance: String,
    /// Series Instance UID.
    pub series: String,
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub columns: u32,
    /// Pixel Spacing, else Imager Pixel Spacing (row spacing, column spacing, mm).
    pub pixel_spacing: Option<(f64, f64)>,
    /// Frame of Reference UID, when it has one (the map derives its own when this is not
    /// one valid UID).
    pub frame_of_reference: Option<String>,
    /// Image Laterality (or Laterality).
    pub laterality: String,
    /// Patient Orientation (0020,0020) as received (`L\F`: rows toward the patient's
    /// left, columns toward the feet).
    pub patient_orientation: String,
}

/// The map's values: `width × height` floats in [0, 1], row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// The block factor and grid size (`factor`, columns, rows) for a source of
/// `columns × rows`: the smallest integer factor that brings the long side within
/// `max_side`; the grid covers whole blocks.
pub fn grid_size(columns: u32, rows: u32, max_side: u32) -> (u32, u32, u32) {
    let long = columns.max(rows).max(1);
    let factor = long.div_ceil(max_side.max(1)).max(1);
    (factor, (columns / factor).max(1), (rows / factor).max(1))
}

/// Resamples a `src_w × src_h` map laid over the whole source image (bilinear, sampled at
/// block centres) onto the grid of a `columns × rows` source reduced by [`grid_size`].
pub fn resample(values: &[f32], src_w: u32, src_h: u32, columns: u32, rows: u32) -> Grid {
    let (factor, width, height) = grid_size(columns, rows, PM_MAX_SIDE);
    let at = |x: i64, y: i64| -> f32 {
        let x = x.clamp(0, i64::from(src_w) - 1) as usize;
        let y = y.clamp(0, i64::from(src_h) - 1) as usize;
        values.get(y * src_w as usize + x).copied().unwrap_or(0.0)
    };
    let mut out = Vec::with_capacity(width as usize * height as usize);
    for gy in 0..height {
        for gx in 0..width {
            // Block centre in source pixels, then in map pixels (pixel centres at +0.5).
            let sx = (f64::from(gx) + 0.5) * f64::from(factor);
            let sy = (f64::from(gy) + 0.5) * f64::from(factor);
            let mx = sx * f64::from(src_w) / f64::from(columns.max(1)) - 0.5;
            let my = sy * f64::from(src_h) / f64::from(rows.max(1)) - 0.5;
            let (x0, y0) = (mx.floor(), my.floor());
            let (fx, fy) = ((mx - x0) as f32, (my - y0) as f32);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
            let bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
            out.push((top * (1.0 - fy) + bottom * fy).clamp(0.0, 1.0));
        }
    }
    Grid {
        width,
        height,
        values: out,
    }
}

fn ds(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.chars().take(16).collect()
}

/// Builds the Parametric Map of `report`'s heatmap `grid` over `source`, made by the
/// appliance `device_serial`: the object header, then one step per module of the IOD.
pub fn build(
    report: &Report,
    uids: &ResultUids,
    source: &Source,
    grid: &Grid,
    device_serial: &str,
) -> Result<FileDicomObject<InMemDicomObject>, ResultsError> {
    check_grid(grid)?;
    let (factor, _, _) = grid_size(source.columns, source.rows, PM_MAX_SIDE);
    let mut obj = object_header(
        report,
        &ObjectIdentity {
            sop_class: PARAMETRIC_MAP,
            sop_instance: &uids.pm_instance,
            modality: "OT",
            series: &uids.pm_series,
            series_number: PM_SERIES_NUMBER,
            series_description: "AI heatmap map (preliminary, not for diagnostic use)",
        },
    );
    // Enhanced General Equipment.
    obj.put(text(tags::DEVICE_SERIAL_NUMBER, VR::LO, device_serial));
    put_frame_of_reference(&mut obj, source, uids);
    put_map_image(&mut obj);
    put_pixel_description(&mut obj, grid);
    put_dimensions(&mut obj, uids);
    obj.put(seq(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared_groups(source, factor)],
    ));
    obj.put(seq(
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![per_frame_groups()],
    ));
    obj.put(common_instance_reference(source));
    obj.put(float_pixels(grid));
    super::with_meta(
        obj,
        PARAMETRIC_MAP,
        &uids.pm_instance,
        crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN,
    )
}

/// Refuses a grid that is empty, larger than [`PM_MAX_SIDE`] or whose values do not fill
/// it.
fn check_grid(grid: &Grid) -> Result<(), ResultsError> {
    let n = grid.width as usize * grid.height as usize;
    if grid.width == 0
        || grid.height == 0
        || grid.width > PM_MAX_SIDE
        || grid.height > PM_MAX_SIDE
        || grid.values.len() != n
    {
        return Err(ResultsError::Build(format!(
            "heatmap grid {}x{} with {} values",
            grid.width,
            grid.height,
            grid.values.len()
        )));
    }
    Ok(())
}

/// Frame of Reference module: the source's when it is one valid UID, else the map's own.
fn put_frame_of_reference(obj: &mut InMemDicomObject, source: &Source, uids: &ResultUids) {
    let frame_of_reference = source
        .frame_of_reference
        .as_deref()
        .filter(|f| crate::store::header::is_valid_uid(f))
        .unwrap_or(&uids.frame_of_reference);
    obj.put(text(
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        frame_of_reference,
    ));
    obj.put(text(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""));
}

/// Parametric Map Image module: a derived quantity, what it is, and how a viewer colours
/// it (the Hot Iron palette over an sRGB profile).
fn put_map_image(obj: &mut InMemDicomObject) {
    obj.put(text(
        tags::IMAGE_TYPE,
        VR::CS,
        "DERIVED\\PRIMARY\\VOLUME\\QUANTITY",
    ));
    obj.put(text(tags::CONTENT_QUALIFICATION, VR::CS, "PRODUCT"));
    obj.put(text(tags::CONTENT_LABEL, VR::CS, "HEATMAP"));
    obj.put(text(
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        "Saliency of the AI finding; preliminary, not verified",
    ));
    obj.put(text(tags::CONTENT_CREATOR_NAME, VR::PN, ""));
    obj.put(text(tags::BURNED_IN_ANNOTATION, VR::CS, "NO"));
    obj.put(text(tags::RECOGNIZABLE_VISUAL_FEATURES, VR::CS, "NO"));
    obj.put(text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"));
    obj.put(text(tags::PRESENTATION_LUT_SHAPE, VR::CS, "IDENTITY"));
    obj.put(text(tags::PIXEL_PRESENTATION, VR::CS, "COLOR_RANGE"));
    obj.put(text(
        tags::PALETTE_COLOR_LOOKUP_TABLE_UID,
        VR::UI,
        PALETTE_HOT_IRON,
    ));
    obj.put(DataElement::new(
        tags::ICC_PROFILE,
        VR::OB,
        PrimitiveValue::from(SRGB_ICC.to_vec()),
    ));
    obj.put(text(tags::COLOR_SPACE, VR::CS, "SRGB"));
}

/// Image Pixel Description: one sample of 32-bit floats on the grid.
fn put_pixel_description(obj: &mut InMemDicomObject, grid: &Grid) {
    obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
    obj.put(text(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    ));
    obj.put(us(tags::ROWS, grid.height as u16));
    obj.put(us(tags::COLUMNS, grid.width as u16));
    // Float Pixel Data: 32 bits allocated; Bits Stored, High Bit and Pixel Representation
    // belong to integer Pixel Data only (PS3.3 C.8.32.1).
    obj.put(us(tags::BITS_ALLOCATED, 32));
    obj.put(seq(tags::ACQUISITION_CONTEXT_SEQUENCE, Vec::new()));
}

/// Multi-frame Functional Groups and Multi-frame Dimension modules: one frame, indexed by
/// its image position.
fn put_dimensions(obj: &mut InMemDicomObject, uids: &ResultUids) {
    obj.put(text(tags::NUMBER_OF_FRAMES, VR::IS, "1"));
    let dimension_org = derive_dimension_uid(uids);
    obj.put(seq(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([text(
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            &dimension_org,
        )])],
    ));
    obj.put(seq(
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dimension_org),
            DataElement::new(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::Tags([tags::IMAGE_POSITION_PATIENT].into_iter().collect()),
            ),
            DataElement::new(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::Tags([tags::PLANE_POSITION_SEQUENCE].into_iter().collect()),
            ),
            text(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, "Image position"),
        ])],
    ));
}

/// The one frame's own functional groups: its dimension index and its position.
fn per_frame_groups() -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        seq(
            tags::FRAME_CONTENT_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([DataElement::new(
                tags::DIMENSION_INDEX_VALUES,
                VR::UL,
                PrimitiveValue::from(1u32),
            )])],
        ),
        seq(
            tags::PLANE_POSITION_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([text(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                "0\\0\\0",
            )])],
        ),
    ])
}

/// Image Orientation (Patient) of the map: the directions its rows and columns run in, from
/// the source's Patient Orientation when that is two single, perpendicular directions
/// (`L\F` gives `1\0\0\0\0\-1`); otherwise a frontal chest image as shown, rows toward
/// the patient's left and columns toward the feet (coronal). A projection radiograph has
/// no patient coordinates of its own: this only says which way the map faces.
pub fn orientation(patient_orientation: &str) -> String {
    const CORONAL: &str = "1\\0\\0\\0\\0\\-1";
    let axis = |letter: &str| -> Option<[i8; 3]> {
        Some(match letter.trim() {
            "L" => [1, 0, 0],
            "R" => [-1, 0, 0],
            "P" => [0, 1, 0],
            "A" => [0, -1, 0],
            "H" => [0, 0, 1],
            "F" => [0, 0, -1],
            _ => return None,
        })
    };
    let mut parts = patient_orientation.split('\\');
    let (Some(row), Some(column), None) = (parts.next(), parts.next(), parts.next()) else {
        return CORONAL.into();
    };
    match (axis(row), axis(column)) {
        (Some(r), Some(c)) if r.iter().zip(&c).all(|(a, b)| a * b == 0) => r
            .iter()
            .chain(&c)
            .map(i8::to_string)
            .collect::<Vec<_>>()
            .join("\\"),
        _ => CORONAL.into(),
    }
}

/// Common Instance Reference module: the source image.
fn common_instance_reference(source: &Source) -> DataElement<InMemDicomObject> {
    seq(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::SERIES_INSTANCE_UID, VR::UI, &source.series),
            seq(
                tags::REFERENCED_INSTANCE_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([
                    text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &source.sop_class),
                    text(
                        tags::REFERENCED_SOP_INSTANCE_UID,
                        VR::UI,
                        &source.sop_instance,
                    ),
                ])],
            ),
        ])],
    )
}

/// Float Pixel Data: the grid's values, clamped to 0–1 (anything not finite as 0).
fn float_pixels(grid: &Grid) -> DataElement<InMemDicomObject> {
    let pixels = grid.values.iter().map(|v| {
        if v.is_finite() {
            v.clamp(0.0, 1.0)
        } else {
            0.0
        }
    });
    DataElement::new(
        tags::FLOAT_PIXEL_DATA,
        VR::OF,
        PrimitiveValue::F32(pixels.collect()),
    )
}

/// The dimension organisation UID of the map (a sibling of its instance UID).
fn derive_dimension_uid(uids: &ResultUids) -> String {
    let root = uids
        .pm_instance
        .rsplit_once('.')
        .map_or("2.25", |(root, _)| root);
    super::uids::derive(
        &format!("{root}."),
        &format!("{}/dimensions", uids.pm_instance),
    )
}

/// The functional groups every frame shares: pixel measures, plane orientation, the
/// derivation from the source, the frame type, identity pixel value transformation, the
/// VOI window and the real-world value mapping.
fn shared_groups(source: &Source, factor: u32) -> InMemDicomObject {
    let mut g = InMemDicomObject::new_empty();
    let (row, col) = source.pixel_spacing.unwrap_or((1.0, 1.0));
    let f = f64::from(factor);
    g.put(seq(
        tags::PIXEL_MEASURES_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(
                tags::PIXEL_SPACING,
                VR::DS,
                &format!("{}\\{}", ds(row * f), ds(col * f)),
            ),
            text(tags::SLICE_THICKNESS, VR::DS, "1"),
        ])],
    ));
    g.put(seq(
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([text(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            &orientation(&source.patient_orientation),
        )])],
    ));
    g.put(derivation_image(source));
    g.put(seq(
        tags::PARAMETRIC_MAP_FRAME_TYPE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([text(
            tags::FRAME_TYPE,
            VR::CS,
            "DERIVED\\PRIMARY\\VOLUME\\QUANTITY",
        )])],
    ));
    g.put(seq(
        tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::RESCALE_INTERCEPT, VR::DS, "0"),
            text(tags::RESCALE_SLOPE, VR::DS, "1"),
            text(tags::RESCALE_TYPE, VR::LO, "US"),
        ])],
    ));
    g.put(seq(
        tags::FRAME_VOILUT_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::WINDOW_CENTER, VR::DS, "0.5"),
            text(tags::WINDOW_WIDTH, VR::DS, "1"),
        ])],
    ));
    g.put(real_world_value_mapping());
    // The palette spans the saliency, 0 to 1.
    g.put(seq(
        tags::STORED_VALUE_COLOR_RANGE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            fd(tags::MINIMUM_STORED_VALUE_MAPPED, 0.0),
            fd(tags::MAXIMUM_STORED_VALUE_MAPPED, 1.0),
        ])],
    ));
    g.put(seq(
        tags::FRAME_ANATOMY_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            seq(
                tags::ANATOMIC_REGION_SEQUENCE,
                vec![code_item("51185008", "SCT", "Thorax")],
            ),
            text(
                tags::FRAME_LATERALITY,
                VR::CS,
                frame_laterality(&source.laterality),
            ),
        ])],
    ));
    g
}

/// Derivation Image functional group: the map is the saliency (DCM 130404) derived from
/// the source image.
fn derivation_image(source: &Source) -> DataElement<InMemDicomObject> {
    seq(
        tags::DERIVATION_IMAGE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            seq(
                tags::DERIVATION_CODE_SEQUENCE,
                vec![code_item("130404", "DCM", "Saliency")],
            ),
            seq(
                tags::SOURCE_IMAGE_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([
                    text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &source.sop_class),
                    text(
                        tags::REFERENCED_SOP_INSTANCE_UID,
                        VR::UI,
                        &source.sop_instance,
                    ),
                    seq(
                        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                        vec![code_item(
                            "121322",
                            "DCM",
                            "Source image for image processing operation",
                        )],
                    ),
                ])],
            ),
        ])],
    )
}

/// Real World Value Mapping functional group: the stored floats are the saliency itself
/// (identity over 0–1, no units).
fn real_world_value_mapping() -> DataElement<InMemDicomObject> {
    seq(
        tags::REAL_WORLD_VALUE_MAPPING_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            // Float values: the double-float first and last values mapped.
            fd(tags::DOUBLE_FLOAT_REAL_WORLD_VALUE_FIRST_VALUE_MAPPED, 0.0),
            fd(tags::DOUBLE_FLOAT_REAL_WORLD_VALUE_LAST_VALUE_MAPPED, 1.0),
            fd(tags::REAL_WORLD_VALUE_INTERCEPT, 0.0),
            fd(tags::REAL_WORLD_VALUE_SLOPE, 1.0),
            text(tags::LUT_EXPLANATION, VR::LO, "Saliency of the AI finding"),
            text(tags::LUT_LABEL, VR::SH, "SALIENCY"),
            seq(
                tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                vec![code_item("1", "UCUM", "no units")],
            ),
            seq(
                tags::QUANTITY_DEFINITION_SEQUENCE,
                vec![{
                    let mut q = InMemDicomObject::from_element_iter([
                        text(tags::VALUE_TYPE, VR::CS, "CODE"),
                        seq(
                            tags::CONCEPT_NAME_CODE_SEQUENCE,
                            vec![code_item("246205007", "SCT", "Quantity")],
                        ),
                    ]);
                    q.put(seq(
                        tags::CONCEPT_CODE_SEQUENCE,
                        vec![code_item("130404", "DCM", "Saliency")],
                    ));
                    q
                }],
            ),
        ])],
    )
}

/// Frame Laterality (type 1: R, L, U or B) from the source's laterality: the chest is seen
/// whole (`B`) unless the source says one side.
fn frame_laterality(source: &str) -> &'static str {
    match source.trim() {
        "R" => "R",
        "L" => "L",
        "U" => "U",
        _ => "B",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_icc_profile_is_a_whole_srgb_display_profile() {
        // ICC.1 header: size, 'acsp' signature, RGB data colour space, XYZ connection space.
        let size = u32::from_be_bytes(SRGB_ICC[0..4].try_into().unwrap());
        assert_eq!(size as usize, SRGB_ICC.len());
        assert_eq!(&SRGB_ICC[36..40], b"acsp");
        assert_eq!(&SRGB_ICC[16..20], b"RGB ");
        assert_eq!(&SRGB_ICC[20..24], b"XYZ ");
        assert_eq!(&SRGB_ICC[12..16], b"mntr");
    }

    /// A chest map faces as its source: coronal for a frontal view shown as usual, sagittal
    /// for a lateral one, never the axial plane; anything else is a frontal view.
    #[test]
    fn the_map_faces_as_its_source() {
        for (po, iop) in [
            ("L\\F", "1\\0\\0\\0\\0\\-1"),
            ("R\\F", "-1\\0\\0\\0\\0\\-1"),
            ("A\\F", "0\\-1\\0\\0\\0\\-1"),
            ("P\\H", "0\\1\\0\\0\\0\\1"),
            ("", "1\\0\\0\\0\\0\\-1"),
            ("L\\L", "1\\0\\0\\0\\0\\-1"),
            ("LF\\F", "1\\0\\0\\0\\0\\-1"),
            ("L\\F\\H", "1\\0\\0\\0\\0\\-1"),
        ] {
            assert_eq!(orientation(po), iop, "{po:?}");
        }
    }

    #[test]
    fn frame_laterality_follows_one_side_else_both() {
        for (source, frame) in [
            ("L", "L"),
            ("R ", "R"),
            ("U", "U"),
            ("", "B"),
            ("B", "B"),
            ("X", "B"),
        ] {
            assert_eq!(frame_laterality(source), frame, "{source:?}");
        }
    }

    /// The map's pixel spacing is the source's times the downsampling factor, so a viewer
    /// scales it over the image; a source without any spacing gets 1 mm per source pixel,
    /// nominal, times the factor (the ratio to the image is what aligns the two).
    #[test]
    fn the_map_spacing_is_the_source_spacing_times_the_factor() {
        let spacing = |pixel_spacing, factor| {
            let source = Source {
                sop_class: "1.2.840.10008.5.1.4.1.1.1.1".into(),
                sop_instance: "1.2.3".into(),
                series: "1.2".into(),
                rows: 3000,
                columns: 2400,
                pixel_spacing,
                frame_of_reference: None,
                ..Default::default()
            };
            let g = shared_groups(&source, factor);
            let measures = g.element(tags::PIXEL_MEASURES_SEQUENCE).unwrap();
            let item = &measures.items().unwrap()[0];
            item.element(tags::PIXEL_SPACING)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(spacing(Some((0.2, 0.15)), 3), "0.6\\0.45");
        assert_eq!(spacing(Some((0.139, 0.139)), 1), "0.139\\0.139");
        assert_eq!(spacing(None, 3), "3\\3");
    }

    #[test]
    fn the_grid_keeps_whole_blocks_within_the_limit() {
        assert_eq!(grid_size(968, 592, 1024), (1, 968, 592));
        assert_eq!(grid_size(2048, 2500, 1024), (3, 682, 833));
        assert_eq!(grid_size(8192, 8192, 1024), (8, 1024, 1024));
        assert_eq!(grid_size(0, 0, 1024), (1, 1, 1));
    }

    #[test]
    fn resampling_follows_the_map_over_the_whole_image() {
        // A 2x2 map: left column 0, right column 1, over a 4x2 image kept at full size.
        let g = resample(&[0.0, 1.0, 0.0, 1.0], 2, 2, 4, 2);
        assert_eq!((g.width, g.height), (4, 2));
        assert_eq!(g.values[0], 0.0);
        assert_eq!(g.values[3], 1.0);
        assert!(g.values[1] > 0.0 && g.values[1] < g.values[2]);
        // Values stay within [0, 1] whatever comes in.
        let g = resample(&[5.0, -1.0, 0.5, 0.5], 2, 2, 3000, 1000);
        assert!(g.values.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(g.width, 1000);
    }
}
