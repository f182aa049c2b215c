//! A hostile DICOM peer for the suite in `tests/hostile.rs` (included there by path: only
//! that suite builds it): associates over a real socket
//! and sends whatever command and data-set bytes a case crafts (lying lengths, endless
//! fragments, dropped connections), plus byte builders for explicit VR little endian data
//! sets.

use dicom_ul::association::client::{ClientAssociation, ClientAssociationOptions};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use duli::dimse::command::{self, Command, Priority};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Digital X-Ray Image Storage - For Presentation.
pub use duli::dimse::uids::DIGITAL_XRAY_PRESENTATION as DX;
/// Explicit VR Little Endian.
pub use duli::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN as EXPLICIT_LE;
/// Study Root Query/Retrieve Information Model - FIND.
pub use duli::dimse::uids::STUDY_ROOT_QR_FIND as STUDY_FIND;
/// Undefined length.
pub const UNDEFINED: u32 = 0xFFFF_FFFF;

/// What the daemon answered to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A response with this status and error comment.
    Status(u16, Option<String>),
    /// The association was aborted (A-ABORT) or the connection closed.
    Aborted(String),
}

impl Answer {
    /// The status, when one came.
    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Status(s, _) => Some(*s),
            Answer::Aborted(_) => None,
        }
    }
}

/// One association of the hostile peer.
pub struct Peer {
    assoc: Option<ClientAssociation<TcpStream>>,
    pc: u8,
    chunk: usize,
    message_id: u16,
}

impl Peer {
    /// Associates with `addr` proposing `abstract_syntax` in `ts`.
    pub fn associate(addr: SocketAddr, abstract_syntax: &str, ts: &str) -> Peer {
        let assoc = ClientAssociationOptions::new()
            .calling_ae_title("HOSTILE")
            .called_ae_title("DULI")
            .with_presentation_context(abstract_syntax, vec![ts])
            .max_pdu_length(65_536)
            .read_timeout(Duration::from_secs(20))
            .establish(addr)
            .unwrap_or_else(|e| panic!("association with {addr} failed: {e}"));
        let pc = assoc
            .presentation_contexts()
            .iter()
            .find(|p| p.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
            .map(|p| p.id)
            .unwrap_or_else(|| panic!("{abstract_syntax} in {ts} not accepted"));
        let chunk = (assoc.acceptor_max_pdu_length().clamp(1024, 65_536) as usize) - 6;
        Peer {
            assoc: Some(assoc),
            pc,
            chunk,
            message_id: 0,
        }
    }

    fn assoc(&mut self) -> &mut ClientAssociation<TcpStream> {
        self.assoc.as_mut().expect("association open")
    }

    fn pdv(&mut self, value_type: PDataValueType, data: &[u8], last: bool) -> Result<(), String> {
        let pc = self.pc;
        self.assoc()
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type,
                    is_last: last,
                    data: data.to_vec(),
                }],
            })
            .map_err(|e| e.to_string())
    }

    /// Sends a command set.
    pub fn command(&mut self, cmd: &Command) -> Result<(), String> {
        self.pdv(PDataValueType::Command, &command::encode(cmd), true)
    }

    /// Sends data-set bytes in PDU-sized fragments; the final one is marked last when
    /// `last`.
    pub fn data(&mut self, bytes: &[u8], last: bool) -> Result<(), String> {
        if bytes.is_empty() {
            return self.pdv(PDataValueType::Data, &[], last);
        }
        let chunks: Vec<&[u8]> = bytes.chunks(self.chunk).collect();
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            self.pdv(PDataValueType::Data, c, last && i + 1 == n)?;
        }
        Ok(())
    }

    /// Reads PDUs until a complete response command (or an abort).
    pub fn answer(&mut self) -> Answer {
        let mut bytes = Vec::new();
        loop {
            let pdu = match self.assoc().receive() {
                Ok(p) => p,
                Err(e) => return Answer::Aborted(e.to_string()),
            };
            match pdu {
                Pdu::PData { data } => {
                    for v in data {
                        if v.value_type != PDataValueType::Command {
                            continue;
                        }
                        bytes.extend_from_slice(&v.data);
                        if v.is_last {
                            let rsp = command::decode(&bytes).expect("response decodes");
                            bytes.clear();
                            if rsp.status.map(|s| s.0) == Some(0xFF00)
                                || rsp.status.map(|s| s.0) == Some(0xFF01)
                            {
                                continue;
                            }
                            return Answer::Status(
                                rsp.status.map(|s| s.0).unwrap_or(0xFFFF),
                                rsp.error_comment,
                            );
                        }
                    }
                }
                Pdu::AbortRQ { .. } => return Answer::Aborted("A-ABORT".into()),
                other => return Answer::Aborted(format!("unexpected {other:?}")),
            }
        }
    }

    fn next_id(&mut self) -> u16 {
        self.message_id = self.message_id.wrapping_add(1).max(1);
        self.message_id
    }

    /// A whole C-STORE of `data_set` announced as `sop_class`/`sop_instance`.
    pub fn store(&mut self, sop_class: &str, sop_instance: &str, data_set: &[u8]) -> Answer {
        let id = self.next_id();
        let rq = Command::store_rq(id, sop_class, sop_instance, Priority::Medium);
        if let Err(e) = self.command(&rq).and_then(|_| self.data(data_set, true)) {
            return Answer::Aborted(e);
        }
        self.answer()
    }

    /// A C-FIND with `identifier` (Study Root).
    pub fn find(&mut self, identifier: &[u8]) -> Answer {
        let id = self.next_id();
        let rq = Command::find_rq(id, STUDY_FIND, Priority::Medium);
        if let Err(e) = self.command(&rq).and_then(|_| self.data(identifier, true)) {
            return Answer::Aborted(e);
        }
        self.answer()
    }

    /// Starts a C-STORE of `sop_class` whose data set is never marked last: keeps sending
    /// `fragment` until the daemon stops the association or `max_bytes` went out. Returns
    /// what came back and the bytes sent. (A class other than the context's makes it a
    /// refused request whose data set is dropped as it arrives.)
    pub fn endless_store_of(
        &mut self,
        sop_class: &str,
        sop_instance: &str,
        fragment: &[u8],
        max_bytes: u64,
    ) -> (Answer, u64) {
        let id = self.next_id();
        let rq = Command::store_rq(id, sop_class, sop_instance, Priority::Medium);
        if let Err(e) = self.command(&rq) {
            return (Answer::Aborted(e), 0);
        }
        let mut sent = 0u64;
        while sent < max_bytes {
            if self.data(fragment, false).is_err() {
                break;
            }
            sent += fragment.len() as u64;
        }
        (self.answer(), sent)
    }

    /// Releases the association.
    pub fn release(mut self) {
        if let Some(a) = self.assoc.take() {
            let _ = a.release();
        }
    }

    /// Drops the TCP connection without release or abort.
    pub fn drop_connection(mut self) {
        if let Some(mut a) = self.assoc.take() {
            let _ = a.inner_stream().shutdown(std::net::Shutdown::Both);
        }
    }
}

/// One explicit VR little endian element, value padded to even length (UIDs with NUL,
/// text with a space, binary with 0).
pub fn el(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(match vr {
            b"UI" => 0,
            b"OB" | b"OW" | b"UN" => 0,
            _ => b' ',
        });
    }
    let long = matches!(
        vr,
        b"OB" | b"OD" | b"OF" | b"OL" | b"OW" | b"SQ" | b"UC" | b"UN" | b"UR" | b"UT"
    );
    let mut out = header(group, element, vr, if long { v.len() as u32 } else { 0 });
    if !long {
        out.truncate(6);
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    out.extend(v);
    out
}

/// A long-form explicit VR header with any (possibly lying) length.
pub fn header(group: u16, element: u16, vr: &[u8; 2], length: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&length.to_le_bytes());
    out
}

/// An item, item delimiter or sequence delimiter header.
pub fn item(element: u16, length: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    out.extend_from_slice(&0xFFFEu16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    out
}

/// A US value.
pub fn us(group: u16, element: u16, v: u16) -> Vec<u8> {
    el(group, element, b"US", &v.to_le_bytes())
}

/// The UIDs of one crafted instance.
#[derive(Debug, Clone)]
pub struct Ids {
    /// SOP Instance UID.
    pub sop: String,
    /// Study Instance UID.
    pub study: String,
    /// Series Instance UID.
    pub series: String,
}

/// The attributes of a DX image up to (not including) Pixel Data, with `name` as Patient
/// Name and `charset` as Specific Character Set; `extra` elements (already encoded, tags
/// between (0010,0020) and (0020,000D)) are inserted in place.
pub fn dx_header(
    ids: &Ids,
    charset: &[u8],
    name: &[u8],
    extra: &[u8],
    rows: u16,
    cols: u16,
) -> Vec<u8> {
    let mut ds = Vec::new();
    if !charset.is_empty() {
        ds.extend(el(0x0008, 0x0005, b"CS", charset));
    }
    ds.extend(el(0x0008, 0x0016, b"UI", DX.as_bytes()));
    ds.extend(el(0x0008, 0x0018, b"UI", ids.sop.as_bytes()));
    ds.extend(el(0x0008, 0x0060, b"CS", b"DX"));
    ds.extend(el(0x0010, 0x0010, b"PN", name));
    ds.extend(el(0x0010, 0x0020, b"LO", b"HOSTILE-1"));
    ds.extend_from_slice(extra);
    ds.extend(el(0x0018, 0x0015, b"CS", b"CHEST"));
    ds.extend(el(0x0018, 0x5101, b"CS", b"PA"));
    ds.extend(el(0x0020, 0x000D, b"UI", ids.study.as_bytes()));
    ds.extend(el(0x0020, 0x000E, b"UI", ids.series.as_bytes()));
    ds.extend(us(0x0028, 0x0002, 1));
    ds.extend(el(0x0028, 0x0004, b"CS", b"MONOCHROME2"));
    ds.extend(us(0x0028, 0x0010, rows));
    ds.extend(us(0x0028, 0x0011, cols));
    ds.extend(us(0x0028, 0x0100, 16));
    ds.extend(us(0x0028, 0x0101, 12));
    ds.extend(us(0x0028, 0x0102, 11));
    ds.extend(us(0x0028, 0x0103, 0));
    ds
}

/// A small, valid DX data set (64 × 64, native pixels).
pub fn dx(ids: &Ids, charset: &[u8], name: &[u8]) -> Vec<u8> {
    let mut ds = dx_header(ids, charset, name, &[], 64, 64);
    let pixels: Vec<u8> = (0..64 * 64 * 2).map(|i| (i % 251) as u8).collect();
    ds.extend(el(0x7FE0, 0x0010, b"OW", &pixels));
    ds
}

/// A sequence nested `depth` deep (undefined lengths), as one encoded element
/// (Other Patient IDs Sequence, (0010,1002)).
pub fn un_hiding_nesting(depth: usize) -> Vec<u8> {
    let mut out = header(0x0010, 0x1002, b"UN", UNDEFINED);
    out.extend(item(0xE000, UNDEFINED));
    // Read as implicit VR, the first inner header's VR and reserved bytes are a length:
    // pick the reserved bytes so that it covers every level below.
    let below = 4 + depth * 20;
    let high = below.saturating_sub(0x5153).div_ceil(0x1_0000);
    let hidden = 0x5153 + high * 0x1_0000;
    let mut first = header(0x0010, 0x1002, b"SQ", UNDEFINED);
    first[6..8].copy_from_slice(&(high as u16).to_le_bytes());
    out.extend(first);
    let hidden_from = out.len() - 4;
    for _ in 0..depth {
        out.extend(item(0xE000, UNDEFINED));
        out.extend(header(0x0010, 0x1002, b"SQ", UNDEFINED));
    }
    out.resize(hidden_from + hidden, 0);
    out.extend(item(0xE00D, 0));
    out.extend(item(0xE0DD, 0));
    out
}

/// Sequences nested `depth` deep, all of undefined length.
pub fn nested_sequence(depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..depth {
        out.extend(header(0x0010, 0x1002, b"SQ", UNDEFINED));
        out.extend(item(0xE000, UNDEFINED));
    }
    for _ in 0..depth {
        out.extend(item(0xE00D, 0));
        out.extend(item(0xE0DD, 0));
    }
    out
}
