//! Export of the audit trail for an ATNA audit repository: one RFC 5424 syslog line per
//! record whose message is a DICOM Audit Message (PS3.15 Annex A.5, XML), with the chain
//! position and hash in a structured-data element so the repository can check the chain.
//! Codec only: no I/O.
//!
//! A record's object becomes participant objects by what it is: each study of a
//! comma-separated list (a retrieve over several studies) its own System Object with the
//! Study Instance UID; a user name a Person with the User Identifier; the console's
//! worklist a report, the audit trail a security resource, a refused request's path a URI,
//! and any other name the daemon gives (`upload`, `outbox`, `firmware`, …) a resource with
//! the local code `DULI` `object-name`; `-` (no object) none. The patients the record
//! names (those of its studies) follow, each a Person in the role Patient with its Patient
//! Number.

use crate::audit::{Action, Record};

/// Syslog APP-NAME.
pub const APP_NAME: &str = "duli";
/// Syslog MSGID of DICOM audit messages.
pub const MSG_ID: &str = "DICOM+RFC3881";
/// Structured-data id carrying the chain (private enterprise number placeholder).
pub const SD_ID: &str = "duli-chain@32473";

/// A coded value: code, code system, display name.
type Code = (&'static str, &'static str, &'static str);

/// Event ID, optional event type code, and event action code (C, R, U, D, E) of an action
/// on `object`: reading or exporting the audit trail itself is "Audit Log Used" (PS3.15
/// A.5.3.2).
fn event_codes(action: &Action, object: &str) -> (Code, Option<Code>, &'static str) {
    const DCM: &str = "DCM";
    if object == crate::audit::TRAIL_OBJECT && matches!(action, Action::View | Action::Export) {
        return (("110101", DCM, "Audit Log Used"), None, "R");
    }
    match action {
        Action::Login => (
            ("110114", DCM, "User Authentication"),
            Some(("110122", DCM, "Login")),
            "E",
        ),
        Action::LoginFailed => (
            ("110114", DCM, "User Authentication"),
            Some(("110122", DCM, "Login")),
            "E",
        ),
        Action::Logout => (
            ("110114", DCM, "User Authentication"),
            Some(("110123", DCM, "Logout")),
            "E",
        ),
        Action::View => (("110110", DCM, "Patient Record"), None, "R"),
        Action::Export => (("110106", DCM, "Export"), None, "R"),
        Action::Transfer => (("110104", DCM, "DICOM Instances Transferred"), None, "R"),
        Action::Import => (("110107", DCM, "Import"), None, "C"),
        Action::Query => (("110112", DCM, "Query"), None, "E"),
        Action::Feedback | Action::Update => (("110110", DCM, "Patient Record"), None, "U"),
        Action::UserChange => (
            ("110113", DCM, "Security Alert"),
            Some(("110137", DCM, "User security Attributes Changed")),
            "E",
        ),
        Action::ConfigChange => (
            ("110113", DCM, "Security Alert"),
            Some(("110131", DCM, "Software Configuration")),
            "E",
        ),
        Action::Software => (("110100", DCM, "Application Activity"), None, "E"),
        Action::Delete => (("110105", DCM, "DICOM Study Deleted"), None, "D"),
        Action::Other => (("110100", DCM, "Application Activity"), None, "E"),
    }
}

/// A role of an active participant (PS3.15 A.5.2, RoleIDCode).
type Role = Code;
/// The process that sent the data, or issued the query.
const SOURCE: Role = ("110153", "DCM", "Source Role ID");
/// The process that received the data, or answered the query.
const DESTINATION: Role = ("110152", "DCM", "Destination Role ID");

/// The roles of an event's requestor and of this box, where PS3.15 gives the event's
/// active participants roles: instances transferred and exports leave this box (it is the
/// source; whoever asked for a retrieve may be neither end); a query is answered by it and
/// an import taken in by it (the destination; the requestor the source). Reading or
/// exporting the trail itself, and the other events, name no roles.
struct Roles {
    requestor: Option<Role>,
    this_box: Option<Role>,
}

fn roles(action: &Action, object: &str) -> Roles {
    if object == crate::audit::TRAIL_OBJECT {
        return Roles {
            requestor: None,
            this_box: None,
        };
    }
    match action {
        Action::Transfer | Action::Export => Roles {
            requestor: None,
            this_box: Some(SOURCE),
        },
        Action::Query | Action::Import => Roles {
            requestor: Some(SOURCE),
            this_box: Some(DESTINATION),
        },
        _ => Roles {
            requestor: None,
            this_box: None,
        },
    }
}

/// Ends an `<ActiveParticipant …` opened in `x`: with its role, or empty.
fn close_participant(x: &mut String, role: Option<Role>) {
    match role {
        Some((code, system, name)) => x.push_str(&format!(
            "><RoleIDCode csd-code=\"{code}\" codeSystemName=\"{system}\" originalText=\"{name}\"/></ActiveParticipant>"
        )),
        None => x.push_str("/>"),
    }
}

/// Whether `c` matches the Char production of XML 1.0 (#x9 | #xA | #xD | [#x20-#xD7FF] |
/// [#xE000-#xFFFD] | [#x10000-#x10FFFF]); a `char` is never a surrogate.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

/// Escapes text for an XML attribute or element: markup characters as entities, line
/// breaks and tabs as spaces, and every character XML 1.0 does not allow as U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if !is_xml_char(c) => out.push(char::REPLACEMENT_CHARACTER),
            c => out.push(c),
        }
    }
    out
}

/// One ParticipantObjectIdentification: its ID, type code, type code role and ID type code.
type Participant<'a> = (&'a str, &'static str, &'static str, Code);

/// Study Instance UID (DCM).
const STUDY_UID: Code = ("110180", "DCM", "Study Instance UID");
/// Patient Number (RFC 3881): a patient's ID, `ID^^^ISSUER` with an issuer.
const PATIENT_ID: Code = ("2", "RFC-3881", "Patient Number");
/// User Identifier (RFC 3881).
const USER_ID: Code = ("11", "RFC-3881", "User Identifier");
/// Report Name (RFC 3881).
const REPORT_NAME: Code = ("8", "RFC-3881", "Report Name");
/// URI (RFC 3881).
const URI: Code = ("12", "RFC-3881", "URI");
/// A name the daemon gives an object that no standard code identifies (local code).
const OBJECT_NAME: Code = ("object-name", "DULI", "Object Name");

/// Objects of the login actions that name no user (the throttled-login summary and the
/// first-time setup form).
const NOT_USERS: [&str; 2] = ["login", "first-time setup"];

/// The participant objects of a record, by its action and object (never by shape alone:
/// a user may be named like a UID). Type codes: 1 Person, 2 System Object; roles: 3
/// Report, 4 Resource, 11 Security User Entity, 13 Security Resource.
fn participants<'a>(action: &Action, object: &'a str) -> Vec<Participant<'a>> {
    let object = object.trim();
    if object.is_empty() || object == "-" {
        return Vec::new();
    }
    if action.is_on_patient_data() {
        let studies: Vec<&str> = object.split(',').map(str::trim).collect();
        if studies
            .iter()
            .all(|uid| crate::store::header::is_valid_uid(uid))
        {
            let mut out: Vec<Participant> = Vec::with_capacity(studies.len());
            for uid in studies {
                if !out.iter().any(|p| p.0 == uid) {
                    out.push((uid, "2", "3", STUDY_UID));
                }
            }
            return out;
        }
    }
    let user_action = matches!(
        action,
        Action::Login | Action::LoginFailed | Action::Logout | Action::UserChange
    );
    let typed = if user_action && !NOT_USERS.contains(&object) {
        (object, "1", "11", USER_ID)
    } else if object == "worklist" {
        (object, "2", "3", REPORT_NAME)
    } else if object == crate::audit::TRAIL_OBJECT {
        (object, "2", "13", REPORT_NAME)
    } else if object.starts_with('/') {
        (object, "2", "4", URI)
    } else {
        (object, "2", "4", OBJECT_NAME)
    };
    vec![typed]
}

fn sd_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

fn rfc3339(at_ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(at_ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// The DICOM Audit Message (XML) of one record.
pub fn audit_message(rec: &Record, source_id: &str) -> String {
    let ((id, sys, name), ty, action_code) = event_codes(&rec.action, &rec.object);
    let outcome = if rec.success { "0" } else { "4" };
    let mut x = format!(
        "<AuditMessage><EventIdentification EventActionCode=\"{action_code}\" EventDateTime=\"{}\" EventOutcomeIndicator=\"{outcome}\"><EventID csd-code=\"{id}\" codeSystemName=\"{sys}\" originalText=\"{name}\"/>",
        rfc3339(rec.at_ms)
    );
    if let Some((id, sys, name)) = ty {
        x.push_str(&format!(
            "<EventTypeCode csd-code=\"{id}\" codeSystemName=\"{sys}\" originalText=\"{name}\"/>"
        ));
    }
    if !rec.detail.is_empty() {
        x.push_str(&format!(
            "<EventOutcomeDescription>{}</EventOutcomeDescription>",
            xml_escape(&rec.detail)
        ));
    }
    x.push_str("</EventIdentification>");
    let roles = roles(&rec.action, &rec.object);
    let box_acts = rec.actor == "system";
    x.push_str(&format!(
        "<ActiveParticipant UserID=\"{}\" UserIsRequestor=\"true\"",
        xml_escape(&rec.actor)
    ));
    if !rec.source.is_empty() && rec.source != "local" {
        x.push_str(&format!(
            " NetworkAccessPointID=\"{}\" NetworkAccessPointTypeCode=\"2\"",
            xml_escape(&rec.source)
        ));
    }
    // Who received what was sent: the requestor itself (a C-GET), or another process
    // (the PACS of a push or C-MOVE, the RIS of a report), a participant of its own.
    let destination = rec.destination.trim();
    let requestor_receives = !destination.is_empty() && destination == rec.actor;
    let requestor_role = if box_acts {
        roles.this_box
    } else if requestor_receives {
        Some(DESTINATION)
    } else {
        roles.requestor
    };
    close_participant(&mut x, requestor_role);
    // This box, when someone else asked: the process that sent, answered or took in.
    if let (false, Some(role)) = (box_acts, roles.this_box) {
        x.push_str(&format!(
            "<ActiveParticipant UserID=\"{}\" UserIsRequestor=\"false\"",
            xml_escape(source_id)
        ));
        close_participant(&mut x, Some(role));
    }
    if !destination.is_empty() && !requestor_receives {
        x.push_str(&format!(
            "<ActiveParticipant UserID=\"{}\" UserIsRequestor=\"false\"",
            xml_escape(destination)
        ));
        close_participant(&mut x, Some(DESTINATION));
    }
    x.push_str(&format!(
        "<AuditSourceIdentification AuditSourceID=\"{}\"/>",
        xml_escape(source_id)
    ));
    // The studies (or other objects), then each patient of the studies (Person, role
    // Patient), so a repository can answer "who touched this patient's data".
    let patients = rec
        .patients
        .iter()
        .map(|id| (id.as_str(), "1", "1", PATIENT_ID));
    for (id, type_code, role, id_code) in participants(&rec.action, &rec.object)
        .into_iter()
        .chain(patients)
    {
        x.push_str(&format!(
            "<ParticipantObjectIdentification ParticipantObjectID=\"{}\" ParticipantObjectTypeCode=\"{type_code}\" ParticipantObjectTypeCodeRole=\"{role}\"><ParticipantObjectIDTypeCode csd-code=\"{}\" codeSystemName=\"{}\" originalText=\"{}\"/></ParticipantObjectIdentification>",
            xml_escape(id), id_code.0, id_code.1, id_code.2
        ));
    }
    x.push_str("</AuditMessage>");
    x
}

/// One RFC 5424 line: `<PRI>1 TIMESTAMP HOST duli - DICOM+RFC3881 [chain] <AuditMessage>`.
/// Facility authpriv (10); severity notice (5), or warning (4) for failures.
pub fn syslog_line(rec: &Record, hostname: &str, source_id: &str) -> String {
    let pri = 10 * 8 + if rec.success { 5 } else { 4 };
    let host = if hostname.is_empty() { "-" } else { hostname };
    format!(
        "<{pri}>1 {} {host} {APP_NAME} - {MSG_ID} [{SD_ID} seq=\"{}\" prev=\"{}\" hash=\"{}\"] {}",
        rfc3339(rec.at_ms),
        rec.seq,
        sd_escape(&rec.prev),
        sd_escape(&rec.hash),
        audit_message(rec, source_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(action: Action, success: bool) -> Record {
        Record {
            seq: 7,
            at_ms: 1_700_000_000_123,
            event: crate::audit::Event {
                actor: "ana<x>".into(),
                source: "10.0.0.5".into(),
                action,
                object: "1.2.840.1".into(),
                success,
                detail: "a \"b\"".into(),
                patients: Vec::new(),
                destination: String::new(),
            },
            prev: "00".into(),
            hash: "ab".into(),
        }
    }

    #[test]
    fn syslog_line_has_rfc5424_header_and_dicom_message() {
        let l = syslog_line(&rec(Action::View, true), "box1", "duli-edge-01");
        assert!(
            l.starts_with("<85>1 2023-11-14T22:13:20.123Z box1 duli - DICOM+RFC3881 [duli-chain@32473 seq=\"7\" prev=\"00\" hash=\"ab\"] <AuditMessage>"),
            "{l}"
        );
        assert!(l.contains("EventActionCode=\"R\""));
        assert!(l.contains("csd-code=\"110110\""));
        assert!(l.contains("UserID=\"ana&lt;x&gt;\""));
        assert!(l.contains("ParticipantObjectID=\"1.2.840.1\""));
        assert!(l.contains("NetworkAccessPointID=\"10.0.0.5\""));
        let l = syslog_line(&rec(Action::LoginFailed, false), "box1", "d");
        assert!(l.starts_with("<84>1 "));
        assert!(l.contains("EventOutcomeIndicator=\"4\""));
        assert!(l.contains("csd-code=\"110122\""));
    }

    /// The patients a record names follow its studies, each a Person (1) in the role
    /// Patient (1) with its Patient Number (RFC-3881 code 2), escaped; a record naming none
    /// has no patient participant.
    #[test]
    fn the_patients_of_a_record_are_patient_participants() {
        let mut r = rec(Action::Transfer, true);
        r.event.patients = vec!["PAT<1>^^^HOSP".into(), "PAT-2".into()];
        let xml = audit_message(&r, "d");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let objects: Vec<(String, String, String, String)> = doc
            .descendants()
            .filter(|n| n.has_tag_name("ParticipantObjectIdentification"))
            .map(|n| {
                let code = n.first_element_child().unwrap();
                (
                    n.attribute("ParticipantObjectID").unwrap().to_string(),
                    n.attribute("ParticipantObjectTypeCode")
                        .unwrap()
                        .to_string(),
                    n.attribute("ParticipantObjectTypeCodeRole")
                        .unwrap()
                        .to_string(),
                    format!(
                        "{}/{}",
                        code.attribute("csd-code").unwrap(),
                        code.attribute("codeSystemName").unwrap()
                    ),
                )
            })
            .collect();
        let one = |id: &str, t: &str, role: &str, code: &str| {
            (
                id.to_string(),
                t.to_string(),
                role.to_string(),
                code.to_string(),
            )
        };
        assert_eq!(
            objects,
            [
                one("1.2.840.1", "2", "3", "110180/DCM"),
                one("PAT<1>^^^HOSP", "1", "1", "2/RFC-3881"),
                one("PAT-2", "1", "1", "2/RFC-3881"),
            ]
        );
        let none = audit_message(&rec(Action::Transfer, true), "d");
        assert!(
            !none.contains("RFC-3881\" originalText=\"Patient Number"),
            "{none}"
        );
    }

    /// The active participants' roles: a retrieve by a peer names the peer as requestor
    /// and this box as the source; the box's own push names the box alone, requestor and
    /// source; a query names its requestor the source and this box the destination; a view
    /// and reading the trail name no roles.
    #[test]
    fn active_participants_carry_the_roles_of_their_event() {
        let parts = |r: &Record| -> Vec<(String, String, Option<String>)> {
            let xml = audit_message(r, "duli-edge-01");
            let doc = roxmltree::Document::parse(&xml).unwrap();
            doc.descendants()
                .filter(|n| n.has_tag_name("ActiveParticipant"))
                .map(|n| {
                    (
                        n.attribute("UserID").unwrap().to_string(),
                        n.attribute("UserIsRequestor").unwrap().to_string(),
                        n.first_element_child()
                            .map(|c| c.attribute("csd-code").unwrap().to_string()),
                    )
                })
                .collect()
        };
        let own = |id: &str, req: &str, role: Option<&str>| {
            (id.to_string(), req.to_string(), role.map(String::from))
        };
        let mut r = rec(Action::Transfer, true);
        r.event.actor = "ae:VIEWER".into();
        assert_eq!(
            parts(&r),
            [
                own("ae:VIEWER", "true", None),
                own("duli-edge-01", "false", Some("110153"))
            ]
        );
        r.event.actor = "system".into();
        assert_eq!(parts(&r), [own("system", "true", Some("110153"))]);
        let mut q = rec(Action::Query, true);
        q.event.actor = "ae:RIS".into();
        assert_eq!(
            parts(&q),
            [
                own("ae:RIS", "true", Some("110153")),
                own("duli-edge-01", "false", Some("110152"))
            ]
        );
        assert_eq!(
            parts(&rec(Action::View, true)),
            [own("ana<x>", "true", None)]
        );
        let mut trail = rec(Action::Export, true);
        trail.event.object = crate::audit::TRAIL_OBJECT.into();
        assert_eq!(parts(&trail), [own("ana<x>", "true", None)]);
        // The receiving process (PS3.15 A.5.3.2, A.5.3.7): a C-MOVE's destination and a
        // push's PACS as participants of their own, a C-GET's requestor in that role.
        let mut moved = rec(Action::Transfer, true);
        moved.event.actor = "ae:VIEWER".into();
        moved.event.destination = "ae:WORKSTATION".into();
        assert_eq!(
            parts(&moved),
            [
                own("ae:VIEWER", "true", None),
                own("duli-edge-01", "false", Some("110153")),
                own("ae:WORKSTATION", "false", Some("110152"))
            ]
        );
        moved.event.destination = "ae:VIEWER".into();
        assert_eq!(
            parts(&moved),
            [
                own("ae:VIEWER", "true", Some("110152")),
                own("duli-edge-01", "false", Some("110153"))
            ]
        );
        let mut pushed = rec(Action::Transfer, true);
        pushed.event.actor = "system".into();
        pushed.event.destination = "ae:ARCHIVE".into();
        assert_eq!(
            parts(&pushed),
            [
                own("system", "true", Some("110153")),
                own("ae:ARCHIVE", "false", Some("110152"))
            ]
        );
    }

    /// Reading or exporting the trail is "Audit Log Used" (DCM 110101), its object a
    /// security resource; a view of a study stays "Patient Record".
    #[test]
    fn reading_the_trail_is_audit_log_used() {
        for action in [Action::View, Action::Export] {
            let mut r = rec(action.clone(), true);
            r.event.object = crate::audit::TRAIL_OBJECT.into();
            let xml = audit_message(&r, "d");
            parses(&xml).unwrap();
            assert!(xml.contains("<EventID csd-code=\"110101\" codeSystemName=\"DCM\" originalText=\"Audit Log Used\"/>"), "{action:?}: {xml}");
            assert!(xml.contains("EventActionCode=\"R\""), "{xml}");
            assert!(
                xml.contains("ParticipantObjectTypeCodeRole=\"13\""),
                "{xml}"
            );
        }
        let xml = audit_message(&rec(Action::View, true), "d");
        assert!(xml.contains("csd-code=\"110110\""), "{xml}");
    }

    /// Whether `xml` is a well-formed document to an XML 1.0 parser.
    fn parses(xml: &str) -> Result<(), String> {
        roxmltree::Document::parse(xml)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn characters_xml_does_not_allow_never_reach_the_message() {
        let mut r = rec(Action::LoginFailed, false);
        r.event.actor = "a\u{FFFF}b\u{FFFE}c\u{0}d\u{1b}e\u{7}f\tg\nh\ri".into();
        r.event.object = r.event.actor.clone();
        r.event.detail = "x\u{FFFF}\u{b}<y>".into();
        let xml = audit_message(&r, "box\u{FFFF}");
        parses(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
        assert!(xml.contains("UserID=\"a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}e\u{FFFD}f g h i\""));
        // Characters XML allows pass unchanged, the highest planes included.
        assert_eq!(
            xml_escape("\u{D7FF}\u{E000}\u{FFFD}\u{10000}\u{10FFFF}é"),
            "\u{D7FF}\u{E000}\u{FFFD}\u{10000}\u{10FFFF}é"
        );
    }

    #[test]
    fn the_object_is_typed_by_the_action_not_by_its_shape() {
        let typed = |action: &Action, object: &str| {
            let mut r = rec(action.clone(), false);
            r.event.object = object.into();
            let xml = audit_message(&r, "d");
            parses(&xml).unwrap();
            xml.contains("csd-code=\"110180\"")
        };
        for action in [
            Action::LoginFailed,
            Action::Login,
            Action::Logout,
            Action::UserChange,
        ] {
            assert!(!typed(&action, "1.2.840.113619.2.1"), "{action:?}");
        }
        for action in [Action::Software, Action::ConfigChange, Action::Other] {
            assert!(!typed(&action, "1.2.840.113619.2.1"), "{action:?}");
        }
        for action in [
            Action::View,
            Action::Export,
            Action::Import,
            Action::Query,
            Action::Feedback,
            Action::Delete,
        ] {
            assert!(typed(&action, "1.2.840.113619.2.1"), "{action:?}");
            assert!(!typed(&action, "worklist"), "{action:?}");
        }
        let mut r = rec(Action::LoginFailed, false);
        r.event.object = "1.2.840.113619.2.1".into();
        assert!(audit_message(&r, "d").contains("originalText=\"User Identifier\""));
        // Retention's deletion of a study's pixel data: DICOM Study Deleted, action D.
        let mut r = rec(Action::Delete, true);
        r.event.object = "1.2.840.113619.2.1".into();
        let xml = audit_message(&r, "d");
        assert!(xml.contains("csd-code=\"110105\""), "{xml}");
        assert!(xml.contains("EventActionCode=\"D\""), "{xml}");
    }

    /// The participant objects of a message: (ID, type code, role, ID type code).
    fn objects(action: Action, object: &str) -> Vec<(String, String, String, String)> {
        let mut r = rec(action, true);
        r.event.object = object.into();
        let xml = audit_message(&r, "d");
        let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
        doc.root_element()
            .children()
            .filter(|n| n.has_tag_name("ParticipantObjectIdentification"))
            .map(|n| {
                let code = n.first_element_child().unwrap();
                assert_eq!(code.tag_name().name(), "ParticipantObjectIDTypeCode");
                let a = |n: roxmltree::Node, k| n.attribute(k).unwrap_or_default().to_string();
                (
                    a(n, "ParticipantObjectID"),
                    a(n, "ParticipantObjectTypeCode"),
                    a(n, "ParticipantObjectTypeCodeRole"),
                    a(code, "csd-code"),
                )
            })
            .collect()
    }

    /// A retrieve over several studies names each study as its own participant object
    /// (System Object, role Report, Study Instance UID), after the other elements as the
    /// PS3.15 schema orders them; names that are not UIDs are typed as what they are, and
    /// `-` names none.
    #[test]
    fn each_study_of_a_list_is_its_own_object_and_names_are_typed() {
        let study = |uid: &str| {
            (
                uid.to_string(),
                "2".to_string(),
                "3".to_string(),
                "110180".to_string(),
            )
        };
        assert_eq!(
            objects(Action::Export, "1.2.3,1.2.4"),
            [study("1.2.3"), study("1.2.4")]
        );
        assert_eq!(
            objects(Action::Transfer, "1.2.3,1.2.4"),
            [study("1.2.3"), study("1.2.4")]
        );
        // A retrieve over two studies (or a push) is DICOM Instances Transferred.
        let mut r = rec(Action::Transfer, true);
        r.event.object = "1.2.3,1.2.4".into();
        let xml = audit_message(&r, "d");
        assert!(xml.contains("<EventID csd-code=\"110104\" codeSystemName=\"DCM\" originalText=\"DICOM Instances Transferred\"/>"), "{xml}");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let order: Vec<&str> = doc
            .root_element()
            .children()
            .filter(|n| n.is_element())
            .map(|n| n.tag_name().name())
            .collect();
        assert_eq!(
            order,
            [
                "EventIdentification",
                "ActiveParticipant",
                "ActiveParticipant",
                "AuditSourceIdentification",
                "ParticipantObjectIdentification",
                "ParticipantObjectIdentification"
            ]
        );
        let typed = |action: Action, object: &str| {
            objects(action, object)
                .into_iter()
                .map(|(id, t, role, code)| format!("{id} {t}/{role}/{code}"))
                .collect::<Vec<_>>()
        };
        for action in [Action::Query, Action::Export, Action::Import] {
            assert!(typed(action.clone(), "-").is_empty(), "{action:?}");
        }
        assert_eq!(typed(Action::Query, "worklist"), ["worklist 2/3/8"]);
        assert_eq!(typed(Action::Import, "upload"), ["upload 2/4/object-name"]);
        assert_eq!(typed(Action::Export, "audit trail"), ["audit trail 2/13/8"]);
        assert_eq!(
            typed(Action::Other, "/api/v1/users"),
            ["/api/v1/users 2/4/12"]
        );
        assert_eq!(typed(Action::Login, "ana"), ["ana 1/11/11"]);
        assert_eq!(
            typed(Action::LoginFailed, "login"),
            ["login 2/4/object-name"]
        );
        assert_eq!(typed(Action::Query, "1.2.3"), ["1.2.3 2/3/110180"]);
    }
}
