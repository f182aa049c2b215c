//! A bounded pre-scan of encoded DICOM data sets, run before any bytes from outside reach
//! the dicom-rs parser.
//!
//! dicom-rs builds nested sequences by recursion (one stack frame chain per level) and sizes
//! each value's buffer from its declared length. Both are safe only on well-formed input, so
//! every path that parses bytes this box did not write itself — the C-STORE header parse,
//! C-FIND/C-MOVE/C-GET identifiers, console uploads, and files read back by inference,
//! previews, retrieval and `reindex` — first walks the encoding here:
//!
//! - iteratively, with an explicit stack of open sequences and items (no recursion), refusing
//!   data sets whose sequences nest deeper than [`MAX_DEPTH`];
//! - checking that every declared length fits the bytes actually present: in the enclosing
//!   item or sequence of defined length, and in the input itself;
//! - capping each element that is not bulk data (pixel, overlay, waveform, document data)
//!   at [`MAX_ELEMENT_BYTES`], and every value but the top-level Pixel Data, bulk or not,
//!   at [`MAX_HEADER_BYTES`] in all: what a header parse holds in memory, and what a
//!   reader that loads a whole file (encapsulated pixels) holds besides the pixels, so
//!   elements placed after Pixel Data cannot make it hold more;
//! - counting elements, items, delimiters and fragments, at most [`MAX_TOKENS`] in all: an
//!   empty element costs 8 bytes on the wire but a few hundred in a parsed object, so the
//!   value budget alone would let millions of them through;
//! - measuring the top-level Pixel Data ([`Summary`]), so that a reader about to load it
//!   can hold it to what the image attributes declare first;
//! - reading values only to skip them (seeks on files and slices), so its memory use is a
//!   few fixed buffers whatever the input declares.
//!
//! The walk is linear in the input (every element header consumes at least 8 bytes). A
//! wrapper rather than a patched dependency keeps the upstream parser untouched and the
//! rules in one place that tests exercise with byte fixtures.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_encoding::transfer_syntax::Codec;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Deepest nesting of sequences accepted (a sequence inside an item of a sequence is
/// depth 2). Stated in the conformance statement.
pub const MAX_DEPTH: usize = 64;

/// Largest value accepted for an element that is not bulk data.
pub const MAX_ELEMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Largest total of the values besides the top-level Pixel Data (everything a header
/// parse holds in memory, and whatever follows the pixels). A chest X-ray's header is well
/// under a megabyte.
pub const MAX_HEADER_BYTES: u64 = 64 * 1024 * 1024;

/// Most elements, items, delimiters and pixel data fragments in one data set, at every
/// depth. A chest X-ray has a few hundred; a large structured report some tens of
/// thousands. At the parser's few hundred bytes per parsed element this keeps a parse of
/// the most a data set may hold to about a hundred megabytes besides its values.
/// Stated in the conformance statement.
pub const MAX_TOKENS: u64 = 262_144;

/// Largest inflated size of a deflated data set that is scanned.
pub const MAX_INFLATED_BYTES: u64 = 1024 * 1024 * 1024;

/// Largest value of a file meta element (they are short UIDs and names).
const MAX_META_ELEMENT_BYTES: u64 = 64 * 1024;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: u16 = 0xE000;
const ITEM_END: u16 = 0xE00D;
const SEQUENCE_END: u16 = 0xE0DD;
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const TRANSFER_SYNTAX: Tag = Tag(0x0002, 0x0010);
const META_GROUP_LENGTH: Tag = Tag(0x0002, 0x0000);
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";

/// Why a data set was refused before parsing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    /// Sequences nest deeper than [`MAX_DEPTH`].
    #[error("sequences nested deeper than {MAX_DEPTH} levels (at byte {offset})")]
    TooDeep {
        /// Offset of the element that opened one level too many.
        offset: u64,
    },
    /// A declared length runs past the bytes present or past its container.
    #[error(
        "element ({:04X},{:04X}) declares {length} bytes but only {available} remain (at byte {offset})",
        tag.0, tag.1
    )]
    LengthBeyondData {
        /// The element.
        tag: Tag,
        /// Its declared length.
        length: u64,
        /// Bytes left in its container or the input.
        available: u64,
        /// Offset of its header.
        offset: u64,
    },
    /// A non-bulk element over [`MAX_ELEMENT_BYTES`].
    #[error(
        "element ({:04X},{:04X}) of {length} bytes is over the {MAX_ELEMENT_BYTES}-byte cap",
        tag.0, tag.1
    )]
    ElementTooLarge {
        /// The element.
        tag: Tag,
        /// Its declared length.
        length: u64,
    },
    /// Items and delimiters that do not nest (an item outside a sequence, a stray
    /// delimiter, an element directly in a sequence).
    #[error("malformed sequence structure at byte {offset}: {what}")]
    Structure {
        /// Offset of the offending header.
        offset: u64,
        /// What was wrong.
        what: &'static str,
    },
    /// The input ends inside an element header, a value, or an open sequence or item.
    #[error("data set truncated at byte {offset}")]
    Truncated {
        /// Where the input ended.
        offset: u64,
    },
    /// A binary value whose length is not a whole number of its VR's values (the parser
    /// would read the whole values and lose its place in the stream).
    #[error(
        "element ({:04X},{:04X}) {vr:?} of {length} bytes is not a multiple of {size} (at byte {offset})",
        tag.0, tag.1
    )]
    PartialValue {
        /// The element.
        tag: Tag,
        /// Its VR.
        vr: VR,
        /// Its declared length.
        length: u64,
        /// The size of one value of the VR.
        size: u64,
        /// Offset of its header.
        offset: u64,
    },
    /// The values besides the top-level Pixel Data total more than [`MAX_HEADER_BYTES`].
    #[error("the elements besides Pixel Data hold over {MAX_HEADER_BYTES} bytes")]
    HeaderTooLarge,
    /// More than [`MAX_TOKENS`] elements, items, delimiters and fragments.
    #[error("the data set holds over {MAX_TOKENS} elements and items (at byte {offset})")]
    TooManyElements {
        /// Offset of the first one over the limit.
        offset: u64,
    },
    /// A deflated data set inflates beyond [`MAX_INFLATED_BYTES`].
    #[error("deflated data set inflates beyond {MAX_INFLATED_BYTES} bytes")]
    InflatesTooMuch,
    /// Not a Part 10 file (no `DICM` marker), or no usable transfer syntax in its meta.
    #[error("not a DICOM Part 10 file: {0}")]
    NotPart10(&'static str),
    /// A transfer syntax this build cannot read.
    #[error("unknown transfer syntax {0}")]
    UnknownTransferSyntax(String),
    /// Reading the input failed.
    #[error("read error: {0}")]
    Io(String),
}

/// What a successful scan measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Total of the values besides the top-level Pixel Data, before or after it (at most
    /// [`MAX_HEADER_BYTES`]).
    pub header_bytes: u64,
    /// Bytes of the top-level Pixel Data: its value, or the sum of its fragments when
    /// encapsulated; `None` without Pixel Data.
    pub pixel_data_bytes: Option<u64>,
    /// Elements, items, delimiters and fragments walked (at most [`MAX_TOKENS`]).
    pub tokens: u64,
    /// Whether the top-level Pixel Data is the data set's last top-level element (nothing
    /// follows it): only then do the file's last bytes hold its value.
    pub pixel_data_last: bool,
}

/// How a data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Encoding {
    explicit: bool,
    big_endian: bool,
    deflated: bool,
}

impl Encoding {
    fn of(ts_uid: &str) -> Result<Encoding, GuardError> {
        let uid = ts_uid.trim_end_matches(['\0', ' ']);
        let ts = TransferSyntaxRegistry
            .get(uid)
            .ok_or_else(|| GuardError::UnknownTransferSyntax(uid.chars().take(64).collect()))?;
        Ok(Encoding {
            explicit: uid != IMPLICIT_LE,
            big_endian: uid == EXPLICIT_BE,
            deflated: uid == DEFLATED || matches!(ts.codec(), Codec::Dataset(_)),
        })
    }
}

/// Checks a data set (no preamble or meta) encoded in transfer syntax `ts_uid`, as a C-FIND
/// identifier arrives.
pub fn check_dataset(bytes: &[u8], ts_uid: &str) -> Result<Summary, GuardError> {
    let enc = Encoding::of(ts_uid)?;
    let len = bytes.len() as u64;
    scan_body(io::Cursor::new(bytes), Some(len), enc)
}

/// Checks a Part 10 stream (preamble optional, file meta, data set) of `len` bytes.
pub fn check_part10<R: Read + Seek>(mut input: R, len: u64) -> Result<Summary, GuardError> {
    let mut head = [0u8; 132];
    let got = read_full(&mut input, &mut head)?;
    let start = if got >= 132 && &head[128..132] == b"DICM" {
        132
    } else if got >= 4 && &head[..4] == b"DICM" {
        4
    } else {
        return Err(GuardError::NotPart10("no DICM marker"));
    };
    seek_to(&mut input, start)?;
    let mut meta = Input {
        inner: input,
        pos: start,
        len: Some(len),
    };
    let ts = scan_meta(&mut meta)?;
    let enc = Encoding::of(&ts)?;
    let Input { inner, pos, .. } = meta;
    if enc.deflated {
        let inflated =
            flate2::read::DeflateDecoder::new(BufReader::new(inner)).take(MAX_INFLATED_BYTES + 1);
        return scan_body(ForwardOnly::new(inflated), None, enc).map_err(|e| match e {
            GuardError::Truncated { offset } if offset > MAX_INFLATED_BYTES => {
                GuardError::InflatesTooMuch
            }
            other => other,
        });
    }
    let mut body = Input {
        inner,
        pos,
        len: Some(len),
    };
    walk(&mut body, enc)
}

/// Checks a Part 10 file on disk.
pub fn check_file(path: &Path) -> Result<Summary, GuardError> {
    let file = File::open(path).map_err(|e| GuardError::Io(e.to_string()))?;
    check_open_file(&file)
}

/// Checks the open Part 10 file `file` from its start (its offset is moved; a caller that
/// reads it on seeks first).
pub fn check_open_file(mut file: &File) -> Result<Summary, GuardError> {
    let io = |e: io::Error| GuardError::Io(e.to_string());
    let len = file.metadata().map_err(io)?.len();
    file.rewind().map_err(io)?;
    check_part10(BufReader::with_capacity(64 * 1024, file), len)
}

/// Checks a Part 10 file held in memory (an upload).
pub fn check_part10_bytes(bytes: &[u8]) -> Result<Summary, GuardError> {
    check_part10(io::Cursor::new(bytes), bytes.len() as u64)
}

fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<usize, GuardError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(GuardError::Io(e.to_string())),
        }
    }
    Ok(got)
}

fn seek_to<R: Seek>(input: &mut R, pos: u64) -> Result<(), GuardError> {
    input
        .seek(SeekFrom::Start(pos))
        .map(|_| ())
        .map_err(|e| GuardError::Io(e.to_string()))
}

fn scan_body<R: Read + Seek>(
    inner: R,
    len: Option<u64>,
    enc: Encoding,
) -> Result<Summary, GuardError> {
    let mut input = Input { inner, pos: 0, len };
    walk(&mut input, enc)
}

/// The input with the position the walk is at and, when known, its total length.
struct Input<R> {
    inner: R,
    pos: u64,
    len: Option<u64>,
}

impl<R: Read + Seek> Input<R> {
    /// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean end of input before the first.
    fn read_or_end(&mut self, buf: &mut [u8]) -> Result<bool, GuardError> {
        let got = read_full(&mut self.inner, buf)?;
        self.pos += got as u64;
        match got {
            0 => Ok(false),
            n if n == buf.len() => Ok(true),
            _ => Err(GuardError::Truncated { offset: self.pos }),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), GuardError> {
        if self.read_or_end(buf)? {
            Ok(())
        } else {
            Err(GuardError::Truncated { offset: self.pos })
        }
    }

    /// Skips a value already checked to fit (when the length is known).
    fn skip(&mut self, n: u64) -> Result<(), GuardError> {
        let step = i64::try_from(n).map_err(|_| GuardError::Truncated { offset: self.pos })?;
        self.inner
            .seek(SeekFrom::Current(step))
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => GuardError::Truncated { offset: self.pos },
                _ => GuardError::Io(e.to_string()),
            })?;
        self.pos += n;
        Ok(())
    }
}

/// A reader that can only skip forward (by reading), for inflated data sets. Skipping past
/// the end is an `UnexpectedEof` error.
struct ForwardOnly<R> {
    inner: R,
}

impl<R: Read> ForwardOnly<R> {
    fn new(inner: R) -> Self {
        ForwardOnly { inner }
    }
}

impl<R: Read> Read for ForwardOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R: Read> Seek for ForwardOnly<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let SeekFrom::Current(n) = pos else {
            return Err(io::Error::other("only forward skips"));
        };
        let n = u64::try_from(n).map_err(|_| io::Error::other("only forward skips"))?;
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        if copied < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(0)
    }
}

/// What an open container on the walk's stack is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sequence,
    Item,
    /// Encapsulated pixel data: items are fragments, never parsed.
    Fragments,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: Kind,
    /// Offset where a container of defined length ends.
    end: Option<u64>,
}

/// Reads the file meta group (explicit VR little endian, group 0002) and returns the
/// transfer syntax UID. Leaves the input at the first data set element.
fn scan_meta<R: Read + Seek>(input: &mut Input<R>) -> Result<String, GuardError> {
    let mut ts = None;
    let mut group_end: Option<u64> = None;
    loop {
        let offset = input.pos;
        let mut tag_bytes = [0u8; 4];
        if !input.read_or_end(&mut tag_bytes)? {
            if group_end.is_some_and(|end| offset != end) {
                return Err(GuardError::Structure {
                    offset,
                    what: "file meta group length disagrees with its elements",
                });
            }
            break;
        }
        let group = u16::from_le_bytes([tag_bytes[0], tag_bytes[1]]);
        let element = u16::from_le_bytes([tag_bytes[2], tag_bytes[3]]);
        // The group length, when given, must end the group exactly where its elements end:
        // the parser trusts it, so a disagreement would let it read other bytes than these.
        let past_group_end = group_end.is_some_and(|end| offset >= end);
        if group != 0x0002 || past_group_end {
            if group_end.is_some_and(|end| offset != end) {
                return Err(GuardError::Structure {
                    offset,
                    what: "file meta group length disagrees with its elements",
                });
            }
            seek_to(&mut input.inner, offset)?;
            input.pos = offset;
            break;
        }
        let tag = Tag(group, element);
        let (_, length) = explicit_vr_and_length(input, false)?;
        if length == UNDEFINED {
            return Err(GuardError::Structure {
                offset,
                what: "file meta element of undefined length",
            });
        }
        let length = u64::from(length);
        fits(input, None, tag, length, offset)?;
        if length > MAX_META_ELEMENT_BYTES {
            return Err(GuardError::ElementTooLarge { tag, length });
        }
        if tag == TRANSFER_SYNTAX {
            let mut value = vec![0u8; length as usize];
            input.read(&mut value)?;
            ts = Some(String::from_utf8_lossy(&value).into_owned());
        } else if tag == META_GROUP_LENGTH && length == 4 && group_end.is_none() {
            let mut value = [0u8; 4];
            input.read(&mut value)?;
            group_end = Some(input.pos + u64::from(u32::from_le_bytes(value)));
        } else {
            input.skip(length)?;
        }
    }
    ts.ok_or(GuardError::NotPart10(
        "no Transfer Syntax UID in the file meta",
    ))
}

fn u16_of(bytes: [u8; 2], big_endian: bool) -> u16 {
    if big_endian {
        u16::from_be_bytes(bytes)
    } else {
        u16::from_le_bytes(bytes)
    }
}

fn u32_of(bytes: [u8; 4], big_endian: bool) -> u32 {
    if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    }
}

/// Reads the VR and length of an explicit VR element header (the tag already read).
fn explicit_vr_and_length<R: Read + Seek>(
    input: &mut Input<R>,
    big_endian: bool,
) -> Result<(VR, u32), GuardError> {
    let mut vr_bytes = [0u8; 2];
    input.read(&mut vr_bytes)?;
    // dicom-rs reads an unknown VR as UN, with the long header form.
    let vr = VR::from_binary(vr_bytes).unwrap_or(VR::UN);
    let long = matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    );
    if long {
        let mut rest = [0u8; 6];
        input.read(&mut rest)?;
        Ok((vr, u32_of([rest[2], rest[3], rest[4], rest[5]], big_endian)))
    } else {
        let mut len = [0u8; 2];
        input.read(&mut len)?;
        Ok((vr, u32::from(u16_of(len, big_endian))))
    }
}

/// The size of one value of a binary VR whose values the parser reads whole (PS3.5 §6.2:
/// a value length is a multiple of it); `None` for text and byte VRs.
fn value_size(vr: VR) -> Option<u64> {
    match vr {
        VR::US | VR::SS | VR::OW => Some(2),
        VR::UL | VR::SL | VR::FL | VR::AT | VR::OL | VR::OF => Some(4),
        VR::FD | VR::SV | VR::UV | VR::OD | VR::OV => Some(8),
        _ => None,
    }
}

/// The VR an implicit VR element has per the dictionary, as the parser reads it: a
/// context-dependent VR (US or SS, OB or OW, ...) relaxed the way dicom-rs relaxes it (US,
/// OW), so that a value the parser reads in whole words is held to whole words here too
/// (an odd length would otherwise leave the parser one byte behind this walk).
fn implicit_vr(tag: Tag) -> VR {
    StandardDataDictionary
        .by_tag(tag)
        .map_or(VR::UN, |e| e.vr().relaxed())
}

/// Bulk data elements, exempt from the per-element cap (their size is bounded by the
/// instance size limit and the bytes present).
fn is_bulk(tag: Tag) -> bool {
    matches!(
        tag,
        Tag(0x7FE0, 0x0008..=0x0010)
            | Tag(0x0042, 0x0011)
            | Tag(0x5400, 0x1010)
            | Tag(0x5600, 0x0020)
            | Tag(0x0028, 0x1201..=0x1203)
            | Tag(0x0028, 0x1221..=0x1223)
    ) || (tag.0 & 0xFF01 == 0x6000 && tag.1 == 0x3000)
}

/// Checks that `length` bytes fit both the innermost container of defined length and the
/// input.
fn fits<R>(
    input: &Input<R>,
    container_end: Option<u64>,
    tag: Tag,
    length: u64,
    offset: u64,
) -> Result<(), GuardError> {
    let limit = match (container_end, input.len) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(limit) = limit {
        let available = limit.saturating_sub(input.pos);
        if length > available {
            return Err(GuardError::LengthBeyondData {
                tag,
                length,
                available,
                offset,
            });
        }
    }
    Ok(())
}

/// Refuses a second top-level Pixel Data element: a reader keeps one of them, and the size
/// measured for the other would not hold it.
fn second_pixel_data(summary: &Summary, offset: u64) -> Result<(), GuardError> {
    if summary.pixel_data_bytes.is_some() {
        return Err(GuardError::Structure {
            offset,
            what: "a second Pixel Data element",
        });
    }
    Ok(())
}

/// Walks the data set at `input` in encoding `enc`, token by token, to its end.
fn walk<R: Read + Seek>(input: &mut Input<R>, enc: Encoding) -> Result<Summary, GuardError> {
    let mut walk = Walk {
        input,
        enc,
        stack: Vec::with_capacity(2 * MAX_DEPTH + 2),
        depth: 0,
        summary: Summary::default(),
    };
    loop {
        walk.close_ended_containers()?;
        let offset = walk.input.pos;
        let mut tag_bytes = [0u8; 4];
        if !walk.input.read_or_end(&mut tag_bytes)? {
            if walk.stack.is_empty() {
                return Ok(walk.summary);
            }
            return Err(GuardError::Truncated { offset });
        }
        walk.summary.tokens += 1;
        if walk.summary.tokens > MAX_TOKENS {
            return Err(GuardError::TooManyElements { offset });
        }
        let be = enc.big_endian;
        let tag = Tag(
            u16_of([tag_bytes[0], tag_bytes[1]], be),
            u16_of([tag_bytes[2], tag_bytes[3]], be),
        );
        if tag.0 == 0xFFFE {
            walk.item_or_delimiter(tag, offset)?;
            continue;
        }
        if matches!(walk.top_kind(), Some(Kind::Sequence | Kind::Fragments)) {
            return Err(GuardError::Structure {
                offset,
                what: "data element directly inside a sequence",
            });
        }
        // The parser reads every container in the data set's own encoding (also a UN of
        // undefined length, which PS3.5 §6.2.2 has hold implicit VR): so does the walk, or
        // the two would see different elements in the same bytes.
        let (vr, length) = if enc.explicit {
            explicit_vr_and_length(walk.input, be)?
        } else {
            let mut len = [0u8; 4];
            walk.input.read(&mut len)?;
            (implicit_vr(tag), u32_of(len, be))
        };
        if walk.stack.is_empty() {
            walk.summary.pixel_data_last = tag == PIXEL_DATA;
        }
        if length == UNDEFINED || vr == VR::SQ {
            walk.open_container(tag, length, offset)?;
        } else {
            walk.value(tag, vr, u64::from(length), offset)?;
        }
    }
}

/// The state of a walk: where it is, the containers it is inside (innermost last), the
/// sequence depth and what it has measured so far.
struct Walk<'a, R> {
    input: &'a mut Input<R>,
    enc: Encoding,
    stack: Vec<Frame>,
    depth: usize,
    summary: Summary,
}

impl<R: Read + Seek> Walk<'_, R> {
    /// The kind of the innermost container, if any.
    fn top_kind(&self) -> Option<Kind> {
        self.stack.last().map(|f| f.kind)
    }

    /// Where the innermost container of defined length ends.
    fn innermost_end(&self) -> Option<u64> {
        self.stack.iter().rev().find_map(|f| f.end)
    }

    /// Counts `n` bytes loaded with the header against [`MAX_HEADER_BYTES`].
    fn held(&mut self, n: u64) -> Result<(), GuardError> {
        self.summary.header_bytes = self.summary.header_bytes.saturating_add(n);
        if self.summary.header_bytes > MAX_HEADER_BYTES {
            return Err(GuardError::HeaderTooLarge);
        }
        Ok(())
    }

    /// Closes the containers of defined length that end here; an element that ran past
    /// the end of one is refused.
    fn close_ended_containers(&mut self) -> Result<(), GuardError> {
        while let Some(top) = self.stack.last().copied() {
            match top.end {
                Some(end) if self.input.pos == end => {
                    if top.kind == Kind::Sequence {
                        self.depth -= 1;
                    }
                    self.stack.pop();
                }
                Some(end) if self.input.pos > end => {
                    return Err(GuardError::Structure {
                        offset: self.input.pos,
                        what: "element overruns its sequence or item",
                    })
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// An item, a pixel data fragment or a delimiter (group FFFE): each only where its
    /// container allows it.
    fn item_or_delimiter(&mut self, tag: Tag, offset: u64) -> Result<(), GuardError> {
        let mut len = [0u8; 4];
        self.input.read(&mut len)?;
        let length = u32_of(len, self.enc.big_endian);
        let end = self.innermost_end();
        match (tag.1, self.stack.last().map(|f| (f.kind, f.end))) {
            (ITEM, Some((Kind::Sequence, _))) => {
                let item_end = if length == UNDEFINED {
                    None
                } else {
                    fits(self.input, end, tag, u64::from(length), offset)?;
                    Some(self.input.pos + u64::from(length))
                };
                self.stack.push(Frame {
                    kind: Kind::Item,
                    end: item_end,
                });
            }
            (ITEM, Some((Kind::Fragments, _))) => self.fragment(tag, length, end, offset)?,
            (ITEM_END, Some((Kind::Item, None))) => {
                self.stack.pop();
            }
            (SEQUENCE_END, Some((Kind::Sequence, None))) => {
                self.depth -= 1;
                self.stack.pop();
            }
            (SEQUENCE_END, Some((Kind::Fragments, _))) => {
                self.stack.pop();
            }
            _ => {
                return Err(GuardError::Structure {
                    offset,
                    what: "item or delimiter out of place",
                })
            }
        }
        Ok(())
    }

    /// A fragment of encapsulated pixel data, measured and skipped: the top-level Pixel
    /// Data's counts as pixel bytes, any other (an icon image in an item) as header bytes,
    /// since the parser loads it with the header.
    fn fragment(
        &mut self,
        tag: Tag,
        length: u32,
        end: Option<u64>,
        offset: u64,
    ) -> Result<(), GuardError> {
        if length == UNDEFINED {
            return Err(GuardError::Structure {
                offset,
                what: "pixel data fragment of undefined length",
            });
        }
        fits(self.input, end, tag, u64::from(length), offset)?;
        if self.stack.len() == 1 {
            let bytes = self.summary.pixel_data_bytes.get_or_insert(0);
            *bytes = bytes.saturating_add(u64::from(length));
        } else {
            self.held(u64::from(length))?;
        }
        self.input.skip(u64::from(length))
    }

    /// A sequence, or encapsulated Pixel Data: opened as a container, at most
    /// [`MAX_DEPTH`] sequences deep, a defined length held to the bytes present.
    fn open_container(&mut self, tag: Tag, length: u32, offset: u64) -> Result<(), GuardError> {
        let kind = if tag == PIXEL_DATA && length == UNDEFINED {
            Kind::Fragments
        } else {
            Kind::Sequence
        };
        let end = if length == UNDEFINED {
            None
        } else {
            fits(
                self.input,
                self.innermost_end(),
                tag,
                u64::from(length),
                offset,
            )?;
            Some(self.input.pos + u64::from(length))
        };
        if kind == Kind::Fragments && self.stack.is_empty() {
            second_pixel_data(&self.summary, offset)?;
            self.summary.pixel_data_bytes = Some(0);
        }
        if kind == Kind::Sequence {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(GuardError::TooDeep { offset });
            }
        }
        self.stack.push(Frame { kind, end });
        Ok(())
    }

    /// A value of defined length: held to its container and the input, to whole values of
    /// its VR and (unless bulk) to [`MAX_ELEMENT_BYTES`], measured and skipped.
    fn value(&mut self, tag: Tag, vr: VR, length: u64, offset: u64) -> Result<(), GuardError> {
        fits(self.input, self.innermost_end(), tag, length, offset)?;
        if let Some(size) = value_size(vr).filter(|size| length % size != 0) {
            return Err(GuardError::PartialValue {
                tag,
                vr,
                length,
                size,
                offset,
            });
        }
        if length > MAX_ELEMENT_BYTES && !is_bulk(tag) {
            return Err(GuardError::ElementTooLarge { tag, length });
        }
        if self.stack.is_empty() && tag == PIXEL_DATA {
            second_pixel_data(&self.summary, offset)?;
            self.summary.pixel_data_bytes = Some(length);
        } else {
            self.held(length)?;
        }
        self.input.skip(length)
    }
}

/// Byte fixtures of hostile data sets, shared by the tests of every parsing path.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{ITEM, ITEM_END, SEQUENCE_END, UNDEFINED};

    /// A UID value padded to even length with NUL, as a UI value is written.
    pub fn padded_uid(uid: &str) -> Vec<u8> {
        let mut v = uid.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        v
    }

    /// An explicit VR LE element with a short header.
    pub fn short(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    /// An explicit VR LE element header with the long form and a given (maybe lying) length.
    pub fn long_header(group: u16, element: u16, vr: &[u8; 2], length: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&length.to_le_bytes());
        out
    }

    pub fn delimiter(element: u16, length: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xFFFEu16.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
        out
    }

    /// Sequences nested `depth` deep, all of undefined length, around a patient name.
    pub fn nested(depth: usize) -> Vec<u8> {
        let mut out = short(0x0010, 0x0010, b"PN", b"DOE^JOHN");
        for _ in 0..depth {
            out.extend(long_header(0x0040, 0xA730, b"SQ", UNDEFINED));
            out.extend(delimiter(ITEM, UNDEFINED));
        }
        for _ in 0..depth {
            out.extend(delimiter(ITEM_END, 0));
            out.extend(delimiter(SEQUENCE_END, 0));
        }
        out
    }

    /// A Part 10 file with a whole File Meta Information group (SOP class `class`,
    /// instance `sop`, transfer syntax `ts`) around `body`, as the header parse and the
    /// upload take it.
    pub fn part10_with_meta(class: &str, sop: &str, ts: &str, body: &[u8]) -> Vec<u8> {
        let meta = dicom_object::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(class)
            .media_storage_sop_instance_uid(sop)
            .transfer_syntax(ts)
            .build()
            .unwrap();
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        meta.write(&mut file).unwrap();
        file.extend_from_slice(body);
        file
    }

    /// A Part 10 file (preamble, meta with `ts`) around `body`.
    pub fn part10(ts: &str, body: &[u8]) -> Vec<u8> {
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        let mut uid = ts.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        file.extend(short(0x0002, 0x0010, b"UI", &uid));
        file.extend_from_slice(body);
        file
    }

    /// An explicit VR LE private UN of undefined length whose item holds a sequence
    /// nested `depth` deep *as explicit VR*, padded so that a walk reading the UN's content
    /// as implicit VR (PS3.5 §6.2.2) sees one opaque element and a clean end: the first
    /// inner header, read as implicit VR, declares `'S' 'Q' 00 00` = 20,819 bytes.
    pub fn un_hiding_depth(depth: usize) -> Vec<u8> {
        let mut ds = long_header(0x0009, 0x1001, b"UN", UNDEFINED);
        ds.extend(delimiter(ITEM, UNDEFINED));
        ds.extend(long_header(0x0011, 0x0010, b"SQ", UNDEFINED));
        let hidden_from = ds.len() - 4; // the implicit reading's value starts at the length
        for _ in 0..depth {
            ds.extend(delimiter(ITEM, UNDEFINED));
            ds.extend(long_header(0x0011, 0x0010, b"SQ", UNDEFINED));
        }
        let hidden = u32::from_le_bytes([b'S', b'Q', 0, 0]) as usize;
        assert!(
            ds.len() - hidden_from <= hidden,
            "depth too large for the padding"
        );
        ds.resize(hidden_from + hidden, 0);
        ds.extend(delimiter(ITEM_END, 0));
        ds.extend(delimiter(SEQUENCE_END, 0));
        ds
    }

    /// An explicit VR LE data set with two top-level Pixel Data elements: encapsulated
    /// fragments of `bytes` bytes, then an empty one that a reader measuring only the last
    /// would take for the whole.
    pub fn two_pixel_data(bytes: u32) -> Vec<u8> {
        let mut ds = long_header(0x7FE0, 0x0010, b"OB", UNDEFINED);
        ds.extend(delimiter(ITEM, 0));
        ds.extend(delimiter(ITEM, bytes));
        ds.resize(ds.len() + bytes as usize, 7);
        ds.extend(delimiter(SEQUENCE_END, 0));
        ds.extend(long_header(0x7FE0, 0x0010, b"OB", 0));
        ds
    }

    /// A 30-byte data set whose UT element claims 0xFFFFFFF0 bytes.
    pub fn ut_lie() -> Vec<u8> {
        let mut ds = short(0x0008, 0x0060, b"CS", b"DX");
        ds.extend(long_header(0x0008, 0x2111, b"UT", 0xFFFF_FFF0));
        ds.extend_from_slice(b"abcdefgh");
        ds
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

    #[test]
    fn nesting_up_to_the_limit_passes_and_deeper_is_refused() {
        assert!(check_dataset(&nested(MAX_DEPTH), EXPLICIT_LE).is_ok());
        assert!(matches!(
            check_dataset(&nested(MAX_DEPTH + 1), EXPLICIT_LE),
            Err(GuardError::TooDeep { .. })
        ));
        // Far deeper than any stack would survive with recursion: refused, no overflow.
        assert!(matches!(
            check_dataset(&nested(100_000), EXPLICIT_LE),
            Err(GuardError::TooDeep { .. })
        ));
    }

    #[test]
    fn nested_defined_length_sequences_count_too() {
        // Innermost first: each level wraps the previous in an item and a sequence of
        // defined length.
        let mut inner = short(0x0010, 0x0010, b"PN", b"X^Y ");
        for _ in 0..(MAX_DEPTH + 1) {
            let mut item = delimiter(ITEM, inner.len() as u32);
            item.extend(&inner);
            let mut seq = long_header(0x0040, 0xA730, b"SQ", item.len() as u32);
            seq.extend(item);
            inner = seq;
        }
        assert!(matches!(
            check_dataset(&inner, EXPLICIT_LE),
            Err(GuardError::TooDeep { .. })
        ));
    }

    #[test]
    fn a_length_beyond_the_data_is_refused_without_allocating() {
        let ds = ut_lie();
        assert!(ds.len() <= 32);
        assert!(matches!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::LengthBeyondData {
                length: 0xFFFF_FFF0,
                ..
            })
        ));
    }

    #[test]
    fn lying_sequence_and_item_lengths_are_refused() {
        // A defined-length SQ longer than the data.
        let mut ds = long_header(0x0040, 0xA730, b"SQ", 1000);
        ds.extend(delimiter(ITEM, 8));
        ds.extend(short(0x0010, 0x0010, b"PN", b"AB"));
        assert!(matches!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::LengthBeyondData { .. })
        ));
        // An item longer than its sequence.
        let mut ds = long_header(0x0040, 0xA730, b"SQ", 18);
        ds.extend(delimiter(ITEM, 100));
        ds.extend(short(0x0010, 0x0010, b"PN", b"AB"));
        ds.extend(short(0x0010, 0x0020, b"LO", b"12"));
        assert!(matches!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::LengthBeyondData { .. })
        ));
        // An element that runs past the end of its item.
        let mut ds = long_header(0x0040, 0xA730, b"SQ", 18);
        ds.extend(delimiter(ITEM, 10));
        ds.extend(short(0x0010, 0x0010, b"PN", b"ABCD"));
        assert!(check_dataset(&ds, EXPLICIT_LE).is_err());
    }

    #[test]
    fn structural_lies_are_refused() {
        // An item at the top level.
        assert!(matches!(
            check_dataset(&delimiter(ITEM, 0), EXPLICIT_LE),
            Err(GuardError::Structure { .. })
        ));
        // A sequence delimiter with nothing open.
        assert!(matches!(
            check_dataset(&delimiter(SEQUENCE_END, 0), EXPLICIT_LE),
            Err(GuardError::Structure { .. })
        ));
        // A sequence never closed.
        let mut ds = long_header(0x0040, 0xA730, b"SQ", UNDEFINED);
        ds.extend(delimiter(ITEM, UNDEFINED));
        assert!(matches!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::Truncated { .. })
        ));
        // A header cut short.
        assert!(matches!(
            check_dataset(&[0x10, 0x00, 0x10], EXPLICIT_LE),
            Err(GuardError::Truncated { .. })
        ));
    }

    #[test]
    fn lying_fragments_are_refused() {
        let mut ds = long_header(0x7FE0, 0x0010, b"OB", UNDEFINED);
        ds.extend(delimiter(ITEM, 0)); // empty offset table
        ds.extend(delimiter(ITEM, 0x7FFF_0000)); // a fragment far beyond the data
        ds.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
        assert!(matches!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::LengthBeyondData { .. })
        ));
        // An offset table that claims more than is there.
        let mut ds = long_header(0x7FE0, 0x0010, b"OB", UNDEFINED);
        ds.extend(delimiter(ITEM, 4000));
        ds.extend_from_slice(&[0; 8]);
        assert!(check_dataset(&ds, EXPLICIT_LE).is_err());
        // Well-formed fragments pass.
        let mut ds = long_header(0x7FE0, 0x0010, b"OB", UNDEFINED);
        ds.extend(delimiter(ITEM, 0));
        ds.extend(delimiter(ITEM, 4));
        ds.extend_from_slice(&[1, 2, 3, 4]);
        ds.extend(delimiter(SEQUENCE_END, 0));
        assert!(check_dataset(&ds, EXPLICIT_LE).is_ok());
    }

    /// Empty elements cost 8 bytes each on the wire and nothing of the value budget, but a
    /// parsed object holds each: their number is capped, and so is that of empty items and
    /// of zero-length pixel data fragments.
    #[test]
    fn the_number_of_elements_items_and_fragments_is_capped() {
        let empty = short(0x0009, 0x0010, b"LO", b"");
        let ds = empty.repeat(MAX_TOKENS as usize);
        assert_eq!(
            check_dataset(&ds, EXPLICIT_LE).map(|s| s.tokens),
            Ok(MAX_TOKENS)
        );
        let ds = empty.repeat(MAX_TOKENS as usize + 1);
        assert_eq!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::TooManyElements {
                offset: MAX_TOKENS * 8
            })
        );
        // Empty items of one sequence.
        let mut ds = long_header(0x0040, 0xA730, b"SQ", UNDEFINED);
        for _ in 0..MAX_TOKENS / 2 {
            ds.extend(delimiter(ITEM, UNDEFINED));
            ds.extend(delimiter(ITEM_END, 0));
        }
        ds.extend(delimiter(SEQUENCE_END, 0));
        assert!(matches!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::TooManyElements { .. })
        ));
        // Zero-length fragments of the top-level Pixel Data.
        let mut ds = long_header(0x7FE0, 0x0010, b"OB", UNDEFINED);
        for _ in 0..MAX_TOKENS {
            ds.extend(delimiter(ITEM, 0));
        }
        ds.extend(delimiter(SEQUENCE_END, 0));
        assert!(matches!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::TooManyElements { .. })
        ));
    }

    #[test]
    fn non_bulk_elements_are_capped() {
        let big = (MAX_ELEMENT_BYTES + 2) as usize;
        let mut ds = long_header(0x0009, 0x1010, b"OB", big as u32);
        ds.resize(ds.len() + big, 0);
        assert!(matches!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::ElementTooLarge { .. })
        ));
    }

    #[test]
    fn bulk_values_before_pixel_data_are_held_to_the_header_budget() {
        // An Encapsulated Document (bulk, so past the per-element cap) and an overlay
        // before Pixel Data: what a header parse would hold in memory.
        let half = (MAX_HEADER_BYTES / 2) as usize;
        let mut ds = long_header(0x0042, 0x0011, b"OB", half as u32);
        ds.resize(ds.len() + half, 0);
        assert_eq!(
            check_dataset(&ds, EXPLICIT_LE).map(|s| s.header_bytes),
            Ok(half as u64)
        );
        ds.extend(long_header(0x6000, 0x3000, b"OB", half as u32 + 2));
        ds.resize(ds.len() + half + 2, 0);
        assert_eq!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::HeaderTooLarge)
        );
        // The same bytes as Pixel Data are not header.
        let mut ds = short(0x0028, 0x0010, b"US", &4u16.to_le_bytes());
        ds.extend(long_header(0x7FE0, 0x0010, b"OB", 2 * half as u32 + 2));
        ds.resize(ds.len() + 2 * half + 2, 0);
        let summary = check_dataset(&ds, EXPLICIT_LE).unwrap();
        assert_eq!(summary.header_bytes, 2);
        assert_eq!(summary.pixel_data_bytes, Some(2 * half as u64 + 2));
        // What follows the pixels counts too (a whole-file read holds it beside them):
        // trailing private data of any size was a way round the budget.
        let pixels = ds.len();
        ds.extend(long_header(0x7FE1, 0x1010, b"OB", half as u32));
        ds.resize(ds.len() + half, 0);
        assert_eq!(
            check_dataset(&ds, EXPLICIT_LE).map(|s| s.header_bytes),
            Ok(half as u64 + 2)
        );
        ds.truncate(pixels);
        for element in [0x1010u16, 0x1011] {
            ds.extend(long_header(0x7FE1, element, b"OB", half as u32));
            ds.resize(ds.len() + half, 0);
        }
        assert_eq!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::HeaderTooLarge)
        );
    }

    #[test]
    fn a_un_of_undefined_length_is_walked_the_way_the_parser_reads_it() {
        // dicom-rs reads the UN's content in the data set's own explicit VR: 1,000 levels
        // of sequences, which its recursive object builder does not survive.
        let ds = un_hiding_depth(1_000);
        assert!(matches!(
            check_dataset(&ds, EXPLICIT_LE),
            Err(GuardError::TooDeep { .. })
        ));
        // A UN of undefined length within the limits still passes.
        let mut shallow = long_header(0x0009, 0x1001, b"UN", UNDEFINED);
        shallow.extend(delimiter(ITEM, UNDEFINED));
        shallow.extend(short(0x0009, 0x1010, b"LO", b"SEED"));
        shallow.extend(delimiter(ITEM_END, 0));
        shallow.extend(delimiter(SEQUENCE_END, 0));
        assert!(check_dataset(&shallow, EXPLICIT_LE).is_ok());
        crate::fuzz_targets::guard_parser(&[&[1u8][..], &shallow].concat());
    }

    #[test]
    fn context_dependent_vrs_are_held_to_whole_words_as_the_parser_reads_them() {
        // (0028,0106) Smallest Image Pixel Value is US or SS: dicom-rs reads an implicit VR
        // value of 3 bytes as one 2-byte word and takes the third byte for the next tag.
        let mut ds = Vec::new();
        ds.extend_from_slice(&0x0028u16.to_le_bytes());
        ds.extend_from_slice(&0x0106u16.to_le_bytes());
        ds.extend_from_slice(&3u32.to_le_bytes());
        ds.extend_from_slice(&[0, 0, 8]);
        assert!(matches!(
            check_dataset(&ds, IMPLICIT_LE),
            Err(GuardError::PartialValue { .. })
        ));
        ds.truncate(4);
        ds.extend_from_slice(&2u32.to_le_bytes());
        ds.extend_from_slice(&[0, 0]);
        assert!(check_dataset(&ds, IMPLICIT_LE).is_ok());
    }

    #[test]
    fn a_second_pixel_data_element_is_refused() {
        assert!(matches!(
            check_dataset(&two_pixel_data(1024), EXPLICIT_LE),
            Err(GuardError::Structure {
                what: "a second Pixel Data element",
                ..
            })
        ));
    }

    #[test]
    fn encapsulated_pixel_data_inside_an_item_counts_as_header_bytes() {
        // An icon image's encapsulated pixels are loaded with the header: held to its budget.
        let nested = |fragment: u32| {
            let mut ds = long_header(0x0088, 0x0200, b"SQ", UNDEFINED);
            ds.extend(delimiter(ITEM, UNDEFINED));
            ds.extend(long_header(0x7FE0, 0x0010, b"OB", UNDEFINED));
            ds.extend(delimiter(ITEM, 0));
            ds.extend(delimiter(ITEM, fragment));
            ds.resize(ds.len() + fragment as usize, 1);
            ds.extend(delimiter(SEQUENCE_END, 0));
            ds.extend(delimiter(ITEM_END, 0));
            ds.extend(delimiter(SEQUENCE_END, 0));
            ds
        };
        let summary = check_dataset(&nested(64), EXPLICIT_LE).unwrap();
        assert_eq!(summary.header_bytes, 64);
        assert_eq!(summary.pixel_data_bytes, None);
        assert_eq!(
            check_dataset(&nested(MAX_HEADER_BYTES as u32 + 2), EXPLICIT_LE),
            Err(GuardError::HeaderTooLarge)
        );
    }

    #[test]
    fn what_the_walk_passes_the_parser_reads_within_the_same_bounds() {
        // The agreement oracle of the `guard_parser` fuzz target, on every fixture here.
        for ds in [
            nested(MAX_DEPTH),
            nested(MAX_DEPTH + 1),
            un_hiding_depth(1_000),
            two_pixel_data(16),
            ut_lie(),
        ] {
            for selector in 0..3u8 {
                crate::fuzz_targets::guard_parser(&[&[selector][..], &ds].concat());
            }
        }
    }

    #[test]
    fn encapsulated_pixel_data_is_measured_by_its_fragments() {
        let mut ds = long_header(0x7FE0, 0x0010, b"OB", UNDEFINED);
        ds.extend(delimiter(ITEM, 0));
        ds.extend(delimiter(ITEM, 4));
        ds.extend_from_slice(&[1, 2, 3, 4]);
        ds.extend(delimiter(ITEM, 6));
        ds.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        ds.extend(delimiter(SEQUENCE_END, 0));
        let summary = check_dataset(&ds, EXPLICIT_LE).unwrap();
        assert_eq!(summary.pixel_data_bytes, Some(10));
        assert_eq!(summary.header_bytes, 0);
        assert_eq!(
            check_dataset(&[], EXPLICIT_LE).unwrap().pixel_data_bytes,
            None
        );
    }

    #[test]
    fn implicit_vr_sequences_come_from_the_dictionary() {
        // (0040,A730) Content Sequence in implicit VR, defined lengths, too deep.
        let mut inner = Vec::new();
        for _ in 0..(MAX_DEPTH + 1) {
            let mut item = Vec::new();
            item.extend_from_slice(&0xFFFEu16.to_le_bytes());
            item.extend_from_slice(&ITEM.to_le_bytes());
            item.extend_from_slice(&(inner.len() as u32).to_le_bytes());
            item.extend(&inner);
            let mut seq = Vec::new();
            seq.extend_from_slice(&0x0040u16.to_le_bytes());
            seq.extend_from_slice(&0xA730u16.to_le_bytes());
            seq.extend_from_slice(&(item.len() as u32).to_le_bytes());
            seq.extend(item);
            inner = seq;
        }
        assert!(matches!(
            check_dataset(&inner, IMPLICIT_LE),
            Err(GuardError::TooDeep { .. })
        ));
    }

    #[test]
    fn part10_meta_is_checked_and_bodies_follow_their_syntax() {
        let file = part10(EXPLICIT_LE, &nested(3));
        assert!(check_part10_bytes(&file).is_ok());
        let mut bad = file.clone();
        bad.extend(long_header(0x0008, 0x2111, b"UT", 0xFFFF_FFF0));
        assert!(matches!(
            check_part10_bytes(&bad),
            Err(GuardError::LengthBeyondData { .. })
        ));
        assert!(matches!(
            check_part10_bytes(b"not dicom at all"),
            Err(GuardError::NotPart10(_))
        ));
        // A meta element whose length lies.
        let mut lie = vec![0u8; 128];
        lie.extend_from_slice(b"DICM");
        lie.extend(long_header(0x0002, 0x0001, b"OB", 0xFFFF_FF00));
        assert!(matches!(
            check_part10_bytes(&lie),
            Err(GuardError::LengthBeyondData { .. })
        ));
    }

    /// Found by fuzzing the console upload: a file meta group whose group length ends
    /// elsewhere than its elements made the parser start the deflated body at another byte
    /// than this scan, and allocate 3.5 GB.
    #[test]
    fn a_meta_group_length_that_disagrees_with_its_elements_is_refused() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/pixels/oom-1b115f98cd57878e18ffd731a6d8fb29d0b0fa1c");
        let bytes = std::fs::read(path).unwrap();
        let err = check_part10_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("group length disagrees"), "{err}");
    }

    #[test]
    fn deflated_bodies_are_inflated_and_walked() {
        use std::io::Write;
        let file = part10(DEFLATED, &[]);
        let deflate = |body: &[u8]| {
            let mut enc =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(body).unwrap();
            enc.finish().unwrap()
        };
        let mut good = file.clone();
        good.extend(deflate(&nested(2)));
        assert!(check_part10_bytes(&good).is_ok());
        let mut deep = file.clone();
        deep.extend(deflate(&nested(MAX_DEPTH + 5)));
        assert!(matches!(
            check_part10_bytes(&deep),
            Err(GuardError::TooDeep { .. })
        ));
        let mut lie = file;
        let mut body = short(0x0008, 0x0060, b"CS", b"DX");
        body.extend(long_header(0x0008, 0x2111, b"UT", 0xFFFF_FFF0));
        lie.extend(deflate(&body));
        let got = check_part10_bytes(&lie);
        // The inflated length is unknown up front: the cap answers before any skip.
        assert!(
            matches!(got, Err(GuardError::ElementTooLarge { .. })),
            "{got:?}"
        );
        let mut short_lie = Vec::new();
        short_lie.extend(&lie[..lie.len() - deflate(&body).len()]);
        let mut body = short(0x0008, 0x0060, b"CS", b"DX");
        body.extend(long_header(0x0009, 0x1000, b"OB", 1 << 20));
        body.extend_from_slice(&[0; 100]);
        short_lie.extend(deflate(&body));
        let got = check_part10_bytes(&short_lie);
        assert!(matches!(got, Err(GuardError::Truncated { .. })), "{got:?}");
    }

    #[test]
    fn every_sample_file_passes() {
        let Some(dir) = crate::infer::testdata::samples_dir() else {
            return;
        };
        let mut seen = 0;
        for folder in std::fs::read_dir(dir.join("dicom")).unwrap() {
            let folder = folder.unwrap().path();
            if !folder.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(folder).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "dcm") {
                    assert!(check_file(&path).is_ok(), "{}", path.display());
                    seen += 1;
                }
            }
        }
        assert!(seen >= 16, "{seen} sample files");
    }
}
