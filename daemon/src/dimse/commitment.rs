//! The data sets of Storage Commitment Push Model (PS3.4 Annex J): the action information
//! of the N-ACTION that asks an archive to commit to keeping instances, and the event
//! information of the N-EVENT-REPORT with its answer.
//!
//! A report comes from outside: it is walked by the bounded pre-scan
//! ([`crate::dataset_guard`]) before dicom-rs parses it, and one that names more than
//! [`MAX_REFERENCES`] instances, has no Transaction UID, or whose items lack their UIDs is
//! refused as a whole.

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// Action Type ID of "Request Storage Commitment" (PS3.4 Table J.3-1).
pub const REQUEST_COMMITMENT: u16 = 1;
/// Event Type ID of "Storage Commitment Request Successful" (PS3.4 Table J.3-2).
pub const EVENT_SUCCESSFUL: u16 = 1;
/// Event Type ID of "Storage Commitment Request Complete - Failures Exist".
pub const EVENT_FAILURES_EXIST: u16 = 2;
/// Most instances one report may name (committed and failed together).
pub const MAX_REFERENCES: usize = 10_000;

/// One instance named in a request or a report.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Referenced SOP Class UID (0008,1150).
    pub sop_class: String,
    /// Referenced SOP Instance UID (0008,1155).
    pub sop_instance: String,
}

impl Reference {
    /// The item that names it in a Referenced or Failed SOP Sequence.
    fn item(&self) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(self.sop_class.as_str()),
            ),
            DataElement::new(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(self.sop_instance.as_str()),
            ),
        ])
    }
}

/// An instance the archive did not commit to keeping, with its Failure Reason (0008,1197).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The instance.
    pub reference: Reference,
    /// The reason code (PS3.3 C.14.1.1), 0 when the archive gave none.
    pub reason: u16,
}

/// What an archive answered to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Transaction UID (0008,1195) of the request answered.
    pub transaction_uid: String,
    /// The instances it committed to keeping (Referenced SOP Sequence).
    pub committed: Vec<Reference>,
    /// The instances it did not (Failed SOP Sequence).
    pub failed: Vec<Failure>,
}

/// Why a report could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitmentError {
    /// The transfer syntax of the context is not one this codec reads.
    #[error("unknown transfer syntax {0}")]
    TransferSyntax(String),
    /// The bytes are not a well-formed data set, or fail the bounded pre-scan.
    #[error("malformed event information: {0}")]
    Malformed(String),
    /// A mandatory attribute is missing or empty.
    #[error("event information without {0}")]
    Missing(&'static str),
    /// More instances than [`MAX_REFERENCES`].
    #[error("event information names more than {MAX_REFERENCES} instances")]
    TooMany,
}

/// What a failure reason code means (PS3.3 C.14.1.1), for logs and the outbox listing.
pub fn reason_text(code: u16) -> &'static str {
    match code {
        0x0110 => "processing failure",
        0x0112 => "no such object instance",
        0x0213 => "resource limitation",
        0x0122 => "referenced SOP class not supported",
        0x0119 => "class/instance conflict",
        0x0131 => "duplicate transaction UID",
        _ => "reason not given",
    }
}

/// The action information of an N-ACTION "Request Storage Commitment" for `references`,
/// encoded in transfer syntax `ts_uid`.
pub fn request(
    transaction_uid: &str,
    references: &[Reference],
    ts_uid: &str,
) -> Result<Vec<u8>, CommitmentError> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| CommitmentError::TransferSyntax(ts_uid.to_string()))?;
    let items: Vec<InMemDicomObject> = references.iter().map(Reference::item).collect();
    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::TRANSACTION_UID,
            VR::UI,
            PrimitiveValue::from(transaction_uid),
        ),
        DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(items, Length::UNDEFINED),
        ),
    ]);
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| CommitmentError::Malformed(e.to_string()))?;
    Ok(out)
}

/// Reads the event information of an N-EVENT-REPORT received in transfer syntax `ts_uid`.
pub fn parse_report(bytes: &[u8], ts_uid: &str) -> Result<Report, CommitmentError> {
    // Deflated data sets are not read here: the context is negotiated uncompressed.
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .filter(|_| ts_uid != crate::dimse::uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
        .ok_or_else(|| CommitmentError::TransferSyntax(ts_uid.to_string()))?;
    crate::dataset_guard::check_dataset(bytes, ts_uid)
        .map_err(|e| CommitmentError::Malformed(e.to_string()))?;
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, ts)
        .map_err(|e| CommitmentError::Malformed(e.to_string()))?;
    let transaction_uid = text(&obj, tags::TRANSACTION_UID)
        .filter(|t| !t.is_empty())
        .ok_or(CommitmentError::Missing("Transaction UID"))?;
    let committed_items = items(&obj, tags::REFERENCED_SOP_SEQUENCE);
    let failed_items = items(&obj, tags::FAILED_SOP_SEQUENCE);
    if committed_items.len() + failed_items.len() > MAX_REFERENCES {
        return Err(CommitmentError::TooMany);
    }
    let committed = committed_items
        .iter()
        .map(reference)
        .collect::<Result<Vec<_>, _>>()?;
    let failed = failed_items
        .iter()
        .map(|item| {
            Ok(Failure {
                reference: reference(item)?,
                reason: item
                    .element(tags::FAILURE_REASON)
                    .ok()
                    .and_then(|e| e.to_int::<u16>().ok())
                    .unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, CommitmentError>>()?;
    Ok(Report {
        transaction_uid,
        committed,
        failed,
    })
}

/// The items of sequence `tag` (none when absent or not a sequence).
fn items(obj: &InMemDicomObject, tag: dicom_core::Tag) -> &[InMemDicomObject] {
    obj.element(tag).ok().and_then(|e| e.items()).unwrap_or(&[])
}

/// A string attribute, trimmed of its padding.
fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let value = obj.element(tag).ok()?.to_str().ok()?;
    Some(value.trim_end_matches(['\0', ' ']).to_string())
}

/// The instance an item names; both UIDs are required.
fn reference(item: &InMemDicomObject) -> Result<Reference, CommitmentError> {
    let uid = |tag, name| {
        text(item, tag)
            .filter(|t| !t.is_empty())
            .ok_or(CommitmentError::Missing(name))
    };
    Ok(Reference {
        sop_class: uid(tags::REFERENCED_SOP_CLASS_UID, "Referenced SOP Class UID")?,
        sop_instance: uid(
            tags::REFERENCED_SOP_INSTANCE_UID,
            "Referenced SOP Instance UID",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dimse::uids;

    fn reference(i: u32) -> Reference {
        Reference {
            sop_class: uids::COMPREHENSIVE_SR.into(),
            sop_instance: format!("2.25.{i}"),
        }
    }

    /// The report an archive writes, built the way it builds it.
    fn report_bytes(
        transaction: &str,
        ok: &[Reference],
        failed: &[(Reference, u16)],
        ts: &str,
    ) -> Vec<u8> {
        let item = |r: &Reference, reason: Option<u16>| {
            let mut o = r.item();
            if let Some(code) = reason {
                o.put(DataElement::new(
                    tags::FAILURE_REASON,
                    VR::US,
                    PrimitiveValue::from(code),
                ));
            }
            o
        };
        let mut obj = InMemDicomObject::from_element_iter([DataElement::new(
            tags::TRANSACTION_UID,
            VR::UI,
            PrimitiveValue::from(transaction),
        )]);
        if !ok.is_empty() {
            obj.put(DataElement::new(
                tags::REFERENCED_SOP_SEQUENCE,
                VR::SQ,
                DataSetSequence::new(
                    ok.iter().map(|r| item(r, None)).collect::<Vec<_>>(),
                    Length::UNDEFINED,
                ),
            ));
        }
        if !failed.is_empty() {
            obj.put(DataElement::new(
                tags::FAILED_SOP_SEQUENCE,
                VR::SQ,
                DataSetSequence::new(
                    failed
                        .iter()
                        .map(|(r, c)| item(r, Some(*c)))
                        .collect::<Vec<_>>(),
                    Length::UNDEFINED,
                ),
            ));
        }
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, TransferSyntaxRegistry.get(ts).unwrap())
            .unwrap();
        out
    }

    #[test]
    fn a_request_names_its_transaction_and_every_instance() {
        let refs = [reference(1), reference(2)];
        for ts in [
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        ] {
            let bytes = request("2.25.99", &refs, ts).unwrap();
            let obj = InMemDicomObject::read_dataset_with_ts(
                bytes.as_slice(),
                TransferSyntaxRegistry.get(ts).unwrap(),
            )
            .unwrap();
            assert_eq!(
                text(&obj, tags::TRANSACTION_UID).as_deref(),
                Some("2.25.99")
            );
            let named: Vec<Reference> = items(&obj, tags::REFERENCED_SOP_SEQUENCE)
                .iter()
                .map(|i| super::reference(i).unwrap())
                .collect();
            assert_eq!(named, refs);
        }
        assert!(matches!(
            request("2.25.1", &refs, "1.2.3.4"),
            Err(CommitmentError::TransferSyntax(_))
        ));
    }

    #[test]
    fn a_report_with_committed_and_failed_instances_reads_back() {
        for ts in [
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        ] {
            let bytes = report_bytes("2.25.7", &[reference(1)], &[(reference(2), 0x0112)], ts);
            let report = parse_report(&bytes, ts).unwrap();
            assert_eq!(report.transaction_uid, "2.25.7");
            assert_eq!(report.committed, vec![reference(1)]);
            assert_eq!(report.failed.len(), 1);
            assert_eq!(report.failed[0].reference, reference(2));
            assert_eq!(report.failed[0].reason, 0x0112);
            assert_eq!(
                reason_text(report.failed[0].reason),
                "no such object instance"
            );
        }
    }

    #[test]
    fn reports_without_their_uids_or_malformed_are_refused() {
        let ts = uids::IMPLICIT_VR_LITTLE_ENDIAN;
        assert_eq!(
            parse_report(&report_bytes("", &[reference(1)], &[], ts), ts),
            Err(CommitmentError::Missing("Transaction UID"))
        );
        let no_instance = Reference {
            sop_class: uids::COMPREHENSIVE_SR.into(),
            sop_instance: String::new(),
        };
        assert_eq!(
            parse_report(&report_bytes("2.25.1", &[no_instance], &[], ts), ts),
            Err(CommitmentError::Missing("Referenced SOP Instance UID"))
        );
        let bytes = report_bytes("2.25.1", &[reference(1)], &[], ts);
        assert!(matches!(
            parse_report(&bytes[..bytes.len() - 3], ts),
            Err(CommitmentError::Malformed(_))
        ));
        // Nested far deeper than any report: refused by the pre-scan, not by a stack overflow.
        let nested = crate::dataset_guard::fixtures::nested(5_000);
        assert!(matches!(
            parse_report(&nested, uids::EXPLICIT_VR_LITTLE_ENDIAN),
            Err(CommitmentError::Malformed(_))
        ));
        assert!(matches!(
            parse_report(&bytes, "1.2.3.4"),
            Err(CommitmentError::TransferSyntax(_))
        ));
    }

    #[test]
    fn a_report_naming_too_many_instances_is_refused() {
        let ts = uids::IMPLICIT_VR_LITTLE_ENDIAN;
        let many: Vec<Reference> = (0..=MAX_REFERENCES as u32).map(reference).collect();
        assert_eq!(
            parse_report(&report_bytes("2.25.1", &many, &[], ts), ts),
            Err(CommitmentError::TooMany)
        );
    }
}
