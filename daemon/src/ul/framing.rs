//! PDU framing on a byte stream: reads one PDU with its length checked *before* anything
//! is allocated (a hostile 4 GiB length costs nothing), and writes each PDU with a single
//! write. Encoding and decoding of PDU bodies is dicom-ul's.

use bytes::{Buf, BytesMut};
use dicom_ul::pdu::{read_pdu, write_pdu, Pdu};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of the PDU header (type, reserved, 32-bit length).
pub const PDU_HEADER: usize = 6;

/// Most buffer room added per read: a declared PDU length is never reserved up front.
const READ_STEP: usize = 256 * 1024;

/// Largest A-ASSOCIATE-RQ accepted. 128 presentation contexts with a dozen transfer
/// syntaxes each fit in well under this; anything larger is hostile.
pub const MAX_ASSOCIATE_RQ: u32 = 256 * 1024;

/// Most PDV items one P-DATA-TF may carry. Peers send one or two (a command and its data
/// set); each item, however short on the wire (6 bytes when empty), becomes a value of
/// several times its size once parsed, so a PDU of empty items is refused before parsing.
pub const MAX_PDV_ITEMS: usize = 64;

/// Why a PDU could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// The peer closed the connection between PDUs.
    #[error("connection closed by peer")]
    Closed,
    /// Socket error or EOF in the middle of a PDU.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The PDU type byte is not one of the seven the standard defines.
    #[error("unrecognised PDU type 0x{0:02X}")]
    UnknownType(u8),
    /// A PDU of a type the peer may not send yet (anything but an A-ASSOCIATE-RQ, an
    /// A-RELEASE-RQ or an A-ABORT before it has associated).
    #[error("PDU of type 0x{0:02X} before an A-ASSOCIATE-RQ")]
    Unexpected(u8),
    /// The announced length is over the limit for this PDU type.
    #[error("PDU of type 0x{pdu_type:02X} announces {length} bytes, over the limit of {limit}")]
    TooLong {
        /// PDU type.
        pdu_type: u8,
        /// Announced length.
        length: u32,
        /// The limit.
        limit: u32,
    },
    /// The PDU body does not decode.
    #[error("malformed PDU: {0}")]
    Malformed(String),
}

/// Reads PDUs from a stream into a reusable buffer.
#[derive(Debug)]
pub struct PduReader {
    buf: BytesMut,
    max_pdata: u32,
    /// Only the PDUs a peer may send before it is associated are read (the acceptor's
    /// reader until the A-ASSOCIATE-RQ has come).
    unassociated: bool,
}

/// Room the buffer starts with; it grows with the bytes that arrive.
const INITIAL_BUFFER: usize = 16 * 1024;

impl PduReader {
    /// A reader that accepts P-DATA PDUs up to `max_pdata` bytes (our advertised maximum).
    pub fn new(max_pdata: u32) -> Self {
        PduReader {
            buf: BytesMut::with_capacity(INITIAL_BUFFER),
            max_pdata,
            unassociated: false,
        }
    }

    /// The acceptor's reader of a new connection: until an A-ASSOCIATE-RQ has been read it
    /// takes only that, an A-RELEASE-RQ or an A-ABORT, and refuses any other PDU on its
    /// header, so a peer that has not associated cannot make the box hold a P-DATA of
    /// `max_pdata` bytes; from then on it reads as [`PduReader::new`] does.
    pub fn awaiting_request(max_pdata: u32) -> Self {
        PduReader {
            unassociated: true,
            ..PduReader::new(max_pdata)
        }
    }

    fn limit(&self, pdu_type: u8) -> Result<u32, FramingError> {
        match pdu_type {
            0x02..=0x04 | 0x06 if self.unassociated => Err(FramingError::Unexpected(pdu_type)),
            0x01..=0x03 => Ok(MAX_ASSOCIATE_RQ),
            0x04 => Ok(self.max_pdata),
            0x05..=0x07 => Ok(4),
            other => Err(FramingError::UnknownType(other)),
        }
    }

    /// Reads the next PDU.
    ///
    /// Cancel safe: the bytes read so far stay in the reader, so a read dropped at an
    /// `.await` (a `select!` that woke for the shutdown) loses nothing, and the next call
    /// goes on from where it stopped. Bytes read past the PDU's end are kept for the next.
    /// After an error the stream's framing is lost: the bytes held are dropped.
    pub async fn read<S: AsyncRead + Unpin + ?Sized>(
        &mut self,
        stream: &mut S,
    ) -> Result<Pdu, FramingError> {
        let read = self.read_one(stream).await;
        if read.is_err() {
            self.buf.clear();
        }
        read
    }

    async fn read_one<S: AsyncRead + Unpin + ?Sized>(
        &mut self,
        stream: &mut S,
    ) -> Result<Pdu, FramingError> {
        self.fill(stream, PDU_HEADER).await?;
        let pdu_type = self.buf[0];
        let length = u32::from_be_bytes([self.buf[2], self.buf[3], self.buf[4], self.buf[5]]);
        let limit = self.limit(pdu_type)?;
        if length > limit {
            return Err(FramingError::TooLong {
                pdu_type,
                length,
                limit,
            });
        }
        let total = PDU_HEADER + length as usize;
        self.fill(stream, total).await?;
        if pdu_type == 0x04 {
            let items = pdv_items(&self.buf[PDU_HEADER..total]);
            if items > MAX_PDV_ITEMS {
                self.buf.advance(total);
                return Err(FramingError::Malformed(format!(
                    "P-DATA-TF with more than {MAX_PDV_ITEMS} PDV items"
                )));
            }
        }
        // dicom-ul wants a max length within its own bounds; ours is already enforced.
        let max = length.max(dicom_ul::pdu::MINIMUM_PDU_SIZE);
        let pdu = read_pdu(&self.buf[..total], max, false);
        self.buf.advance(total);
        if pdu_type == 0x01 {
            self.unassociated = false;
        }
        match pdu {
            Ok(Some(pdu)) => Ok(pdu),
            Ok(None) => Err(FramingError::Malformed("truncated PDU body".into())),
            Err(e) => Err(FramingError::Malformed(e.to_string())),
        }
    }

    /// Reads until the buffer holds at least `want` bytes (`want` is bounded by the
    /// PDU-type limit checked before). End of stream before any byte of a PDU is
    /// [`FramingError::Closed`]; within one, an i/o error.
    async fn fill<S: AsyncRead + Unpin + ?Sized>(
        &mut self,
        stream: &mut S,
        want: usize,
    ) -> Result<(), FramingError> {
        while self.buf.len() < want {
            // Room for what is still missing, at most READ_STEP at a time: the buffer
            // grows with the bytes that arrive, not with the length the peer declared.
            self.buf.reserve((want - self.buf.len()).min(READ_STEP));
            // `read_buf` is cancel safe: if dropped, nothing was read.
            if stream.read_buf(&mut self.buf).await? == 0 {
                return Err(if self.buf.is_empty() {
                    FramingError::Closed
                } else {
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()
                });
            }
        }
        Ok(())
    }
}

/// Encodes a PDU and writes it with one write (no Nagle stalls between header and body).
pub async fn write<S: AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    scratch: &mut Vec<u8>,
    pdu: &Pdu,
) -> std::io::Result<()> {
    scratch.clear();
    write_pdu(scratch, pdu).map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.write_all(scratch).await?;
    stream.flush().await
}

/// How many PDV items a P-DATA-TF body holds, counted from their length fields and
/// stopping at [`MAX_PDV_ITEMS`] + 1 (an item running past the body is left to the parser
/// to refuse).
fn pdv_items(body: &[u8]) -> usize {
    let mut at = 0usize;
    let mut items = 0usize;
    while items <= MAX_PDV_ITEMS {
        let Some(len) = body.get(at..at + 4) else {
            break;
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        items += 1;
        at = match at.checked_add(4).and_then(|a| a.checked_add(len)) {
            Some(next) if next <= body.len() => next,
            _ => break,
        };
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-DATA-TF of empty PDV items (6 bytes each on the wire, many times that once
    /// parsed) is refused before it is parsed; one with two items, as peers send, is read.
    #[tokio::test]
    async fn a_pdata_of_many_empty_items_is_refused_before_parsing() {
        let pdata = |items: usize| {
            let mut body = Vec::new();
            for _ in 0..items {
                body.extend_from_slice(&[0, 0, 0, 2, 1, 0x02]);
            }
            let mut pdu = vec![0x04u8, 0];
            pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
            pdu.extend(body);
            pdu
        };
        let mut r = PduReader::new(16 * 1024 * 1024);
        let err = r
            .read(&mut &pdata(MAX_PDV_ITEMS + 1)[..])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FramingError::Malformed(m) if m.contains("PDV items")),
            "{err}"
        );
        let mut r = PduReader::new(16 * 1024 * 1024);
        let err = r.read(&mut &pdata(100_000)[..]).await.unwrap_err();
        assert!(matches!(&err, FramingError::Malformed(_)), "{err}");
        let mut r = PduReader::new(16384);
        match r.read(&mut &pdata(2)[..]).await.unwrap() {
            Pdu::PData { data } => assert_eq!(data.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(pdv_items(&[0, 0, 0, 9, 1]), 1, "an item past the end");
        assert_eq!(pdv_items(&[0xFF, 0xFF, 0xFF, 0xFF]), 1);
    }

    /// Before its A-ASSOCIATE-RQ a peer gets no P-DATA (nor an A-ASSOCIATE-AC or -RJ, nor
    /// an A-RELEASE-RP) read: refused on the 6-byte header, the declared megabytes never
    /// awaited; after the request the reader takes P-DATA up to its maximum.
    #[tokio::test]
    async fn before_its_request_a_peer_gets_only_association_pdus_read() {
        for pdu_type in [0x02u8, 0x03, 0x04, 0x06] {
            let header = [pdu_type, 0, 0x00, 0xFF, 0xFF, 0xF0];
            let mut r = PduReader::awaiting_request(16 * 1024 * 1024);
            let err = r.read(&mut &header[..]).await.unwrap_err();
            assert!(
                matches!(err, FramingError::Unexpected(t) if t == pdu_type),
                "type {pdu_type:#04x}: {err}"
            );
        }
        let rq = Pdu::AssociationRQ(dicom_ul::pdu::AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "MODALITY".into(),
            called_ae_title: "DULI".into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: vec![],
            user_variables: vec![],
        });
        let mut bytes = Vec::new();
        write_pdu(&mut bytes, &rq).unwrap();
        bytes.extend_from_slice(&[0x04, 0, 0, 0, 0, 8, 0, 0, 0, 4, 1, 0x03, 0xAB, 0xCD]);
        let mut stream = &bytes[..];
        let mut r = PduReader::awaiting_request(16384);
        assert!(matches!(
            r.read(&mut stream).await.unwrap(),
            Pdu::AssociationRQ(_)
        ));
        assert!(matches!(
            r.read(&mut stream).await.unwrap(),
            Pdu::PData { .. }
        ));
    }

    #[tokio::test]
    async fn four_gib_length_is_refused_before_allocation() {
        let bytes = [0x04u8, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        let mut r = PduReader::new(16384);
        let err = r.read(&mut &bytes[..]).await.unwrap_err();
        assert!(
            matches!(
                err,
                FramingError::TooLong {
                    length: 0xFFFF_FFFF,
                    ..
                }
            ),
            "{err}"
        );
    }

    /// A peer that declares a large P-DATA and sends a few bytes gets no buffer of the
    /// declared size: the buffer grows with what arrives.
    #[tokio::test]
    async fn a_declared_length_is_not_reserved_before_the_bytes_arrive() {
        let max = 16 * 1024 * 1024;
        let mut r = PduReader::new(max);
        let before = r.buf.capacity();
        let (mut tx, mut rx) = tokio::io::duplex(64 * 1024);
        let mut head = vec![0x04u8, 0];
        head.extend_from_slice(&max.to_be_bytes());
        head.extend_from_slice(&[0u8; 100]);
        tx.write_all(&head).await.unwrap();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut rx)).await;
        assert!(waited.is_err(), "a PDU came from a partial one");
        assert!(
            r.buf.capacity() <= before + READ_STEP,
            "{} bytes held for 106 received",
            r.buf.capacity()
        );
    }

    #[tokio::test]
    async fn unknown_type_and_truncation_are_errors() {
        let mut r = PduReader::new(16384);
        let err = r.read(&mut &[0x09u8, 0, 0, 0, 0, 0][..]).await.unwrap_err();
        assert!(matches!(err, FramingError::UnknownType(9)));
        let err = r
            .read(&mut &[0x04u8, 0, 0, 0, 0, 10, 1, 2][..])
            .await
            .unwrap_err();
        assert!(matches!(err, FramingError::Io(_)));
        let err = r.read(&mut &[][..]).await.unwrap_err();
        assert!(matches!(err, FramingError::Closed));
    }

    #[tokio::test]
    async fn release_round_trip() {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        write(&mut out, &mut scratch, &Pdu::ReleaseRQ)
            .await
            .unwrap();
        let mut r = PduReader::new(16384);
        assert_eq!(r.read(&mut &out[..]).await.unwrap(), Pdu::ReleaseRQ);
    }

    #[tokio::test]
    async fn a_read_dropped_mid_pdu_loses_nothing() {
        use dicom_ul::pdu::{PDataValue, PDataValueType};
        let data = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: 1,
                value_type: PDataValueType::Data,
                is_last: true,
                data: (0..=255u8).cycle().take(5000).collect(),
            }],
        };
        let mut wire = Vec::new();
        write(&mut wire, &mut Vec::new(), &data).await.unwrap();
        write(&mut wire, &mut Vec::new(), &Pdu::ReleaseRQ)
            .await
            .unwrap();
        let (mut tx, mut rx) = tokio::io::duplex(64 * 1024);
        let mut r = PduReader::new(16384);
        // Half the header, then half the body: each read is dropped while it waits.
        for cut in [3, 2500] {
            tx.write_all(&wire[..cut]).await.unwrap();
            wire.drain(..cut);
            let waited =
                tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut rx)).await;
            assert!(waited.is_err(), "a PDU came from a partial one");
        }
        // The rest of both PDUs in one write: each is read whole, in order.
        tx.write_all(&wire).await.unwrap();
        assert_eq!(r.read(&mut rx).await.unwrap(), data);
        assert_eq!(r.read(&mut rx).await.unwrap(), Pdu::ReleaseRQ);
        drop(tx);
        assert!(matches!(r.read(&mut rx).await, Err(FramingError::Closed)));
    }
}
