//! Checks of encapsulated pixel data against the image attributes, before a decoder sees
//! it. The decoders trust what the stream and the header say: the RLE decoder indexes the
//! fragment by the segment offsets it reads, and the JPEG adapter copies the decoded frame
//! into a buffer sized from Rows × Columns × Samples per Pixel × Bits Allocated — a frame
//! header that declares another size makes it slice past that buffer (a panic), and makes
//! the JPEG decoder allocate by dimensions no pixel budget has checked. So each stream is
//! held to the header here: RLE segments (PS3.5 Annex G) and the JPEG frame header
//! (ITU-T T.81 B.2.2) of the first frame. JPEG-LS and JPEG 2000 are decoded in a confined
//! child ([`super::decode_sandbox`]); other transfer syntaxes pass unchanged.

use super::dicom_image::{count_of, DicomImageError};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::borrow::Cow;

/// RLE Lossless.
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Output bytes of one PackBits segment, counted without decoding (PS3.5 Annex G.3.1).
fn packbits_output_len(segment: &[u8]) -> u64 {
    let mut out = 0u64;
    let mut at = 0usize;
    while at < segment.len() {
        let n = segment[at];
        at += 1;
        match n {
            0..=127 => {
                let literal = usize::from(n) + 1;
                out += literal.min(segment.len().saturating_sub(at)) as u64;
                at += literal;
            }
            128 => {}
            _ => {
                if at < segment.len() {
                    out += 257 - u64::from(n);
                }
                at += 1;
            }
        }
    }
    out
}

/// Checks every RLE fragment's header and segments before the decoder sees them: the
/// decoder indexes the fragment by the segment count and offsets it reads, allocates by
/// the count, and indexes decoded segments by Rows × Columns — each a panic or a huge
/// allocation on a lying fragment. Other transfer syntaxes pass unchanged.
pub fn check_rle(obj: &InMemDicomObject, transfer_syntax: &str) -> Result<(), DicomImageError> {
    if transfer_syntax.trim_end_matches(['\0', ' ']) != RLE_LOSSLESS {
        return Ok(());
    }
    let bad = |why: String| DicomImageError::Invalid(format!("RLE fragment {why}"));
    let plane = count_of(obj, tags::ROWS, 0).saturating_mul(count_of(obj, tags::COLUMNS, 0));
    let Some(fragments) = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .and_then(|e| e.value().fragments())
    else {
        return Err(bad("sequence missing".into()));
    };
    for (frame, fragment) in fragments.iter().enumerate() {
        if fragment.len() < 64 {
            return Err(bad(format!("{frame}: shorter than its 64-byte header")));
        }
        let word = |i: usize| {
            u32::from_le_bytes([
                fragment[4 * i],
                fragment[4 * i + 1],
                fragment[4 * i + 2],
                fragment[4 * i + 3],
            ])
        };
        let segments = word(0) as usize;
        if !(1..=15).contains(&segments) {
            return Err(bad(format!("{frame}: {segments} segments")));
        }
        let mut bounds: Vec<usize> = (1..=segments).map(|i| word(i) as usize).collect();
        bounds.push(fragment.len());
        for (i, pair) in bounds.windows(2).enumerate() {
            let (start, end) = (pair[0], pair[1]);
            if start < 64 || start > end || end > fragment.len() {
                return Err(bad(format!(
                    "{frame}: segment {i} offset {start} out of order"
                )));
            }
            if packbits_output_len(&fragment[start..end]) < plane {
                return Err(bad(format!("{frame}: segment {i} decodes short")));
            }
        }
    }
    Ok(())
}

/// The transfer syntaxes whose frames the JPEG decoder (ITU-T T.81) expands in this
/// process: baseline, extended, lossless and lossless first-order prediction.
const JPEG_DECODED_IN_PROCESS: [&str; 4] = [
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
];

/// Checks the encapsulated pixel data of `obj` for its transfer syntax: RLE
/// ([`check_rle`]) and the JPEG processes decoded in this process ([`check_jpeg`]).
pub fn check_stream(obj: &InMemDicomObject, transfer_syntax: &str) -> Result<(), DicomImageError> {
    let uid = transfer_syntax.trim_end_matches(['\0', ' ']);
    if uid == RLE_LOSSLESS {
        check_rle(obj, uid)
    } else if JPEG_DECODED_IN_PROCESS.contains(&uid) {
        check_jpeg(obj)
    } else {
        Ok(())
    }
}

/// What a JPEG frame header (SOFn) declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegFrameHeader {
    /// The SOFn marker (0xC0 to 0xCF, not DHT, JPG or DAC).
    pub marker: u8,
    /// Sample precision P in bits.
    pub precision: u8,
    /// Number of lines Y (0: defined later by a DNL marker).
    pub lines: u16,
    /// Samples per line X.
    pub samples_per_line: u16,
    /// Number of image components Nf.
    pub components: u8,
}

/// Why a JPEG stream has no frame header the decoder would read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegHeaderError {
    /// The stream does not begin with SOI.
    #[error("does not start with an SOI marker")]
    NoSoi,
    /// The bytes end before any frame header.
    #[error("ends before its frame header")]
    Ends,
    /// EOI comes before any frame header.
    #[error("ends (EOI) before its frame header")]
    EoiFirst,
    /// A scan comes before any frame header.
    #[error("has a scan before its frame header")]
    ScanFirst,
    /// The bytes end inside a marker segment's length.
    #[error("ends inside a marker segment")]
    EndsInSegment,
    /// A marker segment declares a length below 2.
    #[error("has a marker segment of length {0}")]
    SegmentLength(usize),
    /// The bytes end inside the frame header.
    #[error("ends inside its frame header")]
    EndsInFrameHeader,
}

/// Reads the first frame header of a JPEG stream the way the decoder does: SOI, then
/// marker segments by their lengths (bytes between segments are skipped, as the decoder
/// tolerates them) until the first SOFn. An error when the stream ends, or a scan or EOI
/// comes, before any frame header.
pub fn jpeg_frame_header(stream: &[u8]) -> Result<JpegFrameHeader, JpegHeaderError> {
    if !stream.starts_with(&[0xFF, 0xD8]) {
        return Err(JpegHeaderError::NoSoi);
    }
    let mut at = 2usize;
    loop {
        while stream.get(at).is_some_and(|&b| b != 0xFF) {
            at += 1;
        }
        while stream.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&marker) = stream.get(at) else {
            return Err(JpegHeaderError::Ends);
        };
        at += 1;
        match marker {
            // A stuffed zero, RSTn, SOI or TEM: no segment follows.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            0xD9 => return Err(JpegHeaderError::EoiFirst),
            0xDA => return Err(JpegHeaderError::ScanFirst),
            _ => {}
        }
        let length = match stream.get(at..at + 2) {
            Some(bytes) => usize::from(u16::from_be_bytes([bytes[0], bytes[1]])),
            None => return Err(JpegHeaderError::EndsInSegment),
        };
        if length < 2 {
            return Err(JpegHeaderError::SegmentLength(length));
        }
        let is_frame_header =
            matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_frame_header {
            let Some(h) = stream.get(at + 2..at + 8) else {
                return Err(JpegHeaderError::EndsInFrameHeader);
            };
            return Ok(JpegFrameHeader {
                marker,
                precision: h[0],
                lines: u16::from_be_bytes([h[1], h[2]]),
                samples_per_line: u16::from_be_bytes([h[3], h[4]]),
                components: h[5],
            });
        }
        at += length;
    }
}

/// The bytes of the first frame as the JPEG adapter gathers them: its one fragment when
/// there is one fragment per frame, otherwise the fragments from the first offset of the
/// Basic Offset Table up to the second.
fn first_jpeg_frame<'a>(fragments: &'a [Vec<u8>], offsets: &[u32], frames: u64) -> Cow<'a, [u8]> {
    if fragments.len() == 1 || fragments.len() as u64 == frames {
        return Cow::Borrowed(&fragments[0][..]);
    }
    let start = offsets.first().copied().unwrap_or(0) as usize;
    let next = offsets.get(1).map(|&o| o as usize);
    let mut offset = 0usize;
    let mut frame = Vec::new();
    for fragment in fragments {
        if offset >= start {
            frame.extend_from_slice(fragment);
        }
        offset = offset.saturating_add(fragment.len() + 8);
        if next.is_some_and(|next| offset >= next) {
            break;
        }
    }
    Cow::Owned(frame)
}

/// Checks the first frame's JPEG frame header against the image attributes: Rows and
/// Columns, Samples per Pixel, and a sample precision whose decoded width (one byte for 8
/// bits, two otherwise) is Bits Allocated. The decoder's output then fits the buffer the
/// adapter copies it into, and it allocates no more than the pixel budget allowed.
pub fn check_jpeg(obj: &InMemDicomObject) -> Result<(), DicomImageError> {
    let bad = |why: String| DicomImageError::Invalid(format!("JPEG stream {why}"));
    let Some(pixel_data) = obj.element_opt(tags::PIXEL_DATA).ok().flatten() else {
        return Err(bad("missing: no Pixel Data".into()));
    };
    let (Some(fragments), Some(offsets)) = (
        pixel_data.value().fragments(),
        pixel_data.value().offset_table(),
    ) else {
        return Err(bad("missing: Pixel Data is not encapsulated".into()));
    };
    if fragments.is_empty() {
        return Err(bad("missing: no fragment".into()));
    }
    let frames = count_of(obj, tags::NUMBER_OF_FRAMES, 1).max(1);
    let header = jpeg_frame_header(&first_jpeg_frame(fragments, offsets, frames))
        .map_err(|e| bad(e.to_string()))?;
    let rows = count_of(obj, tags::ROWS, 0);
    let columns = count_of(obj, tags::COLUMNS, 0);
    if header.lines == 0 || header.samples_per_line == 0 {
        // Zero lines defers the height to a DNL marker after the first scan.
        return Err(bad(format!(
            "frame is {} x {} (columns x lines): an empty or deferred size",
            header.samples_per_line, header.lines
        )));
    }
    if u64::from(header.lines) != rows || u64::from(header.samples_per_line) != columns {
        return Err(bad(format!(
            "frame is {} x {} (columns x lines), the header says Columns {columns}, Rows {rows}",
            header.samples_per_line, header.lines
        )));
    }
    let samples = count_of(obj, tags::SAMPLES_PER_PIXEL, 1);
    if u64::from(header.components) != samples {
        return Err(bad(format!(
            "has {} components, the header says Samples per Pixel {samples}",
            header.components
        )));
    }
    let allocated = count_of(obj, tags::BITS_ALLOCATED, 0);
    let decoded_bits = if header.precision == 8 { 8 } else { 16 };
    if allocated != decoded_bits {
        return Err(bad(format!(
            "has {}-bit samples, which do not fit Bits Allocated {allocated}",
            header.precision
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::PixelFragmentSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    #[test]
    fn lying_rle_fragments_are_refused_before_decoding() {
        let with = |fragment: Vec<u8>| check_rle(&image(4, 4, 1, 8, vec![fragment]), RLE_LOSSLESS);
        let header = |count: u32, offsets: &[u32]| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&count.to_le_bytes());
            for (i, o) in offsets.iter().enumerate() {
                h[4 + 4 * i..8 + 4 * i].copy_from_slice(&o.to_le_bytes());
            }
            h
        };
        // One segment: a run of 16 zeros (PackBits 0xF1 = 257 - 241 = 16 copies).
        let mut good = header(1, &[64]);
        good.extend_from_slice(&[0xF1, 0x00]);
        assert!(with(good).is_ok());
        // A segment count of 0x00FFFFFF made the decoder slice far past the fragment.
        let mut lie = header(0x00FF_FFFF, &[64]);
        lie.extend_from_slice(&[0xF1, 0x00]);
        assert!(with(lie).is_err());
        // An offset beyond the fragment.
        let mut lie = header(1, &[9_000]);
        lie.extend_from_slice(&[0xF1, 0x00]);
        assert!(with(lie).is_err());
        // A segment that decodes to fewer bytes than Rows x Columns.
        let mut short = header(1, &[64]);
        short.extend_from_slice(&[0x02, 1, 2, 3]);
        assert!(with(short).is_err());
        assert!(with(vec![1, 0, 0]).is_err());
        // Other transfer syntaxes are not this check's business.
        let obj = InMemDicomObject::new_empty();
        assert!(check_rle(&obj, "1.2.840.10008.1.2.1").is_ok());
    }

    /// An object with these image attributes and `fragments` as its Pixel Data.
    fn image(
        rows: u16,
        columns: u16,
        spp: u16,
        allocated: u16,
        fragments: Vec<Vec<u8>>,
    ) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        for (tag, value) in [
            (tags::ROWS, rows),
            (tags::COLUMNS, columns),
            (tags::SAMPLES_PER_PIXEL, spp),
            (tags::BITS_ALLOCATED, allocated),
        ] {
            obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
        }
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PixelFragmentSequence::new_fragments(fragments),
        ));
        obj
    }

    /// SOI, an APP0 segment, stray bytes, then a frame header `marker` and a scan header.
    fn stream(marker: u8, precision: u8, lines: u16, columns: u16, components: u8) -> Vec<u8> {
        let mut s = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x06, 0xFF, 0xC0, 0x00, 0x01];
        s.extend_from_slice(&[0x12, 0x34, 0xFF, 0xFF, marker]);
        let length = 8 + 3 * u16::from(components);
        s.extend_from_slice(&length.to_be_bytes());
        s.push(precision);
        s.extend_from_slice(&lines.to_be_bytes());
        s.extend_from_slice(&columns.to_be_bytes());
        s.push(components);
        for c in 0..components {
            s.extend_from_slice(&[c + 1, 0x11, 0x00]);
        }
        s.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
        s
    }

    #[test]
    fn the_first_frame_header_is_found_past_segments_that_contain_its_marker() {
        // The APP0 segment's payload holds the bytes FF C0: a scan for the marker would
        // take them for the frame header, the decoder (and this reader) skip the segment.
        let header = jpeg_frame_header(&stream(0xC3, 16, 24, 32, 1)).unwrap();
        assert_eq!(
            header,
            JpegFrameHeader {
                marker: 0xC3,
                precision: 16,
                lines: 24,
                samples_per_line: 32,
                components: 1,
            }
        );
        assert!(jpeg_frame_header(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]).is_err());
        assert!(jpeg_frame_header(&[0xFF, 0xD8, 0xFF, 0xD9]).is_err());
        assert!(jpeg_frame_header(&[0xFF, 0xD8, 0xFF, 0xC0, 0x00]).is_err());
        assert!(jpeg_frame_header(&[0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x00]).is_err());
        assert!(jpeg_frame_header(&[0x00, 0xD8]).is_err());
        assert!(jpeg_frame_header(&[]).is_err());
    }

    #[test]
    fn a_jpeg_frame_that_disagrees_with_the_image_attributes_is_refused_before_decoding() {
        let ok = image(24, 32, 1, 16, vec![stream(0xC3, 12, 24, 32, 1)]);
        assert!(check_stream(&ok, "1.2.840.10008.1.2.4.70").is_ok());
        let ok = image(24, 32, 3, 8, vec![stream(0xC0, 8, 24, 32, 3)]);
        assert!(check_stream(&ok, "1.2.840.10008.1.2.4.50\0").is_ok());
        // Found by fuzzing: a lossless frame 12,568 samples wide in an image of 24 x 24;
        // the adapter sliced past its buffer.
        let wide = image(24, 24, 1, 16, vec![stream(0xC3, 16, 24, 12_568, 1)]);
        let err = check_stream(&wide, "1.2.840.10008.1.2.4.57").unwrap_err();
        assert!(err.to_string().contains("12568 x 24"), "{err}");
        for (lines, spp, allocated, precision, components) in [
            (25, 1, 16, 12, 1),
            (0, 1, 16, 12, 1),
            (24, 1, 8, 12, 1),
            (24, 1, 8, 4, 1),
            (24, 1, 16, 8, 1),
            (24, 3, 8, 8, 1),
            (24, 1, 8, 8, 3),
        ] {
            let obj = image(
                24,
                32,
                spp,
                allocated,
                vec![stream(0xC1, precision, lines, 32, components)],
            );
            assert!(
                check_stream(&obj, "1.2.840.10008.1.2.4.51").is_err(),
                "{lines} {spp} {allocated} {precision} {components}"
            );
        }
        // The header of a frame spread over fragments is read across them.
        let whole = stream(0xC3, 12, 24, 32, 1);
        let (a, b) = whole.split_at(12);
        let spread = image(24, 32, 1, 16, vec![a.to_vec(), b.to_vec()]);
        assert!(check_stream(&spread, "1.2.840.10008.1.2.4.70").is_ok());
        let truncated = image(24, 32, 1, 16, vec![a.to_vec(), vec![0; 4], vec![0; 4]]);
        assert!(check_stream(&truncated, "1.2.840.10008.1.2.4.70").is_err());
        assert!(check_stream(&image(24, 32, 1, 16, vec![]), "1.2.840.10008.1.2.4.70").is_err());
        let deferred = image(0, 0, 1, 16, vec![stream(0xC3, 12, 0, 0, 1)]);
        assert!(check_stream(&deferred, "1.2.840.10008.1.2.4.70").is_err());
        // Native pixel data and the transfer syntaxes decoded in the child are not this
        // check's business.
        let mut native = InMemDicomObject::new_empty();
        native.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(vec![0u8; 4]),
        ));
        assert!(check_stream(&native, "1.2.840.10008.1.2.1").is_ok());
        assert!(check_stream(&wide, "1.2.840.10008.1.2.4.90").is_ok());
        assert!(check_jpeg(&native).is_err());
    }
}
