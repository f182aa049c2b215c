//! The audit record of a delivery that takes patient data off the box: a report or its
//! withdrawal to the RIS (HL7), a result object or rejection note to a PACS (C-STORE).
//!
//! Each is recorded against the entry's study once the peer answered it, acknowledged (a
//! success) or refused (a failure; the peer still got the message): a message to the RIS
//! as an export (DICOM "Export", 110106), instances pushed to a PACS as a transfer (DICOM
//! "DICOM Instances Transferred", 110104, as a retrieve's sub-operations are).
//!
//! An attempt the peer did not answer is not recorded: it is sent again, and recorded
//! when answered. The record is written before the entry is marked delivered, so a crash
//! between the two sends the entry again and records it again, never leaves a delivery
//! unrecorded. The cloud's MQTT messages are not recorded here: they carry keyed
//! pseudonyms, not the patient's identity (their delivery is in the outbox's delivered
//! records).

use super::Delivery;
use crate::audit::{Action, Audit, Event};
use crate::store::outbox::{Destination, Entry, Payload};
use std::sync::Arc;

/// The actor of delivery records: the daemon itself, not a user.
const ACTOR: &str = "system";

/// Most instance UIDs named in one record's detail (a push entry names a handful).
const MAX_NAMED_INSTANCES: usize = 8;

/// Writes the export records of one destination's deliveries.
#[derive(Clone)]
pub struct ExportAudit {
    audit: Arc<Audit>,
    peer: String,
    destination: String,
}

impl ExportAudit {
    /// Records into `audit` the deliveries to `peer`, described for a reader of the trail
    /// (e.g. `RIS 10.0.0.5:2575`, `PACS main (AE ARCHIVE at 10.0.0.9:104)`).
    pub fn new(audit: Arc<Audit>, peer: impl Into<String>) -> ExportAudit {
        ExportAudit {
            audit,
            peer: peer.into(),
            destination: String::new(),
        }
    }

    /// Names the receiving process in each record ([`Event::destination`]: `ae:TITLE` of
    /// a PACS, `hl7:HOST:PORT` of a RIS), the destination participant of its ATNA message.
    pub fn to(mut self, destination: &str) -> ExportAudit {
        self.destination = destination.to_string();
        self
    }

    /// Records the outcome of one attempt at `entry` when it is an export ([`event`]);
    /// a record that cannot be written is logged (the delivery itself stands).
    pub fn record(&self, entry: &Entry, outcome: &Delivery) {
        let Some(mut event) = event(entry, outcome, &self.peer) else {
            return;
        };
        if !self.destination.is_empty() {
            event = event.to(&self.destination);
        }
        if let Err(e) = self.audit.append(event) {
            log::error!(
                "audit trail: cannot record the delivery of entry {} ({}) to {}: {e}",
                entry.id,
                entry.kind.as_str(),
                entry.dest
            );
        }
    }
}

/// The audit event of one attempt at `entry` sent to `peer`, when the attempt took
/// patient data off the box and the peer answered it: `None` for the cloud's pseudonymous
/// messages and for attempts without an answer (sent again later) or never sent.
pub fn event(entry: &Entry, outcome: &Delivery, peer: &str) -> Option<Event> {
    let (channel, action) = match (&entry.dest, &entry.payload) {
        (Destination::Hl7, Payload::Hl7 { .. }) => ("HL7 ORU^R01", Action::Export),
        (Destination::Pacs(_), Payload::Dicom { .. }) => ("DICOM C-STORE", Action::Transfer),
        _ => return None,
    };
    let (answer, failed) = match outcome {
        Delivery::Acked => ("acknowledged".to_string(), false),
        Delivery::Rejected(refusal) => (format!("refused ({})", refusal.summary), true),
        Delivery::Unsendable(_) | Delivery::Failed(_) | Delivery::Dropped(_) => return None,
    };
    let mut detail = format!(
        "{channel} {} of report {} to {peer}: {answer}",
        entry.kind.as_str().replace('_', " "),
        entry.report_id
    );
    if let Payload::Dicom { sop_instance_uids } = &entry.payload {
        let named: Vec<&str> = sop_instance_uids
            .iter()
            .take(MAX_NAMED_INSTANCES)
            .map(String::as_str)
            .collect();
        let more = sop_instance_uids.len().saturating_sub(named.len());
        detail.push_str(&format!(
            "; {} instance(s): {}{}",
            sop_instance_uids.len(),
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    let event = Event::new(ACTOR, action, &object(entry)).detail(detail);
    Some(if failed { event.failed() } else { event })
}

/// The record's object: the entry's study, or, for an entry queued without it, its report.
fn object(entry: &Entry) -> String {
    if crate::store::header::is_valid_uid(&entry.study_instance_uid) {
        entry.study_instance_uid.clone()
    } else {
        format!("report {}", entry.report_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::Refusal;
    use crate::store::outbox::{EntryState, Kind};

    fn entry(dest: Destination, kind: Kind, payload: Payload) -> Entry {
        Entry {
            id: 4,
            dest,
            kind,
            report_id: "r-9".into(),
            study_instance_uid: "1.2.840.99.1".into(),
            payload,
            attempts: 0,
            rejections: 0,
            state: EntryState::Queued,
            next_attempt_at: 0,
            last_error: None,
            peer_text: None,
            created_at: 0,
        }
    }

    fn hl7(kind: Kind) -> Entry {
        let message = "MSH|^~\\&|DULI".to_string();
        entry(Destination::Hl7, kind, Payload::Hl7 { message })
    }

    fn push(uids: usize) -> Entry {
        let sop_instance_uids = (0..uids).map(|i| format!("1.2.3.{i}")).collect();
        entry(
            Destination::Pacs("main".into()),
            Kind::StructuredReport,
            Payload::Dicom { sop_instance_uids },
        )
    }

    /// A report the RIS acknowledged is an export of its study by the system, naming the
    /// report and where it went; one refused is a failed export with the refusal's code
    /// and never the peer's words (which may name the patient).
    #[test]
    fn answered_hl7_deliveries_are_exports_of_their_study() {
        let e = event(&hl7(Kind::Report), &Delivery::Acked, "RIS 10.0.0.5:2575").unwrap();
        assert_eq!(
            (e.actor.as_str(), &e.action, e.object.as_str(), e.success),
            ("system", &Action::Export, "1.2.840.99.1", true)
        );
        assert_eq!(
            e.detail,
            "HL7 ORU^R01 report of report r-9 to RIS 10.0.0.5:2575: acknowledged"
        );
        let refusal = Refusal::from_peer("AE", "patient 123456 SMITH not found");
        let e = event(
            &hl7(Kind::Withdrawal),
            &Delivery::Rejected(refusal),
            "RIS 10.0.0.5:2575",
        )
        .unwrap();
        assert!(!e.success);
        assert!(e.detail.contains("withdrawal") && e.detail.contains("refused (AE)"));
        assert!(!e.detail.contains("SMITH"), "{}", e.detail);
    }

    /// A push is a transfer of DICOM instances and names them, at most eight and how many
    /// more.
    #[test]
    fn pushes_name_their_instances() {
        let e = event(&push(1), &Delivery::Acked, "PACS main").unwrap();
        assert_eq!(e.action, Action::Transfer);
        assert!(
            e.detail
                .ends_with("to PACS main: acknowledged; 1 instance(s): 1.2.3.0"),
            "{}",
            e.detail
        );
        let e = event(&push(11), &Delivery::Acked, "PACS main").unwrap();
        assert!(e.detail.contains("1.2.3.7 and 3 more"), "{}", e.detail);
        assert!(!e.detail.contains("1.2.3.8"), "{}", e.detail);
    }

    /// Nothing is recorded for attempts without an answer, for messages never sent, or
    /// for the cloud's pseudonymous messages; an entry queued without its study is
    /// recorded under its report.
    #[test]
    fn unanswered_unsent_and_pseudonymous_deliveries_are_not_exports() {
        for outcome in [
            Delivery::Failed("refused".into()),
            Delivery::Dropped("closed".into()),
            Delivery::Unsendable("no Patient ID".into()),
        ] {
            assert_eq!(event(&hl7(Kind::Report), &outcome, "RIS"), None);
        }
        let mqtt = entry(
            Destination::Mqtt,
            Kind::Report,
            Payload::Mqtt {
                topic: "t".into(),
                body: "{}".into(),
                retain: false,
            },
        );
        assert_eq!(event(&mqtt, &Delivery::Acked, "broker"), None);
        let mut old = hl7(Kind::Report);
        old.study_instance_uid.clear();
        let e = event(&old, &Delivery::Acked, "RIS").unwrap();
        assert_eq!(e.object, "report r-9");
    }

    /// The record is in the trail once the outcome is recorded.
    #[test]
    fn an_acknowledged_push_is_in_the_trail() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let audit = Arc::new(Audit::open(&store).unwrap());
        let exports = ExportAudit::new(audit.clone(), "PACS main").to("ae:ARCHIVE");
        exports.record(&push(2), &Delivery::Acked);
        exports.record(&push(2), &Delivery::Failed("down".into()));
        let records = audit.records(0, 100).unwrap();
        let exported: Vec<_> = records
            .iter()
            .filter(|r| r.action == Action::Transfer)
            .collect();
        assert_eq!(exported.len(), 1, "{records:?}");
        assert_eq!(exported[0].object, "1.2.840.99.1");
        assert_eq!(exported[0].destination, "ae:ARCHIVE");
        assert!(
            audit.verify().unwrap().broken.is_none(),
            "the destination is in the chain"
        );
    }
}
