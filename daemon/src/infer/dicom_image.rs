//! A DICOM image file: the header attributes eligibility needs, and its first frame decoded
//! (every transfer syntax dicom-pixeldata handles: native, deflate, RLE, JPEG, JPEG-LS,
//! JPEG 2000) and read as the 8-bit display image of [`super::display`] pixel by pixel
//! ([`super::frame`]): native little-endian pixel data that ends the file (the usual case)
//! is not loaded but read from the file a row at a time, other native data where the parsed
//! data set holds it, each in its own sample width; the model input and the reduced display
//! image are sampled from the frame without a full-resolution copy.

use super::display::{
    default_voi, DisplayPipeline, GrayImage, GrayView, LutTable, ModalityLut, Voi, WindowFunction,
};
use super::frame::{DisplayFrame, FileSamples, Frame, Samples, Tone};
use super::manifest::InputSpec;
use super::resize::{fit, reduce};
use super::samples::{BitLayout, SampleError};
use super::stream_check::check_stream;
use dicom_core::header::{HasLength, Header};
use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value as DicomValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{PhotometricInterpretation, PixelDecoder, PixelRepresentation};
use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::rc::Rc;

/// Native pixel data: loaded with the data set, or left in the file at this offset.
enum Native<'a> {
    Loaded(Samples<'a>),
    InFile(u64),
}

/// An image whose header declares more pixel samples than `inference.max_pixels`; it is
/// never decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "image too large to analyse: Rows x Columns x Frames x Samples per Pixel = {declared}, over inference.max_pixels = {limit}"
)]
pub struct TooManyPixels {
    /// The product the header declares (saturating).
    pub declared: u64,
    /// The configured limit.
    pub limit: u64,
}

/// The integer value of `tag` in `obj`, or `absent` when missing, negative or unreadable.
pub(super) fn count_of(obj: &InMemDicomObject, tag: Tag, absent: u64) -> u64 {
    match obj.element_opt(tag).ok().flatten() {
        None => absent,
        Some(e) => e
            .to_int::<i64>()
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(absent),
    }
}

/// Rows × Columns × Number of Frames × Samples per Pixel as `obj` declares them (absent
/// frames and samples count as 1); saturating, so a lying header cannot wrap around.
pub fn declared_pixels(obj: &InMemDicomObject) -> u64 {
    count_of(obj, tags::ROWS, 0)
        .saturating_mul(count_of(obj, tags::COLUMNS, 0))
        .saturating_mul(count_of(obj, tags::NUMBER_OF_FRAMES, 1).max(1))
        .saturating_mul(count_of(obj, tags::SAMPLES_PER_PIXEL, 1).max(1))
}

/// Refuses an image over `limit` pixel samples, before anything is decoded.
pub fn check_pixel_budget(obj: &InMemDicomObject, limit: u64) -> Result<(), TooManyPixels> {
    let declared = declared_pixels(obj);
    if declared > limit {
        return Err(TooManyPixels { declared, limit });
    }
    Ok(())
}

/// What [`check_held_pixel_budget`] found of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budgeted {
    /// The bytes its pixels take uncompressed.
    pub bytes: u64,
    /// Its SOP Instance UID (from the data set, else the file meta).
    pub sop_instance_uid: String,
}

/// Checks the pixel budget of the open file `file` from its header alone (everything
/// before Pixel Data), so an image over the limit is never loaded, let alone decoded.
pub fn check_held_pixel_budget(
    file: &std::fs::File,
    limit: u64,
) -> Result<Budgeted, DicomImageError> {
    let (summary, header) = scan_and_header(file)?;
    check_pixel_budget(&header, limit).map_err(|e| DicomImageError::TooLarge(e.to_string()))?;
    check_pixel_data_size(&header, &summary)?;
    Ok(Budgeted {
        bytes: declared_bytes(&header),
        sop_instance_uid: sop_instance_uid_of(&header),
    })
}

/// The bounded pre-scan of the open file `file`, then its header (everything before Pixel
/// Data), both read from its start.
fn scan_and_header(
    file: &std::fs::File,
) -> Result<(crate::dataset_guard::Summary, DefaultDicomObject), DicomImageError> {
    let open_error = |e: &dyn std::fmt::Display| DicomImageError::Open(e.to_string());
    let summary = crate::dataset_guard::check_open_file(file).map_err(|e| open_error(&e))?;
    rewind(file)?;
    let header = crate::store::header::header_from(file).map_err(|e| open_error(&e))?;
    Ok((summary, header))
}

/// The SOP Instance UID of `obj`: its data set's, else its file meta's.
fn sop_instance_uid_of(obj: &DefaultDicomObject) -> String {
    let uid = text(obj, tags::SOP_INSTANCE_UID);
    if !uid.is_empty() {
        return uid;
    }
    obj.meta()
        .media_storage_sop_instance_uid
        .trim_matches([' ', '\0'])
        .to_string()
}

/// The bytes the image attributes of `header` declare uncompressed.
fn declared_bytes(header: &InMemDicomObject) -> u64 {
    let bits = count_of(header, tags::BITS_ALLOCATED, 16).clamp(1, 64);
    declared_pixels(header).saturating_mul(bits).div_ceil(8)
}

/// Slack over the declared image size allowed to the Pixel Data value: fragment items,
/// offset tables, and lossless codestreams a little larger than their samples.
const PIXEL_DATA_SLACK: u64 = 1024 * 1024;

/// Refuses a file whose Pixel Data holds more than twice (plus `PIXEL_DATA_SLACK`) the
/// bytes its image attributes declare (`summary` from [`crate::dataset_guard`]), before it
/// is loaded into memory: the attributes are held to `inference.max_pixels`, so this bounds
/// what loading the pixel data can cost, whatever length the sender wrote.
pub fn check_pixel_data_size(
    header: &InMemDicomObject,
    summary: &crate::dataset_guard::Summary,
) -> Result<(), DicomImageError> {
    let Some(bytes) = summary.pixel_data_bytes else {
        return Ok(());
    };
    let declared = declared_bytes(header);
    let limit = declared.saturating_mul(2).saturating_add(PIXEL_DATA_SLACK);
    if bytes > limit {
        return Err(DicomImageError::Invalid(format!(
            "Pixel Data holds {bytes} bytes, over twice the {declared} its image attributes declare"
        )));
    }
    Ok(())
}

/// Why a DICOM image cannot be turned into pixels.
#[derive(Debug, thiserror::Error)]
pub enum DicomImageError {
    /// Not a readable DICOM Part 10 file.
    #[error("cannot read DICOM file: {0}")]
    Open(String),
    /// The pixel data cannot be decoded (unsupported transfer syntax, corrupt stream...).
    #[error("cannot decode pixel data: {0}")]
    Decode(String),
    /// The decoded pixel data does not match the image attributes.
    #[error("invalid pixel data: {0}")]
    Invalid(String),
    /// More pixel samples than `inference.max_pixels` ([`TooManyPixels`]).
    #[error("{0}")]
    TooLarge(String),
}

/// Header attributes of an image, as eligibility and results need them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageHeader {
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Modality (0008,0060).
    pub modality: String,
    /// Body Part Examined (0018,0015), upper case.
    pub body_part: String,
    /// View Position (0018,5101), upper case.
    pub view_position: String,
    /// Presentation Intent Type (0008,0068): FOR PRESENTATION / FOR PROCESSING.
    pub presentation_intent: String,
    /// Derivation Description (0008,2111).
    pub derivation_description: String,
    /// Series Description (0008,103E).
    pub series_description: String,
    /// Study Description (0008,1030).
    pub study_description: String,
    /// Whether the object has a Pixel Data element.
    pub has_pixels: bool,
    /// Patient's Age (0010,1010), as written.
    pub patient_age: String,
    /// Patient's Birth Date (0010,0030), as written.
    pub patient_birth_date: String,
    /// Study Date (0008,0020), as written.
    pub study_date: String,
    /// Rows (0028,0010); 0 when absent.
    pub rows: u32,
    /// Columns (0028,0011); 0 when absent.
    pub columns: u32,
}

/// An opened DICOM file.
pub struct DicomImage {
    /// The data set; without its Pixel Data when that is left in the file (`pixels_at`).
    obj: DefaultDicomObject,
    header: ImageHeader,
    /// The file everything was read from (and the pixel data left in it is read from).
    file: std::fs::File,
    /// Byte offset in the file of native little-endian pixel data that was not loaded.
    pixels_at: Option<u64>,
}

/// Explicit VR Little Endian.
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// Implicit VR Little Endian.
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

/// Where the value of the top-level Pixel Data of a native little-endian file starts, when
/// it is the last element of the file (as it nearly always is): the walk of the whole file
/// (`summary`) must have found the top-level Pixel Data last and exactly as long as
/// Rows × Columns × Frames × Samples × Bits Allocated give (made even), and that length
/// must end the file right after a Pixel Data element header (OB/OW) declaring it. A file
/// whose last bytes only look like Pixel Data (a second image inside a longer Pixel Data
/// value, or inside an element after it) is not read there: the pixels analysed are the
/// ones a viewer shows. `None` otherwise (the file is then loaded whole).
fn native_pixel_offset(
    header: &DefaultDicomObject,
    summary: &crate::dataset_guard::Summary,
    file: &std::fs::File,
    size: u64,
) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let ts = header
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' ']);
    let explicit = match ts {
        EXPLICIT_LE => true,
        IMPLICIT_LE => false,
        _ => return None,
    };
    let allocated = count_of(header, tags::BITS_ALLOCATED, 0);
    if !matches!(allocated, 8 | 16 | 32) {
        return None;
    }
    let len = count_of(header, tags::ROWS, 0)
        .checked_mul(count_of(header, tags::COLUMNS, 0))?
        .checked_mul(count_of(header, tags::NUMBER_OF_FRAMES, 1).max(1))?
        .checked_mul(count_of(header, tags::SAMPLES_PER_PIXEL, 1).max(1))?
        .checked_mul(allocated / 8)?;
    let len = len + (len & 1);
    if !summary.pixel_data_last || summary.pixel_data_bytes != Some(len) {
        return None;
    }
    let value_len = u32::try_from(len)
        .ok()
        .filter(|l| *l != u32::MAX && *l > 0)?;
    let head = if explicit { 12 } else { 8 };
    let at = size.checked_sub(len)?;
    let mut element = [0u8; 12];
    file.read_exact_at(&mut element[..head], at.checked_sub(head as u64)?)
        .ok()?;
    let declared = u32::from_le_bytes(element[head - 4..head].try_into().ok()?);
    let tag_ok = element[..4] == [0xE0, 0x7F, 0x10, 0x00];
    let vr_ok = !explicit || matches!(&element[4..8], b"OW\0\0" | b"OB\0\0");
    (tag_ok && vr_ok && declared == value_len).then_some(at)
}

/// Moves `file`'s offset back to its start (before a sequential read of it).
fn rewind(mut file: &std::fs::File) -> Result<(), DicomImageError> {
    use std::io::Seek;
    file.rewind()
        .map_err(|e| DicomImageError::Open(format!("seek: {e}")))
}

impl std::fmt::Debug for DicomImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomImage")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// The text of element `tag` of `obj`, padding (spaces, NUL) trimmed; empty when it is
/// absent or not text.
pub(crate) fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| {
            e.to_str()
                .ok()
                .map(|s| s.trim_matches([' ', '\0']).to_string())
        })
        .unwrap_or_default()
}

impl DicomImage {
    /// Opens and parses the whole file (pixel data stays encoded until asked for).
    pub fn open(path: &Path) -> Result<DicomImage, DicomImageError> {
        Self::open_checked(path, None)
    }

    /// [`DicomImage::open`] of an image held to `max_pixels` pixel samples
    /// ([`check_pixel_budget`], [`DicomImageError::TooLarge`]), checked on the header
    /// before anything else is loaded: one pre-scan and one header parse, as the analysis
    /// and the previews need.
    pub fn open_within(path: &Path, max_pixels: u64) -> Result<DicomImage, DicomImageError> {
        Self::open_checked(path, Some(max_pixels))
    }

    fn open_checked(path: &Path, max_pixels: Option<u64>) -> Result<DicomImage, DicomImageError> {
        let file = std::fs::File::open(path)
            .map_err(|e| DicomImageError::Open(format!("{}: {e}", path.display())))?;
        Self::open_held(file, max_pixels)
    }

    /// [`DicomImage::open_within`] of the open file `file`: the pre-scan, the header, the
    /// pixel data and any decoding in a confined child all read this one file, so a file
    /// replaced at its path meanwhile is never what some of them read.
    pub fn open_held(
        file: std::fs::File,
        max_pixels: Option<u64>,
    ) -> Result<DicomImage, DicomImageError> {
        let open_error = |e: &dyn std::fmt::Display| DicomImageError::Open(e.to_string());
        let len = file.metadata().map_err(|e| open_error(&e))?.len();
        // Native pixel data stays in the file (read a row at a time when decoded);
        // anything else is loaded whole, once its size is held to the image attributes.
        let (summary, header) = scan_and_header(&file)?;
        if let Some(limit) = max_pixels {
            check_pixel_budget(&header, limit)
                .map_err(|e| DicomImageError::TooLarge(e.to_string()))?;
        }
        let pixels_at = native_pixel_offset(&header, &summary, &file, len);
        let obj = match pixels_at {
            Some(_) => header,
            None => {
                check_pixel_data_size(&header, &summary)?;
                rewind(&file)?;
                OpenFileOptions::new()
                    .from_reader(&file)
                    .map_err(|e| open_error(&e))?
            }
        };
        let meta = obj.meta();
        let sop_instance_uid = sop_instance_uid_of(&obj);
        let mut sop_class_uid = text(&obj, tags::SOP_CLASS_UID);
        if sop_class_uid.is_empty() {
            sop_class_uid = meta
                .media_storage_sop_class_uid
                .trim_matches([' ', '\0'])
                .to_string();
        }
        let header = ImageHeader {
            sop_instance_uid,
            sop_class_uid,
            modality: text(&obj, tags::MODALITY).to_ascii_uppercase(),
            body_part: text(&obj, tags::BODY_PART_EXAMINED).to_ascii_uppercase(),
            view_position: text(&obj, tags::VIEW_POSITION).to_ascii_uppercase(),
            presentation_intent: text(&obj, tags::PRESENTATION_INTENT_TYPE).to_ascii_uppercase(),
            derivation_description: text(&obj, tags::DERIVATION_DESCRIPTION),
            series_description: text(&obj, tags::SERIES_DESCRIPTION),
            study_description: text(&obj, tags::STUDY_DESCRIPTION),
            has_pixels: pixels_at.is_some()
                || obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_some(),
            patient_age: text(&obj, tags::PATIENT_AGE),
            patient_birth_date: text(&obj, tags::PATIENT_BIRTH_DATE),
            study_date: text(&obj, tags::STUDY_DATE),
            rows: u32::try_from(count_of(&obj, tags::ROWS, 0)).unwrap_or(u32::MAX),
            columns: u32::try_from(count_of(&obj, tags::COLUMNS, 0)).unwrap_or(u32::MAX),
        };
        Ok(DicomImage {
            obj,
            header,
            file,
            pixels_at,
        })
    }

    /// The file's transfer syntax UID (without padding).
    pub fn transfer_syntax(&self) -> &str {
        self.obj
            .meta()
            .transfer_syntax()
            .trim_end_matches(['\0', ' '])
    }

    /// The header attributes.
    pub fn header(&self) -> &ImageHeader {
        &self.header
    }

    /// Whether the pixel data was left in the file (native little endian, ending the file),
    /// to be read a row at a time, rather than loaded with the data set.
    pub fn pixels_in_file(&self) -> bool {
        self.pixels_at.is_some()
    }

    /// Refuses the image when it declares more than `limit` pixel samples
    /// ([`declared_pixels`]); call before [`DicomImage::display_image`].
    pub fn check_pixel_budget(&self, limit: u64) -> Result<(), TooManyPixels> {
        check_pixel_budget(&self.obj, limit)
    }

    /// Decodes the first frame and maps it to the 8-bit display image. Pixel data in a
    /// transfer syntax whose decoder is native code (JPEG-LS, JPEG 2000) is decoded in a
    /// sandboxed child process ([`super::decode_sandbox`]).
    pub fn display_image(&self) -> Result<GrayImage, DicomImageError> {
        self.with_view(|view| view.to_image())
    }

    /// From the first frame: the model's input image, cropped and resized as `spec` says.
    /// Decoded in this process, the frame's stored samples are read in place, so no
    /// full-resolution display image is made.
    pub fn input_image(&self, spec: &InputSpec) -> Result<GrayImage, DicomImageError> {
        self.input_image_sized(spec).map(|(input, _)| input)
    }

    /// [`Self::input_image`] with the width and height of the display image it was
    /// sampled from (where a heatmap of the input lies).
    pub fn input_image_sized(
        &self,
        spec: &InputSpec,
    ) -> Result<(GrayImage, (u32, u32)), DicomImageError> {
        self.with_view(|view| {
            let input = fit(view, spec.crop, spec.resize, spec.width, spec.height);
            (input, (view.width(), view.height()))
        })
    }

    /// The display image of the first frame reduced to at most `max_side` on its long
    /// side ([`super::resize::reduce`]).
    pub fn reduced_display(&self, max_side: u32) -> Result<GrayImage, DicomImageError> {
        self.with_view(|view| reduce(view, max_side))
    }

    /// Runs `use_view` over the first frame's display image: decoded in a sandboxed child
    /// for the transfer syntaxes that need it, else read in place ([`Self::with_frame`]).
    fn with_view<R>(
        &self,
        use_view: impl FnOnce(&dyn GrayView) -> R,
    ) -> Result<R, DicomImageError> {
        let ts = self.obj.meta().transfer_syntax();
        if super::decode_sandbox::is_sandboxed(ts) {
            match super::decode_sandbox::decoder_exe() {
                Some(exe) => {
                    let budget = declared_pixels(&self.obj);
                    let image = super::decode_sandbox::decode_display(
                        &exe,
                        &self.file,
                        budget,
                        super::decode_sandbox::DEADLINE,
                    )?;
                    return Ok(use_view(&image));
                }
                // The crate's own unit tests exercise the decoders themselves.
                None if cfg!(test) => {}
                None => {
                    return Err(DicomImageError::Decode(format!(
                        "no duli executable to decode {} in its confined process: refused",
                        ts.trim_end_matches(['\0', ' '])
                    )))
                }
            }
        }
        self.with_frame(|frame| use_view(frame))
    }

    /// [`DicomImage::display_image`] in this process, whatever the transfer syntax (the
    /// sandboxed child's own decode).
    pub fn decode_in_process(&self) -> Result<GrayImage, DicomImageError> {
        self.with_frame(|frame| frame.to_image())
    }

    /// Native (uncompressed) pixel data as it sits in the parsed file: borrowed, in its
    /// own sample width. `None` for encapsulated pixel data, which a decoder must expand.
    fn native_samples(&self) -> Option<Native<'_>> {
        if let Some(at) = self.pixels_at {
            return Some(Native::InFile(at));
        }
        if super::decode_sandbox::is_sandboxed(self.obj.meta().transfer_syntax()) {
            return None;
        }
        let element = self.obj.element_opt(tags::PIXEL_DATA).ok().flatten()?;
        match element.value() {
            DicomValue::Primitive(PrimitiveValue::U16(words)) => {
                Some(Native::Loaded(Samples::Words(Cow::Borrowed(&words[..]))))
            }
            DicomValue::Primitive(PrimitiveValue::U8(bytes)) => {
                Some(Native::Loaded(Samples::Bytes(Cow::Borrowed(&bytes[..]))))
            }
            DicomValue::Primitive(other) => Some(Native::Loaded(Samples::Bytes(Cow::Owned(
                other.to_bytes().into_owned(),
            )))),
            _ => None,
        }
    }

    /// The object's attributes without its pixel data (one empty fragment stands in for
    /// it, one frame), so that the pixel data library reads the image attributes (window,
    /// rescale, VOI LUT...) exactly as for a decode without copying the pixels.
    fn attributes_only(&self) -> Result<DefaultDicomObject, DicomImageError> {
        if let Some(frames) = self.obj.element_opt(tags::NUMBER_OF_FRAMES).ok().flatten() {
            if !frames.is_empty() && !matches!(frames.to_int::<i32>(), Ok(n) if n > 0) {
                return Err(DicomImageError::Decode(
                    "invalid Number of Frames".to_string(),
                ));
            }
        }
        let mut attributes = DefaultDicomObject::new_empty_with_meta(self.obj.meta().clone());
        for element in self.obj.iter() {
            if element.tag() != tags::PIXEL_DATA && element.tag() != tags::NUMBER_OF_FRAMES {
                attributes.put(element.clone());
            }
        }
        attributes.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PixelFragmentSequence::new_fragments(vec![Vec::<u8>::new()]),
        ));
        Ok(attributes)
    }

    /// Decodes the first frame in this process and runs `use_frame` over its stored samples
    /// ([`Frame`]) with the image attributes the pixel data library read (window, rescale,
    /// photometric interpretation...): native pixel data is not copied, encapsulated pixel
    /// data is decoded once into its native sample width.
    pub fn with_stored_frame<R>(
        &self,
        use_frame: impl FnOnce(
            Frame<'_>,
            &dicom_pixeldata::DecodedPixelData<'_>,
        ) -> Result<R, DicomImageError>,
    ) -> Result<R, DicomImageError> {
        check_stream(&self.obj, self.obj.meta().transfer_syntax())?;
        let native = self.native_samples();
        let is_native = native.is_some();
        let attributes;
        let source = if is_native {
            attributes = self.attributes_only()?;
            &attributes
        } else {
            &self.obj
        };
        // The checks above hold the streams to the header; a decoder defect they do not
        // foresee still costs this image only, not the thread decoding it.
        let decoded = catch_unwind(AssertUnwindSafe(|| source.decode_pixel_data_frame(0)))
            .map_err(|_| DicomImageError::Decode("the decoder failed on this pixel data".into()))?
            .map_err(|e| DicomImageError::Decode(e.to_string()))?;
        let (width, height) = (decoded.columns(), decoded.rows());
        let spp = usize::from(decoded.samples_per_pixel());
        let count = width as usize * height as usize;
        if count == 0 || spp == 0 {
            return Err(DicomImageError::Invalid("empty image".into()));
        }
        let layout = BitLayout {
            allocated: decoded.bits_allocated(),
            stored: decoded.bits_stored(),
            high: decoded.high_bit(),
            signed: decoded.pixel_representation() == PixelRepresentation::Signed,
        };
        let mut file_error = None;
        let samples = match native {
            Some(Native::Loaded(samples)) => samples,
            Some(Native::InFile(at)) => {
                let file = self
                    .file
                    .try_clone()
                    .map_err(|e| DicomImageError::Open(e.to_string()))?;
                let row_bytes = width as usize * spp * usize::from(layout.allocated / 8);
                let rows = Rc::new(FileSamples::new(file, at, row_bytes, height as usize));
                file_error = Some(Rc::clone(&rows));
                Samples::File(rows)
            }
            None => Samples::Bytes(Cow::Borrowed(
                decoded
                    .frame_data(0)
                    .map_err(|e| DicomImageError::Decode(e.to_string()))?,
            )),
        };
        let frame = Frame::new(samples, layout, width, height, spp).map_err(|e| match e {
            SampleError::Short { .. } if is_native => DicomImageError::Decode(e.to_string()),
            other => DicomImageError::Invalid(other.to_string()),
        })?;
        let out = use_frame(frame, &decoded)?;
        match file_error.and_then(|rows| rows.error()) {
            Some(e) => Err(DicomImageError::Decode(format!("reading pixel data: {e}"))),
            None => Ok(out),
        }
    }

    /// Decodes the first frame in this process and runs `use_frame` over its display
    /// image read in place ([`DisplayFrame`], [`Self::with_stored_frame`]).
    pub fn with_frame<R>(
        &self,
        use_frame: impl FnOnce(&DisplayFrame<'_>) -> R,
    ) -> Result<R, DicomImageError> {
        self.with_stored_frame(|frame, decoded| {
            self.display_frame(frame, decoded).map(|d| use_frame(&d))
        })
    }

    /// The display view of a decoded frame: the grayscale pipeline's levels, or the grey of
    /// a colour image.
    fn display_frame<'a>(
        &self,
        frame: Frame<'a>,
        decoded: &dicom_pixeldata::DecodedPixelData<'_>,
    ) -> Result<DisplayFrame<'a>, DicomImageError> {
        let spp = frame.samples_per_pixel();
        let layout = frame.layout();
        let photometric = decoded.photometric_interpretation().clone();
        if spp != 1 {
            let tone = colour_tone(spp, &photometric, decoded)?;
            return Ok(DisplayFrame::new(frame, tone));
        }
        let monochrome1 = match photometric {
            PhotometricInterpretation::Monochrome1 => true,
            PhotometricInterpretation::Monochrome2 => false,
            other => {
                return Err(DicomImageError::Invalid(format!(
                    "photometric interpretation {other} is not a grayscale image"
                )))
            }
        };
        let modality = self.modality_lut(decoded, layout.signed)?;
        let voi = match decoded
            .window()
            .ok()
            .flatten()
            .and_then(|w| w.first().copied())
        {
            Some(w) => Voi::Window {
                center: w.center,
                width: w.width,
                function: match decoded
                    .voi_lut_function()
                    .ok()
                    .flatten()
                    .and_then(|f| f.first().copied())
                {
                    Some(dicom_pixeldata::VoiLutFunction::LinearExact) => {
                        WindowFunction::LinearExact
                    }
                    Some(dicom_pixeldata::VoiLutFunction::Sigmoid) => WindowFunction::Sigmoid,
                    _ => WindowFunction::Linear,
                },
            },
            None => match decoded
                .voi_lut_sequence()
                .ok()
                .flatten()
                .and_then(|s| s.first())
            {
                Some(lut) => Voi::Table(LutTable {
                    first_mapped: i64::from(lut.min_pixel_value),
                    bits: lut.bits_stored,
                    data: lut.data.clone(),
                }),
                None => default_voi(frame.values(), layout.stored, layout.signed, &modality),
            },
        };
        let pipeline = DisplayPipeline {
            modality,
            voi,
            monochrome1,
        };
        // Levels for every value the layout can hold when that makes a table (the same
        // level per value as a table over the values present), else over those present.
        let (lo, hi) = match layout.range() {
            (lo, hi) if hi - lo < 1 << 17 => (lo as i32, hi as i32),
            _ => frame.range(),
        };
        let levels = pipeline.levels(lo, hi);
        Ok(DisplayFrame::new(frame, Tone::Gray(levels)))
    }

    /// Rescale Slope/Intercept, or the first Modality LUT Sequence item when present.
    fn modality_lut(
        &self,
        decoded: &dicom_pixeldata::DecodedPixelData<'_>,
        signed: bool,
    ) -> Result<ModalityLut, DicomImageError> {
        if let Some(seq) = self
            .obj
            .element_opt(tags::MODALITY_LUT_SEQUENCE)
            .ok()
            .flatten()
        {
            if let Some(item) = seq.items().and_then(|items| items.first()) {
                return Ok(ModalityLut::Table(read_lut(item, signed)?));
            }
        }
        let r = decoded
            .rescale()
            .ok()
            .and_then(|r| r.first().copied())
            .unwrap_or(dicom_pixeldata::Rescale {
                slope: 1.0,
                intercept: 0.0,
            });
        Ok(ModalityLut::Rescale {
            slope: r.slope,
            intercept: r.intercept,
        })
    }
}

/// Reads a LUT item (LUT Descriptor + LUT Data).
fn read_lut(item: &InMemDicomObject, signed: bool) -> Result<LutTable, DicomImageError> {
    let bad = |what: &str| DicomImageError::Invalid(format!("Modality LUT: {what}"));
    let desc: Vec<i64> = item
        .element(tags::LUT_DESCRIPTOR)
        .map_err(|_| bad("no LUT Descriptor"))?
        .to_multi_int::<i64>()
        .map_err(|_| bad("unreadable LUT Descriptor"))?;
    if desc.len() != 3 {
        return Err(bad("LUT Descriptor needs 3 values"));
    }
    // US or SS values (PS3.3 C.11.1.1): anything else (a 64-bit VR) is no descriptor.
    if !(0..=65535).contains(&desc[0]) || !(-32768..=65535).contains(&desc[1]) {
        return Err(bad("LUT Descriptor values out of range"));
    }
    let entries = if desc[0] == 0 {
        65536
    } else {
        desc[0] as usize
    };
    let first_mapped = if signed && desc[1] > 32767 {
        desc[1] - 65536
    } else {
        desc[1]
    };
    let data: Vec<u16> = item
        .element(tags::LUT_DATA)
        .map_err(|_| bad("no LUT Data"))?
        .to_multi_int::<u16>()
        .map_err(|_| bad("unreadable LUT Data"))?;
    if data.len() < entries {
        return Err(bad("LUT Data shorter than its descriptor"));
    }
    Ok(LutTable {
        first_mapped,
        bits: u8::try_from(desc[2].clamp(1, 16)).unwrap_or(16),
        data: data[..entries].to_vec(),
    })
}

/// Colour images (a Secondary Capture upload): grey = luma of RGB, or Y of YBR.
fn colour_tone(
    spp: usize,
    photometric: &PhotometricInterpretation,
    decoded: &dicom_pixeldata::DecodedPixelData<'_>,
) -> Result<Tone, DicomImageError> {
    if spp != 3 || decoded.bits_allocated() != 8 {
        return Err(DicomImageError::Invalid(format!(
            "{spp} samples per pixel of {} bits is not supported",
            decoded.bits_allocated()
        )));
    }
    let planar = decoded.planar_configuration() == dicom_pixeldata::PlanarConfiguration::PixelFirst;
    Ok(if matches!(photometric, PhotometricInterpretation::Rgb) {
        Tone::Rgb { planar }
    } else {
        Tone::FirstSample { planar }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::raster::read_image_file;
    use crate::infer::testdata::samples_dir;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    #[test]
    fn pixel_budget_counts_rows_columns_frames_and_samples() {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(60_000u16),
        ));
        obj.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(60_000u16),
        ));
        // 3.6 G pixels in a header of a few bytes: refused before any decode.
        assert_eq!(declared_pixels(&obj), 3_600_000_000);
        assert_eq!(
            check_pixel_budget(&obj, 100_000_000),
            Err(TooManyPixels {
                declared: 3_600_000_000,
                limit: 100_000_000
            })
        );
        let mut small = InMemDicomObject::new_empty();
        small.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(2000u16),
        ));
        small.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(2000u16),
        ));
        assert_eq!(check_pixel_budget(&small, 100_000_000), Ok(()));
        small.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("9"),
        ));
        small.put(DataElement::new(
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(3u16),
        ));
        assert_eq!(declared_pixels(&small), 108_000_000);
        assert!(check_pixel_budget(&small, 100_000_000).is_err());
        // Garbage counts as the default, never as a huge number.
        small.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("-5"),
        ));
        assert_eq!(declared_pixels(&small), 12_000_000);
    }

    #[test]
    fn every_sample_variant_decodes_to_the_png_levels() {
        let Some(dir) = samples_dir() else { return };
        let mut checked = 0;
        for variant in std::fs::read_dir(dir.join("dicom")).unwrap() {
            let variant = variant.unwrap().path();
            if !variant.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&variant).unwrap() {
                let f = f.unwrap().path();
                let name = f.file_stem().unwrap().to_string_lossy().to_string();
                let img = DicomImage::open(&f).unwrap();
                assert_eq!(img.header().modality, "DX");
                let disp = img
                    .display_image()
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                let png = read_image_file(&dir.join("png").join(format!("{name}.png")), u64::MAX)
                    .unwrap();
                assert_eq!((disp.width, disp.height), (png.width, png.height));
                assert!(
                    disp.pixels == png.pixels,
                    "{} differs from its PNG",
                    f.display()
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 16 + 8 * 2);
    }

    /// A small image followed by data of any size past its pixels is refused before it is
    /// read: the pixels are then not at the end of the file, and a whole-file read would
    /// hold whatever follows them.
    #[test]
    fn data_after_the_pixels_is_held_to_the_header_budget() {
        use crate::dataset_guard::fixtures::{long_header, part10, short};
        let mut body = short(0x0028, 0x0010, b"US", &8u16.to_le_bytes());
        body.extend(short(0x0028, 0x0011, b"US", &8u16.to_le_bytes()));
        body.extend(short(0x0028, 0x0100, b"US", &8u16.to_le_bytes()));
        body.extend(long_header(0x7FE0, 0x0010, b"OB", 64));
        body.resize(body.len() + 64, 7);
        let trailing = (crate::dataset_guard::MAX_HEADER_BYTES / 2 + 2) as usize;
        for element in [0x1010u16, 0x1011] {
            body.extend(long_header(0x7FE1, element, b"OB", trailing as u32));
            body.resize(body.len() + trailing, 0);
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("trailing.dcm");
        std::fs::write(&path, part10("1.2.840.10008.1.2.1", &body)).unwrap();
        match DicomImage::open(&path) {
            Err(DicomImageError::Open(e)) => assert!(e.contains("besides Pixel Data"), "{e}"),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("opened a file with 64 MiB past its pixels"),
        }
    }

    #[test]
    fn broken_pixel_data_is_an_error_not_a_panic() {
        let Some(dir) = samples_dir() else { return };
        let src = dir.join("dicom/explicit-le/PNEUMONIA_01.dcm");
        let bytes = std::fs::read(&src).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        // Cut the file in the middle of its pixel data.
        let cut = tmp.path().join("cut.dcm");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        match DicomImage::open(&cut) {
            Err(_) => {}
            Ok(img) => assert!(img.display_image().is_err()),
        }
        // A JPEG-LS stream with its payload overwritten.
        let src = dir.join("dicom/jpeg-ls-lossless/PNEUMONIA_01.dcm");
        let mut bytes = std::fs::read(&src).unwrap();
        let n = bytes.len();
        for b in &mut bytes[n - 20_000..n - 100] {
            *b = 0xFF;
        }
        let bad = tmp.path().join("bad.dcm");
        std::fs::write(&bad, &bytes).unwrap();
        if let Ok(img) = DicomImage::open(&bad) {
            assert!(img.display_image().is_err());
        }
    }
}
