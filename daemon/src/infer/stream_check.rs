//! Checks of encapsulated pixel data against the image attributes, before a decoder sees
//! it. The decoders trust what the stream and the header say: the RLE decoder indexes the
//! fragment by the segment offsets it reads, and the JPEG adapter copies the decoded frame
//! into a buffer sized from Rows × Columns × Samples per Pixel × Bits Allocated — a frame
//! header that declares another size makes it slice past that buffer (a panic), and makes
//! the JPEG decoder allocate by dimensions no pixel budget has checked. So each stream is
//! held to the header here: RLE segments (PS3.5 Annex G), the JPEG frame header
//! (ITU-T T.81 B.2.2), the JPEG-LS frame header (SOF55, ITU-T T.87 C.2.2; CharLS
//! allocates its output from it) and the JPEG 2000 image and tile size marker (SIZ,
//! ITU-T T.800 A.5.1) of the first frame. JPEG-LS and JPEG 2000 are decoded in a confined
//! child ([`super::decode_sandbox`]), which runs these checks too; encapsulated pixel
//! data of any other transfer syntax is refused, native pixel data passes.

use super::dicom_image::{count_of, DicomImageError};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::borrow::Cow;

/// RLE Lossless.
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Encapsulated Uncompressed Explicit VR Little Endian: native samples in fragments.
const ENCAPSULATED_UNCOMPRESSED: &str = "1.2.840.10008.1.2.1.98";

/// Bytes an RLE segment may decode to beyond its plane (Rows x Columns): a padding byte,
/// or one run an encoder let run on past the end.
const RLE_SLACK: u64 = 128;

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
            let decoded = packbits_output_len(&fragment[start..end]);
            if decoded < plane {
                return Err(bad(format!("{frame}: segment {i} decodes short")));
            }
            // The decoder expands a whole segment before it keeps Rows x Columns of it:
            // a run of 2 bytes gives 128, so a segment that decodes far beyond its plane
            // would take 64 times its size in memory.
            if decoded > plane.saturating_add(RLE_SLACK) {
                return Err(bad(format!(
                    "{frame}: segment {i} decodes to {decoded} bytes, over the {plane} of its plane"
                )));
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
/// ([`check_rle`]), the JPEG processes ([`check_jpeg`]), JPEG-LS ([`check_jpeg_ls`]) and
/// JPEG 2000 ([`check_j2k`]); Encapsulated Uncompressed passes (its fragments are copied).
/// Encapsulated pixel data of any other transfer syntax is refused: no check holds its decoder to the header (a deflated frame, say, would
/// inflate in this process to whatever its stream holds). Native pixel data passes.
pub fn check_stream(obj: &InMemDicomObject, transfer_syntax: &str) -> Result<(), DicomImageError> {
    let uid = transfer_syntax.trim_end_matches(['\0', ' ']);
    if uid == RLE_LOSSLESS {
        check_rle(obj, uid)
    } else if JPEG_DECODED_IN_PROCESS.contains(&uid) {
        check_jpeg(obj)
    } else if super::decode_sandbox::CHARLS_SYNTAXES.contains(&uid) {
        check_jpeg_ls(obj)
    } else if super::decode_sandbox::OPENJPEG_SYNTAXES.contains(&uid) {
        check_j2k(obj)
    } else if uid == ENCAPSULATED_UNCOMPRESSED {
        // Fragments copied as they are: no more than the file holds.
        Ok(())
    } else if obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .is_some_and(|e| e.value().fragments().is_some())
    {
        Err(DicomImageError::Decode(format!(
            "pixel data encapsulated in transfer syntax {uid}, which this box does not decode"
        )))
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
    /// A JPEG-LS stream whose first frame header is of another JPEG process.
    #[error("has a frame header of marker FF{0:02X}, not JPEG-LS's SOF55 (FFF7)")]
    NotJpegLs(u8),
}

/// SOFn markers of ITU-T T.81 (0xC0 to 0xCF without DHT, JPG and DAC).
fn is_jpeg_frame_marker(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// JPEG-LS's frame header marker, SOF55 (ITU-T T.87 C.2.2).
const SOF55: u8 = 0xF7;

/// Reads the first frame header of a JPEG stream the way the decoder does: SOI, then
/// marker segments by their lengths (bytes between segments are skipped, as the decoder
/// tolerates them) until the first SOFn. An error when the stream ends, or a scan or EOI
/// comes, before any frame header.
pub fn jpeg_frame_header(stream: &[u8]) -> Result<JpegFrameHeader, JpegHeaderError> {
    first_frame_header(stream, is_jpeg_frame_marker)
}

/// Reads the frame header of a JPEG-LS stream as [`jpeg_frame_header`] reads a JPEG one:
/// the first SOF55 (same layout as SOFn); a T.81 frame header before it is an error, as
/// CharLS refuses it. CharLS takes the frame's size from SOF55 unless it is zero there
/// (then from an LSE oversize-dimension segment), and refuses a second size.
pub fn jpeg_ls_frame_header(stream: &[u8]) -> Result<JpegFrameHeader, JpegHeaderError> {
    let header = first_frame_header(stream, |m| m == SOF55 || is_jpeg_frame_marker(m))?;
    if header.marker != SOF55 {
        return Err(JpegHeaderError::NotJpegLs(header.marker));
    }
    Ok(header)
}

/// The first frame header of `stream`: the first marker segment for which `is_frame`
/// holds, found by walking SOI and the marker segments by their lengths.
fn first_frame_header(
    stream: &[u8],
    is_frame: impl Fn(u8) -> bool,
) -> Result<JpegFrameHeader, JpegHeaderError> {
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
        if is_frame(marker) {
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

/// The bytes of the first frame as the JPEG and JPEG 2000 adapters gather them: its one
/// fragment when there is one fragment per frame, otherwise the fragments from the first
/// offset of the Basic Offset Table up to the second.
fn first_frame<'a>(fragments: &'a [Vec<u8>], offsets: &[u32], frames: u64) -> Cow<'a, [u8]> {
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

/// Why an object has no first frame of encapsulated pixel data to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoFrame {
    /// There is no Pixel Data element.
    #[error("missing: no Pixel Data")]
    NoPixelData,
    /// Pixel Data is native, not a sequence of fragments.
    #[error("missing: Pixel Data is not encapsulated")]
    NotEncapsulated,
    /// The fragment sequence is empty.
    #[error("missing: no fragment")]
    NoFragment,
}

/// The bytes of the first frame of `obj`'s encapsulated Pixel Data ([`first_frame`]).
fn first_frame_of(obj: &InMemDicomObject) -> Result<Cow<'_, [u8]>, NoFrame> {
    let Some(pixel_data) = obj.element_opt(tags::PIXEL_DATA).ok().flatten() else {
        return Err(NoFrame::NoPixelData);
    };
    let (Some(fragments), Some(offsets)) = (
        pixel_data.value().fragments(),
        pixel_data.value().offset_table(),
    ) else {
        return Err(NoFrame::NotEncapsulated);
    };
    if fragments.is_empty() {
        return Err(NoFrame::NoFragment);
    }
    let frames = count_of(obj, tags::NUMBER_OF_FRAMES, 1).max(1);
    Ok(first_frame(fragments, offsets, frames))
}

/// Checks the first frame's JPEG frame header against the image attributes: Rows and
/// Columns, Samples per Pixel, and a sample precision whose decoded width (one byte for 8
/// bits, two otherwise) is Bits Allocated. The decoder's output then fits the buffer the
/// adapter copies it into, and it allocates no more than the pixel budget allowed.
pub fn check_jpeg(obj: &InMemDicomObject) -> Result<(), DicomImageError> {
    check_frame_header(obj, "JPEG", jpeg_frame_header, |precision| {
        if precision == 8 {
            8
        } else {
            16
        }
    })
}

/// Checks the first frame's JPEG-LS frame header (SOF55) against the image attributes as
/// [`check_jpeg`] does, with a decoded width of one byte up to 8 bits and two above. CharLS
/// allocates its output from this header — lines × columns × components × bytes per
/// sample — before decoding a byte, so a header that lies about the size would have it
/// allocate what the pixel budget never allowed; and the adapter copies that output into a
/// buffer sized from the attributes.
pub fn check_jpeg_ls(obj: &InMemDicomObject) -> Result<(), DicomImageError> {
    check_frame_header(obj, "JPEG-LS", jpeg_ls_frame_header, |precision| {
        if precision <= 8 {
            8
        } else {
            16
        }
    })
}

/// Reads the first frame's header of a `codec` stream with `read` and holds it to Rows,
/// Columns, Samples per Pixel and Bits Allocated (through `decoded_bits`, the width the
/// decoder writes a sample of that precision in).
fn check_frame_header(
    obj: &InMemDicomObject,
    codec: &str,
    read: fn(&[u8]) -> Result<JpegFrameHeader, JpegHeaderError>,
    decoded_bits: fn(u8) -> u64,
) -> Result<(), DicomImageError> {
    let bad = |why: String| DicomImageError::Invalid(format!("{codec} stream {why}"));
    let header = read(&first_frame_of(obj).map_err(|e| bad(e.to_string()))?)
        .map_err(|e| bad(e.to_string()))?;
    let rows = count_of(obj, tags::ROWS, 0);
    let columns = count_of(obj, tags::COLUMNS, 0);
    if header.lines == 0 || header.samples_per_line == 0 {
        // Zero defers the size to a later marker: a DNL after the first scan (JPEG), an
        // oversize-dimension segment of up to 2^32 a side (JPEG-LS).
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
    if allocated != decoded_bits(header.precision) {
        return Err(bad(format!(
            "has {}-bit samples, which do not fit Bits Allocated {allocated}",
            header.precision
        )));
    }
    Ok(())
}

/// What a JPEG 2000 image and tile size marker (SIZ) declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct J2kSize {
    /// Width of the image area, Xsiz − XOsiz.
    pub width: u32,
    /// Height of the image area, Ysiz − YOsiz.
    pub height: u32,
    /// Per component: bit depth (1 to 38) and its horizontal and vertical subsampling.
    pub components: Vec<J2kComponent>,
}

/// One component of a JPEG 2000 image as its SIZ marker declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct J2kComponent {
    /// Bit depth of its samples.
    pub precision: u8,
    /// Horizontal separation XRsiz (1: every column).
    pub dx: u8,
    /// Vertical separation YRsiz (1: every row).
    pub dy: u8,
}

/// Why a JPEG 2000 stream has no SIZ marker the decoder would read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum J2kHeaderError {
    /// Neither a codestream (SOC then SIZ) nor a JP2 file holding one.
    #[error("does not start with SOC and SIZ markers")]
    NoSiz,
    /// A JP2 file whose boxes end, or overrun it, before a contiguous codestream box.
    #[error("is a JP2 file without a readable codestream box")]
    NoCodestreamBox,
    /// The bytes end inside the SIZ marker segment.
    #[error("ends inside its SIZ marker")]
    Ends,
    /// The SIZ segment's length disagrees with its component count.
    #[error("has a SIZ marker of length {length} for {components} components")]
    SizLength {
        /// Lsiz.
        length: u16,
        /// Csiz.
        components: u16,
    },
    /// An image offset beyond the image's extent, or a component separation of zero.
    #[error("declares an empty image area or a zero component separation")]
    Geometry,
}

/// JP2 signature box (ITU-T T.800 I.5.1).
const JP2_SIGNATURE: [u8; 12] = [0, 0, 0, 12, b'j', b'P', b' ', b' ', 0x0D, 0x0A, 0x87, 0x0A];

/// The codestream of a JP2 file: the contents of its first `jp2c` box. Each box header
/// moves the walk on by at least 8 bytes, so it ends.
fn jp2_codestream(file: &[u8]) -> Result<&[u8], J2kHeaderError> {
    let mut at = 0usize;
    while let Some(header) = file.get(at..at + 8) {
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let (start, end) = match length {
            0 => (at + 8, file.len()),
            1 => {
                let long = file
                    .get(at + 8..at + 16)
                    .ok_or(J2kHeaderError::NoCodestreamBox)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(long);
                let end = usize::try_from(u64::from_be_bytes(b))
                    .ok()
                    .and_then(|l| (l >= 16).then(|| at.checked_add(l)).flatten())
                    .ok_or(J2kHeaderError::NoCodestreamBox)?;
                (at + 16, end)
            }
            2..=7 => return Err(J2kHeaderError::NoCodestreamBox),
            n => (at + 8, at.saturating_add(n as usize)),
        };
        if end > file.len() {
            return Err(J2kHeaderError::NoCodestreamBox);
        }
        if &header[4..8] == b"jp2c" {
            return Ok(&file[start..end]);
        }
        at = end;
    }
    Err(J2kHeaderError::NoCodestreamBox)
}

/// Reads the SIZ marker of a JPEG 2000 codestream (SOC, then SIZ, ITU-T T.800 A.5.1), or of
/// the codestream box of a JP2 file (which PS3.5 8.2.4 excludes, and decoders still read).
pub fn j2k_size(stream: &[u8]) -> Result<J2kSize, J2kHeaderError> {
    let codestream = if stream.starts_with(&JP2_SIGNATURE) {
        jp2_codestream(stream)?
    } else {
        stream
    };
    if !codestream.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return Err(J2kHeaderError::NoSiz);
    }
    let siz = codestream.get(4..).ok_or(J2kHeaderError::Ends)?;
    let u16_at = |i: usize| -> Result<u16, J2kHeaderError> {
        let b = siz.get(i..i + 2).ok_or(J2kHeaderError::Ends)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    };
    let u32_at = |i: usize| -> Result<u32, J2kHeaderError> {
        let b = siz.get(i..i + 4).ok_or(J2kHeaderError::Ends)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    // Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz.
    let length = u16_at(0)?;
    let (xsiz, ysiz, xosiz, yosiz) = (u32_at(4)?, u32_at(8)?, u32_at(12)?, u32_at(16)?);
    let count = u16_at(36)?;
    if usize::from(length) != 38 + 3 * usize::from(count) {
        return Err(J2kHeaderError::SizLength {
            length,
            components: count,
        });
    }
    let width = xsiz.checked_sub(xosiz).filter(|w| *w > 0);
    let height = ysiz.checked_sub(yosiz).filter(|h| *h > 0);
    let (Some(width), Some(height)) = (width, height) else {
        return Err(J2kHeaderError::Geometry);
    };
    let mut components = Vec::with_capacity(usize::from(count.min(16)));
    for c in 0..usize::from(count) {
        let b = siz
            .get(38 + 3 * c..41 + 3 * c)
            .ok_or(J2kHeaderError::Ends)?;
        if b[1] == 0 || b[2] == 0 {
            return Err(J2kHeaderError::Geometry);
        }
        components.push(J2kComponent {
            precision: (b[0] & 0x7F) + 1,
            dx: b[1],
            dy: b[2],
        });
    }
    Ok(J2kSize {
        width,
        height,
        components,
    })
}

/// Checks the first frame's JPEG 2000 SIZ marker against the image attributes: the image
/// area is Columns × Rows, there is one full-resolution component per sample, and every
/// component's depth fits Bits Allocated. The adapter copies each decoded component into a
/// buffer sized from those attributes (a larger image sliced past it), and the decoder
/// allocates by the SIZ marker, which the pixel budget has then checked.
pub fn check_j2k(obj: &InMemDicomObject) -> Result<(), DicomImageError> {
    let bad = |why: String| DicomImageError::Invalid(format!("JPEG 2000 stream {why}"));
    let size = j2k_size(&first_frame_of(obj).map_err(|e| bad(e.to_string()))?)
        .map_err(|e| bad(e.to_string()))?;
    let rows = count_of(obj, tags::ROWS, 0);
    let columns = count_of(obj, tags::COLUMNS, 0);
    if u64::from(size.width) != columns || u64::from(size.height) != rows {
        return Err(bad(format!(
            "image is {} x {} (columns x rows), the header says Columns {columns}, Rows {rows}",
            size.width, size.height
        )));
    }
    let samples = count_of(obj, tags::SAMPLES_PER_PIXEL, 1);
    if size.components.len() as u64 != samples {
        return Err(bad(format!(
            "has {} components, the header says Samples per Pixel {samples}",
            size.components.len()
        )));
    }
    let allocated = count_of(obj, tags::BITS_ALLOCATED, 0);
    for (i, c) in size.components.iter().enumerate() {
        if (c.dx, c.dy) != (1, 1) {
            return Err(bad(format!(
                "component {i} is subsampled ({} x {}); every sample of every pixel is expected",
                c.dx, c.dy
            )));
        }
        if u64::from(c.precision) > allocated {
            return Err(bad(format!(
                "component {i} has {}-bit samples, more than Bits Allocated {allocated}",
                c.precision
            )));
        }
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
        // A segment that decodes far beyond its plane (2 bytes give 128: the decoder
        // expands the whole segment before it keeps Rows x Columns of it), refused; one
        // with a few bytes of slack, as encoders pad, passes.
        let mut bomb = header(1, &[64]);
        for _ in 0..1000 {
            bomb.extend_from_slice(&[0x81, 0x00]);
        }
        let err = with(bomb).unwrap_err();
        assert!(
            err.to_string().contains("over the 16 of its plane"),
            "{err}"
        );
        let mut padded = header(1, &[64]);
        padded.extend_from_slice(&[0x81, 0x00, 0x00]);
        assert!(with(padded).is_ok());
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

    /// A deflated frame (Deflated Image Frame Compression) has no check holding it to the
    /// header: refused before its decoder inflates it, whatever it holds; native pixel data
    /// and Encapsulated Uncompressed pass.
    #[test]
    fn encapsulated_pixel_data_no_check_covers_is_refused() {
        let deflated = image(24, 32, 1, 16, vec![vec![0x78, 0x9C, 0x03, 0x00]]);
        let err = check_stream(&deflated, "1.2.840.10008.1.2.8.1").unwrap_err();
        assert!(err.to_string().contains("1.2.840.10008.1.2.8.1"), "{err}");
        assert!(check_stream(&deflated, "1.2.840.10008.1.2.4.201").is_err());
        assert!(check_stream(&deflated, ENCAPSULATED_UNCOMPRESSED).is_ok());
        let mut native = InMemDicomObject::new_empty();
        native.put(dicom_core::DataElement::new(
            tags::PIXEL_DATA,
            dicom_core::VR::OW,
            dicom_core::PrimitiveValue::U16(vec![0u16; 4].into()),
        ));
        assert!(check_stream(&native, "1.2.840.10008.1.2.1").is_ok());
        assert!(check_stream(&native, "1.2.840.10008.1.2.8.1").is_ok());
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
        // Native pixel data is not this check's business; JPEG-LS has its own (a T.81
        // frame header there is refused).
        let mut native = InMemDicomObject::new_empty();
        native.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(vec![0u8; 4]),
        ));
        assert!(check_stream(&native, "1.2.840.10008.1.2.1").is_ok());
        assert!(check_stream(&wide, "1.2.840.10008.1.2.4.80").is_err());
        assert!(check_jpeg(&native).is_err());
    }

    /// SOC and a SIZ marker for a `width × height` image at offset (`x0`, `y0`) with
    /// `components` of (Ssiz, XRsiz, YRsiz), then the start of a tile.
    fn codestream(width: u32, height: u32, x0: u32, y0: u32, components: &[[u8; 3]]) -> Vec<u8> {
        let mut s = vec![0xFF, 0x4F, 0xFF, 0x51];
        s.extend_from_slice(&(38 + 3 * components.len() as u16).to_be_bytes());
        s.extend_from_slice(&0u16.to_be_bytes());
        for v in [x0 + width, y0 + height, x0, y0, width, height, 0, 0] {
            s.extend_from_slice(&v.to_be_bytes());
        }
        s.extend_from_slice(&(components.len() as u16).to_be_bytes());
        for c in components {
            s.extend_from_slice(c);
        }
        s.extend_from_slice(&[0xFF, 0x90, 0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 1]);
        s
    }

    /// A JP2 file: signature, a file type box, then `codestream` in a `jp2c` box.
    fn jp2(codestream: &[u8]) -> Vec<u8> {
        let mut f = JP2_SIGNATURE.to_vec();
        f.extend_from_slice(&[0, 0, 0, 20, b'f', b't', b'y', b'p']);
        f.extend_from_slice(b"jp2 \0\0\0\0jp2 ");
        f.extend_from_slice(&(8 + codestream.len() as u32).to_be_bytes());
        f.extend_from_slice(b"jp2c");
        f.extend_from_slice(codestream);
        f
    }

    #[test]
    fn a_jpeg_ls_frame_that_disagrees_with_the_image_attributes_is_refused_before_decoding() {
        const LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
        let ok = image(24, 32, 1, 16, vec![stream(SOF55, 12, 24, 32, 1)]);
        assert!(check_stream(&ok, LOSSLESS).is_ok());
        let ok = image(24, 32, 3, 8, vec![stream(SOF55, 8, 24, 32, 3)]);
        assert!(check_stream(&ok, "1.2.840.10008.1.2.4.81").is_ok());
        let ok = image(24, 32, 1, 8, vec![stream(SOF55, 6, 24, 32, 1)]);
        assert!(
            check_stream(&ok, LOSSLESS).is_ok(),
            "6 bits decode to bytes"
        );
        // Found by fuzzing: a frame header whose size made CharLS allocate 8.5 GB for an
        // image of a few pixels.
        let huge = image(24, 32, 1, 16, vec![stream(SOF55, 16, 65535, 65535, 1)]);
        for ts in crate::infer::decode_sandbox::CHARLS_SYNTAXES {
            let err = check_stream(&huge, ts).unwrap_err();
            assert!(err.to_string().contains("65535 x 65535"), "{ts}: {err}");
        }
        for (stream, spp, allocated, why) in [
            (stream(SOF55, 12, 25, 32, 1), 1, 16, "32 x 25"),
            (stream(SOF55, 12, 0, 32, 1), 1, 16, "deferred"),
            (stream(SOF55, 12, 24, 0, 1), 1, 16, "deferred"),
            (stream(SOF55, 8, 24, 32, 3), 1, 8, "3 components"),
            (stream(SOF55, 8, 24, 32, 1), 3, 8, "Samples per Pixel 3"),
            (stream(SOF55, 12, 24, 32, 1), 1, 8, "12-bit"),
            (stream(SOF55, 8, 24, 32, 1), 1, 16, "8-bit"),
            (stream(0xC3, 12, 24, 32, 1), 1, 16, "FFC3"),
            (stream(SOF55, 12, 24, 32, 1)[..20].to_vec(), 1, 16, "ends"),
        ] {
            let err = check_stream(&image(24, 32, spp, allocated, vec![stream]), LOSSLESS)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        // A JPEG stream is not walked for SOF55: the T.81 syntaxes keep their own reader.
        let jpeg = image(24, 32, 1, 16, vec![stream(SOF55, 12, 24, 32, 1)]);
        assert!(check_stream(&jpeg, "1.2.840.10008.1.2.4.70").is_err());
    }

    #[test]
    fn a_jpeg_2000_image_that_disagrees_with_the_image_attributes_is_refused_before_decoding() {
        const J2K: &str = "1.2.840.10008.1.2.4.90";
        let grey12 = [[11, 1, 1]];
        let ok = image(64, 48, 1, 16, vec![codestream(48, 64, 0, 0, &grey12)]);
        assert!(check_stream(&ok, J2K).is_ok());
        let offset = image(64, 48, 1, 16, vec![codestream(48, 64, 7, 9, &grey12)]);
        assert!(check_stream(&offset, "1.2.840.10008.1.2.4.91").is_ok());
        let rgb = image(
            64,
            48,
            3,
            8,
            vec![codestream(48, 64, 0, 0, &[[7, 1, 1]; 3])],
        );
        assert!(check_stream(&rgb, "1.2.840.10008.1.2.4.201").is_ok());
        let boxed = image(64, 48, 1, 16, vec![jp2(&codestream(48, 64, 0, 0, &grey12))]);
        assert!(check_stream(&boxed, J2K).is_ok(), "a JP2 wrapper is read");
        // Found by fuzzing: a SIZ of 576 columns in an image of 64 x 64; the adapter
        // sliced past its buffer.
        let wide = image(64, 64, 1, 16, vec![codestream(576, 64, 0, 0, &grey12)]);
        let err = check_stream(&wide, J2K).unwrap_err();
        assert!(err.to_string().contains("576 x 64"), "{err}");
        // Every syntax OpenJPEG decodes is held to it, Part 2 and HTJ2K included.
        for ts in crate::infer::decode_sandbox::OPENJPEG_SYNTAXES {
            assert!(check_stream(&wide, ts).is_err(), "{ts}");
        }
        for (stream, spp, allocated, why) in [
            (codestream(48, 65, 0, 0, &grey12), 1, 16, "48 x 65"),
            (
                codestream(48, 64, 0, 0, &[[11, 1, 1]; 3]),
                1,
                16,
                "3 components",
            ),
            (
                codestream(48, 64, 0, 0, &grey12),
                3,
                16,
                "Samples per Pixel 3",
            ),
            (codestream(48, 64, 0, 0, &[[15, 1, 1]]), 1, 8, "16-bit"),
            (codestream(48, 64, 0, 0, &[[7, 2, 1]]), 1, 8, "subsampled"),
            (
                codestream(48, 64, 0, 0, &[[7, 0, 1]]),
                1,
                8,
                "zero component",
            ),
            (
                codestream(48, 64, 0, 0, &grey12)[..20].to_vec(),
                1,
                16,
                "ends inside",
            ),
            (
                codestream(48, 64, 0, 0, &grey12)[2..].to_vec(),
                1,
                16,
                "SOC and SIZ",
            ),
            (jp2(&[0xFF, 0x4F])[..40].to_vec(), 1, 16, "codestream box"),
        ] {
            let err =
                check_stream(&image(64, 48, spp, allocated, vec![stream]), J2K).expect_err(why);
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
        // An offset past the image's extent, and a SIZ length that disagrees with Csiz.
        let mut behind = codestream(48, 64, 0, 0, &grey12);
        behind[16..20].copy_from_slice(&1_000u32.to_be_bytes());
        assert!(check_stream(&image(64, 48, 1, 16, vec![behind]), J2K).is_err());
        let mut short = codestream(48, 64, 0, 0, &grey12);
        short[5] = 39;
        let err = check_stream(&image(64, 48, 1, 16, vec![short]), J2K).unwrap_err();
        assert!(err.to_string().contains("length 39"), "{err}");
        // A frame spread over fragments is read across them.
        let whole = codestream(48, 64, 0, 0, &grey12);
        let (a, b) = whole.split_at(10);
        let spread = image(64, 48, 1, 16, vec![a.to_vec(), b.to_vec()]);
        assert!(check_stream(&spread, J2K).is_ok());
    }
}
