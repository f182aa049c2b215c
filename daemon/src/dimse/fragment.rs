//! Splitting an outgoing command set or data set into P-DATA values that fit the peer's
//! maximum PDU length (PS3.8 §9.3.5, Annex E).

use dicom_ul::pdu::{PDataValue, PDataValueType};

/// Bytes a P-DATA-TF PDU's variable field spends on one PDV item besides its data: the
/// 4-byte item length, the presentation context id and the message control header.
const PDV_OVERHEAD: u32 = 6;

/// Largest data length per PDV used when the peer sets no limit (maximum length 0).
const UNLIMITED_CHUNK: usize = 1 << 20;

/// Splits `data` into P-DATA values for `pc_id`, each small enough that one PDV fits a
/// P-DATA-TF PDU of `max_pdu_length` (the peer's Maximum Length Received; 0 means no limit).
/// The last value is marked last; empty data gives one empty last value.
pub fn fragments(
    pc_id: u8,
    value_type: PDataValueType,
    data: &[u8],
    max_pdu_length: u32,
) -> Vec<PDataValue> {
    let chunk = if max_pdu_length == 0 {
        UNLIMITED_CHUNK
    } else {
        // A limit below the overhead is a broken peer; still make progress one byte at a time.
        usize::try_from(max_pdu_length.saturating_sub(PDV_OVERHEAD).max(1))
            .unwrap_or(UNLIMITED_CHUNK)
    };
    if data.is_empty() {
        return vec![PDataValue {
            presentation_context_id: pc_id,
            value_type,
            is_last: true,
            data: Vec::new(),
        }];
    }
    let count = data.len().div_ceil(chunk);
    data.chunks(chunk)
        .enumerate()
        .map(|(i, part)| PDataValue {
            presentation_context_id: pc_id,
            value_type: value_type.clone(),
            is_last: i + 1 == count,
            data: part.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_to_fit_and_marks_last() {
        let data: Vec<u8> = (0..=255).collect();
        let parts = fragments(3, PDataValueType::Data, &data, 106);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].data.len(), 100);
        assert_eq!(parts[2].data.len(), 56);
        assert_eq!(
            parts.iter().map(|p| p.is_last).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert!(parts
            .iter()
            .all(|p| p.presentation_context_id == 3 && p.value_type == PDataValueType::Data));
        let joined: Vec<u8> = parts.into_iter().flat_map(|p| p.data).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn edge_cases() {
        let empty = fragments(1, PDataValueType::Command, &[], 16384);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].is_last && empty[0].data.is_empty());
        assert_eq!(fragments(1, PDataValueType::Data, &[0; 10], 0).len(), 1);
        assert_eq!(fragments(1, PDataValueType::Data, &[0; 10], 2).len(), 10);
        assert_eq!(fragments(1, PDataValueType::Data, &[0; 100], 106).len(), 1);
    }
}
