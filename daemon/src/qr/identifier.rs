//! The identifier of a C-FIND, C-MOVE or C-GET request as bytes: decoded through the
//! bounded pre-scan (deflated ones inflated within a limit first), and response
//! identifiers encoded in the context's transfer syntax.

use super::query::QueryError;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// Largest inflated size of a deflated identifier (an identifier is a few hundred bytes).
pub const MAX_INFLATED_IDENTIFIER: u64 = 1024 * 1024;

/// Decodes a data set sent on a context with transfer syntax `ts_uid`.
///
/// A deflated identifier is inflated here, at most [`MAX_INFLATED_IDENTIFIER`] bytes, and the
/// inflated bytes are checked and parsed as Explicit VR Little Endian: the bounded pre-scan
/// and the parser then read the very same bytes (the parser's own inflation of a truncated
/// stream could see a different data set than the one that was checked).
pub fn decode_identifier(bytes: &[u8], ts_uid: &str) -> Result<InMemDicomObject, QueryError> {
    if ts_uid == crate::dimse::uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        let inflated = inflate_identifier(bytes)?;
        return decode_identifier(&inflated, crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN);
    }
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| QueryError::Decode(format!("unknown transfer syntax {ts_uid}")))?;
    crate::dataset_guard::check_dataset(bytes, ts_uid)
        .map_err(|e| QueryError::Decode(e.to_string()))?;
    InMemDicomObject::read_dataset_with_ts(bytes, ts).map_err(|e| QueryError::Decode(e.to_string()))
}

fn inflate_identifier(bytes: &[u8]) -> Result<Vec<u8>, QueryError> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .take(MAX_INFLATED_IDENTIFIER + 1)
        .read_to_end(&mut out)
        .map_err(|e| QueryError::Decode(format!("deflated identifier: {e}")))?;
    if out.len() as u64 > MAX_INFLATED_IDENTIFIER {
        return Err(QueryError::Decode(format!(
            "deflated identifier inflates beyond {MAX_INFLATED_IDENTIFIER} bytes"
        )));
    }
    Ok(out)
}

/// Encodes a response identifier in transfer syntax `ts_uid`.
pub fn encode_identifier(obj: &InMemDicomObject, ts_uid: &str) -> Result<Vec<u8>, QueryError> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| QueryError::Decode(format!("unknown transfer syntax {ts_uid}")))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| QueryError::Decode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset_guard::fixtures;
    use dicom_dictionary_std::tags;

    /// A deflated identifier is checked and parsed as the same inflated bytes: the
    /// 13-byte stream that once made the parser allocate 3.9 GB is refused or parsed
    /// small, a genuine deflated identifier still decodes, and nested or lying content
    /// inside the deflate stream is refused like plain content.
    #[test]
    fn deflated_identifiers_are_inflated_once_and_checked() {
        use std::io::Write;
        let deflate = |body: &[u8]| {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        };
        let ts = crate::dimse::uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
        let found = b"z50\0\x04\r\x10\0\0\0\0\0";
        if let Ok(obj) = decode_identifier(found, ts) {
            assert!(
                obj.iter().count() < 4,
                "a 13-byte stream decodes to a few elements"
            );
        }
        let deep = decode_identifier(&deflate(&fixtures::nested(2000)), ts).unwrap_err();
        assert!(deep.to_string().contains("nested deeper"), "{deep}");
        let lie = decode_identifier(&deflate(&fixtures::ut_lie()), ts).unwrap_err();
        assert!(lie.to_string().contains("declares"), "{lie}");
        let mut plain = InMemDicomObject::new_empty();
        plain.put(dicom_core::DataElement::new(
            tags::QUERY_RETRIEVE_LEVEL,
            dicom_core::VR::CS,
            dicom_core::PrimitiveValue::from("STUDY"),
        ));
        let bytes =
            encode_identifier(&plain, crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN).unwrap();
        let back = decode_identifier(&deflate(&bytes), ts).unwrap();
        assert_eq!(
            back.element(tags::QUERY_RETRIEVE_LEVEL)
                .unwrap()
                .to_str()
                .unwrap(),
            "STUDY"
        );
        let bomb = deflate(&vec![0u8; (MAX_INFLATED_IDENTIFIER + 10) as usize]);
        let err = decode_identifier(&bomb, ts).unwrap_err();
        assert!(err.to_string().contains("inflates beyond"), "{err}");
    }

    /// Found by fuzzing: a UL of 29 bytes (not a whole number of values) made the parser
    /// lose its place and then allocate 2 GB for a length it read out of the value.
    #[test]
    fn a_binary_value_of_a_partial_length_is_refused_before_parsing() {
        let mut body = vec![0x00, 0x08, 0xc3, 0xfc, b'U', b'L', 0x1d, 0x00];
        body.extend_from_slice(&[
            0x09, 0x01, 0, 0, 0, 0, 0, 0, 0x09, 0x00, 0xfc, b'U', b'L', 0x07,
        ]);
        body.extend_from_slice(&[0u8; 15]);
        let err =
            decode_identifier(&body, crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN).unwrap_err();
        assert!(err.to_string().contains("not a multiple of 4"), "{err}");
    }

    #[test]
    fn hostile_identifiers_are_refused_before_parsing() {
        for ts in ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1\0"] {
            let deep = decode_identifier(&fixtures::nested(2000), ts).unwrap_err();
            assert!(deep.to_string().contains("nested deeper"), "{deep}");
            let lie = decode_identifier(&fixtures::ut_lie(), ts).unwrap_err();
            assert!(lie.to_string().contains("declares"), "{lie}");
        }
        assert!(decode_identifier(&fixtures::nested(3), "1.2.840.10008.1.2.1").is_ok());
    }
}
