//! One audit record as one RFC 5424 syslog message, framed by octet counting (RFC 6587
//! 3.4.1, the framing RFC 5425 prescribes over TLS). Codec only: no I/O.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME duli PROCID IHE+RFC-3881 [duli-chain@32473 seq= prev= hash=]
//! BOM<AuditMessage>…</AuditMessage>`: facility authpriv (10) as IHE ATNA asks, severity
//! notice (5), or warning (4) for a failed action; the message is the DICOM Audit Message
//! (PS3.15 A.5) of [`crate::console::atna`], UTF-8 marked by a BOM as RFC 5424 6.4 asks;
//! the structured data carry the record's place in the hash chain, so the repository can
//! check the chain and recognise a record it already holds.

use crate::audit::Record;
use crate::console::atna;

/// APP-NAME.
pub const APP_NAME: &str = "duli";
/// MSGID of an audit message under IHE ATNA (RFC 3881 / DICOM audit message).
pub const MSG_ID: &str = "IHE+RFC-3881";
/// Facility authpriv (security/authorization messages).
pub const FACILITY: u8 = 10;
/// Severity of a successful action: notice.
pub const NOTICE: u8 = 5;
/// Severity of a failed action: warning.
pub const WARNING: u8 = 4;
/// The byte order mark that marks MSG as UTF-8 (RFC 5424 6.4).
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Who sends: the header's HOSTNAME and PROCID and the audit source of the XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    hostname: String,
    procid: String,
    source_id: String,
}

impl Origin {
    /// `hostname` (`-` when empty), this process's id, and `source_id` (the device id:
    /// the AuditSourceID of every message).
    pub fn new(hostname: &str, source_id: &str) -> Origin {
        Origin {
            hostname: header_field(hostname, 255),
            procid: std::process::id().to_string(),
            source_id: source_id.to_string(),
        }
    }
}

/// A header field: printable US-ASCII without spaces (others become `_`), at most `max`
/// characters, `-` (the nil value) when empty.
fn header_field(s: &str, max: usize) -> String {
    let field: String = s
        .trim()
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if field.is_empty() {
        "-".into()
    } else {
        field
    }
}

/// An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424 6.3.3).
fn sd_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 5424 TIMESTAMP of a time in milliseconds since the epoch (UTC, `Z`).
fn timestamp(at_ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".into())
}

/// The syslog message (without framing) of one record.
pub fn message(rec: &Record, origin: &Origin) -> Vec<u8> {
    let severity = if rec.success { NOTICE } else { WARNING };
    let pri = u16::from(FACILITY) * 8 + u16::from(severity);
    let header = format!(
        "<{pri}>1 {} {} {APP_NAME} {} {MSG_ID} [{} seq=\"{}\" prev=\"{}\" hash=\"{}\"] ",
        timestamp(rec.at_ms),
        origin.hostname,
        origin.procid,
        atna::SD_ID,
        rec.seq,
        sd_value(&rec.prev),
        sd_value(&rec.hash),
    );
    let xml = atna::audit_message(rec, &origin.source_id);
    let mut out = Vec::with_capacity(header.len() + BOM.len() + xml.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(BOM);
    out.extend_from_slice(xml.as_bytes());
    out
}

/// Appends `msg` to `out` framed by octet counting: `MSG-LEN SP SYSLOG-MSG`.
pub fn frame_into(msg: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Event};

    fn rec(success: bool) -> Record {
        Record {
            seq: 42,
            at_ms: 1_700_000_000_123,
            event: Event {
                actor: "ana".into(),
                source: "10.0.0.5".into(),
                action: Action::Login,
                object: "ana".into(),
                success,
                detail: "é <x>".into(),
                patients: Vec::new(),
                destination: String::new(),
            },
            prev: "00ff".into(),
            hash: "ab]c".into(),
        }
    }

    /// The frames of a byte stream, by their octet counts.
    fn deframe(mut data: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let sp = data.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&data[..sp]).unwrap().parse().unwrap();
            out.push(&data[sp + 1..sp + 1 + len]);
            data = &data[sp + 1 + len..];
        }
        out
    }

    #[test]
    fn a_record_is_one_rfc5424_message_with_a_bom_and_the_dicom_audit_message() {
        let origin = Origin::new("box 1\n", "duli-edge-01");
        let msg = message(&rec(true), &origin);
        let text = String::from_utf8(msg.clone()).unwrap();
        let pid = std::process::id();
        let head = format!(
            "<85>1 2023-11-14T22:13:20.123Z box_1 duli {pid} IHE+RFC-3881 \
             [duli-chain@32473 seq=\"42\" prev=\"00ff\" hash=\"ab\\]c\"] \u{FEFF}<AuditMessage>"
        );
        assert!(text.starts_with(&head), "{text}");
        let xml = text.split_once('\u{FEFF}').unwrap().1;
        roxmltree::Document::parse(xml).unwrap();
        assert!(xml.contains("AuditSourceID=\"duli-edge-01\""));
        assert!(message(&rec(false), &Origin::new("", "d")).starts_with(b"<84>1 "));
        assert!(
            String::from_utf8(message(&rec(false), &Origin::new("", "d")))
                .unwrap()
                .contains(" - duli ")
        );
    }

    #[test]
    fn frames_carry_their_length_in_octets() {
        let origin = Origin::new("h", "d");
        let (a, b) = (message(&rec(true), &origin), message(&rec(false), &origin));
        let mut stream = Vec::new();
        frame_into(&a, &mut stream);
        frame_into(&b, &mut stream);
        assert!(stream.starts_with(format!("{} <85>1 ", a.len()).as_bytes()));
        // "é" is two octets: the count is of octets, not characters
        assert_ne!(
            a.len(),
            String::from_utf8(a.clone()).unwrap().chars().count()
        );
        assert_eq!(deframe(&stream), vec![&a[..], &b[..]]);
    }
}
