//! PDU framing on a byte stream: reads one PDU with its length checked *before* anything
//! is allocated (a hostile 4 GiB length costs nothing), and writes each PDU with a single
//! write. Encoding and decoding of PDU bodies is dicom-ul's.

use bytes::BytesMut;
use dicom_ul::pdu::{read_pdu, write_pdu, Pdu};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of the PDU header (type, reserved, 32-bit length).
pub const PDU_HEADER: usize = 6;

/// Largest A-ASSOCIATE-RQ accepted. 128 presentation contexts with a dozen transfer
/// syntaxes each fit in well under this; anything larger is hostile.
pub const MAX_ASSOCIATE_RQ: u32 = 256 * 1024;

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
}

impl PduReader {
    /// A reader that accepts P-DATA PDUs up to `max_pdata` bytes (our advertised maximum).
    pub fn new(max_pdata: u32) -> Self {
        PduReader {
            buf: BytesMut::with_capacity(PDU_HEADER + max_pdata.min(1 << 20) as usize),
            max_pdata,
        }
    }

    fn limit(&self, pdu_type: u8) -> Result<u32, FramingError> {
        match pdu_type {
            0x01..=0x03 => Ok(MAX_ASSOCIATE_RQ),
            0x04 => Ok(self.max_pdata),
            0x05..=0x07 => Ok(4),
            other => Err(FramingError::UnknownType(other)),
        }
    }

    /// Reads the next PDU.
    pub async fn read<S: AsyncRead + Unpin + ?Sized>(
        &mut self,
        stream: &mut S,
    ) -> Result<Pdu, FramingError> {
        let mut header = [0u8; PDU_HEADER];
        match stream.read_exact(&mut header[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(FramingError::Closed)
            }
            Err(e) => return Err(e.into()),
        }
        stream.read_exact(&mut header[1..]).await?;
        let pdu_type = header[0];
        let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        let limit = self.limit(pdu_type)?;
        if length > limit {
            return Err(FramingError::TooLong {
                pdu_type,
                length,
                limit,
            });
        }
        self.buf.clear();
        self.buf.extend_from_slice(&header);
        self.buf.resize(PDU_HEADER + length as usize, 0);
        stream.read_exact(&mut self.buf[PDU_HEADER..]).await?;
        // dicom-ul wants a max length within its own bounds; ours is already enforced.
        let max = length.max(dicom_ul::pdu::MINIMUM_PDU_SIZE);
        match read_pdu(&self.buf[..], max, false) {
            Ok(Some(pdu)) => Ok(pdu),
            Ok(None) => Err(FramingError::Malformed("truncated PDU body".into())),
            Err(e) => Err(FramingError::Malformed(e.to_string())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
